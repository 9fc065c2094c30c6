//! What the pipeline tests share: the run's topics and groups, how each stage is started, a
//! broker behind a proxy, and the accounting that recomputes every bar, feature vector and
//! dead letter from what the generator published and compares it with the topics and
//! PostgreSQL.

#![allow(dead_code)] // each test binary uses its own part

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

pub use tidewatch_e2e::metric_sum;
use tidewatch_e2e::{Proxy, Service};
use tidewatch_kafka::dlq::{self, DLQ_TOPIC};
use tidewatch_kafka::inspect::{read_topic_async, ReadMessage};
use tidewatch_model::features::{Bar, FeatureBuilder};
use tidewatch_schema::{decode_raw, BarRecord, FeatureRecord, HEADER_SIM_KIND};

pub const WINDOW_MS: i64 = 60_000;
pub const LATENESS_MS: i64 = 10_000;

/// The stages downstream of the generator, in pipeline order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Normalize,
    Enrich,
    Aggregate,
    Consumer,
    Project,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Normalize,
        Stage::Enrich,
        Stage::Aggregate,
        Stage::Consumer,
        Stage::Project,
    ];

    pub fn binary(self) -> &'static str {
        match self {
            Stage::Normalize => "normalize",
            Stage::Enrich => "enrich",
            Stage::Aggregate => "aggregate",
            Stage::Consumer => "prediction-consumer",
            Stage::Project => "project",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Stage::Consumer => "consumer",
            other => other.binary(),
        }
    }
}

/// The topics and groups of one run, named after the run so runs never share them.
#[derive(Debug, Clone)]
pub struct Run {
    pub id: String,
    pub raw: String,
    pub normalized: String,
    pub enriched: String,
    pub bars: String,
    pub features: String,
    pub predictions: String,
    pub outcomes: String,
    /// project's PostgreSQL database.
    pub project_db: String,
    /// Whether instances join their groups as static members (`--group-instance-id`).
    pub static_members: bool,
}

impl Run {
    pub fn new(project_db: String) -> Self {
        let id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos()
            .to_string();
        let topic = |name: &str| format!("e2e-{id}-{name}");
        Self {
            raw: topic("raw"),
            normalized: topic("normalized"),
            enriched: topic("enriched"),
            bars: topic("bars"),
            features: topic("features"),
            predictions: topic("predictions"),
            outcomes: topic("outcomes"),
            project_db,
            static_members: true,
            id,
        }
    }

    pub fn group(&self, name: &str) -> String {
        format!("e2e-{}-{name}", self.id)
    }

    /// The arguments of `stage` as instance `instance` (a static member, as the stacks run
    /// it, unless the run says otherwise: a restarted instance takes its partitions back at
    /// once); project's group can be another (a replay).
    pub fn stage_args(&self, stage: Stage, instance: usize, project_group: &str) -> Vec<String> {
        let group = match stage {
            Stage::Project => project_group.to_owned(),
            other => self.group(other.short()),
        };
        let mut args: Vec<String> = match stage {
            Stage::Normalize => vec![
                "--input-topic".into(),
                self.raw.clone(),
                "--output-topic".into(),
                self.normalized.clone(),
            ],
            Stage::Enrich => vec![
                "--input-topic".into(),
                self.normalized.clone(),
                "--output-topic".into(),
                self.enriched.clone(),
            ],
            Stage::Aggregate => vec![
                "--input-topic".into(),
                self.enriched.clone(),
                "--bars-topic".into(),
                self.bars.clone(),
                "--features-topic".into(),
                self.features.clone(),
                "--allowed-lateness-seconds".into(),
                (LATENESS_MS / 1000).to_string(),
            ],
            Stage::Consumer => vec![
                "--input-topic".into(),
                self.features.clone(),
                "--output-topic".into(),
                self.predictions.clone(),
                "--outcomes-topic".into(),
                self.outcomes.clone(),
                "--model".into(),
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../../models/volatility-spike.json"
                )
                .into(),
                "--reference-profile".into(),
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../../models/volatility-spike.profile.json"
                )
                .into(),
                // Statistics (and their gauges) within a test's 60 vectors.
                "--feature-drift-window".into(),
                "40".into(),
                "--feature-drift-min-samples".into(),
                "40".into(),
            ],
            Stage::Project => vec![
                "--bars-topic".into(),
                self.bars.clone(),
                "--predictions-topic".into(),
                self.predictions.clone(),
                "--outcomes-topic".into(),
                self.outcomes.clone(),
                "--database-url".into(),
                self.project_db.clone(),
                "--batch-linger-ms".into(),
                "100".into(),
                "--retry-max-backoff-ms".into(),
                "1000".into(),
            ],
        };
        args.extend(["--group-id".into(), group]);
        if self.static_members {
            args.extend([
                "--group-instance-id".into(),
                format!("{}-{instance}", stage.short()),
            ]);
        }
        args
    }

    /// Starts instance `instance` of `stage`.
    pub fn start(&self, stage: Stage, instance: usize, env: &[(&str, &str)]) -> Service {
        self.start_in_group(stage, instance, &self.group("project"), env)
    }

    pub fn start_in_group(
        &self,
        stage: Stage,
        instance: usize,
        project_group: &str,
        env: &[(&str, &str)],
    ) -> Service {
        let args = self.stage_args(stage, instance, project_group);
        Service::start_instance(
            stage.binary(),
            &format!("{}-{instance}", stage.short()),
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            env,
        )
        .unwrap_or_else(|e| panic!("{} starts: {e:#}", stage.binary()))
    }

    /// The seeded generator publishing `records` records at `rate` per second, with bad,
    /// late, unknown-symbol and anomalous ones planted.
    pub fn start_generator(&self, records: u64, rate: u32, env: &[(&str, &str)]) -> Service {
        Service::start(
            "generator",
            &[
                "--output-topic",
                &self.raw,
                "--seed",
                "11",
                "--rate",
                &rate.to_string(),
                "--max-records",
                &records.to_string(),
                "--bad-fraction",
                "0.02",
                "--late-fraction",
                "0.01",
                "--anomaly-rate",
                "0.005",
            ],
            env,
        )
        .expect("generator starts")
    }
}

#[derive(Debug, Default)]
struct Expected {
    bar: Option<Bar>,
    notional: f64,
}

pub async fn read(
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

/// Reads `topic` until messages with `want` distinct identities arrived, or what arrived
/// within [`read`]'s timeout, each message decoded once by `decode` into its identity and
/// value. Replays after a crash repeat messages, so counting messages alone stops early: a
/// run whose restarted stage repeated ten bars would stop reading ten short of the newest
/// distinct ones, and take them for missing.
pub async fn read_distinct<K: Eq + std::hash::Hash, T>(
    brokers: &str,
    topic: &str,
    want: usize,
    decode: impl Fn(&ReadMessage) -> (K, T),
    keep: impl Fn(&ReadMessage) -> bool + Clone + Send + 'static,
) -> Vec<(ReadMessage, K, T)> {
    let mut ask = want;
    loop {
        let got: Vec<_> = read(brokers, topic, ask, keep.clone())
            .await
            .into_iter()
            .map(|m| {
                let (identity, value) = decode(&m);
                (m, identity, value)
            })
            .collect();
        let distinct = got.iter().map(|(_, k, _)| k).collect::<HashSet<_>>().len();
        // Fewer than asked for: the read timed out, and the caller's check says what is
        // missing.
        if distinct >= want || got.len() < ask {
            return got;
        }
        ask = got.len() + (want - distinct);
    }
}

pub fn close_enough(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// What [`account`] found, for the checks a test adds.
#[derive(Debug)]
pub struct Accounting {
    /// Bars and predictions PostgreSQL holds (one per closed window / feature vector).
    pub closed_windows: usize,
    pub feature_vectors: usize,
    pub pool: sqlx::PgPool,
}

/// What each service was doing, under its label, for a failure message: its `/health`
/// answer, the series that show where records stopped (received, sent, consumer lag by
/// partition, commits, rebalances) and its last log lines, librdkafka's connection chatter
/// (INFO) left out so that a broker outage does not push the service's own lines away.
pub async fn reports<'a>(services: impl IntoIterator<Item = &'a Service>) -> String {
    const SERIES: [&str; 5] = [
        "tidewatch_component_received_events_total",
        "tidewatch_component_sent_events_total",
        "tidewatch_kafka_consumer_lag_messages",
        "tidewatch_kafka_commits_total",
        "tidewatch_kafka_rebalances_total",
    ];
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("HTTP client");
    let mut out = Vec::new();
    for s in services {
        let health = match client.get(s.url("/health")).send().await {
            Ok(r) => r.text().await.unwrap_or_else(|e| e.to_string()),
            Err(e) => format!("unreachable: {e}"),
        };
        let metrics = async { client.get(s.url("/metrics")).send().await?.text().await };
        let series = match metrics.await {
            Ok(text) => text
                .lines()
                .filter(|l| {
                    SERIES
                        .iter()
                        .any(|n| l.strip_prefix(n).is_some_and(|r| r.starts_with(['{', ' '])))
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => format!("no metrics: {e}"),
        };
        let log = s.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                !(l.contains("\"target\":\"librdkafka\"") && l.contains("\"level\":\"INFO\""))
            })
            .collect();
        out.push(format!(
            "{} health: {health}\n{} series:\n{series}\n{} log:\n{}",
            s.label,
            s.label,
            s.label,
            lines[lines.len().saturating_sub(12)..].join("\n")
        ));
    }
    out.join("\n")
}

/// A dead letter's identity when it is of a raw record (one that never became a trade): its
/// position in the raw topic, as the expectation and the dead letter's headers both give it.
fn raw_identity(partition: impl std::fmt::Display, offset: impl std::fmt::Display) -> String {
    format!("raw:{partition}:{offset}")
}

/// Recomputes, from what the generator published (exactly `records` records), every bar,
/// feature vector and dead letter, and asserts that the topics and project's PostgreSQL
/// hold exactly those: every closed window once as a bar (a replayed bar identical), every
/// feature vector, a prediction for each, exactly the planted bad and late records in the
/// dead-letter topic with their reasons (a redelivered copy matched), and every published
/// record in a closed bar, an open window or the dead-letter topic. `logs` is shown when
/// bars are missing.
pub async fn account(brokers: &str, run: &Run, records: u64, logs: &[&Service]) -> Accounting {
    let published = read(brokers, &run.raw, records as usize, |_| true).await;
    assert_eq!(
        published.len() as u64,
        records,
        "the generator published exactly what it was asked to"
    );
    let mut kinds: HashMap<String, usize> = HashMap::new();
    let mut want_dlq: HashMap<String, &'static str> = HashMap::new();
    let mut windows: BTreeMap<(String, i64), Expected> = BTreeMap::new();
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    let mut newest: HashMap<i32, i64> = HashMap::new();
    // What each published record was planted as, by a dead letter's identity (below): for
    // a failure message that says what an unexpected dead letter was.
    let mut planted: HashMap<String, (String, i32, i64)> = HashMap::new();
    for m in &published {
        let kind = m
            .headers
            .get(HEADER_SIM_KIND)
            .cloned()
            .expect("kind header");
        *kinds.entry(kind.clone()).or_default() += 1;
        let decoded = decode_raw(&m.payload, 0);
        let identity = match &decoded {
            Ok(t) => t.trade_id.clone(),
            Err(_) => raw_identity(m.partition, m.offset),
        };
        planted.insert(identity, (kind.clone(), m.partition, m.offset));
        match kind.as_str() {
            "malformed" | "missing_field" | "out_of_range" => {
                let code = match kind.as_str() {
                    "malformed" => "malformed_record",
                    "missing_field" => "missing_price",
                    _ => "out_of_range",
                };
                assert!(decoded.is_err(), "{kind} record decodes");
                want_dlq.insert(raw_identity(m.partition, m.offset), code);
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
    let got_bars = read_distinct(
        brokers,
        &run.bars,
        closed.len(),
        |m| {
            let b: BarRecord = serde_json::from_slice(&m.payload).expect("bar record");
            ((b.symbol.clone(), b.start_ms), b)
        },
        |_| true,
    )
    .await;
    let bar_messages = got_bars.len();
    let mut by_key: HashMap<(String, i64), BarRecord> = HashMap::new();
    for (m, key, b) in got_bars {
        assert_eq!(
            m.key.as_deref(),
            Some(b.symbol.as_bytes()),
            "bars are keyed by symbol"
        );
        if let Some(previous) = by_key.get(&key) {
            assert_eq!(previous, &b, "a replayed bar is identical");
        }
        by_key.insert(key, b);
    }
    let got_keys: HashSet<_> = by_key.keys().cloned().collect();
    let want_keys: HashSet<_> = closed.keys().cloned().collect();
    if got_keys != want_keys {
        let missing: BTreeSet<_> = want_keys.difference(&got_keys).collect();
        let extra: BTreeSet<_> = got_keys.difference(&want_keys).collect();
        panic!(
            "exactly the closed windows became bars: {} missing {missing:?}, {} extra {extra:?}\n{}",
            missing.len(),
            extra.len(),
            reports(logs.iter().copied()).await
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
    let got_features = read_distinct(
        brokers,
        &run.features,
        want_features.len(),
        |m| {
            let f: FeatureRecord = serde_json::from_slice(&m.payload).expect("feature record");
            ((f.symbol.clone(), f.bar_start_ms), f)
        },
        |_| true,
    )
    .await;
    let mut features_by_key: HashMap<(String, i64), FeatureRecord> = HashMap::new();
    for (_, key, f) in got_features {
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
    let got_predictions = read_distinct(
        brokers,
        &run.predictions,
        want_features.len(),
        |m| {
            let p: tidewatch_schema::PredictionRecord =
                serde_json::from_slice(&m.payload).expect("prediction");
            ((p.symbol.clone(), p.bar_start_ms), p)
        },
        |_| true,
    )
    .await;
    let predicted: HashSet<(String, i64)> = got_predictions
        .into_iter()
        .map(|(_, key, p)| {
            assert!(
                (0.0..=1.0).contains(&p.probability) && (0.0..=1.0).contains(&p.online_probability)
            );
            key
        })
        .collect();
    assert_eq!(
        predicted,
        want_features.keys().cloned().collect::<HashSet<_>>(),
        "a prediction for every feature vector"
    );

    // PostgreSQL: every closed bar, equal to the recomputation, and a prediction per
    // feature vector.
    let pool = sqlx::PgPool::connect(&run.project_db)
        .await
        .expect("connect");
    let want_rows = closed.len() as i64;
    let deadline = Instant::now() + Duration::from_secs(120);
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
            Instant::now() < deadline,
            "PostgreSQL holds {bars_n}/{want_rows} bars and {predictions_n}/{} predictions\n{}",
            want_features.len(),
            reports(logs.iter().copied().filter(|s| s.name == "project")).await
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

    // Dead letters of this run: exactly the planted ones, each with code and reason.
    let sources: HashSet<String> = [
        run.raw.clone(),
        run.normalized.clone(),
        run.enriched.clone(),
    ]
    .into();
    // What a dead letter is of: a raw record's position, or a trade's id.
    let identity = |m: &ReadMessage| {
        let h = |name: &str| m.headers.get(name).cloned().unwrap_or_default();
        if h(dlq::HEADER_SOURCE_TOPIC) == run.raw {
            raw_identity(
                h(dlq::HEADER_SOURCE_PARTITION),
                h(dlq::HEADER_SOURCE_OFFSET),
            )
        } else {
            let trade: serde_json::Value =
                serde_json::from_slice(&m.payload).expect("dead trade is JSON");
            trade["trade_id"].as_str().expect("trade id").to_owned()
        }
    };
    let dead = read_distinct(
        brokers,
        DLQ_TOPIC,
        want_dlq.len(),
        |m| (identity(m), ()),
        move |m| {
            m.headers
                .get(dlq::HEADER_SOURCE_TOPIC)
                .is_some_and(|t| sources.contains(t))
        },
    )
    .await;
    let mut got_dlq: HashMap<String, String> = HashMap::new();
    let mut dlq_copies = 0;
    let mut where_from: HashMap<&str, &ReadMessage> = HashMap::new();
    for (m, identity, ()) in &dead {
        where_from.entry(identity.as_str()).or_insert(m);
        let h = |name: &str| m.headers.get(name).cloned().unwrap_or_default();
        assert!(
            !h(dlq::HEADER_ERROR_REASON).is_empty(),
            "every dead letter has a reason"
        );
        let code = h(dlq::HEADER_ERROR_CODE);
        if let Some(previous) = got_dlq.insert(identity.clone(), code.clone()) {
            assert_eq!(
                previous, code,
                "a redelivered dead letter of {identity} says the same"
            );
            dlq_copies += 1;
        }
    }
    let want_dlq: HashMap<String, String> = want_dlq
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        .collect();
    if got_dlq != want_dlq {
        // Each side named with what the generator planted it as (an unexpected dead letter
        // of a valid trade that is also in a bar was dead-lettered on a second delivery)
        // and, for what arrived, the stage, source position and reason it came with.
        let kind_of = |identity: &str| {
            planted
                .get(identity)
                .map_or("not published", |(kind, _, _)| kind.as_str())
        };
        let detail = |identity: &str, code: &str| {
            let position = planted
                .get(identity)
                .map_or("-".to_owned(), |(_, p, o)| format!("raw {p}@{o}"));
            let came = where_from.get(identity).map_or(String::new(), |m| {
                let h = |name: &str| m.headers.get(name).cloned().unwrap_or_default();
                format!(
                    "; from {} at {}[{}]@{}: {}",
                    h(dlq::HEADER_STAGE),
                    h(dlq::HEADER_SOURCE_TOPIC),
                    h(dlq::HEADER_SOURCE_PARTITION),
                    h(dlq::HEADER_SOURCE_OFFSET),
                    h(dlq::HEADER_ERROR_REASON)
                )
            });
            format!(
                "  {identity} {code}: planted as {}, {position}{came}",
                kind_of(identity)
            )
        };
        let missing: Vec<(&String, &String)> = want_dlq
            .iter()
            .filter(|(k, _)| !got_dlq.contains_key(*k))
            .collect();
        let extra: Vec<(&String, &String)> = got_dlq
            .iter()
            .filter(|(k, _)| !want_dlq.contains_key(*k))
            .collect();
        // The first line short (a CI excerpt may keep only it), the details one per line.
        let short = |list: &[(&String, &String)]| {
            list.iter()
                .take(3)
                .map(|(k, code)| format!("{k} {code} ({})", kind_of(k)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let details = |list: &[(&String, &String)]| {
            list.iter()
                .take(10)
                .map(|(k, code)| detail(k, code))
                .collect::<Vec<_>>()
                .join("\n")
        };
        panic!(
            "the DLQ holds exactly the planted bad and late records: {} missing [{}], {} unexpected \
             [{}]; {} planted, {} distinct read ({} messages)\nmissing:\n{}\nunexpected:\n{}\n{}",
            missing.len(),
            short(&missing),
            extra.len(),
            short(&extra),
            want_dlq.len(),
            got_dlq.len(),
            dead.len(),
            details(&missing),
            details(&extra),
            reports(logs.iter().copied()).await
        );
    }

    // Nothing lost, nothing counted twice.
    let dead_lettered = want_dlq.len() as u64;
    eprintln!(
        "published {records}: {trades_in_bars} in {} closed bars ({} bar messages) + {in_open_windows} in open windows + \
         {dead_lettered} dead-lettered ({dlq_copies} redelivered copies); {} feature vectors; kinds {kinds:?}",
        closed.len(),
        bar_messages,
        want_features.len()
    );
    assert_eq!(trades_in_bars + in_open_windows + dead_lettered, records);
    Accounting {
        closed_windows: closed.len(),
        feature_vectors: want_features.len(),
        pool,
    }
}

/// A second projection, in a new group, replays every projected topic from the start and
/// must leave every table exactly as it was, `updated_at` included, and write no row: every
/// row holds the newest version of its key, and a replay brings no newer one, even for a
/// key published more than once (a stage that re-read its input after a crash or a
/// rebalance and, for predictions, whose online model had learned in between), whatever
/// batches the replay reads it in. Returns the replaying project.
pub async fn replay_leaves_tables_unchanged(
    brokers: &str,
    run: &Run,
    pool: &sqlx::PgPool,
    env: &[(&str, &str)],
) -> Service {
    // The projection being replayed has written all there is first.
    let topics = [
        run.bars.as_str(),
        run.predictions.as_str(),
        run.outcomes.as_str(),
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Some(behind) = group_behind(brokers, &run.group("project"), &topics) {
        assert!(
            Instant::now() < deadline,
            "the projection has not committed all it read: {behind}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let before = tidewatch_e2e::dump_projection(pool).await.expect("dump");
    let replay = run.start_in_group(Stage::Project, 0, &run.group("project-replay"), env);
    let total = topic_messages(brokers, &[&run.bars, &run.predictions, &run.outcomes]);
    let deadline = Instant::now() + Duration::from_secs(120);
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
            let written = metric_sum(&m, "tidewatch_db_rows_written_total", &[]);
            let superseded = superseded_versions(brokers, run).await;
            eprintln!("replay: {total} messages, {superseded} superseded versions, {written} rows written");
            assert_eq!(
                written, 0.0,
                "a replay writes no row, not even where a key was published again ({superseded} earlier versions)"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replay read {received} and wrote {committed} of {total} messages"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let after = tidewatch_e2e::dump_projection(pool).await.expect("dump");
    if after != before {
        let (was, is) = (
            before.iter().collect::<HashSet<_>>(),
            after.iter().collect::<HashSet<_>>(),
        );
        let lines = |rows: &[String], other: &HashSet<&String>| {
            let gone: Vec<&String> = rows.iter().filter(|r| !other.contains(r)).collect();
            let shown: Vec<&str> = gone.iter().take(10).map(|r| r.as_str()).collect();
            format!("{} rows: {}", gone.len(), shown.join("\n  "))
        };
        panic!(
            "the replay changed the tables\nbefore only, {}\nafter only, {}",
            lines(&before, &is),
            lines(&after, &was)
        );
    }
    replay
}

/// Where `group` has not committed up to the end of `topics`: None once it has.
fn group_behind(brokers: &str, group: &str, topics: &[&str]) -> Option<String> {
    use rdkafka::consumer::Consumer as _;
    use rdkafka::{Offset, TopicPartitionList};
    let (consumer, partitions) = partitions(brokers, Some(group), topics);
    let mut list = TopicPartitionList::new();
    for (topic, partition) in &partitions {
        list.add_partition(topic, *partition);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed offsets");
    let mut behind = Vec::new();
    for e in committed.elements() {
        let (_, high) = consumer
            .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(10))
            .expect("watermarks");
        let at = match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        };
        if at < high {
            behind.push(format!("{}/{} at {at} of {high}", e.topic(), e.partition()));
        }
    }
    (!behind.is_empty()).then(|| behind.join(", "))
}

/// Messages on the projected topics minus their distinct keys (symbol, bar start): how many
/// earlier versions a later message of the same key replaced.
async fn superseded_versions(brokers: &str, run: &Run) -> i64 {
    let mut superseded = 0;
    for (topic, start_field) in [
        (&run.bars, "start_ms"),
        (&run.predictions, "bar_start_ms"),
        (&run.outcomes, "bar_start_ms"),
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

/// SIGTERM drains, commits and exits 0, for every service given.
pub fn terminate_all(services: &mut [&mut Service]) {
    for s in services {
        let status =
            tokio::task::block_in_place(|| s.terminate(Duration::from_secs(30))).expect("stops");
        assert!(
            status.success(),
            "{} exited with {status}: {}",
            s.label,
            s.log_tail()
        );
    }
}

/// tansu on a port of its own, advertised at a proxy in front of it, so the test can take
/// the broker away from every client at once and give it back with its data.
pub struct ProxiedBroker {
    pub proxy: Proxy,
    child: std::process::Child,
}

impl ProxiedBroker {
    pub async fn start() -> Self {
        let port = tidewatch_e2e::free_port();
        let target: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let proxy = Proxy::start(target).await.expect("broker proxy");
        let log = std::fs::File::create(std::env::temp_dir().join(format!(
            "tidewatch-e2e-tansu-{}-{port}.log",
            std::process::id()
        )))
        .expect("tansu log");
        let child = tidewatch_e2e::tansu_broker(
            &format!("tcp://127.0.0.1:{port}"),
            &format!("tcp://{}", proxy.addr),
        )
        // The group coordinator's decisions (members joining, missing heartbeats), for a
        // failure's post-mortem.
        .env("RUST_LOG", "warn,tansu_broker::coordinator::group=info")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("tansu starts (scripts/test puts it on PATH)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(target).await.is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { proxy, child }
    }

    pub fn brokers(&self) -> String {
        self.proxy.addr.to_string()
    }
}

impl Drop for ProxiedBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// tansu with its PostgreSQL storage, in a database of its own in the broker store
/// (`TIDEWATCH_TANSU_STORE`, PostgreSQL 17, started by `scripts/lib/infra.sh`), on a free
/// loopback port, so the test can kill the broker process and start it again with its
/// topics, records, committed offsets and groups kept.
pub struct DurableBroker {
    port: u16,
    storage: String,
    log: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl DurableBroker {
    pub async fn start() -> Self {
        use sqlx::Connection as _;
        let store = tidewatch_e2e::env_var("TIDEWATCH_TANSU_STORE");
        let port = tidewatch_e2e::free_port();
        let name = format!("broker_{}_{port}", std::process::id());
        let mut admin = sqlx::PgConnection::connect(&format!("{store}/postgres"))
            .await
            .expect("the broker store answers (scripts/test starts it)");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("broker database");
        let storage = format!("{store}/{name}");
        let mut db = sqlx::PgConnection::connect(&storage)
            .await
            .expect("broker database");
        sqlx::raw_sql(include_str!("../../../../scripts/lib/tansu-postgres.sql"))
            .execute(&mut db)
            .await
            .expect("tansu's tables");
        let log = std::env::temp_dir().join(format!("tidewatch-e2e-tansu-{name}.log"));
        let mut broker = Self {
            port,
            storage,
            log,
            child: None,
        };
        broker.start_process().await;
        broker
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILLs the broker process, waits until its port is free, keeps it down for
    /// `down`, then starts it again on the same port and storage.
    pub async fn restart(&mut self, down: Duration) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpListener::bind(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "tansu's port was not freed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(down).await;
        self.start_process().await;
    }

    async fn start_process(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("tansu log");
        let url = format!("tcp://{}", self.brokers());
        self.child = Some(
            tidewatch_e2e::tansu_broker(&url, &url)
                .args(["--storage-engine", &self.storage])
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("tansu starts (scripts/test puts it on PATH)"),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for DurableBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A client of the broker (in `group`, if given, to read its offsets) and the partitions of
/// `topics`.
fn partitions(
    brokers: &str,
    group: Option<&str>,
    topics: &[&str],
) -> (rdkafka::consumer::BaseConsumer, Vec<(String, i32)>) {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    if let Some(group) = group {
        config.set("group.id", group);
    }
    let consumer: BaseConsumer = config.create().expect("consumer");
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    let partitions = metadata
        .topics()
        .iter()
        .filter(|t| topics.contains(&t.name()))
        .flat_map(|t| t.partitions().iter().map(|p| (t.name().to_owned(), p.id())))
        .collect();
    (consumer, partitions)
}

/// Messages in `topics` now (sum of high minus low watermarks).
pub fn topic_messages(brokers: &str, topics: &[&str]) -> i64 {
    use rdkafka::consumer::Consumer as _;
    let (consumer, partitions) = partitions(brokers, None, topics);
    let mut total = 0;
    for (topic, partition) in partitions {
        let (low, high) = consumer
            .fetch_watermarks(&topic, partition, Duration::from_secs(10))
            .expect("watermarks");
        total += high - low;
    }
    total
}
