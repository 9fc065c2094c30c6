//! Predictions judged by outcomes, end to end: two hours of the simulated market's features
//! (the second hour forced turbulent, so spikes happen) are published to a one-partition
//! features topic; prediction-consumer and project run as processes on the real broker and
//! PostgreSQL. The consumer's rolling accuracy, precision, recall and F1 gauges then equal a
//! recomputation from what PostgreSQL stored: the last 500 judgements (in the order the
//! consumer made them) of predictions joined with their outcomes. Its per-feature drift
//! report (JSON, HTML and gauges) equals an independent computation from the published
//! features, the stored probabilities and the committed reference profile.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tidewatch_e2e::{env_var, metric, Service};
use tidewatch_kafka::{Producer, Record};
use tidewatch_market_sim::{Market, MarketConfig, Regime};
use tidewatch_model::features::{Bar, FeatureBuilder};
use tidewatch_schema::FeatureRecord;

const MINUTES: usize = 120;
/// The consumer's rolling window (prediction_consumer::scores::WINDOW).
const WINDOW: usize = 500;
/// The per-feature drift window the consumer is started with (half hour two's vectors).
const DRIFT_WINDOW: usize = 300;

/// The features of every symbol past warm-up, minute by minute, symbols in order.
fn market_features() -> Vec<FeatureRecord> {
    let mut market = Market::new(&MarketConfig::new(5));
    let mut builders: HashMap<String, FeatureBuilder> = HashMap::new();
    let mut out = Vec::new();
    for minute in 0..MINUTES {
        if minute >= MINUTES / 2 {
            market.force_regime(Regime::Turbulent);
        }
        let start = market.now_ms();
        let mut bars: HashMap<&str, Bar> = HashMap::new();
        for t in market.next_minute() {
            match bars.get_mut(t.symbol) {
                Some(b) => b.add(t.price, t.size),
                None => {
                    bars.insert(t.symbol, Bar::open_at(start, t.price, t.size));
                }
            }
        }
        let mut records: Vec<FeatureRecord> = bars
            .into_iter()
            .filter_map(|(symbol, bar)| {
                let features = builders.entry(symbol.to_owned()).or_default().push(&bar)?;
                Some(FeatureRecord {
                    symbol: symbol.to_owned(),
                    interval_seconds: 60,
                    bar_start_ms: start,
                    bar_end_ms: start + 60_000,
                    close: bar.close,
                    features,
                })
            })
            .collect();
        records.sort_by(|a, b| a.symbol.cmp(&b.symbol));
        out.extend(records);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_scores_equal_a_recomputation_from_stored_predictions_and_outcomes() {
    let brokers = env_var("TIDEWATCH_KAFKA_BROKERS");
    let database = tidewatch_e2e::fresh_database("outcomes")
        .await
        .expect("database");
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let topic = |name: &str| format!("outcomes-{run}-{name}");
    let (features, predictions, outcomes) =
        (topic("features"), topic("predictions"), topic("outcomes"));
    // One partition: the consumer judges in exactly the order the features were published.
    let env = [
        ("KAFKA_BROKERS", brokers.as_str()),
        ("DATABASE_URL", database.as_str()),
        ("KAFKA_TOPIC_PARTITIONS", "1"),
    ];
    tidewatch_kafka::ensure_topics(&brokers, &[&features], 1)
        .await
        .expect("topic");
    let consumer = Service::start(
        "prediction-consumer",
        &[
            "--input-topic",
            &features,
            "--output-topic",
            &predictions,
            "--outcomes-topic",
            &outcomes,
            "--group-id",
            &topic("consumer"),
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
            "--feature-drift-window",
            &DRIFT_WINDOW.to_string(),
            "--feature-drift-min-samples",
            &DRIFT_WINDOW.to_string(),
        ],
        &env,
    )
    .expect("consumer starts");
    let project = Service::start(
        "project",
        &[
            "--bars-topic",
            &topic("bars"),
            "--predictions-topic",
            &predictions,
            "--outcomes-topic",
            &outcomes,
            "--group-id",
            &topic("project"),
        ],
        &env,
    )
    .expect("project starts");
    for s in [&consumer, &project] {
        s.wait_ready(Duration::from_secs(90)).await.expect("ready");
    }

    let records = market_features();
    let producer = Producer::new(&brokers, "outcomes-test").expect("producer");
    let sends: Vec<_> = records
        .iter()
        .map(|f| producer.send(&Record::json(&features, &f.symbol, f).expect("encode")))
        .collect();
    for s in sends {
        s.await.expect("delivered");
    }

    // Wait until every outcome the consumer judged is stored.
    let pool = sqlx::PgPool::connect(&database).await.expect("connect");
    let deadline = Instant::now() + Duration::from_secs(120);
    let (text, judged) = loop {
        let text = consumer.metrics().await.unwrap_or_default();
        let judged: f64 = [
            "true_positive",
            "false_positive",
            "false_negative",
            "true_negative",
        ]
        .iter()
        .filter_map(|o| {
            metric(
                &text,
                "tidewatch_prediction_outcomes_total",
                &[("variant", "ml"), ("outcome", o)],
            )
        })
        .sum();
        let stored: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM predictions p JOIN prediction_outcomes o USING (symbol, bar_start)",
        )
        .fetch_one(&pool)
        .await
        .expect("count");
        let predictions_stored: i64 = sqlx::query_scalar("SELECT count(*) FROM predictions")
            .fetch_one(&pool)
            .await
            .expect("count");
        if judged > 0.0 && stored as f64 == judged && predictions_stored as usize == records.len() {
            break (text, judged as usize);
        }
        assert!(
            Instant::now() < deadline,
            "{stored} stored outcomes, {judged} judged, {predictions_stored}/{} predictions; project log:\n{}",
            records.len(),
            project.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        judged > WINDOW,
        "more judgements ({judged}) than the window"
    );

    // The last 500 judgements: ordered by the bar that judged them, then by symbol, as
    // they were published.
    let pairs: Vec<(bool, bool)> = sqlx::query_as(
        "SELECT p.spike, o.spike FROM predictions p JOIN prediction_outcomes o USING (symbol, bar_start) \
         ORDER BY o.judged_by_bar_start DESC, o.symbol DESC LIMIT $1",
    )
    .bind(WINDOW as i64)
    .fetch_all(&pool)
    .await
    .expect("join");
    let count = |p: bool, a: bool| pairs.iter().filter(|x| **x == (p, a)).count() as f64;
    let (tp, fp, fn_, tn) = (
        count(true, true),
        count(true, false),
        count(false, true),
        count(false, false),
    );
    assert!(
        tp > 0.0 && tp + fn_ > 0.0,
        "spikes happened and some were caught"
    );
    let accuracy = (tp + tn) / (tp + fp + fn_ + tn);
    let precision = tp / (tp + fp);
    let recall = tp / (tp + fn_);
    let f1 = 2.0 * precision * recall / (precision + recall);
    for (name, want) in [
        ("accuracy", accuracy),
        ("precision", precision),
        ("recall", recall),
        ("f1", f1),
    ] {
        let got = metric(
            &text,
            "tidewatch_prediction_rolling_score",
            &[("variant", "ml"), ("metric", name)],
        )
        .expect("gauge");
        eprintln!("{name}: gauge {got:.6}, from PostgreSQL {want:.6}");
        assert!((got - want).abs() < 1e-9, "{name}: gauge {got} != {want}");
    }
    eprintln!("{judged} judged; last {WINDOW}: tp {tp} fp {fp} fn {fn_} tn {tn}");

    // Per-feature drift: the last DRIFT_WINDOW published vectors with their stored
    // probabilities, binned by the committed profile, from the textbook formulas.
    let profile: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/volatility-spike.profile.json"
        ))
        .expect("profile"),
    )
    .expect("json");
    let last = &records[records.len() - DRIFT_WINDOW..];
    let mut rows: Vec<[f64; 7]> = Vec::new();
    for f in last {
        let p: f64 = sqlx::query_scalar(
            "SELECT probability FROM predictions WHERE symbol = $1 AND bar_start = to_timestamp($2::float8 / 1000)",
        )
        .bind(&f.symbol)
        .bind(f.bar_start_ms as f64)
        .fetch_one(&pool)
        .await
        .expect("stored prediction");
        let x = f.features.to_array();
        rows.push([x[0], x[1], x[2], x[3], x[4], x[5], p]);
    }
    let report: serde_json::Value = reqwest::get(consumer.url("/v1/drift/report"))
        .await
        .expect("report")
        .json()
        .await
        .expect("json");
    assert_eq!(report["window"]["size"], DRIFT_WINDOW, "{report}");
    let text = consumer.metrics().await.expect("metrics");
    let mut drifted = Vec::new();
    for (j, column) in profile["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .enumerate()
    {
        let name = column["name"].as_str().expect("name");
        let values: Vec<f64> = rows.iter().map(|r| r[j]).collect();
        let want = independent_distances(&values, column);
        let got = &report["columns"][j];
        assert_eq!(got["name"], name);
        for (k, statistic) in ["psi", "ks", "js"].iter().enumerate() {
            let reported = got["statistics"][statistic].as_f64().expect("statistic");
            let gauge = metric(
                &text,
                "tidewatch_feature_drift",
                &[("feature", name), ("statistic", statistic)],
            )
            .expect("gauge");
            assert!(
                (reported - want[k]).abs() < 1e-9 && (gauge - want[k]).abs() < 1e-9,
                "{name} {statistic}: report {reported}, gauge {gauge}, independent {}",
                want[k]
            );
        }
        if got["drifted"] == true {
            drifted.push(name.to_owned());
        }
    }
    eprintln!("drift report: {}", report["summary"]);
    // The window is hour two, forced turbulent: volatility has left the training range.
    assert!(drifted.contains(&"vol_15m".to_owned()), "{drifted:?}");

    // The same report as a page, by query or by a browser's Accept header.
    for request in [
        reqwest::Client::new().get(consumer.url("/v1/drift/report?format=html")),
        reqwest::Client::new()
            .get(consumer.url("/v1/drift/report"))
            .header("accept", "text/html,application/xhtml+xml"),
    ] {
        let res = request.send().await.expect("html");
        assert!(res.headers()["content-type"]
            .to_str()
            .expect("type")
            .starts_with("text/html"));
        let page = res.text().await.expect("page");
        for column in profile["columns"].as_array().expect("columns") {
            let name = column["name"].as_str().expect("name");
            assert!(page.contains(&format!("<h2>{name}</h2>")), "{name} section");
        }
        assert_eq!(page.matches("<svg").count(), 7);
    }
    // A bad value, and a parameter the endpoint does not take: JSON errors naming them.
    for (query, status, field) in [("format=pdf", 422, "format"), ("colour=red", 400, "query")] {
        let bad = reqwest::get(consumer.url(&format!("/v1/drift/report?{query}")))
            .await
            .expect("bad");
        assert_eq!(bad.status(), status, "{query}");
        let body: serde_json::Value = bad.json().await.expect("error json");
        assert_eq!(body["error"]["field"], field, "{body}");
    }
}

/// PSI, KS and JS distance of `values` against one profile column, from their definitions:
/// bin i holds cut[i-1] <= v < cut[i]; shares floored at 1e-4 for PSI; JS in bits.
fn independent_distances(values: &[f64], column: &serde_json::Value) -> [f64; 3] {
    let cuts: Vec<f64> = serde_json::from_value(column["cuts"].clone()).expect("cuts");
    let reference: Vec<f64> = serde_json::from_value(column["shares"].clone()).expect("shares");
    let mut current = vec![0.0; reference.len()];
    for v in values {
        current[cuts.iter().filter(|c| **c <= *v).count()] += 1.0 / values.len() as f64;
    }
    let (mut psi, mut js, mut ks) = (0.0, 0.0, 0.0f64);
    let (mut cum_c, mut cum_r) = (0.0, 0.0);
    for (c, r) in current.iter().zip(&reference) {
        let (cf, rf) = (c.max(1e-4), r.max(1e-4));
        psi += (cf - rf) * (cf / rf).ln();
        cum_c += c;
        cum_r += r;
        ks = ks.max((cum_c - cum_r).abs());
        let m = (c + r) / 2.0;
        for p in [c, r] {
            if *p > 0.0 {
                js += 0.5 * p * (p / m).log2();
            }
        }
    }
    [psi, ks, js.max(0.0).sqrt()]
}
