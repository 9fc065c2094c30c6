//! The consumer's judgement of its predictions, in process on simulated features: the rolling
//! scores equal a recomputation from the predictions it published and the outcomes the
//! later bars show; a regime switch in the market makes DDM reach drift within a bound, and
//! per-feature drift flag volatility, trading and the output while it stays quiet before.

use std::collections::HashMap;

use clap::Parser as _;
use prediction_consumer::{PredictionConsumer, Settings};
use tidewatch_kafka::stage::{Input, Outcome, Processor};
use tidewatch_market_sim::{Market, MarketConfig, Regime};
use tidewatch_model::drift::Level;
use tidewatch_model::features::{Bar, FeatureBuilder};
use tidewatch_model::profile::ReferenceProfile;
use tidewatch_model::Model;
use tidewatch_schema::{FeatureRecord, OutcomeRecord, PredictionRecord};

const MINUTE: i64 = 60_000;

fn profile() -> ReferenceProfile {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/volatility-spike.profile.json"
    );
    prediction_consumer::load_profile(path.as_ref(), &model()).expect("profile")
}

fn consumer() -> PredictionConsumer {
    let settings = Settings::try_parse_from(["prediction-consumer"]).expect("settings");
    PredictionConsumer::new(&settings, model(), profile()).expect("consumer")
}

fn model() -> Model {
    Model::load(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/volatility-spike.json"
        )
        .as_ref(),
    )
    .expect("artifact")
}

/// One minute of the market as feature records (symbols past warm-up).
fn minute(
    market: &mut Market,
    builders: &mut HashMap<String, FeatureBuilder>,
) -> Vec<FeatureRecord> {
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
    let mut out: Vec<FeatureRecord> = bars
        .into_iter()
        .filter_map(|(symbol, bar)| {
            let features = builders.entry(symbol.to_owned()).or_default().push(&bar)?;
            Some(FeatureRecord {
                symbol: symbol.to_owned(),
                interval_seconds: 60,
                bar_start_ms: start,
                bar_end_ms: start + MINUTE,
                close: bar.close,
                features,
            })
        })
        .collect();
    out.sort_by(|a, b| a.symbol.cmp(&b.symbol));
    out
}

/// The prediction made from `f`, and the outcome `f` revealed for an earlier prediction.
async fn feed(
    consumer: &mut PredictionConsumer,
    f: &FeatureRecord,
) -> (PredictionRecord, Option<OutcomeRecord>) {
    let payload = serde_json::to_vec(f).expect("encode");
    let input = Input {
        payload: &payload,
        ..Input::default()
    };
    match consumer.process(&input).await {
        Outcome::Emit(records) => {
            assert!(records.len() <= 2, "a prediction and at most one outcome");
            assert_eq!(records[0].topic, "predictions");
            let outcome = records.get(1).map(|r| {
                assert_eq!(r.topic, "outcomes");
                serde_json::from_slice(&r.payload).expect("outcome")
            });
            (
                serde_json::from_slice(&records[0].payload).expect("prediction"),
                outcome,
            )
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn rolling_scores_equal_a_recomputation_from_predictions_and_outcomes() {
    let threshold = model().artifact().training.spike_threshold;
    let mut consumer = consumer();
    let mut market = Market::new(&MarketConfig::new(21));
    let mut builders = HashMap::new();
    let mut published: HashMap<(String, i64), bool> = HashMap::new();
    let mut judged: Vec<(bool, bool)> = Vec::new();
    for _ in 0..400 {
        for f in minute(&mut market, &mut builders) {
            // The outcome of the prediction made five bars ago, from this bar's features.
            let judged_now = published
                .get(&(f.symbol.clone(), f.bar_start_ms - 5 * MINUTE))
                .map(|predicted| (*predicted, f.features.vol_5m > threshold));
            if let Some(j) = judged_now {
                judged.push(j);
            }
            let (p, outcome) = feed(&mut consumer, &f).await;
            // The published outcome is exactly the judgement recomputed here.
            assert_eq!(
                outcome.map(|o| (o.symbol, o.bar_start_ms, o.judged_by_bar_start_ms, o.spike)),
                judged_now.map(|(_, actual)| (
                    f.symbol.clone(),
                    f.bar_start_ms - 5 * MINUTE,
                    f.bar_start_ms,
                    actual
                ))
            );
            assert_eq!(
                (p.symbol.as_str(), p.bar_start_ms),
                (f.symbol.as_str(), f.bar_start_ms)
            );
            published.insert((p.symbol, p.bar_start_ms), p.spike);
        }
    }
    assert!(judged.len() > 1_000, "{} judged", judged.len());
    let recent = &judged[judged.len() - prediction_consumer::scores::WINDOW..];
    let mut counts = [0u64; 4];
    for (p, a) in recent {
        counts[match (p, a) {
            (true, true) => 0,
            (true, false) => 1,
            (false, true) => 2,
            (false, false) => 3,
        }] += 1;
    }
    let want = prediction_consumer::scores::Scores::from_counts(counts);
    assert_eq!(consumer.scores("ml"), Some(want));
    assert!(
        want.accuracy > 0.7 && want.f1 > 0.2,
        "the model is useful here: {want:?}"
    );
    assert!(
        consumer.online_updates() as usize == judged.len(),
        "one online step per judgement"
    );
}

#[tokio::test]
async fn a_switch_to_a_turbulent_market_makes_ddm_reach_drift() {
    let mut consumer = consumer();
    let mut market = Market::new(&MarketConfig::new(33));
    let mut builders = HashMap::new();
    let mut outcomes_before = 0;
    // A calm market for four hours: the model is rarely wrong.
    for _ in 0..240 {
        market.force_regime(Regime::Calm);
        for f in minute(&mut market, &mut builders) {
            feed(&mut consumer, &f).await;
            outcomes_before += 1;
        }
        assert_ne!(
            consumer.drift().ddm_level(),
            Level::Drift,
            "no drift while calm"
        );
    }
    // The generator's admin switch: turbulent from now on.
    let mut after = 0;
    let mut drifted_at = None;
    for _ in 0..120 {
        market.force_regime(Regime::Turbulent);
        for f in minute(&mut market, &mut builders) {
            feed(&mut consumer, &f).await;
            after += 1;
            if drifted_at.is_none() && consumer.drift().ddm_level() == Level::Drift {
                drifted_at = Some(after);
            }
        }
    }
    let at = drifted_at.expect("DDM reached drift after the switch");
    eprintln!("DDM drift {at} predictions after the switch ({outcomes_before} before)");
    assert!(
        at <= 300,
        "drift within 300 predictions of the switch (50 minutes of 6 symbols): {at}"
    );
}

#[tokio::test]
async fn per_feature_drift_stays_quiet_in_the_trained_market_and_flags_a_turbulent_one() {
    let mut consumer = consumer();
    let mut market = Market::new(&MarketConfig::new(7));
    let mut builders = HashMap::new();
    // The market as the generator runs it (regimes switching by themselves, as in the
    // training data): nothing drifts, the window full.
    for _ in 0..600 {
        for f in minute(&mut market, &mut builders) {
            feed(&mut consumer, &f).await;
        }
    }
    let natural = consumer.feature_drift();
    eprintln!("natural: {}", natural.summary);
    assert_eq!(natural.window.size, natural.window.capacity);
    assert_eq!(natural.drifted_columns, 0, "{}", natural.summary);
    // Turbulent from now on: volatility, trading and the model's output move.
    let (mut fed, mut first_drift) = (0, None);
    for _ in 0..300 {
        market.force_regime(Regime::Turbulent);
        for f in minute(&mut market, &mut builders) {
            feed(&mut consumer, &f).await;
            fed += 1;
            if first_drift.is_none() && consumer.feature_drift().drifted_columns > 0 {
                first_drift = Some(fed);
            }
        }
    }
    let turbulent = consumer.feature_drift();
    eprintln!(
        "turbulent: first column drifted {first_drift:?} vectors after the switch; {}",
        turbulent.summary
    );
    let drifted: Vec<&str> = turbulent
        .columns
        .iter()
        .filter(|c| c.drifted)
        .map(|c| c.name.as_str())
        .collect();
    for name in ["vol_5m", "vol_15m", "trade_rate", "probability"] {
        assert!(
            drifted.contains(&name),
            "{name} drifted: {}",
            turbulent.summary
        );
    }
    assert!(first_drift.is_some_and(|n| n < 1_000), "{first_drift:?}");
}

#[tokio::test]
async fn the_report_endpoint_answers_json_html_and_errors_naming_the_field() {
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;
    let consumer = consumer();
    let app: axum::Router = prediction_consumer::api(consumer.drift_tracker()).into();
    let get = |uri: &str, accept: Option<&str>| {
        let mut request = axum::http::Request::get(uri);
        if let Some(a) = accept {
            request = request.header("accept", a);
        }
        let request = request.body(axum::body::Body::empty()).expect("request");
        let app = app.clone();
        async move {
            let res = app.oneshot(request).await.expect("infallible");
            let status = res.status().as_u16();
            let kind = res
                .headers()
                .get("content-type")
                .map(|v| v.to_str().expect("ascii").to_owned())
                .unwrap_or_default();
            let body = res.into_body().collect().await.expect("body").to_bytes();
            (
                status,
                kind,
                String::from_utf8(body.to_vec()).expect("utf-8"),
            )
        }
    };
    let (status, kind, body) = get("/v1/drift/report", None).await;
    assert_eq!((status, kind.as_str()), (200, "application/json"));
    let report: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(report["window"]["size"], 0);
    assert!(report["summary"]
        .as_str()
        .expect("summary")
        .starts_with("No live feature vector yet"));
    for (uri, accept) in [
        ("/v1/drift/report?format=html", None),
        (
            "/v1/drift/report",
            Some("text/html,application/xhtml+xml;q=0.9"),
        ),
    ] {
        let (status, kind, body) = get(uri, accept).await;
        assert_eq!(status, 200);
        assert!(kind.starts_with("text/html"), "{kind}");
        assert!(body.contains("<h2>vol_5m</h2>") && body.contains("not enough data"));
    }
    for (uri, want, field) in [
        ("/v1/drift/report?format=pdf", 422, "format"),
        ("/v1/drift/report?colour=red", 400, "query"),
    ] {
        let (status, _, body) = get(uri, None).await;
        let body: serde_json::Value = serde_json::from_str(&body).expect("json error");
        assert_eq!(
            (status, &body["error"]["field"]),
            (want, &serde_json::json!(field)),
            "{uri}: {body}"
        );
    }
}
