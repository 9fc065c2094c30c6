//! The streaming pipeline end to end, on the real broker and PostgreSQL started by
//! `scripts/test`: the seeded generator publishes a fixed number of records (bad, late,
//! unknown-symbol and anomalous ones planted) through normalize, enrich, aggregate,
//! prediction-consumer and project, which run as processes, on a broker of the test's own
//! behind a proxy. Mid-stream: normalize, aggregate, enrich and project are SIGKILLed and
//! restarted, project's PostgreSQL server (a cluster of the test's own) is shut down and
//! started again ten seconds later, and every client loses the broker for three seconds
//! (the proxy closes every connection and refuses new ones while the broker keeps running;
//! `pipeline_group.rs` kills and restarts the broker process itself).
//!
//! The test then recomputes every bar and every feature vector independently from what the
//! generator published and finds them equal to what aggregate wrote and to what PostgreSQL
//! holds, finds exactly the planted bad and late records in the dead-letter topic, each with
//! its reason, and accounts for every record: published = in closed bars + in still-open
//! windows + dead-lettered. The consumer's accuracy and F1 gauges equal a recomputation
//! from the stored predictions and outcomes, and a second projection replaying every topic
//! from the start leaves every table exactly as it was. Finally every stage is sent SIGTERM
//! and must drain, commit and exit 0.

mod support;

use std::time::Duration;

use support::{metric_sum, ProxiedBroker, Run, Stage};
use tidewatch_e2e::{env_var, PrivatePostgres};
use tidewatch_telemetry::catalog::{self, Group};

const RECORDS: u64 = 24_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_trade_is_in_a_bar_or_dead_lettered_once_across_stage_crashes() {
    let broker = ProxiedBroker::start().await;
    let brokers = broker.brokers();
    let database = env_var("DATABASE_URL");
    // project writes to a PostgreSQL server of its own, which the test restarts.
    let postgres = tokio::task::block_in_place(PrivatePostgres::start).expect("private PostgreSQL");
    let run = Run::new(postgres.url());
    let env = [
        ("KAFKA_BROKERS", brokers.as_str()),
        ("DATABASE_URL", database.as_str()),
        ("KAFKA_TOPIC_PARTITIONS", "3"),
        ("LOG_LEVEL", "info"),
    ];
    let mut normalize = run.start(Stage::Normalize, 0, &env);
    let mut enrich = run.start(Stage::Enrich, 0, &env);
    let mut aggregate = run.start(Stage::Aggregate, 0, &env);
    let mut consumer = run.start(Stage::Consumer, 0, &env);
    let mut project = run.start(Stage::Project, 0, &env);
    for s in [&normalize, &enrich, &aggregate, &consumer, &project] {
        s.wait_ready(Duration::from_secs(90))
            .await
            .expect("stage ready");
    }

    let mut generator = run.start_generator(RECORDS, 2000, &env);
    // Crash every stage but the consumer mid-stream (the generator needs about twelve
    // seconds; the consumer's scores live in memory and are compared below), restart
    // project's PostgreSQL with ten seconds down, and take the broker from everyone for three.
    // project crashes first; once its successor is ready, the outage begins, so the write
    // failures are counted by the process whose metrics are read at the end.
    tokio::time::sleep(Duration::from_millis(500)).await;
    project.restart_after_kill().expect("project restarts");
    project
        .wait_ready(Duration::from_secs(60))
        .await
        .expect("project ready again");
    tokio::task::block_in_place(|| postgres.stop_server()).expect("PostgreSQL stops");
    let outage = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    aggregate.restart_after_kill().expect("aggregate restarts");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    normalize.restart_after_kill().expect("normalize restarts");
    let client = reqwest::Client::new();
    let mut unready_seen = false;
    // (at seconds into the outage, what happens): enrich crashes, the broker goes away for
    // three seconds. A crashed stage is restarted only while the broker is there: a stage
    // that cannot reach the broker at start exits, as it should.
    #[derive(Clone, Copy)]
    enum Step {
        KillEnrich,
        CutBroker,
        RestoreBroker,
    }
    let mut steps = vec![
        (2.5, Step::KillEnrich),
        (3.5, Step::CutBroker),
        (6.5, Step::RestoreBroker),
    ];
    steps.reverse();
    while outage.elapsed() < Duration::from_secs(10) {
        while let Some(&(_, step)) = steps
            .last()
            .filter(|(at, _)| outage.elapsed().as_secs_f64() >= *at)
        {
            steps.pop();
            match step {
                Step::KillEnrich => enrich.restart_after_kill().expect("enrich restarts"),
                Step::CutBroker => broker.proxy.cut(),
                Step::RestoreBroker => broker.proxy.restore(),
            }
        }
        let ready = client.get(project.url("/health/ready")).send().await;
        unready_seen |= ready.is_ok_and(|r| r.status().as_u16() == 503);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::task::block_in_place(|| postgres.start_server()).expect("PostgreSQL starts again");
    assert!(
        unready_seen,
        "project was not ready while PostgreSQL was unreachable"
    );
    let status = tokio::task::block_in_place(|| generator.wait_exit(Duration::from_secs(120)))
        .expect("generator exits");
    assert!(
        status.success(),
        "generator failed: {}",
        generator.log_tail()
    );

    let accounting = support::account(
        &brokers,
        &run,
        RECORDS,
        &[&normalize, &enrich, &aggregate, &consumer, &project],
    )
    .await;
    let pool = &accounting.pool;
    let project_metrics = project.metrics().await.expect("metrics");
    assert!(
        metric_sum(
            &project_metrics,
            "tidewatch_db_transaction_errors_total",
            &[]
        ) >= 1.0
            && metric_sum(
                &project_metrics,
                "tidewatch_db_transaction_retries_total",
                &[]
            ) >= 1.0,
        "the outage was seen as failed and retried transactions"
    );

    // The consumer's rolling accuracy and F1 equal a recomputation from what PostgreSQL
    // stored: each judged prediction joined with its outcome.
    let consumer_metrics = consumer.metrics().await.expect("metrics");
    let judged = metric_sum(
        &consumer_metrics,
        "tidewatch_prediction_outcomes_total",
        &[("variant", "ml")],
    ) as i64;
    assert!(judged > 0, "the run was long enough to judge predictions");
    assert!(
        judged <= 500,
        "the rolling window (500) holds every judgement of this run"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let pairs: Vec<(bool, bool)> = loop {
        let pairs: Vec<(bool, bool)> = sqlx::query_as(
            "SELECT p.spike, o.spike FROM predictions p JOIN prediction_outcomes o USING (symbol, bar_start)",
        )
        .fetch_all(pool)
        .await
        .expect("join");
        if pairs.len() as i64 == judged {
            break pairs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} stored outcomes, {judged} judged",
            pairs.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let count = |p: bool, a: bool| pairs.iter().filter(|x| **x == (p, a)).count() as f64;
    let (tp, fp, fn_, tn) = (
        count(true, true),
        count(true, false),
        count(false, true),
        count(false, false),
    );
    let accuracy = (tp + tn) / (tp + fp + fn_ + tn);
    let precision = if tp + fp > 0.0 { tp / (tp + fp) } else { 0.0 };
    let recall = if tp + fn_ > 0.0 { tp / (tp + fn_) } else { 0.0 };
    let f1 = if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    };
    let gauge = |metric: &str| {
        metric_sum(
            &consumer_metrics,
            "tidewatch_prediction_rolling_score",
            &[("variant", "ml"), ("metric", metric)],
        )
    };
    eprintln!(
        "{judged} judged predictions: accuracy {accuracy:.4} (gauge {:.4}), F1 {f1:.4} (gauge {:.4})",
        gauge("accuracy"),
        gauge("f1")
    );
    assert!(
        support::close_enough(gauge("accuracy"), accuracy),
        "accuracy gauge"
    );
    assert!(support::close_enough(gauge("f1"), f1), "F1 gauge");

    // Replaying every topic from the start (a new group) leaves every table unchanged.
    let status = tokio::task::block_in_place(|| project.terminate(Duration::from_secs(30)))
        .expect("project stops");
    assert!(status.success(), "project exited with {status}");
    let mut replay = support::replay_leaves_tables_unchanged(&brokers, &run, pool, &env).await;

    // Every metric the stages promise is exposed.
    for (stage, groups) in [
        (&normalize, vec![Group::Kafka, Group::Quality]),
        (
            &enrich,
            vec![Group::Kafka, Group::Reference, Group::Anomaly],
        ),
        (&aggregate, vec![Group::Kafka, Group::Windowing]),
        (&consumer, vec![Group::Kafka, Group::Outcomes]),
        (&replay, vec![Group::Kafka, Group::Database]),
    ] {
        // Lag gauges appear with librdkafka's statistics, every five seconds.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let text = stage.metrics().await.expect("metrics");
            let missing: Vec<&str> = catalog::ALL
                .iter()
                .filter(|m| groups.contains(&m.group) && !text.contains(m.name))
                .map(|m| m.name)
                .collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} does not expose {missing:?}",
                stage.name
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let restarted = aggregate.metrics().await.expect("metrics");
    assert!(
        restarted.contains("tidewatch_replayed_messages_total"),
        "aggregate restored state by replay"
    );

    // SIGTERM drains, commits and exits 0, for every stage.
    support::terminate_all(&mut [
        &mut normalize,
        &mut enrich,
        &mut aggregate,
        &mut consumer,
        &mut replay,
    ]);
    drop(broker);
}
