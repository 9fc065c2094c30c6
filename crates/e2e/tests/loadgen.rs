//! The load driver against the real prediction API, both as built binaries: it keeps the
//! API busy with both kinds of request, counts their outcomes, changes its rate at run
//! time behind the admin token (bad bodies get a 422 naming the field), and exits 0 on
//! SIGTERM.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tidewatch_e2e::Service;

fn sum(metrics: &str, prefix: &str, contains: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix) && contains.iter().all(|c| l.contains(c)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_driver_keeps_the_api_busy_and_its_rate_changes_at_run_time() {
    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/volatility-spike.json"
    );
    let mut api = Service::start("prediction-api", &["--model", model], &[]).expect("api starts");
    api.wait_ready(Duration::from_secs(30))
        .await
        .expect("api ready");
    let target = api.url("");
    let mut loadgen = Service::start(
        "loadgen",
        &[
            "--target-url",
            target.trim_end_matches('/'),
            "--rate",
            "40",
            "--batch-share",
            "0.3",
            "--batch-size",
            "5",
        ],
        &[("ADMIN_TOKEN", "s3cret")],
    )
    .expect("loadgen starts");
    loadgen
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("loadgen ready");

    // Both endpoints answered 200, as the API counts them and as the driver does.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut single, mut batch) = (0.0, 0.0);
    while Instant::now() < deadline && (single < 20.0 || batch < 5.0) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let m = api.metrics().await.expect("api metrics");
        single = sum(
            &m,
            "http_server_requests_total",
            &["http_route=\"/v1/predict\"", "status_code=\"200\""],
        );
        batch = sum(
            &m,
            "http_server_requests_total",
            &["http_route=\"/v1/predict/batch\"", "status_code=\"200\""],
        );
    }
    assert!(
        single >= 20.0 && batch >= 5.0,
        "the API answered {single} single and {batch} batch requests\n{}",
        loadgen.log_tail()
    );
    let m = loadgen.metrics().await.expect("loadgen metrics");
    let ok = sum(&m, "tidewatch_loadgen_requests_total", &["outcome=\"ok\""]);
    let bad = sum(&m, "tidewatch_loadgen_requests_total", &["error\""])
        + sum(
            &m,
            "tidewatch_loadgen_requests_total",
            &["outcome=\"failed\""],
        );
    assert!(
        ok >= single + batch - 5.0,
        "loadgen counted {ok} ok against the API's {}",
        single + batch
    );
    assert_eq!(bad, 0.0, "every request was well-formed and answered");
    assert!(
        m.contains("tidewatch_loadgen_request_duration_seconds_bucket"),
        "latency is measured"
    );

    // The rate changes at run time, behind the token; a bad value is refused by name.
    let client = reqwest::Client::new();
    let put = |token: Option<&str>, body: Value| {
        let mut r = client.put(loadgen.url("/v1/admin/rate")).json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let refused = put(None, json!({"requests_per_second": 0}))
        .await
        .expect("answers");
    assert!(refused.status().is_client_error(), "{}", refused.status());
    let invalid = put(Some("s3cret"), json!({"requests_per_second": -1}))
        .await
        .expect("answers");
    assert_eq!(invalid.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let error: Value = invalid.json().await.expect("json");
    assert_eq!(error["error"]["field"], "requests_per_second", "{error}");
    let stopped = put(Some("s3cret"), json!({"requests_per_second": 0}))
        .await
        .expect("answers");
    assert_eq!(stopped.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(2)).await; // answers still on their way
    let before = sum(
        &api.metrics().await.expect("metrics"),
        "http_server_requests_total",
        &["/v1/predict"],
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = sum(
        &api.metrics().await.expect("metrics"),
        "http_server_requests_total",
        &["/v1/predict"],
    );
    assert_eq!(before, after, "rate 0 sends nothing");
    let status: Value = client
        .get(loadgen.url("/v1/status"))
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert_eq!(status["requests_per_second"], 0.0);

    let exit =
        tokio::task::block_in_place(|| loadgen.terminate(Duration::from_secs(15))).expect("exits");
    assert!(exit.success(), "SIGTERM exits 0: {}", loadgen.log_tail());
    tokio::task::block_in_place(|| api.terminate(Duration::from_secs(15))).expect("api exits");
}
