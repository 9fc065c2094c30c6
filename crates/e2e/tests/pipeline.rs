//! The streaming pipeline end to end, on the real broker and PostgreSQL started by
//! `scripts/test`: the seeded generator publishes a fixed number of records (bad, late,
//! unknown-symbol and anomalous ones planted) through normalize, enrich, aggregate,
//! prediction-consumer and project, which run as processes, on a broker of the test's own
//! behind a proxy. Mid-stream: normalize, aggregate, enrich and project are SIGKILLed and
//! restarted, project's PostgreSQL server (a cluster of the test's own) is shut down and
//! started again ten seconds later, and every client loses the broker for three seconds
//! (the proxy closes every connection and refuses new ones, as a broker restart does;
//! tansu keeps topics in memory, and its SQLite storage could not carry this load).
//!
//! The test then recomputes every bar and every feature vector independently from what the
//! generator published and finds them equal to what aggregate wrote and to what PostgreSQL
//! holds, finds exactly the planted bad and late records in the dead-letter topic, each with
//! its reason, and accounts for every record: published = in closed bars + in still-open
//! windows + dead-lettered. The consumer's accuracy and F1 gauges equal a recomputation
//! from the stored predictions and outcomes, and a second projection replaying every topic
//! from the start leaves every table exactly as it was. Finally every stage is sent SIGTERM
//! and must drain, commit and exit 0.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use tidewatch_e2e::{env_var, PrivatePostgres, Proxy, Service};
use tidewatch_kafka::dlq::{self, DLQ_TOPIC};
use tidewatch_kafka::inspect::{read_topic_async, ReadMessage};
use tidewatch_model::features::{Bar, FeatureBuilder};
use tidewatch_schema::{decode_raw, BarRecord, FeatureRecord, HEADER_SIM_KIND};
use tidewatch_telemetry::catalog::{self, Group};

const RECORDS: u64 = 24_000;
const WINDOW_MS: i64 = 60_000;
const LATENESS_MS: i64 = 10_000;

#[derive(Debug, Default)]
struct Expected {
    bar: Option<Bar>,
    notional: f64,
}

async fn read(
    brokers: &str,
    topic: &str,
    want: usize,
    keep: impl Fn(&ReadMessage) -> bool + Send + 'static,
) -> Vec<ReadMessage> {
    read_topic_async(
        brokers.to_owned(),
        topic.to_owned(),
        want,
        Duration::from_secs(120),
        keep,
    )
    .await
    .expect("read topic")
}

fn close_enough(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_trade_is_in_a_bar_or_dead_lettered_once_across_stage_crashes() {
    let broker = PrivateBroker::start().await;
    let brokers = broker.proxy.addr.to_string();
    let database = env_var("DATABASE_URL");
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let topic = |name: &str| format!("e2e-{run}-{name}");
    let (raw, normalized, enriched, bars, features) = (
        topic("raw"),
        topic("normalized"),
        topic("enriched"),
        topic("bars"),
        topic("features"),
    );
    let predictions = topic("predictions");
    let outcomes = topic("outcomes");
    // project writes to a PostgreSQL server of its own, which the test restarts.
    let postgres = tokio::task::block_in_place(PrivatePostgres::start).expect("private PostgreSQL");
    let project_db = postgres.url();
    let env = [
        ("KAFKA_BROKERS", brokers.as_str()),
        ("DATABASE_URL", database.as_str()),
        ("KAFKA_TOPIC_PARTITIONS", "3"),
        ("LOG_LEVEL", "info"),
    ];
    let group = |stage: &str| format!("e2e-{run}-{stage}");
    let (gn, ge, ga) = (group("normalize"), group("enrich"), group("aggregate"));
    let mut normalize = Service::start(
        "normalize",
        &[
            "--input-topic",
            &raw,
            "--output-topic",
            &normalized,
            "--group-id",
            &gn,
            "--group-instance-id",
            "normalize-0",
        ],
        &env,
    )
    .expect("normalize starts");
    let mut enrich = Service::start(
        "enrich",
        &[
            "--input-topic",
            &normalized,
            "--output-topic",
            &enriched,
            "--group-id",
            &ge,
            "--group-instance-id",
            "enrich-0",
        ],
        &env,
    )
    .expect("enrich starts");
    let mut aggregate = Service::start(
        "aggregate",
        &[
            "--input-topic",
            &enriched,
            "--bars-topic",
            &bars,
            "--features-topic",
            &features,
            "--group-id",
            &ga,
            "--group-instance-id",
            "aggregate-0",
            "--allowed-lateness-seconds",
            &(LATENESS_MS / 1000).to_string(),
        ],
        &env,
    )
    .expect("aggregate starts");
    let mut consumer = Service::start(
        "prediction-consumer",
        &[
            "--input-topic",
            &features,
            "--output-topic",
            &predictions,
            "--outcomes-topic",
            &outcomes,
            "--group-id",
            &group("consumer"),
            "--group-instance-id",
            "consumer-0",
            "--model",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../models/volatility-spike.json"
            ),
            "--reference-profile",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../models/volatility-spike.profile.json"
            ),
            // Statistics (and their gauges, checked below) within the test's 60 vectors.
            "--feature-drift-window",
            "40",
            "--feature-drift-min-samples",
            "40",
        ],
        &env,
    )
    .expect("prediction-consumer starts");
    let project_args = |group: &str| -> Vec<String> {
        [
            "--bars-topic",
            &bars,
            "--predictions-topic",
            &predictions,
            "--outcomes-topic",
            &outcomes,
            "--group-id",
            group,
            // Static membership, as the stacks run it: the instance restarted after its
            // SIGKILL takes its partitions back at once.
            "--group-instance-id",
            "project-0",
            "--database-url",
            &project_db,
            "--batch-linger-ms",
            "100",
            "--retry-max-backoff-ms",
            "1000",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let first_group = group("project");
    let args = project_args(&first_group);
    let mut project = Service::start(
        "project",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &env,
    )
    .expect("project starts");
    for s in [&normalize, &enrich, &aggregate, &consumer, &project] {
        s.wait_ready(Duration::from_secs(90))
            .await
            .expect("stage ready");
    }

    let records = RECORDS.to_string();
    let mut generator = Service::start(
        "generator",
        &[
            "--output-topic",
            &raw,
            "--seed",
            "11",
            "--rate",
            "2000",
            "--max-records",
            &records,
            "--bad-fraction",
            "0.02",
            "--late-fraction",
            "0.01",
            "--anomaly-rate",
            "0.005",
        ],
        &env,
    )
    .expect("generator starts");
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

    // What was published, and what it must become.
    let published = read(&brokers, &raw, RECORDS as usize, |_| true).await;
    assert_eq!(
        published.len() as u64,
        RECORDS,
        "the generator published exactly what it was asked to"
    );
    let mut kinds: HashMap<String, usize> = HashMap::new();
    let mut want_dlq: HashMap<String, &'static str> = HashMap::new();
    let mut windows: BTreeMap<(String, i64), Expected> = BTreeMap::new();
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    let mut newest: HashMap<i32, i64> = HashMap::new();
    for m in &published {
        let kind = m
            .headers
            .get(HEADER_SIM_KIND)
            .cloned()
            .expect("kind header");
        *kinds.entry(kind.clone()).or_default() += 1;
        let decoded = decode_raw(&m.payload, 0);
        match kind.as_str() {
            "malformed" | "missing_field" | "out_of_range" => {
                let code = match kind.as_str() {
                    "malformed" => "malformed_record",
                    "missing_field" => "missing_price",
                    _ => "out_of_range",
                };
                assert!(decoded.is_err(), "{kind} record decodes");
                want_dlq.insert(format!("raw:{}:{}", m.partition, m.offset), code);
            }
            "unknown_symbol" => {
                let id = decoded.expect("decodes").trade_id;
                assert!(
                    want_dlq.insert(id, "unknown_symbol").is_none(),
                    "planted trade ids are unique"
                );
            }
            "late" => {
                let id = decoded.expect("decodes").trade_id;
                assert!(
                    want_dlq.insert(id, "late_trade").is_none(),
                    "planted trade ids are unique"
                );
            }
            "valid" | "anomaly" => {
                let t = decoded.expect("valid record decodes");
                partition_of.insert(t.symbol.clone(), m.partition);
                let newest = newest.entry(m.partition).or_insert(i64::MIN);
                *newest = (*newest).max(t.event_time_ms);
                let start = t.event_time_ms - t.event_time_ms.rem_euclid(WINDOW_MS);
                let w = windows.entry((t.symbol.clone(), start)).or_default();
                match &mut w.bar {
                    Some(bar) => bar.add(t.price, t.size),
                    None => w.bar = Some(Bar::open_at(start, t.price, t.size)),
                }
                w.notional += t.price * t.size;
            }
            other => panic!("unexpected kind {other}"),
        }
    }
    for kind in [
        "valid",
        "anomaly",
        "malformed",
        "missing_field",
        "out_of_range",
        "unknown_symbol",
        "late",
    ] {
        assert!(
            kinds.get(kind).copied().unwrap_or(0) > 0,
            "the run planted {kind} records: {kinds:?}"
        );
    }
    // A window is closed once its partition's watermark (newest event time minus the
    // allowed lateness) reached its end.
    let closed: BTreeMap<(String, i64), &Expected> = windows
        .iter()
        .filter(|((symbol, start), _)| {
            start + WINDOW_MS <= newest[&partition_of[symbol]] - LATENESS_MS
        })
        .map(|(k, v)| (k.clone(), v))
        .collect();
    let in_open_windows: u64 = windows
        .iter()
        .filter(|(k, _)| !closed.contains_key(*k))
        .map(|(_, w)| w.bar.map_or(0, |b| b.trades))
        .sum();

    // Bars: each closed window once (replays may repeat a bar, identically).
    let got_bars = read(&brokers, &bars, closed.len(), |_| true).await;
    let mut by_key: HashMap<(String, i64), BarRecord> = HashMap::new();
    for m in &got_bars {
        let b: BarRecord = serde_json::from_slice(&m.payload).expect("bar record");
        assert_eq!(
            m.key.as_deref(),
            Some(b.symbol.as_bytes()),
            "bars are keyed by symbol"
        );
        let key = (b.symbol.clone(), b.start_ms);
        if let Some(previous) = by_key.get(&key) {
            assert_eq!(previous, &b, "a replayed bar is identical");
        }
        by_key.insert(key, b);
    }
    let got_keys: HashSet<_> = by_key.keys().cloned().collect();
    let want_keys: HashSet<_> = closed.keys().cloned().collect();
    if got_keys != want_keys {
        // Which windows, and what aggregate last said: the test has failed this way, rarely
        // (bars of the last minutes missing), and the cause is not known yet.
        let missing: BTreeSet<_> = want_keys.difference(&got_keys).collect();
        let extra: BTreeSet<_> = got_keys.difference(&want_keys).collect();
        panic!(
            "exactly the closed windows became bars: {} missing {missing:?}, {} extra {extra:?}\n\
             aggregate log:\n{}\nenrich log:\n{}",
            missing.len(),
            extra.len(),
            aggregate.log_tail(),
            enrich.log_tail()
        );
    }
    let mut trades_in_bars = 0;
    for (key, w) in &closed {
        let want = w.bar.expect("window has trades");
        let got = &by_key[key];
        assert_eq!(got.trade_count, want.trades, "{key:?} trade count");
        assert_eq!(
            (got.open, got.close),
            (want.open, want.close),
            "{key:?} open/close"
        );
        assert_eq!(
            (got.high, got.low),
            (want.high, want.low),
            "{key:?} high/low"
        );
        assert!(close_enough(got.volume, want.volume), "{key:?} volume");
        assert!(
            close_enough(got.vwap, w.notional / want.volume),
            "{key:?} vwap"
        );
        assert_eq!((got.interval_seconds, got.end_ms), (60, key.1 + WINDOW_MS));
        trades_in_bars += got.trade_count;
    }

    // Features: the model crate's builder over the recomputed bars, per symbol in order.
    let mut want_features: HashMap<(String, i64), tidewatch_model::Features> = HashMap::new();
    let mut builders: HashMap<String, FeatureBuilder> = HashMap::new();
    for ((symbol, start), w) in &closed {
        let bar = w.bar.expect("bar");
        if let Some(f) = builders.entry(symbol.clone()).or_default().push(&bar) {
            want_features.insert((symbol.clone(), *start), f);
        }
    }
    assert!(
        !want_features.is_empty(),
        "the run was long enough for features"
    );
    let got_features = read(&brokers, &features, want_features.len(), |_| true).await;
    let mut features_by_key: HashMap<(String, i64), FeatureRecord> = HashMap::new();
    for m in &got_features {
        let f: FeatureRecord = serde_json::from_slice(&m.payload).expect("feature record");
        let key = (f.symbol.clone(), f.bar_start_ms);
        if let Some(previous) = features_by_key.get(&key) {
            assert_eq!(previous, &f, "replayed features are identical");
        }
        features_by_key.insert(key, f);
    }
    assert_eq!(
        features_by_key.keys().collect::<HashSet<_>>(),
        want_features.keys().collect::<HashSet<_>>(),
        "features for exactly the bars past warm-up"
    );
    for (key, want) in &want_features {
        let got = features_by_key[key].features.to_array();
        for (g, w) in got.iter().zip(want.to_array()) {
            assert!(
                close_enough(*g, w),
                "{key:?}: features {got:?} != {:?}",
                want.to_array()
            );
        }
    }

    // One prediction per feature vector, for the same bar.
    let got_predictions = read(&brokers, &predictions, want_features.len(), |_| true).await;
    let predicted: HashSet<(String, i64)> = got_predictions
        .iter()
        .map(|m| {
            let p: tidewatch_schema::PredictionRecord =
                serde_json::from_slice(&m.payload).expect("prediction");
            assert!(
                (0.0..=1.0).contains(&p.probability) && (0.0..=1.0).contains(&p.online_probability)
            );
            (p.symbol, p.bar_start_ms)
        })
        .collect();
    assert_eq!(
        predicted,
        want_features.keys().cloned().collect::<HashSet<_>>(),
        "a prediction for every feature vector"
    );

    // PostgreSQL: every closed bar, equal to the recomputation, and a prediction per
    // feature vector, all there despite the outage.
    let pool = sqlx::PgPool::connect(&project_db).await.expect("connect");
    let want_rows = closed.len() as i64;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (bars_n, predictions_n): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM bars), (SELECT count(*) FROM predictions)",
        )
        .fetch_one(&pool)
        .await
        .expect("count");
        if bars_n == want_rows && predictions_n == want_features.len() as i64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "PostgreSQL holds {bars_n}/{want_rows} bars and {predictions_n}/{} predictions; project log:\n{}",
            want_features.len(),
            project.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    type BarRow = (String, i32, i64, i64, f64, f64, f64, f64, f64, f64, i64);
    let stored: Vec<BarRow> = sqlx::query_as(
        "SELECT symbol, interval_seconds, (extract(epoch FROM start_time) * 1000)::bigint, \
                (extract(epoch FROM end_time) * 1000)::bigint, open, high, low, close, volume, vwap, trade_count \
         FROM bars",
    )
    .fetch_all(&pool)
    .await
    .expect("bars");
    for (symbol, interval, start, end, open, high, low, close, volume, vwap, count) in stored {
        let key = (symbol, start);
        let w = closed
            .get(&key)
            .unwrap_or_else(|| panic!("{key:?} stored but not closed"));
        let want = w.bar.expect("bar");
        assert_eq!((interval, end), (60, start + WINDOW_MS), "{key:?}");
        assert_eq!(
            (open, high, low, close, count as u64),
            (want.open, want.high, want.low, want.close, want.trades),
            "{key:?} in PostgreSQL"
        );
        assert!(close_enough(volume, want.volume), "{key:?} volume");
        assert!(close_enough(vwap, w.notional / want.volume), "{key:?} vwap");
    }
    let stored_predictions: HashSet<(String, i64)> = sqlx::query_as::<_, (String, i64)>(
        "SELECT symbol, (extract(epoch FROM bar_start) * 1000)::bigint FROM predictions",
    )
    .fetch_all(&pool)
    .await
    .expect("predictions")
    .into_iter()
    .collect();
    assert_eq!(
        stored_predictions,
        want_features.keys().cloned().collect::<HashSet<_>>(),
        "a stored prediction for every feature vector"
    );
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
        .fetch_all(&pool)
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
    assert!(close_enough(gauge("accuracy"), accuracy), "accuracy gauge");
    assert!(close_enough(gauge("f1"), f1), "F1 gauge");

    // Replaying every topic from the start (a new group) leaves every table unchanged.
    let before = tidewatch_e2e::dump_projection(&pool).await.expect("dump");
    let status = tokio::task::block_in_place(|| project.terminate(Duration::from_secs(30)))
        .expect("project stops");
    assert!(status.success(), "project exited with {status}");
    let replay_group = group("project-replay");
    let args = project_args(&replay_group);
    let replay = Service::start(
        "project",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &env,
    )
    .expect("project restarts");
    let total = topic_messages(&brokers, &[&bars, &predictions, &outcomes]);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let m = replay.metrics().await.unwrap_or_default();
        let received = metric_sum(
            &m,
            "tidewatch_component_received_events_total",
            &[("stage", "project")],
        ) as i64;
        let committed = metric_sum(
            &m,
            "tidewatch_component_sent_events_total",
            &[("stage", "project")],
        ) as i64;
        if received >= total && committed >= total {
            // A key published once is written by no replay. A key published twice (the
            // consumer re-read features after the broker cut and its online model had
            // learned in between, so its second prediction differs) is rewritten at most
            // twice on the way back to the same last version; the dump below proves that.
            let written = metric_sum(&m, "tidewatch_db_rows_written_total", &[]);
            let superseded = superseded_versions(&brokers, &bars, &predictions, &outcomes).await;
            eprintln!("replay: {total} messages, {superseded} superseded versions, {written} rows written");
            assert!(
                written <= 2.0 * superseded as f64,
                "a replay writes no row but for keys published more than once ({written} written, {superseded} superseded)"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replay read {received} and wrote {committed} of {total} messages"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        tidewatch_e2e::dump_projection(&pool).await.expect("dump"),
        before,
        "the replay left every table unchanged"
    );

    // Dead letters of this run: exactly the planted ones, each once, with code and reason.
    let sources: HashSet<String> = [raw.clone(), normalized.clone(), enriched.clone()].into();
    let dead = read(&brokers, DLQ_TOPIC, want_dlq.len(), move |m| {
        m.headers
            .get(dlq::HEADER_SOURCE_TOPIC)
            .is_some_and(|t| sources.contains(t))
    })
    .await;
    let mut got_dlq: HashMap<String, String> = HashMap::new();
    let mut dlq_copies = 0;
    for m in &dead {
        let h = |name: &str| m.headers.get(name).cloned().unwrap_or_default();
        assert!(
            !h(dlq::HEADER_ERROR_REASON).is_empty(),
            "every dead letter has a reason"
        );
        let identity = if h(dlq::HEADER_SOURCE_TOPIC) == raw {
            format!(
                "raw:{}:{}",
                h(dlq::HEADER_SOURCE_PARTITION),
                h(dlq::HEADER_SOURCE_OFFSET)
            )
        } else {
            let trade: serde_json::Value =
                serde_json::from_slice(&m.payload).expect("dead trade is JSON");
            trade["trade_id"].as_str().expect("trade id").to_owned()
        };
        if got_dlq
            .insert(identity, h(dlq::HEADER_ERROR_CODE))
            .is_some()
        {
            dlq_copies += 1;
        }
    }
    let want_dlq: HashMap<String, String> = want_dlq
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        .collect();
    assert_eq!(
        got_dlq, want_dlq,
        "the DLQ holds exactly the planted bad and late records"
    );

    // Nothing lost, nothing counted twice.
    let dead_lettered = want_dlq.len() as u64;
    eprintln!(
        "published {RECORDS}: {trades_in_bars} in {} closed bars + {in_open_windows} in open windows + \
         {dead_lettered} dead-lettered ({dlq_copies} replayed copies); {} feature vectors; kinds {kinds:?}",
        closed.len(),
        want_features.len()
    );
    assert_eq!(trades_in_bars + in_open_windows + dead_lettered, RECORDS);

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
    let mut replay = replay;
    for s in [
        &mut normalize,
        &mut enrich,
        &mut aggregate,
        &mut consumer,
        &mut replay,
    ] {
        let status =
            tokio::task::block_in_place(|| s.terminate(Duration::from_secs(30))).expect("stops");
        assert!(
            status.success(),
            "{} exited with {status}: {}",
            s.name,
            s.log_tail()
        );
    }
    drop(broker);
}

/// Messages on the projected topics minus their distinct keys (symbol, bar start): how many
/// earlier versions a later message of the same key replaced.
async fn superseded_versions(brokers: &str, bars: &str, predictions: &str, outcomes: &str) -> i64 {
    let mut superseded = 0;
    for (topic, start_field) in [
        (bars, "start_ms"),
        (predictions, "bar_start_ms"),
        (outcomes, "bar_start_ms"),
    ] {
        let n = topic_messages(brokers, &[topic]);
        let messages = read(brokers, topic, n as usize, |_| true).await;
        let keys: HashSet<(String, i64)> = messages
            .iter()
            .map(|m| {
                let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("JSON record");
                (
                    v["symbol"].as_str().expect("symbol").to_owned(),
                    v[start_field].as_i64().expect("start"),
                )
            })
            .collect();
        superseded += messages.len() as i64 - keys.len() as i64;
    }
    superseded
}

/// tansu on a port of its own, advertised at a proxy in front of it, so the test can take
/// the broker away from every client at once and give it back with its data.
struct PrivateBroker {
    proxy: Proxy,
    child: std::process::Child,
}

impl PrivateBroker {
    async fn start() -> Self {
        let port = tidewatch_e2e::free_port();
        let target: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let proxy = Proxy::start(target).await.expect("broker proxy");
        let log = std::fs::File::create(
            std::env::temp_dir().join(format!("tidewatch-e2e-tansu-{}.log", std::process::id())),
        )
        .expect("tansu log");
        let child =
            std::process::Command::new(std::env::var("TANSU").unwrap_or_else(|_| "tansu".into()))
                .args([
                    "broker",
                    "--listener-url",
                    &format!("tcp://127.0.0.1:{port}"),
                    "--advertised-listener-url",
                    &format!("tcp://{}", proxy.addr),
                ])
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("tansu starts (scripts/test puts it on PATH)");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(target).await.is_err() {
            assert!(std::time::Instant::now() < deadline, "tansu did not listen");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { proxy, child }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sum of the samples of `name` whose labels include all of `labels` (text exposition).
fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

/// Messages in `topics` now (sum of high minus low watermarks).
fn topic_messages(brokers: &str, topics: &[&str]) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    let mut total = 0;
    for t in metadata
        .topics()
        .iter()
        .filter(|t| topics.contains(&t.name()))
    {
        for p in t.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(t.name(), p.id(), Duration::from_secs(10))
                .expect("watermarks");
            total += high - low;
        }
    }
    total
}
