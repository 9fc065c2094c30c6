//! The generator's run-time controls, through its HTTP API on a real broker: the admin
//! token guards every change, bad bodies get 4xx naming the field, rate and regime changes
//! show in status and metrics, pause stops publishing and resume restarts it. A restarted
//! generator continues its market; a broker that lost its state gets records again.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tidewatch_e2e::{env_var, metric, PrivateBroker, Service};
use tidewatch_telemetry::catalog::{self, Group};

fn counter(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_controls_rate_regime_and_pause_behind_the_token() {
    let brokers = env_var("TIDEWATCH_KAFKA_BROKERS");
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let topic = format!("generator-{run}");
    let mut generator = Service::start(
        "generator",
        &["--output-topic", &topic, "--rate", "200"],
        &[
            ("KAFKA_BROKERS", &brokers),
            ("ADMIN_TOKEN", "s3cret"),
            ("LOG_LEVEL", "info"),
        ],
    )
    .expect("starts");
    generator
        .wait_ready(Duration::from_secs(60))
        .await
        .expect("ready");
    let client = reqwest::Client::new();
    let put = |path: &str, token: Option<&str>, body: Value| {
        let mut r = client.put(generator.url(path)).json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let status = || async {
        client
            .get(generator.url("/v1/status"))
            .send()
            .await
            .expect("status")
            .json::<Value>()
            .await
            .expect("json")
    };
    assert_eq!(status().await["records_per_second"], 200);

    for (token, want) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("wrong"), StatusCode::UNAUTHORIZED),
    ] {
        let r = put("/v1/admin/rate", token, json!({"records_per_second": 5}))
            .await
            .expect("sent");
        assert_eq!(r.status(), want);
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["error"]["field"], "authorization");
    }
    for (body, field) in [
        (json!({"records_per_second": "fast"}), "records_per_second"),
        (
            json!({"records_per_second": 2_000_000}),
            "records_per_second",
        ),
        (json!({}), "records_per_second"),
    ] {
        let r = put("/v1/admin/rate", Some("s3cret"), body)
            .await
            .expect("sent");
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            r.json::<Value>().await.expect("json")["error"]["field"],
            field
        );
    }
    let r = put(
        "/v1/admin/rate",
        Some("s3cret"),
        json!({"records_per_second": 1000}),
    )
    .await
    .expect("sent");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(status().await["records_per_second"], 1000);
    // The publishing loop applies it at its next record.
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let metrics = generator.metrics().await.expect("metrics");
        if counter(&metrics, "tidewatch_generator_target_rate ") == 1000.0 {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "target rate gauge never showed 1000"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        counter(&metrics, "tidewatch_generator_target_rate "),
        1000.0
    );
    assert_eq!(
        counter(
            &metrics,
            "tidewatch_admin_auth_failures_total{reason=\"invalid\"}"
        ),
        1.0
    );

    let r = put(
        "/v1/admin/regime",
        Some("s3cret"),
        json!({"regime": "wild"}),
    )
    .await
    .expect("sent");
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        r.json::<Value>().await.expect("json")["error"]["field"],
        "regime"
    );
    let r = put(
        "/v1/admin/regime",
        Some("s3cret"),
        json!({"regime": "turbulent"}),
    )
    .await
    .expect("sent");
    assert_eq!(r.status(), StatusCode::OK);
    // Forced from the next simulated minute: every symbol shows it in status.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let regimes = status().await["progress"]["regimes"].clone();
        let all = regimes
            .as_object()
            .is_some_and(|m| m.len() == 6 && m.values().all(|r| r == "turbulent"));
        if all {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "regime never switched: {regimes}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status().await["regime_held"], "turbulent");
    let release = client
        .delete(generator.url("/v1/admin/regime"))
        .bearer_auth("s3cret")
        .send()
        .await
        .expect("sent");
    assert_eq!(release.status(), StatusCode::OK);
    assert_eq!(
        release.json::<Value>().await.expect("json")["previous"],
        "turbulent"
    );
    assert_eq!(status().await["regime_held"], Value::Null);

    // Planted anomalies: share and severity change at run time, and back.
    for (body, field) in [
        (json!({"anomaly_rate": 2.0}), "anomaly_rate"),
        (json!({"severity": "severe"}), "anomaly_rate"),
        (
            json!({"anomaly_rate": 0.05, "severity": "wild"}),
            "severity",
        ),
    ] {
        let r = put("/v1/admin/anomalies", Some("s3cret"), body)
            .await
            .expect("sent");
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            r.json::<Value>().await.expect("json")["error"]["field"],
            field
        );
    }
    let anomalies = |m: &str| counter(m, "tidewatch_generator_records_total{kind=\"anomaly\"}");
    let before = anomalies(&generator.metrics().await.expect("metrics"));
    let r = put(
        "/v1/admin/anomalies",
        Some("s3cret"),
        json!({"anomaly_rate": 0.05, "severity": "severe"}),
    )
    .await
    .expect("sent");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.expect("json")["previous"],
        json!({"anomaly_rate": 0.002, "severity": "mild"})
    );
    assert_eq!(status().await["anomaly_severity"], "severe");
    // At 1,000 records a second, 5% of trades: hundreds within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    while anomalies(&generator.metrics().await.expect("metrics")) < before + 100.0 {
        assert!(Instant::now() < deadline, "no burst of planted anomalies");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reset = client
        .delete(generator.url("/v1/admin/anomalies"))
        .bearer_auth("s3cret")
        .send()
        .await
        .expect("sent");
    assert_eq!(reset.status(), StatusCode::OK);
    assert_eq!(
        reset.json::<Value>().await.expect("json")["anomalies"],
        json!({"anomaly_rate": 0.002, "severity": "mild"})
    );

    let pause = client
        .post(generator.url("/v1/admin/pause"))
        .bearer_auth("s3cret")
        .send()
        .await
        .expect("sent");
    assert_eq!(pause.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = counter(
        &generator.metrics().await.expect("metrics"),
        "tidewatch_generator_records_total",
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let metrics = generator.metrics().await.expect("metrics");
    assert_eq!(
        counter(&metrics, "tidewatch_generator_records_total"),
        before,
        "nothing published while paused"
    );
    assert_eq!(counter(&metrics, "tidewatch_generator_paused "), 1.0);
    let resume = client
        .post(generator.url("/v1/admin/resume"))
        .bearer_auth("s3cret")
        .send()
        .await
        .expect("sent");
    assert_eq!(resume.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let metrics = generator.metrics().await.expect("metrics");
    assert!(
        counter(&metrics, "tidewatch_generator_records_total") > before,
        "publishing resumed"
    );
    for m in catalog::ALL
        .iter()
        .filter(|m| matches!(m.group, Group::Generator | Group::Admin))
    {
        assert!(
            metrics.contains(m.name),
            "generator does not expose {}",
            m.name
        );
    }

    let exit = tokio::task::block_in_place(|| generator.terminate(Duration::from_secs(30)))
        .expect("stops");
    assert!(exit.success(), "SIGTERM exits 0: {}", generator.log_tail());
}

/// Runs the generator to `--max-records` and waits for it to exit 0.
fn publish(brokers: &str, topic: &str, state_dir: &std::path::Path, records: &str) {
    let mut generator = Service::start(
        "generator",
        &[
            "--output-topic",
            topic,
            "--rate",
            "0",
            "--max-records",
            records,
            "--resume-from-topic",
            "--state-dir",
            state_dir.to_str().expect("utf-8 path"),
        ],
        &[("KAFKA_BROKERS", brokers)],
    )
    .expect("starts");
    let exit = generator.wait_exit(Duration::from_secs(60)).expect("exits");
    assert!(exit.success(), "{}", generator.log_tail());
}

/// Every valid trade in `topic` as (partition, offset, symbol, event time, price).
async fn trades(brokers: &str, topic: &str, want: usize) -> Vec<(i32, i64, String, i64, f64)> {
    let read = tidewatch_kafka::inspect::read_topic_async(
        brokers.to_owned(),
        topic.to_owned(),
        want,
        Duration::from_secs(30),
        |_| true,
    )
    .await
    .expect("read back");
    read.iter()
        .filter_map(|m| {
            let t = tidewatch_schema::decode_raw(&m.payload, 0).ok()?;
            Some((m.partition, m.offset, t.symbol, t.event_time_ms, t.price))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_generator_continues_its_market_even_when_the_topic_is_gone() {
    let brokers = env_var("TIDEWATCH_KAFKA_BROKERS");
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let (topic, lost) = (format!("resume-{run}"), format!("resume-lost-{run}"));
    let state = std::env::temp_dir().join(format!("tidewatch-generator-state-{run}"));
    std::fs::create_dir_all(&state).expect("state dir");

    // First run, then a second on the same topic: the second continues after the first.
    tokio::task::block_in_place(|| publish(&brokers, &topic, &state, "2000"));
    let first = trades(&brokers, &topic, 1900).await;
    let ends: std::collections::HashMap<i32, i64> =
        first.iter().fold(Default::default(), |mut m, (p, o, ..)| {
            let e = m.entry(*p).or_insert(*o);
            *e = (*e).max(*o);
            m
        });
    let newest = first.iter().map(|t| t.3).max().expect("trades");
    let last_btc = first
        .iter()
        .filter(|t| t.2 == "BTC-USD")
        .max_by_key(|t| t.3)
        .expect("BTC trades")
        .4;
    tokio::task::block_in_place(|| publish(&brokers, &topic, &state, "2000"));
    let all = trades(&brokers, &topic, 3800).await;
    let second: Vec<_> = all
        .iter()
        .filter(|(p, o, ..)| ends.get(p).is_none_or(|end| o > end))
        .collect();
    assert!(
        second.len() > 1_500,
        "{} trades from the second run",
        second.len()
    );
    let earliest = second.iter().map(|t| t.3).min().expect("trades");
    assert!(
        earliest > newest,
        "the second run starts at {earliest}, not after {newest}"
    );
    let first_btc = second
        .iter()
        .filter(|t| t.2 == "BTC-USD")
        .min_by_key(|t| t.3)
        .expect("BTC trades")
        .4;
    assert!(
        (first_btc / last_btc - 1.0).abs() < 0.05,
        "BTC goes on from {last_btc}, not from its base price: {first_btc}"
    );

    // A broker that lost the topic: the state directory still says where the market was.
    let newest = all.iter().map(|t| t.3).max().expect("trades");
    tokio::task::block_in_place(|| publish(&brokers, &lost, &state, "500"));
    let third = trades(&brokers, &lost, 450).await;
    let earliest = third.iter().map(|t| t.3).min().expect("trades");
    assert!(
        earliest > newest,
        "after the topic was lost: {earliest}, not after {newest}"
    );
    std::fs::remove_dir_all(&state).expect("cleaned up");
}

/// A broker restarted without its state (tansu keeps everything in memory) has forgotten the
/// generator's producer id and refuses its sends. The generator must say so on readiness,
/// replace its producer and deliver again, without being restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restarted_without_its_state_gets_records_again_from_a_new_producer() {
    let mut broker = PrivateBroker::start().expect("a broker of the test's own");
    let brokers = broker.brokers();
    let topic = "trades.raw";
    let generator = Service::start(
        "generator",
        &["--output-topic", topic, "--rate", "200"],
        &[("KAFKA_BROKERS", &brokers), ("LOG_LEVEL", "info")],
    )
    .expect("starts");
    generator
        .wait_ready(Duration::from_secs(60))
        .await
        .expect("ready");
    let sample = || async {
        let text = generator.metrics().await.expect("metrics");
        let get = |name, labels: &[(&str, &str)]| metric(&text, name, labels).unwrap_or(0.0);
        (
            get("tidewatch_kafka_produced_total", &[("outcome", "acked")]),
            get("tidewatch_kafka_produced_total", &[("outcome", "failed")]),
            get(
                "tidewatch_kafka_producer_renewals_total",
                &[("reason", "stalled")],
            ) + get(
                "tidewatch_kafka_producer_renewals_total",
                &[("reason", "fatal")],
            ),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while sample().await.0 < 1_000.0 {
        assert!(Instant::now() < deadline, "{}", generator.log_tail());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        sample().await.2,
        0.0,
        "no renewal while the broker is there"
    );

    tokio::task::block_in_place(|| {
        broker.stop_server().expect("broker stopped");
        broker.start_server().expect("broker started again, empty");
    });
    let (acked_before, ..) = sample().await;
    let client = reqwest::Client::new();
    let (mut unready, mut renewed_at) = (None::<String>, None);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ready = client
            .get(generator.url("/health/ready"))
            .send()
            .await
            .expect("readiness answers");
        if ready.status() == StatusCode::SERVICE_UNAVAILABLE && unready.is_none() {
            unready = Some(ready.text().await.expect("body"));
        }
        let (acked, failed, renewals) = sample().await;
        if renewals > 0.0 && renewed_at.is_none() {
            renewed_at = Some(acked);
        }
        // Delivered again after the renewal: the new producer's records reach the broker.
        if renewed_at.is_some_and(|at| acked > at + 1_000.0) {
            assert!(failed > 0.0, "the old producer's sends failed");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no delivery 120 s after the broker restarted (acked {acked_before} -> {acked}, \
             failed {failed}, renewals {renewals}); log:\n{}",
            generator.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // librdkafka may call the refused producer id fatal at once (renewed within a second),
    // or go on failing or holding every record without saying so: then readiness fails
    // after 10 s, until the renewal at 20 s.
    let text = generator.metrics().await.expect("metrics");
    let stalled = metric(
        &text,
        "tidewatch_kafka_producer_renewals_total",
        &[("reason", "stalled")],
    );
    if stalled.is_some_and(|n| n > 0.0) {
        let unready = unready.expect("readiness said the records were not delivered");
        assert!(
            unready.contains("delivery")
                && unready.contains("none of the records was acknowledged"),
            "{unready}"
        );
    }
    // The records are on the restarted broker, and readiness is back.
    let read = tidewatch_kafka::inspect::read_topic_async(
        brokers.clone(),
        topic.to_owned(),
        500,
        Duration::from_secs(30),
        |_| true,
    )
    .await
    .expect("read back");
    assert!(
        read.len() >= 500,
        "{} records on the restarted broker",
        read.len()
    );
    if let Err(e) = generator.wait_ready(Duration::from_secs(30)).await {
        let health = client
            .get(generator.url("/health"))
            .send()
            .await
            .expect("health")
            .text()
            .await
            .expect("body");
        panic!("not ready again: {e:#}\n{health}");
    }
}
