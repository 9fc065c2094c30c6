//! Champion and challenger on live outcomes, end to end: prediction-consumer as a process on
//! the real broker and PostgreSQL (its model registry), fed the simulated market held
//! turbulent, one feature vector per symbol and minute.
//!
//! - A challenger trained on stored-style bars of a turbulent market (another seed) is judged
//!   beside the committed champion on the same outcomes, wins by the margin and is promoted;
//!   the consumer serves it without a restart (its predictions carry the new version) and,
//!   judged on the next outcomes beside the old champion, its F1 is above the old one's. The
//!   prediction API, following the same registry, serves it too (`GET /v1/model` says
//!   version 2 and since when) without a restart.
//! - A bad challenger (the committed model with its weights negated) is rejected, never
//!   promoted.
//! - A bad champion (promoted by hand) falls behind the previous champion and is rolled back.
//! - The whole loop with the trainer: drift seen by the consumer, retraining on the stored
//!   bars of the new regime, promotion on live outcomes, serving without a restart.

use std::time::{Duration, Instant};

use tidewatch_db::registry::{Alias, Documents, NewVersion, Registry};
use tidewatch_e2e::{env_var, metric, store_bars, Service};
use tidewatch_kafka::{Producer, Record};
use tidewatch_market_sim::{Market, MarketConfig, Regime};
use tidewatch_model::features::{Bar, FeatureBuilder};
use tidewatch_model::profile::ReferenceProfile;
use tidewatch_model::train::{train_on_bars, BarsConfig, TrainConfig};
use tidewatch_model::ModelArtifact;
use tidewatch_schema::FeatureRecord;

/// Judgements before a decision (and the window scores are compared over).
const JUDGEMENTS: usize = 600;
const MARGIN: f64 = 0.01;

fn committed(file: &str) -> String {
    format!("{}/../../models/{file}", env!("CARGO_MANIFEST_DIR"))
}

/// The seeded market, held in a regime or not: each symbol's bars, and features as
/// aggregate publishes them (their bars kept for storing as project would).
struct HeldMarket {
    market: Market,
    builders: Vec<(String, FeatureBuilder)>,
    /// Bars of the features made since the last `take_bars`.
    bars: Vec<(String, Vec<Bar>)>,
}

impl HeldMarket {
    fn new(seed: u64, regime: Option<Regime>) -> Self {
        let mut market = Market::new(&MarketConfig::new(seed));
        market.hold_regime(regime);
        Self {
            market,
            builders: Vec::new(),
            bars: Vec::new(),
        }
    }

    fn take_bars(&mut self) -> Vec<(String, Vec<Bar>)> {
        std::mem::take(&mut self.bars)
    }

    fn minute(&mut self) -> Vec<(String, Bar)> {
        let start = self.market.now_ms();
        let mut bars: Vec<(String, Bar)> = Vec::new();
        for t in self.market.next_minute() {
            match bars.iter_mut().find(|(s, _)| s == t.symbol) {
                Some((_, b)) => b.add(t.price, t.size),
                None => bars.push((t.symbol.to_owned(), Bar::open_at(start, t.price, t.size))),
            }
        }
        bars.sort_by(|a, b| a.0.cmp(&b.0));
        bars
    }

    fn bars(&mut self, minutes: usize) -> Vec<(String, Vec<Bar>)> {
        let mut series: Vec<(String, Vec<Bar>)> = Vec::new();
        for _ in 0..minutes {
            for (symbol, bar) in self.minute() {
                match series.iter_mut().find(|(s, _)| *s == symbol) {
                    Some((_, b)) => b.push(bar),
                    None => series.push((symbol, vec![bar])),
                }
            }
        }
        series
    }

    fn features(&mut self, minutes: usize) -> Vec<FeatureRecord> {
        let mut out = Vec::new();
        for _ in 0..minutes {
            for (symbol, bar) in self.minute() {
                match self.bars.iter_mut().find(|(s, _)| *s == symbol) {
                    Some((_, b)) => b.push(bar),
                    None => self.bars.push((symbol.clone(), vec![bar])),
                }
                let builder = match self.builders.iter().position(|(s, _)| *s == symbol) {
                    Some(i) => &mut self.builders[i].1,
                    None => {
                        self.builders.push((symbol.clone(), FeatureBuilder::new()));
                        &mut self.builders.last_mut().expect("pushed").1
                    }
                };
                if let Some(features) = builder.push(&bar) {
                    out.push(FeatureRecord {
                        symbol,
                        interval_seconds: 60,
                        bar_start_ms: bar.start_ms,
                        bar_end_ms: bar.start_ms + 60_000,
                        close: bar.close,
                        features,
                    });
                }
            }
        }
        out
    }
}

/// A model trained on 1,000 minutes of a turbulent market (seed 7), with its profile.
fn retrained() -> (ModelArtifact, ReferenceProfile) {
    let series = HeldMarket::new(7, Some(Regime::Turbulent)).bars(1_000);
    let config = BarsConfig::like(&TrainConfig::default(), "x".into(), "test".into());
    train_on_bars(&series, &config).expect("trains")
}

fn committed_profile() -> ReferenceProfile {
    let text =
        std::fs::read_to_string(committed("volatility-spike.profile.json")).expect("profile");
    ReferenceProfile::from_json(&text).expect("valid")
}

/// The committed model with its weights negated: it predicts spikes where there are none.
fn inverted() -> ModelArtifact {
    let text = std::fs::read_to_string(committed("volatility-spike.json")).expect("model");
    let mut a = ModelArtifact::from_json(&text).expect("valid");
    for w in &mut a.weights {
        *w = -*w;
    }
    a.intercept = -a.intercept;
    a
}

/// Registers `artifact` with `profile` as the next version (numbered n.0.0) and, with
/// `challenger`, makes it the challenger.
async fn register(
    registry: &Registry,
    (artifact, mut profile): (ModelArtifact, ReferenceProfile),
    challenger: bool,
) -> i32 {
    registry
        .register_next(
            &NewVersion {
                name: &artifact.name,
                training_command: "test",
                data_window: None,
                created_by: "test",
            },
            |n| {
                let mut a = artifact.clone();
                a.version = format!("{n}.0.0");
                profile.model_version = a.version.clone();
                Ok(Documents {
                    artifact: a.to_json(),
                    heldout: serde_json::to_string(&a.heldout)?,
                    reference_profile: profile.to_json(),
                })
            },
            challenger.then_some("test challenger"),
        )
        .await
        .expect("register")
}

struct Setup {
    brokers: String,
    database: String,
    topic: String,
    registry: Registry,
    consumer: Service,
    producer: Producer,
    market: HeldMarket,
}

impl Setup {
    /// A fresh database (migrated, seeded by the consumer) and a consumer on new topics;
    /// `before` registers versions before the consumer starts.
    async fn start(name: &str) -> Self {
        let brokers = env_var("TIDEWATCH_KAFKA_BROKERS");
        let database = tidewatch_e2e::fresh_database(name).await.expect("database");
        let pool = sqlx::PgPool::connect(&database).await.expect("connect");
        tidewatch_db::MIGRATOR.run(&pool).await.expect("migrations");
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos();
        let topic = format!("{name}-{run}-features");
        tidewatch_kafka::ensure_topics(&brokers, &[&topic], 1)
            .await
            .expect("topic");
        let consumer = Service::start(
            "prediction-consumer",
            &[
                "--input-topic",
                &topic,
                "--output-topic",
                &format!("{name}-{run}-predictions"),
                "--outcomes-topic",
                &format!("{name}-{run}-outcomes"),
                "--group-id",
                &format!("{name}-{run}"),
                "--model",
                &committed("volatility-spike.json"),
                "--reference-profile",
                &committed("volatility-spike.profile.json"),
                "--registry-poll-seconds",
                "1",
                "--promotion-min-judgements",
                &JUDGEMENTS.to_string(),
                "--promotion-margin",
                &MARGIN.to_string(),
                "--feature-drift-window",
                &JUDGEMENTS.to_string(),
                "--feature-drift-min-samples",
                &JUDGEMENTS.to_string(),
            ],
            &[
                ("KAFKA_BROKERS", brokers.as_str()),
                ("KAFKA_TOPIC_PARTITIONS", "1"),
                ("DATABASE_URL", database.as_str()),
            ],
        )
        .expect("consumer starts");
        consumer
            .wait_ready(Duration::from_secs(90))
            .await
            .expect("ready");
        let producer = Producer::new(&brokers, name).expect("producer");
        Self {
            brokers,
            database,
            topic,
            registry: Registry::new(pool),
            consumer,
            producer,
            market: HeldMarket::new(8, Some(Regime::Turbulent)),
        }
    }

    async fn publish(&mut self, minutes: usize) {
        let records = self.market.features(minutes);
        let sends: Vec<_> = records
            .iter()
            .map(|f| {
                self.producer
                    .send(&Record::json(&self.topic, &f.symbol, f).expect("encode"))
            })
            .collect();
        for s in sends {
            s.await.expect("delivered");
        }
    }

    async fn metrics(&self) -> String {
        self.consumer.metrics().await.unwrap_or_default()
    }

    /// Waits until the consumer's metrics satisfy `ok`.
    async fn wait_metrics(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let text = self.metrics().await;
            if ok(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{what} not within 120 s; broker {}; log:\n{}",
                self.brokers,
                self.consumer.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn champion(&self) -> i32 {
        self.registry
            .alias(Alias::Champion)
            .await
            .expect("read")
            .expect("a champion")
            .version
    }
}

fn role(text: &str, role: &str) -> Option<f64> {
    metric(
        text,
        "tidewatch_model_registry_alias_version",
        &[("alias", role)],
    )
}

fn decisions(text: &str, decision: &str) -> f64 {
    metric(
        text,
        "tidewatch_model_decisions_total",
        &[("decision", decision)],
    )
    .unwrap_or(0.0)
}

fn f1(text: &str, role: &str) -> f64 {
    metric(
        text,
        "tidewatch_model_role_rolling_score",
        &[("role", role), ("metric", "f1")],
    )
    .unwrap_or(f64::NAN)
}

/// Minutes of six symbols' vectors that give `JUDGEMENTS` judgements past warm-up.
const PHASE_MINUTES: usize = JUDGEMENTS / 6 + 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrained_challenger_wins_on_live_outcomes_and_serves_without_a_restart() {
    let mut s = Setup::start("champion").await;
    assert_eq!(
        s.champion().await,
        1,
        "the consumer seeded the committed model"
    );
    // The prediction API follows the same registry.
    let api = Service::start(
        "prediction-api",
        &[
            "--model",
            &committed("volatility-spike.json"),
            "--registry-poll-seconds",
            "1",
        ],
        &[("DATABASE_URL", s.database.as_str())],
    )
    .expect("api starts");
    api.wait_ready(Duration::from_secs(60))
        .await
        .expect("ready");
    let model_info = || async {
        reqwest::get(api.url("/v1/model"))
            .await
            .expect("GET /v1/model")
            .json::<serde_json::Value>()
            .await
            .expect("json")
    };
    let before = model_info().await;
    assert_eq!(
        (&before["version"], &before["registry_version"]),
        (&serde_json::json!("1.0.0"), &serde_json::json!(1)),
        "{before}"
    );
    let v2 = register(&s.registry, retrained(), true).await;
    s.wait_metrics("the challenger loaded", |t| {
        role(t, "challenger") == Some(f64::from(v2))
    })
    .await;

    s.publish(PHASE_MINUTES).await;
    let text = s
        .wait_metrics("a promotion", |t| {
            role(t, "champion") == Some(f64::from(v2))
        })
        .await;
    assert_eq!(decisions(&text, "promoted"), 1.0);
    assert_eq!(s.champion().await, v2);
    let moves = s.registry.moves().await.expect("moves");
    let promotion = moves
        .iter()
        .find(|m| m.alias == "champion" && m.to_version == Some(v2))
        .expect("an audit row");
    assert_eq!(promotion.actor, "prediction-consumer");
    assert!(
        promotion.reason.contains("beat champion 1"),
        "{}",
        promotion.reason
    );
    eprintln!("promotion: {}", promotion.reason);
    assert_eq!(role(&text, "previous"), Some(1.0));

    // The API serves version 2 within its poll, without a restart.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let info = model_info().await;
        if info["registry_version"] == 2 {
            break info;
        }
        assert!(Instant::now() < deadline, "the API still serves {info}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(after["version"], "2.0.0", "{after}");
    assert!(
        after["serving_since"].as_str() > before["serving_since"].as_str(),
        "{before} then {after}"
    );
    let features = s.market.features(1).pop().expect("a vector");
    let answer: serde_json::Value = reqwest::Client::new()
        .post(api.url("/v1/predict"))
        .json(&serde_json::json!({"symbol": features.symbol, "features": features.features}))
        .send()
        .await
        .expect("predict")
        .json()
        .await
        .expect("json");
    assert_eq!(answer["model_version"], "2.0.0", "{answer}");

    // Served without a restart: the next predictions carry version 2.0.0, and the old
    // champion is judged beside it on the same outcomes.
    let judged_before = metric(
        &text,
        "tidewatch_prediction_outcomes_total",
        &[("variant", "ml"), ("outcome", "true_positive")],
    );
    s.publish(PHASE_MINUTES).await;
    let text = s
        .wait_metrics("predictions by the new champion, judged", |t| {
            metric(
                t,
                "tidewatch_predictions_total",
                &[("model", "2.0.0"), ("variant", "ml"), ("outcome", "spike")],
            )
            .is_some_and(|n| n > 0.0)
                && metric(
                    t,
                    "tidewatch_prediction_outcomes_total",
                    &[("variant", "ml"), ("outcome", "true_positive")],
                ) > judged_before
                && decisions(t, "rolled_back") == 0.0
                && f1(t, "champion") > 0.0
        })
        .await;
    // Let the second phase's judgements all land.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let text = if s.metrics().await.is_empty() {
        text
    } else {
        s.metrics().await
    };
    let (new, old) = (f1(&text, "champion"), f1(&text, "previous"));
    eprintln!("F1 over the last {JUDGEMENTS} outcomes after promotion: served (v2) {new:.4}, old champion (v1) {old:.4}");
    assert!(new > old, "served {new} vs old {old}");
    assert_eq!(decisions(&text, "rolled_back"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_challenger_is_rejected_and_never_promoted() {
    let mut s = Setup::start("challenger_bad").await;
    let v2 = register(&s.registry, (inverted(), committed_profile()), true).await;
    s.wait_metrics("the challenger loaded", |t| {
        role(t, "challenger") == Some(f64::from(v2))
    })
    .await;
    s.publish(PHASE_MINUTES).await;
    let text = s
        .wait_metrics("a rejection", |t| decisions(t, "rejected") == 1.0)
        .await;
    assert_eq!(decisions(&text, "promoted"), 0.0);
    assert_eq!(s.champion().await, 1);
    let text = s
        .wait_metrics("the challenger cleared", |t| {
            role(t, "challenger") == Some(0.0)
        })
        .await;
    assert_eq!(role(&text, "champion"), Some(1.0));
    let moves = s.registry.moves().await.expect("moves");
    let last = moves.last().expect("moves");
    assert_eq!(
        (
            last.alias.as_str(),
            last.from_version,
            last.to_version,
            last.actor.as_str()
        ),
        ("challenger", Some(v2), None, "prediction-consumer")
    );
    // Judged worse on the outcomes (its training data is also the committed model's, which
    // the turbulent market has drifted from: either reason rejects it).
    assert!(
        last.reason.starts_with("challenger 2 F1") || last.reason.contains("dataset drift"),
        "{}",
        last.reason
    );
    eprintln!("rejection: {}", last.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_champion_that_falls_behind_the_previous_one_is_rolled_back() {
    let mut s = Setup::start("champion_rollback").await;
    let v2 = register(&s.registry, (inverted(), committed_profile()), true).await;
    s.registry
        .promote_challenger("operator", "promoted by hand, unjudged")
        .await
        .expect("promote");
    s.wait_metrics("the new champion served", |t| {
        role(t, "champion") == Some(f64::from(v2)) && role(t, "previous") == Some(1.0)
    })
    .await;
    s.publish(PHASE_MINUTES).await;
    let text = s
        .wait_metrics("a rollback", |t| role(t, "champion") == Some(1.0))
        .await;
    assert_eq!(decisions(&text, "rolled_back"), 1.0);
    assert_eq!(s.champion().await, 1);
    let last = s.registry.moves().await.expect("moves");
    let last = last.last().expect("moves");
    assert_eq!(
        (last.from_version, last.to_version, last.actor.as_str()),
        (Some(v2), Some(1), "prediction-consumer")
    );
    assert!(
        last.reason.starts_with("rollback: champion 2 F1"),
        "{}",
        last.reason
    );
    assert_eq!(
        s.registry.previous_champion().await.expect("read"),
        None,
        "the version rolled back from is no rollback target"
    );
}

/// The whole loop, with nothing registered by hand: the market runs unforced, then is held
/// turbulent. The consumer's per-feature drift (against the committed model's training
/// data) and its error-stream detectors see it; the trainer, reading the consumer's drift
/// report, retrains on the stored bars of the turbulent hours and registers a challenger;
/// the consumer judges it on live outcomes and promotes it; consumer and API serve it
/// without a restart; on the next outcomes it beats the old champion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_retraining_promotion_and_serving_close_the_loop() {
    let mut s = Setup::start("lifecycle").await;
    s.market = HeldMarket::new(21, None);
    let pool = sqlx::PgPool::connect(&s.database).await.expect("connect");
    let trainer = Service::start(
        "trainer",
        &[
            "--model",
            &committed("volatility-spike.json"),
            "--reference-profile",
            &committed("volatility-spike.profile.json"),
            "--train-every-seconds",
            "0",
            "--train-window-minutes",
            "600",
            "--drift-report-url",
            &s.consumer.url("/v1/drift/report"),
            "--drift-poll-seconds",
            "1",
            "--drift-persist-seconds",
            "3",
        ],
        &[("DATABASE_URL", s.database.as_str())],
    )
    .expect("trainer starts");
    let api = Service::start(
        "prediction-api",
        &[
            "--model",
            &committed("volatility-spike.json"),
            "--registry-poll-seconds",
            "1",
        ],
        &[("DATABASE_URL", s.database.as_str())],
    )
    .expect("api starts");
    for service in [&trainer, &api] {
        service
            .wait_ready(Duration::from_secs(60))
            .await
            .expect("ready");
    }
    let report_url = s.consumer.url("/v1/drift/report");
    let report = || async {
        reqwest::get(&report_url)
            .await
            .expect("report")
            .json::<serde_json::Value>()
            .await
            .expect("json")
    };

    // Unforced: a full drift window, no dataset drift, nothing trained.
    s.publish(150).await;
    store_bars(&pool, &s.market.take_bars()).await;
    let text = s
        .wait_metrics("a full drift window", |t| {
            metric(t, "tidewatch_feature_drift_window_vectors", &[]) == Some(JUDGEMENTS as f64)
        })
        .await;
    let calm = report().await;
    assert_eq!(calm["dataset_drift"], false, "{calm}");
    let ddm_before = metric(
        &text,
        "tidewatch_drift_events_total",
        &[("detector", "ddm"), ("level", "drift")],
    )
    .unwrap_or(0.0);

    // Held turbulent: ten hours of bars stored and features published.
    s.market.market.hold_regime(Some(Regime::Turbulent));
    s.publish(600).await;
    store_bars(&pool, &s.market.take_bars()).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let trained = loop {
        let status: serde_json::Value = reqwest::get(trainer.url("/v1/status"))
            .await
            .expect("status")
            .json()
            .await
            .expect("json");
        if status["training"]["last_success"]["version"] == 2 {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "no drift-triggered training; status {status}\n{}",
            trainer.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        trained["training"]["last_success"]["trigger"], "drift",
        "{trained}"
    );
    let drifted = report().await;
    assert_eq!(drifted["dataset_drift"], true, "{drifted}");
    let text = s.metrics().await;
    let psi = |feature| {
        metric(
            &text,
            "tidewatch_feature_drift",
            &[("feature", feature), ("statistic", "psi")],
        )
        .unwrap_or(0.0)
    };
    let drifted_features: Vec<&str> = tidewatch_model::FEATURE_NAMES
        .iter()
        .copied()
        .filter(|f| psi(f) >= 0.25)
        .collect();
    assert!(
        !drifted_features.is_empty(),
        "FeatureDrift's condition (PSI >= 0.25) holds"
    );
    let ddm_after = metric(
        &text,
        "tidewatch_drift_events_total",
        &[("detector", "ddm"), ("level", "drift")],
    )
    .unwrap_or(0.0);
    assert!(
        ddm_after > ddm_before,
        "DriftDetected's condition: DDM signalled drift"
    );
    eprintln!(
        "drift: features {drifted_features:?} at PSI >= 0.25, DDM drift signals {ddm_before} -> {ddm_after}; trained version 2 on {} bars in {:.3} s (held-out F1 {})",
        trained["training"]["last_success"]["bars"],
        trained["training"]["last_success"]["duration_seconds"].as_f64().unwrap_or(0.0),
        trained["training"]["last_success"]["heldout"]["ml"]["f1"]
    );

    // Judged on live outcomes, promoted, served by consumer and API.
    s.wait_metrics("the challenger loaded", |t| {
        role(t, "challenger") == Some(2.0)
    })
    .await;
    s.publish(PHASE_MINUTES).await;
    let text = s
        .wait_metrics("a promotion", |t| role(t, "champion") == Some(2.0))
        .await;
    assert_eq!(decisions(&text, "promoted"), 1.0);
    let moves = s.registry.moves().await.expect("moves");
    let promotion = moves
        .iter()
        .find(|m| m.alias == "champion" && m.to_version == Some(2))
        .expect("an audit row");
    eprintln!("promotion: {}", promotion.reason);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info: serde_json::Value = reqwest::get(api.url("/v1/model"))
            .await
            .expect("model")
            .json()
            .await
            .expect("json");
        if info["registry_version"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the API still serves {info}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.publish(PHASE_MINUTES).await;
    let text = s
        .wait_metrics("the new champion judged", |t| {
            metric(
                t,
                "tidewatch_predictions_total",
                &[("model", "2.0.0"), ("variant", "ml"), ("outcome", "spike")],
            )
            .is_some_and(|n| n > 0.0)
        })
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let text = Some(s.metrics().await)
        .filter(|t| !t.is_empty())
        .unwrap_or(text);
    let (new, old) = (f1(&text, "champion"), f1(&text, "previous"));
    eprintln!("F1 over the last {JUDGEMENTS} outcomes after promotion: served (v2) {new:.4}, old champion (v1) {old:.4}");
    assert!(new > old, "served {new} vs old {old}");
}
