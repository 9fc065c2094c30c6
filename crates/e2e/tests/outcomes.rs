//! Predictions judged by outcomes, end to end: two hours of the simulated market's features
//! (the second hour forced turbulent, so spikes happen) are published to a one-partition
//! features topic; prediction-consumer and project run as processes on the real broker and
//! PostgreSQL. The consumer's rolling accuracy, precision, recall and F1 gauges then equal a
//! recomputation from what PostgreSQL stored: the last 500 judgements (in the order the
//! consumer made them) of predictions joined with their outcomes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tidewatch_e2e::{env_var, Service};
use tidewatch_kafka::{Producer, Record};
use tidewatch_market_sim::{Market, MarketConfig, Regime};
use tidewatch_model::features::{Bar, FeatureBuilder};
use tidewatch_schema::FeatureRecord;

const MINUTES: usize = 120;
/// The consumer's rolling window (prediction_consumer::scores::WINDOW).
const WINDOW: usize = 500;

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

fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        (metric == name
            && labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
        .then(|| value.parse().ok())
        .flatten()
    })
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
}
