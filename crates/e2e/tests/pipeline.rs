//! The streaming pipeline end to end, on the real broker and PostgreSQL started by
//! `scripts/test`: the seeded generator publishes a fixed number of records (bad, late,
//! unknown-symbol and anomalous ones planted) through normalize, enrich and aggregate, which
//! run as processes; aggregate and normalize are SIGKILLed and restarted mid-stream.
//!
//! The test then recomputes every bar and every feature vector independently from what the
//! generator published and finds them equal to what aggregate wrote, finds exactly the
//! planted bad and late records in the dead-letter topic, each with its reason, and accounts
//! for every record: published = in closed bars + in still-open windows + dead-lettered.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use tidewatch_e2e::{env_var, Service};
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
    topic: &str,
    want: usize,
    keep: impl Fn(&ReadMessage) -> bool + Send + 'static,
) -> Vec<ReadMessage> {
    read_topic_async(
        env_var("TIDEWATCH_KAFKA_BROKERS"),
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
    let brokers = env_var("TIDEWATCH_KAFKA_BROKERS");
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
    let enrich = Service::start(
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
    let consumer = Service::start(
        "prediction-consumer",
        &[
            "--input-topic",
            &features,
            "--output-topic",
            &predictions,
            "--group-id",
            &group("consumer"),
            "--group-instance-id",
            "consumer-0",
            "--model",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../models/volatility-spike.json"
            ),
        ],
        &env,
    )
    .expect("prediction-consumer starts");
    for s in [&normalize, &enrich, &aggregate, &consumer] {
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
            "4000",
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
    // Crash two stages mid-stream (the generator needs about six seconds).
    tokio::time::sleep(Duration::from_secs(2)).await;
    aggregate.restart_after_kill().expect("aggregate restarts");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    normalize.restart_after_kill().expect("normalize restarts");
    let status = tokio::task::block_in_place(|| generator.wait_exit(Duration::from_secs(120)))
        .expect("generator exits");
    assert!(
        status.success(),
        "generator failed: {}",
        generator.log_tail()
    );

    // What was published, and what it must become.
    let published = read(&raw, RECORDS as usize, |_| true).await;
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
    let got_bars = read(&bars, closed.len(), |_| true).await;
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
    assert_eq!(
        got_keys, want_keys,
        "exactly the closed windows became bars"
    );
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
    let got_features = read(&features, want_features.len(), |_| true).await;
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
    let got_predictions = read(&predictions, want_features.len(), |_| true).await;
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

    // Dead letters of this run: exactly the planted ones, each once, with code and reason.
    let sources: HashSet<String> = [raw.clone(), normalized.clone(), enriched.clone()].into();
    let dead = read(DLQ_TOPIC, want_dlq.len(), move |m| {
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
    ] {
        let text = stage.metrics().await.expect("metrics");
        for m in catalog::ALL.iter().filter(|m| groups.contains(&m.group)) {
            assert!(
                text.contains(m.name),
                "{} does not expose {}",
                stage.name,
                m.name
            );
        }
    }
    let restarted = aggregate.metrics().await.expect("metrics");
    assert!(
        restarted.contains("tidewatch_replayed_messages_total"),
        "aggregate restored state by replay"
    );

    // SIGTERM drains, commits and exits 0.
    for s in [&mut normalize, &mut aggregate] {
        let status =
            tokio::task::block_in_place(|| s.terminate(Duration::from_secs(30))).expect("stops");
        assert!(status.success(), "{} exited with {status}", s.name);
    }
    drop((enrich, consumer));
}
