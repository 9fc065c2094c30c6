//! The trainer as a process on a real PostgreSQL, fed by a real prediction consumer on the
//! broker. Fifteen hours of the simulated market's bars are stored (five calm, then ten
//! held turbulent); the turbulent hours' features go to the consumer, whose per-feature
//! drift report (against the committed model's training data) says dataset drift. The
//! trainer, started on an empty registry, seeds the committed model as version 1 and
//! champion, sees the drift persist, retrains on the stored bars of its window (turbulent
//! only) and registers version 2 as challenger, with the data window, scores and profile
//! it trained on; an admin request trains version 3. A trainer on a database without bars
//! runs on schedule and counts each run as insufficient data, registering nothing. After a
//! restart the last success time is the registry's.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tidewatch_db::registry::{Alias, Registry};
use tidewatch_e2e::{env_var, metric, store_bars, Service};
use tidewatch_kafka::{Producer, Record};
use tidewatch_market_sim::{Market, MarketConfig, Regime};
use tidewatch_model::features::{Bar, FeatureBuilder};
use tidewatch_model::profile::ReferenceProfile;
use tidewatch_model::train::{train_on_bars, BarsConfig, TrainConfig};
use tidewatch_model::ModelArtifact;
use tidewatch_schema::FeatureRecord;

const CALM_MINUTES: usize = 300;
const MINUTES: usize = 900;
/// What the trainer is told to train on: the newest 500 minutes, all turbulent.
const TRAIN_WINDOW: usize = 500;
const TOKEN: &str = "trainer-test-token";

fn committed(file: &str) -> String {
    format!("{}/../../models/{file}", env!("CARGO_MANIFEST_DIR"))
}

/// Every symbol's bars, and the features of the turbulent minutes.
fn market() -> (Vec<(String, Vec<Bar>)>, Vec<FeatureRecord>) {
    let mut market = Market::new(&MarketConfig::new(11));
    market.hold_regime(Some(Regime::Calm));
    let mut series: Vec<(String, Vec<Bar>)> = Vec::new();
    let mut builders: HashMap<String, FeatureBuilder> = HashMap::new();
    let mut features = Vec::new();
    for minute in 0..MINUTES {
        if minute == CALM_MINUTES {
            market.hold_regime(Some(Regime::Turbulent));
        }
        let start = market.now_ms();
        let mut bars: Vec<(&str, Bar)> = Vec::new();
        for t in market.next_minute() {
            match bars.iter_mut().find(|(s, _)| *s == t.symbol) {
                Some((_, b)) => b.add(t.price, t.size),
                None => bars.push((t.symbol, Bar::open_at(start, t.price, t.size))),
            }
        }
        bars.sort_by(|a, b| a.0.cmp(b.0));
        for (symbol, bar) in bars {
            match series.iter_mut().find(|(s, _)| s == symbol) {
                Some((_, b)) => b.push(bar),
                None => series.push((symbol.to_owned(), vec![bar])),
            }
            let f = builders.entry(symbol.to_owned()).or_default().push(&bar);
            if let (Some(f), true) = (f, minute >= CALM_MINUTES) {
                features.push(FeatureRecord {
                    symbol: symbol.to_owned(),
                    interval_seconds: 60,
                    bar_start_ms: start,
                    bar_end_ms: start + 60_000,
                    close: bar.close,
                    features: f,
                });
            }
        }
    }
    series.sort_by(|a, b| a.0.cmp(&b.0));
    (series, features)
}

async fn status(trainer: &Service) -> serde_json::Value {
    reqwest::get(trainer.url("/v1/status"))
        .await
        .expect("status")
        .json()
        .await
        .expect("json")
}

/// Waits until the trainer has finished `runs` runs; the status then.
async fn wait_runs(trainer: &Service, runs: u64, timeout: Duration) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let s = status(trainer).await;
        if s["training"]["runs"].as_u64() >= Some(runs) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{runs} runs not done in {timeout:?}; status {s}\nlog:\n{}",
            trainer.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_retrains_on_stored_bars_and_registers_a_challenger() {
    let brokers = env_var("TIDEWATCH_KAFKA_BROKERS");
    let database = tidewatch_e2e::fresh_database("trainer")
        .await
        .expect("database");
    let pool = sqlx::PgPool::connect(&database).await.expect("connect");
    tidewatch_db::MIGRATOR.run(&pool).await.expect("migrations");
    let (series, features) = market();
    store_bars(&pool, &series).await;

    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let topic = format!("trainer-{run}-features");
    tidewatch_kafka::ensure_topics(&brokers, &[&topic], 1)
        .await
        .expect("topic");
    let model = committed("volatility-spike.json");
    let profile = committed("volatility-spike.profile.json");
    let consumer = Service::start(
        "prediction-consumer",
        &[
            "--input-topic",
            &topic,
            "--output-topic",
            &format!("trainer-{run}-predictions"),
            "--outcomes-topic",
            &format!("trainer-{run}-outcomes"),
            "--group-id",
            &format!("trainer-{run}-consumer"),
            "--model",
            &model,
            "--reference-profile",
            &profile,
            "--feature-drift-window",
            "300",
            "--feature-drift-min-samples",
            "300",
        ],
        &[
            ("KAFKA_BROKERS", brokers.as_str()),
            ("KAFKA_TOPIC_PARTITIONS", "1"),
        ],
    )
    .expect("consumer starts");
    let mut trainer = Service::start(
        "trainer",
        &[
            "--model",
            &model,
            "--reference-profile",
            &profile,
            "--train-every-seconds",
            "0",
            "--train-window-minutes",
            &TRAIN_WINDOW.to_string(),
            "--drift-report-url",
            &consumer.url("/v1/drift/report"),
            "--drift-poll-seconds",
            "1",
            "--drift-persist-seconds",
            "3",
        ],
        &[("DATABASE_URL", database.as_str()), ("ADMIN_TOKEN", TOKEN)],
    )
    .expect("trainer starts");
    for s in [&consumer, &trainer] {
        s.wait_ready(Duration::from_secs(90)).await.expect("ready");
    }

    // Seeded at start: the committed model is version 1 and champion.
    let registry = Registry::new(pool.clone());
    let champion = registry
        .alias(Alias::Champion)
        .await
        .expect("read")
        .expect("seeded");
    assert_eq!(champion.version, 1);
    assert_eq!(champion.created_by, "seed");
    let before = status(&trainer).await;
    assert_eq!(before["training"]["runs"], 0, "nothing trains before drift");

    let producer = Producer::new(&brokers, "trainer-test").expect("producer");
    let sends: Vec<_> = features
        .iter()
        .map(|f| producer.send(&Record::json(&topic, &f.symbol, f).expect("encode")))
        .collect();
    for s in sends {
        s.await.expect("delivered");
    }

    let after = wait_runs(&trainer, 1, Duration::from_secs(120)).await;
    let last = &after["training"]["last_run"];
    assert_eq!(last["trigger"], "drift", "{after}");
    assert_eq!(last["status"], "success", "{after}");
    assert_eq!(last["version"], 2, "{after}");
    let drift: serde_json::Value = reqwest::get(consumer.url("/v1/drift/report"))
        .await
        .expect("report")
        .json()
        .await
        .expect("json");
    assert_eq!(drift["dataset_drift"], true, "{drift}");

    // Version 2 is the challenger, trained on the window's bars: the same training on the
    // same bars, done here, gives the same artifact and profile (numbered 2.0.0).
    let v2 = registry
        .alias(Alias::Challenger)
        .await
        .expect("read")
        .expect("a challenger");
    assert_eq!(v2.version, 2);
    assert_eq!(v2.created_by, "trainer");
    let newest = series
        .iter()
        .filter_map(|(_, b)| b.last())
        .map(|b| b.start_ms)
        .max()
        .expect("bars");
    let window_start = newest - TRAIN_WINDOW as i64 * 60_000;
    let windowed: Vec<(String, Vec<Bar>)> = series
        .iter()
        .map(|(s, b)| {
            let kept = b
                .iter()
                .filter(|b| b.start_ms >= window_start)
                .copied()
                .collect();
            (s.clone(), kept)
        })
        .collect();
    let first = windowed
        .iter()
        .filter_map(|(_, b)| b.first())
        .map(|b| b.start_ms)
        .min()
        .expect("bars");
    assert_eq!(
        (
            v2.data_start
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64),
            v2.data_end
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        ),
        (Some(first), Some(newest + 60_000)),
        "the data window is the bars trained on"
    );
    let stored = ModelArtifact::from_json(&v2.artifact).expect("a valid artifact");
    let config = BarsConfig::like(
        &TrainConfig::default(),
        "2.0.0".into(),
        v2.training_command.clone(),
    );
    let (expected, expected_profile) = train_on_bars(&windowed, &config).expect("trains");
    assert_eq!(stored, expected, "the registered artifact");
    let stored_profile = ReferenceProfile::from_json(&v2.reference_profile).expect("profile");
    assert_eq!(stored_profile.model_version, "2.0.0");
    assert_eq!(stored_profile, expected_profile);
    assert!(
        v2.training_command
            .starts_with("trainer (drift): stored 60 s bars from "),
        "{}",
        v2.training_command
    );

    let text = trainer.metrics().await.expect("metrics");
    let m = |name, labels: &[(&str, &str)]| metric(&text, name, labels);
    assert_eq!(
        m(
            "tidewatch_training_runs_total",
            &[("trigger", "drift"), ("status", "success")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m("tidewatch_training_samples", &[("set", "train")]),
        Some(expected.training.train_rows as f64)
    );
    assert_eq!(
        m(
            "tidewatch_training_heldout_score",
            &[("variant", "ml"), ("metric", "f1")]
        ),
        Some(expected.heldout.ml.f1)
    );
    assert!(m("tidewatch_training_last_success_timestamp_seconds", &[]).is_some());
    assert_eq!(
        m(
            "tidewatch_training_duration_seconds_count",
            &[("trigger", "drift")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m(
            "tidewatch_model_registry_alias_version",
            &[("alias", "challenger")]
        ),
        Some(2.0)
    );

    // On demand, behind the token.
    let client = reqwest::Client::new();
    let refused = client
        .post(trainer.url("/v1/admin/train"))
        .send()
        .await
        .expect("send");
    assert_eq!(refused.status(), 401);
    let accepted = client
        .post(trainer.url("/v1/admin/train"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("send");
    assert_eq!(accepted.status(), 202);
    let after = wait_runs(&trainer, 2, Duration::from_secs(60)).await;
    assert_eq!(
        after["training"]["last_run"]["trigger"], "manual",
        "{after}"
    );
    assert_eq!(after["training"]["last_run"]["version"], 3, "{after}");
    let moves = registry.moves().await.expect("moves");
    let challenger_moves: Vec<_> = moves
        .iter()
        .filter(|m| m.alias == "challenger")
        .map(|m| (m.from_version, m.to_version, m.actor.as_str()))
        .collect();
    assert_eq!(
        challenger_moves,
        [(None, Some(2), "trainer"), (Some(2), Some(3), "trainer")]
    );
    assert_eq!(
        registry
            .alias(Alias::Champion)
            .await
            .expect("read")
            .map(|v| v.version),
        Some(1),
        "the trainer never promotes"
    );

    // The last success is the registry's, so a restart does not forget it.
    let v3 = registry.version(3).await.expect("read").expect("version 3");
    trainer.restart_after_kill().expect("restart");
    trainer
        .wait_ready(Duration::from_secs(60))
        .await
        .expect("ready");
    let text = trainer.metrics().await.expect("metrics");
    let last = metric(
        &text,
        "tidewatch_training_last_success_timestamp_seconds",
        &[],
    )
    .expect("the last success after a restart");
    let created = v3.created_at.unix_timestamp_nanos() as f64 / 1e9;
    assert!((last - created).abs() < 1e-3, "{last} vs {created}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_stored_bars_a_scheduled_run_registers_nothing() {
    let database = tidewatch_e2e::fresh_database("trainer_empty")
        .await
        .expect("database");
    let trainer = Service::start(
        "trainer",
        &[
            "--model",
            &committed("volatility-spike.json"),
            "--reference-profile",
            &committed("volatility-spike.profile.json"),
            "--train-every-seconds",
            "1",
        ],
        &[("DATABASE_URL", database.as_str())],
    )
    .expect("trainer starts");
    trainer
        .wait_ready(Duration::from_secs(60))
        .await
        .expect("ready");
    let after = wait_runs(&trainer, 2, Duration::from_secs(30)).await;
    let last = &after["training"]["last_run"];
    assert_eq!(last["trigger"], "schedule", "{after}");
    assert_eq!(last["status"], "insufficient_data", "{after}");
    assert!(
        last["error"]
            .as_str()
            .is_some_and(|e| e.contains("0 training")),
        "{after}"
    );
    let text = trainer.metrics().await.expect("metrics");
    assert!(
        metric(
            &text,
            "tidewatch_training_runs_total",
            &[("trigger", "schedule"), ("status", "insufficient_data")]
        ) >= Some(2.0)
    );
    assert_eq!(
        metric(
            &text,
            "tidewatch_training_runs_total",
            &[("trigger", "schedule"), ("status", "success")]
        ),
        Some(0.0)
    );
    assert!(
        metric(
            &text,
            "tidewatch_training_last_success_timestamp_seconds",
            &[]
        )
        .is_none(),
        "no success, no timestamp"
    );
    let pool = sqlx::PgPool::connect(&database).await.expect("connect");
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM model_versions")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(versions, 1, "only the seeded version");
}
