//! The prediction API as a client sees it: each test starts the real service on port 0.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser as _;
use prediction_api::settings::Settings;
use prediction_api::{Application, SERVICE};
use serde_json::{json, Value};
use tidewatch_telemetry::catalog::{self, Group};
use tidewatch_telemetry::{BuildInfo, Shutdown, Telemetry};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

struct TestApp {
    addr: SocketAddr,
    client: reqwest::Client,
    shutdown: Shutdown,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

fn model_path() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/volatility-spike.json")
        .display()
        .to_string()
}

async fn spawn_app(admin_token: Option<&str>) -> TestApp {
    let mut args = vec![
        "prediction-api".to_owned(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--model".into(),
        model_path(),
    ];
    if let Some(token) = admin_token {
        args.extend(["--admin-token".into(), token.into()]);
    }
    let settings = Settings::try_parse_from(args).expect("settings");
    let telemetry = Telemetry::new(BuildInfo::new(SERVICE, "test")).expect("telemetry");
    let app = Application::build(&settings, telemetry)
        .await
        .expect("app builds");
    let addr = app.local_addr().expect("bound");
    let shutdown = Shutdown::new();
    let server = tokio::spawn(app.run(shutdown.clone()));
    TestApp {
        addr,
        client: reqwest::Client::new(),
        shutdown,
        server,
    }
}

impl TestApp {
    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let res = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request");
        let status = res.status().as_u16();
        (status, res.json().await.expect("json body"))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let res = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("request");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("text")
    }

    async fn set_variant(&self, token: Option<&str>, variant: &str) -> (u16, Value) {
        let mut req = self
            .client
            .put(self.url("/v1/admin/model/variant"))
            .json(&json!({ "variant": variant }));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        (status, res.json().await.expect("json"))
    }
}

fn valid_request() -> Value {
    json!({
        "symbol": "BTC-USD",
        "features": {"ret_1m": 0.001, "ret_5m": 0.003, "vol_5m": 0.004, "vol_15m": 0.003, "volume_z": 2.0, "trade_rate": 8.0}
    })
}

fn with(mut request: Value, pointer: &str, value: Option<Value>) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer");
    let target = request
        .pointer_mut(parent)
        .expect("parent")
        .as_object_mut()
        .expect("object");
    match value {
        Some(v) => target.insert(key.to_owned(), v),
        None => target.remove(key),
    };
    request
}

/// Sum of a counter's samples whose labels include all of `labels`.
fn counter_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let scrape =
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test]
async fn predict_returns_a_probability_with_the_model_version_and_variant() {
    let app = spawn_app(None).await;

    let (status, body) = app.post("/v1/predict", &valid_request()).await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["symbol"], "BTC-USD");
    let p = body["probability"].as_f64().expect("probability");
    assert!((0.0..=1.0).contains(&p));
    assert_eq!(body["spike"], p >= 0.5);
    assert_eq!(body["model_version"], "1.0.0");
    assert_eq!(body["variant"], "ml");
}

#[tokio::test]
async fn each_validation_error_is_a_4xx_naming_its_field() {
    let app = spawn_app(None).await;
    let ok = valid_request();
    let mut cases: Vec<(String, Value, u16, &str)> = vec![
        (
            "missing symbol".into(),
            with(ok.clone(), "/symbol", None),
            422,
            "symbol",
        ),
        (
            "empty symbol".into(),
            with(ok.clone(), "/symbol", Some(json!(""))),
            422,
            "symbol",
        ),
        (
            "33-character symbol".into(),
            with(ok.clone(), "/symbol", Some(json!("A".repeat(33)))),
            422,
            "symbol",
        ),
        (
            "symbol with a slash".into(),
            with(ok.clone(), "/symbol", Some(json!("BTC/USD"))),
            422,
            "symbol",
        ),
        (
            "symbol as number".into(),
            with(ok.clone(), "/symbol", Some(json!(42))),
            422,
            "symbol",
        ),
        (
            "missing features".into(),
            with(ok.clone(), "/features", None),
            422,
            "features",
        ),
        (
            "features as array".into(),
            with(ok.clone(), "/features", Some(json!([1, 2]))),
            422,
            "features",
        ),
        (
            "negative vol_5m".into(),
            with(ok.clone(), "/features/vol_5m", Some(json!(-0.1))),
            422,
            "features.vol_5m",
        ),
        (
            "negative vol_15m".into(),
            with(ok.clone(), "/features/vol_15m", Some(json!(-1e-9))),
            422,
            "features.vol_15m",
        ),
        (
            "negative trade_rate".into(),
            with(ok.clone(), "/features/trade_rate", Some(json!(-3))),
            422,
            "features.trade_rate",
        ),
        (
            "string ret_1m".into(),
            with(ok.clone(), "/features/ret_1m", Some(json!("0.1"))),
            422,
            "features.ret_1m",
        ),
        (
            "null volume_z".into(),
            with(ok.clone(), "/features/volume_z", Some(Value::Null)),
            422,
            "features.volume_z",
        ),
        ("body is an array".into(), json!([1]), 422, "body"),
    ];
    for name in [
        "ret_1m",
        "ret_5m",
        "vol_5m",
        "vol_15m",
        "volume_z",
        "trade_rate",
    ] {
        let field: &'static str = Box::leak(format!("features.{name}").into_boxed_str());
        cases.push((
            format!("missing {name}"),
            with(ok.clone(), &format!("/features/{name}"), None),
            422,
            field,
        ));
    }

    for (name, body, want_status, want_field) in cases {
        let (status, err) = app.post("/v1/predict", &body).await;
        assert_eq!(status, want_status, "{name}: {err}");
        assert_eq!(err["error"]["field"], want_field, "{name}: {err}");
        assert!(
            err["error"]["code"].is_string() && err["error"]["message"].is_string(),
            "{name}: {err}"
        );
    }

    let raw_cases: [(&str, Option<&str>, String, u16, &str); 6] = [
        (
            "truncated JSON",
            Some("application/json"),
            r#"{"symbol":"BTC-USD","features":{"#.into(),
            400,
            "body",
        ),
        (
            "trailing garbage",
            Some("application/json"),
            format!("{} x", valid_request()),
            400,
            "body",
        ),
        (
            "number overflowing f64",
            Some("application/json"),
            valid_request().to_string().replace("0.001", "1e400"),
            422,
            "features.ret_1m",
        ),
        (
            "text/plain",
            Some("text/plain"),
            valid_request().to_string(),
            415,
            "content-type",
        ),
        (
            "no content type",
            None,
            valid_request().to_string(),
            415,
            "content-type",
        ),
        (
            "body over the limit",
            Some("application/json"),
            format!("{{\"symbol\":\"{}\"}}", "A".repeat(1_100_000)),
            413,
            "body",
        ),
    ];
    for (name, content_type, body, want_status, want_field) in raw_cases {
        let mut req = app.client.post(app.url("/v1/predict")).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        let err: Value = res.json().await.expect("JSON error body");
        assert_eq!(status, want_status, "{name}: {err}");
        assert_eq!(err["error"]["field"], want_field, "{name}: {err}");
    }
}

/// A 4 MiB body (four times the limit) gets its 413 JSON error from every common client,
/// also from those that write the whole body before reading the answer (Python's urllib):
/// the server reads and discards the rest of the body before it answers and closes.
#[tokio::test]
async fn an_oversized_body_gets_a_413_json_error_whatever_the_client() {
    let app = spawn_app(None).await;
    let url = app.url("/v1/predict");
    let body = format!("{{\"symbol\":\"{}\"}}", "A".repeat(4 * 1024 * 1024));
    let check = |client: &str, status: u16, text: &str| {
        let err: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("{client}: not a JSON error ({e}): {text:.200}"));
        assert_eq!(status, 413, "{client}: {err}");
        assert_eq!(err["error"]["code"], "payload_too_large", "{client}: {err}");
        assert_eq!(err["error"]["field"], "body", "{client}: {err}");
    };

    let res = app
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .expect("reqwest sends");
    let status = res.status().as_u16();
    check("reqwest", status, &res.text().await.expect("reqwest reads"));

    let path = std::env::temp_dir().join(format!("tidewatch-413-{}.json", std::process::id()));
    std::fs::write(&path, &body).expect("body file");
    // Each prints the response body, a newline and the status code. urllib sends headers and
    // the whole body, then reads; an HTTP error status is raised as HTTPError, anything else
    // (a broken pipe, a reset) fails the script.
    let urllib = r#"
import sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1], data=open(sys.argv[2], "rb").read(),
                             headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=30) as r:
        sys.stdout.write(r.read().decode() + "\n" + str(r.status))
except urllib.error.HTTPError as e:
    sys.stdout.write(e.read().decode() + "\n" + str(e.code))
"#;
    let data = format!("@{}", path.display());
    let clients: [(&str, &str, Vec<&str>); 2] = [
        (
            "urllib",
            "python3",
            vec!["-c", urllib, &url, path.to_str().expect("utf-8 path")],
        ),
        (
            "curl",
            "curl",
            vec![
                "-sS",
                "-H",
                "content-type: application/json",
                "-w",
                "\n%{http_code}",
                "--data-binary",
                &data,
                &url,
            ],
        ),
    ];
    for (client, program, args) in clients {
        let out = tokio::process::Command::new(program)
            .args(args)
            .output()
            .await
            .unwrap_or_else(|e| panic!("{program} runs: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let (text, status) = stdout
            .rsplit_once('\n')
            .unwrap_or_else(|| panic!("{client}: {}", String::from_utf8_lossy(&out.stderr)));
        check(client, status.trim().parse().expect("status"), text);
    }
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn validation_errors_are_counted_by_field() {
    let app = spawn_app(None).await;
    let before = counter_sum(
        &app.metrics().await,
        "tidewatch_prediction_validation_errors_total",
        &[("field", "features.trade_rate")],
    );

    app.post(
        "/v1/predict",
        &with(valid_request(), "/features/trade_rate", Some(json!(-1))),
    )
    .await;
    app.post(
        "/v1/predict/batch",
        &json!({"items": [with(valid_request(), "/features/trade_rate", None)]}),
    )
    .await;

    let after = counter_sum(
        &app.metrics().await,
        "tidewatch_prediction_validation_errors_total",
        &[("field", "features.trade_rate")],
    );
    assert!(after - before >= 2.0, "before {before}, after {after}");
}

#[tokio::test]
async fn a_batch_answers_every_item_in_order_with_a_result_or_an_error() {
    let app = spawn_app(None).await;
    let items = json!([
        valid_request(),
        with(valid_request(), "/features/vol_5m", Some(json!(-1))),
        with(valid_request(), "/symbol", Some(json!("ETH-USD"))),
        "not an object",
    ]);

    let (status, body) = app
        .post("/v1/predict/batch", &json!({ "items": items }))
        .await;

    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 4);
    assert_eq!(results[0]["result"]["symbol"], "BTC-USD");
    assert_eq!(results[1]["error"]["field"], "items[1].features.vol_5m");
    assert_eq!(results[2]["result"]["symbol"], "ETH-USD");
    assert_eq!(results[3]["error"]["field"], "items[3]");
    assert_eq!(
        (body["succeeded"].as_u64(), body["failed"].as_u64()),
        (Some(2), Some(2))
    );
    // The same item gets the same answer alone and in a batch.
    let (_, single) = app.post("/v1/predict", &valid_request()).await;
    assert_eq!(results[0]["result"], single);
}

#[tokio::test]
async fn a_batch_over_1000_items_or_empty_is_rejected_naming_items() {
    let app = spawn_app(None).await;
    let small = json!({"symbol": "X", "features": {"ret_1m": 0, "ret_5m": 0, "vol_5m": 0, "vol_15m": 0, "volume_z": 0, "trade_rate": 0}});
    let at_limit: Vec<Value> = vec![small.clone(); 1000];
    let over: Vec<Value> = vec![small; 1001];
    let big = reqwest::Client::new();

    let ok = big
        .post(app.url("/v1/predict/batch"))
        .json(&json!({ "items": at_limit }))
        .send()
        .await
        .expect("send");
    let too_many = big
        .post(app.url("/v1/predict/batch"))
        .json(&json!({ "items": over }))
        .send()
        .await
        .expect("send");
    let (empty_status, empty) = app.post("/v1/predict/batch", &json!({ "items": [] })).await;

    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(too_many.status().as_u16(), 422);
    let err: Value = too_many.json().await.expect("json");
    assert_eq!(err["error"]["field"], "items");
    assert_eq!(err["error"]["code"], "too_many_items");
    assert_eq!(
        (empty_status, empty["error"]["field"].as_str()),
        (422, Some("items"))
    );
}

#[tokio::test]
async fn the_variant_switch_takes_effect_without_restart_and_needs_the_token() {
    let app = spawn_app(Some("correct-horse")).await;
    let failures = |text: &str, reason| {
        counter_sum(
            text,
            "tidewatch_admin_auth_failures_total",
            &[("reason", reason)],
        )
    };
    let before = app.metrics().await;

    let (no_token, _) = app.set_variant(None, "baseline").await;
    let (wrong_token, _) = app.set_variant(Some("wrong-horse"), "baseline").await;
    let (_, still_ml) = app.post("/v1/predict", &valid_request()).await;
    let (unknown, unknown_err) = app.set_variant(Some("correct-horse"), "neural").await;
    let (switched, switch_body) = app.set_variant(Some("correct-horse"), "baseline").await;
    let (_, now_baseline) = app.post("/v1/predict", &valid_request()).await;
    let (_, model) = app.get("/v1/model").await;
    let after = app.metrics().await;

    assert_eq!((no_token, wrong_token), (401, 401));
    assert_eq!(still_ml["variant"], "ml");
    assert_eq!(
        (unknown, unknown_err["error"]["field"].as_str()),
        (422, Some("variant"))
    );
    assert_eq!(switched, 200);
    assert_eq!(
        switch_body,
        json!({"variant": "baseline", "previous": "ml"})
    );
    assert_eq!(now_baseline["variant"], "baseline");
    assert_ne!(
        now_baseline["probability"], still_ml["probability"],
        "baseline is a different predictor"
    );
    assert_eq!(model["variant"], "baseline");
    assert_eq!(
        failures(&after, "missing") - failures(&before, "missing"),
        1.0
    );
    assert_eq!(
        failures(&after, "invalid") - failures(&before, "invalid"),
        1.0
    );
}

#[tokio::test]
async fn admin_endpoints_are_forbidden_when_no_token_is_configured() {
    let app = spawn_app(None).await;

    let (status, body) = app.set_variant(Some(""), "baseline").await;
    let (_, prediction) = app.post("/v1/predict", &valid_request()).await;

    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "admin_disabled");
    assert_eq!(prediction["variant"], "ml");
}

#[tokio::test]
async fn the_model_endpoint_describes_features_training_and_held_out_scores() {
    let app = spawn_app(None).await;

    let (status, model) = app.get("/v1/model").await;

    assert_eq!(status, 200);
    assert_eq!(model["name"], "volatility-spike-logreg");
    assert_eq!(model["version"], "1.0.0");
    assert_eq!(model["variant"], "ml");
    assert_eq!(
        model["features"],
        json!([
            "ret_1m",
            "ret_5m",
            "vol_5m",
            "vol_15m",
            "volume_z",
            "trade_rate"
        ])
    );
    assert_eq!(model["training"]["seed"], 42);
    for variant in ["ml", "baseline"] {
        for metric in ["accuracy", "precision", "recall", "f1", "auc"] {
            let v = model["heldout"][variant][metric].as_f64().expect("score");
            assert!((0.0..=1.0).contains(&v), "{variant} {metric} = {v}");
        }
    }
}

#[tokio::test]
async fn openapi_documents_every_api_route_and_system_info_hides_the_token() {
    let app = spawn_app(Some("very-secret-token")).await;

    let (_, doc) = app.get("/openapi.json").await;
    let info = app
        .client
        .get(app.url("/v1/system/info"))
        .send()
        .await
        .expect("info")
        .text()
        .await
        .expect("text");

    let paths: HashSet<&str> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(String::as_str)
        .collect();
    for path in [
        "/v1/predict",
        "/v1/predict/batch",
        "/v1/model",
        "/v1/admin/model/variant",
        "/v1/system/info",
        "/v1/drift/status",
        "/v1/drift/update",
        "/v1/admin/drift/reset",
    ] {
        assert!(paths.contains(path), "{path} missing from {paths:?}");
    }
    assert!(doc["components"]["schemas"]["PredictRequest"].is_object());
    assert!(!info.contains("very-secret-token"), "{info}");
    let info: Value = serde_json::from_str(&info).expect("json");
    assert_eq!(info["service"], "prediction-api");
    assert_eq!(info["settings"]["admin_token"], "set (masked)");
    assert!(info["git_commit"].as_str().is_some_and(|c| !c.is_empty()));
}

#[tokio::test]
async fn unknown_paths_collapse_into_one_route_label() {
    let app = spawn_app(None).await;
    let series = |text: &str| -> Vec<(String, String)> {
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("parses");
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == "http_server_requests_total")
            .map(|s| {
                (
                    s.labels.get("http_route").unwrap_or("").to_owned(),
                    format!("{:?}", s.labels),
                )
            })
            .collect()
    };

    for i in 0..1000u32 {
        let path = format!("/random/{}/{}", i.wrapping_mul(2_654_435_761), i);
        let res = app
            .client
            .get(app.url(&path))
            .send()
            .await
            .expect("request");
        assert_eq!(res.status().as_u16(), 404);
    }
    let text = app.metrics().await;
    let after = series(&text);

    // Other tests share this process's recorder, so judge the label values, not a diff.
    let known = [
        "/v1/predict",
        "/v1/predict/batch",
        "/v1/model",
        "/v1/admin/model/variant",
        "/v1/system/info",
        "/v1/drift/status",
        "/v1/drift/update",
        "/v1/admin/drift/reset",
        "/v1/admin/faults",
        "/openapi.json",
        "/metrics",
        "/health",
        "/health/live",
        "/health/ready",
        "unmatched",
    ];
    for (route, labels) in &after {
        assert!(
            known.contains(&route.as_str()),
            "unexpected route label: {labels}"
        );
    }
    let unmatched = after
        .iter()
        .filter(|(route, _)| route == "unmatched")
        .count();
    assert!(unmatched <= 3, "1000 random paths made {unmatched} series");
    assert!(
        counter_sum(
            &text,
            "http_server_requests_total",
            &[("http_route", "unmatched")]
        ) >= 1000.0
    );
    assert!(!text.contains("/random/"), "raw paths leaked into labels");
}

#[tokio::test]
async fn every_catalogued_metric_of_the_service_is_exposed_and_parses() {
    let app = spawn_app(Some("t")).await;
    app.post("/v1/predict", &valid_request()).await;
    app.get("/health").await;
    let text = app.metrics().await;

    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("the exposition parses");
    let exposed: HashSet<&str> = scrape
        .samples
        .iter()
        .filter_map(|s| catalog::lookup(&s.metric).map(|m| m.name))
        .collect();
    for s in &scrape.samples {
        assert!(
            catalog::lookup(&s.metric).is_some(),
            "{} is exposed but not catalogued",
            s.metric
        );
    }
    let groups = [
        Group::Http,
        Group::Process,
        Group::Runtime,
        Group::Health,
        Group::Prediction,
        Group::Admin,
    ];
    for m in catalog::ALL.iter().filter(|m| groups.contains(&m.group)) {
        assert!(
            exposed.contains(m.name),
            "{} is catalogued for this service but not exposed",
            m.name
        );
    }
    assert!(
        !text.contains("quantile="),
        "histograms must not render as summaries"
    );
    assert!(text.contains("# HELP http_server_request_duration_seconds "));
}

#[tokio::test]
async fn responses_carry_a_request_id_and_keep_the_callers() {
    let app = spawn_app(None).await;

    let generated = app
        .client
        .get(app.url("/health/live"))
        .send()
        .await
        .expect("live");
    let propagated = app
        .client
        .get(app.url("/health/live"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .expect("live");

    assert!(generated
        .headers()
        .get("x-request-id")
        .is_some_and(|v| v.len() >= 32));
    assert_eq!(
        propagated.headers().get("x-request-id").expect("header"),
        "abc-123"
    );
}

#[tokio::test]
async fn health_reports_the_model_and_readiness_fails_once_shutdown_starts() {
    let app = spawn_app(None).await;

    let (live, _) = app.get("/health/live").await;
    let (ready, ready_body) = app.get("/health/ready").await;
    let (status, health) = app.get("/health").await;

    assert_eq!((live, ready, status), (200, 200, 200));
    assert_eq!(ready_body["ready"], true);
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["components"][0]["name"], "model");
    assert_eq!(health["components"][0]["status"], "healthy");
    assert!(health["components"][0]["reason"]
        .as_str()
        .expect("reason")
        .contains("1.0.0"));
}

#[tokio::test]
async fn a_request_in_flight_during_shutdown_completes() {
    let app = spawn_app(None).await;
    let body = valid_request().to_string();
    let (head, tail) = body.split_at(body.len() / 2);
    let mut stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let request_head = format!(
        "POST /v1/predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{head}",
        body.len()
    );
    stream
        .write_all(request_head.as_bytes())
        .await
        .expect("write head");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    app.shutdown.trigger();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let refused = tokio::net::TcpStream::connect(app.addr).await.is_err();
    stream.write_all(tail.as_bytes()).await.expect("write tail");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let served = tokio::time::timeout(std::time::Duration::from_secs(5), app.server).await;

    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"probability\""), "{response}");
    assert!(refused, "new connections are refused once shutdown starts");
    assert!(
        matches!(served, Ok(Ok(Ok(())))),
        "server stopped cleanly: {served:?}"
    );
}

#[tokio::test]
async fn a_missing_model_artifact_stops_the_service_with_a_clear_message() {
    let settings = Settings::try_parse_from([
        "prediction-api",
        "--listen",
        "127.0.0.1:0",
        "--model",
        "/nonexistent/model.json",
    ])
    .expect("settings");
    let telemetry = Telemetry::new(BuildInfo::new(SERVICE, "test")).expect("telemetry");

    let err = Application::build(&settings, telemetry)
        .await
        .expect_err("must not start");

    let message = format!("{err:#}");
    assert!(
        message.contains("/nonexistent/model.json") && message.contains("cannot start"),
        "{message}"
    );
}

#[tokio::test]
async fn reported_outcomes_drive_the_drift_detectors_until_an_admin_resets_them() {
    let app = spawn_app(Some("t")).await;
    let (status, body) = app.get("/v1/drift/status").await;
    assert_eq!(status, 200);
    assert_eq!(body["drift_detected"], false);
    assert_eq!(body["samples"], 0);

    // A model right 95% of the time, then wrong every other time. DDM starts afresh after
    // signalling drift, so the signal is looked for in every answer.
    let mut drift_at = None;
    for i in 0..400 {
        let wrong = if i < 200 { i % 20 == 0 } else { i % 2 == 0 };
        let (status, body) = app
            .post(
                "/v1/drift/update",
                &json!({"prediction": 1, "actual": if wrong { 0 } else { 1 }, "probability": 0.8}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let ddm_drift = body["detectors"]
            .as_array()
            .expect("detectors")
            .iter()
            .any(|d| d["detector"] == "ddm" && d["level"] == "drift");
        if i < 200 {
            assert_eq!(
                body["drift_detected"], false,
                "stable while the model is right: {body}"
            );
        } else if ddm_drift && drift_at.is_none() {
            assert_eq!(body["drift_detected"], true);
            drift_at = Some(i - 200);
        }
    }
    let after = drift_at.expect("DDM reached drift after the model got worse");
    assert!(after < 100, "DDM drift {after} outcomes after the change");
    let (_, body) = app.get("/v1/drift/status").await;
    assert_eq!(body["samples"], 400);
    let text = app.metrics().await;
    assert!(
        counter_sum(
            &text,
            "tidewatch_drift_events_total",
            &[("detector", "ddm"), ("level", "drift")]
        ) >= 1.0,
        "drift counted"
    );

    // Bad reports are refused by field and change nothing.
    for (body, field) in [
        (json!({"actual": 1, "probability": 0.5}), "prediction"),
        (
            json!({"prediction": 2, "actual": 1, "probability": 0.5}),
            "prediction",
        ),
        (
            json!({"prediction": 1, "actual": "yes", "probability": 0.5}),
            "actual",
        ),
        (
            json!({"prediction": 1, "actual": 0, "probability": 1.5}),
            "probability",
        ),
        (json!({"prediction": 1, "actual": 0}), "probability"),
    ] {
        let (status, err) = app.post("/v1/drift/update", &body).await;
        assert_eq!(status, 422, "{body} -> {err}");
        assert_eq!(err["error"]["field"], field, "{body} -> {err}");
    }
    assert_eq!(app.get("/v1/drift/status").await.1["samples"], 400);

    // The reset needs the token, then starts every detector afresh.
    let refused = app
        .client
        .post(app.url("/v1/admin/drift/reset"))
        .bearer_auth("wrong")
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status().as_u16(), 401);
    let reset = app
        .client
        .post(app.url("/v1/admin/drift/reset"))
        .bearer_auth("t")
        .send()
        .await
        .expect("request");
    assert_eq!(reset.status().as_u16(), 200);
    let body: Value = reset.json().await.expect("json");
    assert_eq!(body["drift_detected"], false, "{body}");
    assert_eq!(body["samples"], 0);
}

/// Above the concurrency limit a request is shed at once with a 503 naming the reason,
/// while probes and metrics still answer. The injected latency fault holds the only place.
#[tokio::test]
async fn requests_beyond_the_limit_are_shed_with_503_and_probes_still_answer() {
    let settings = Settings::try_parse_from([
        "prediction-api",
        "--listen",
        "127.0.0.1:0",
        "--model",
        &model_path(),
        "--admin-token",
        "t0ken",
        "--max-concurrent-requests",
        "1",
    ])
    .expect("settings");
    let telemetry = Telemetry::new(BuildInfo::new(SERVICE, "test")).expect("telemetry");
    let app = Application::build(&settings, telemetry).await.expect("app");
    let base = format!("http://{}", app.local_addr().expect("addr"));
    let shutdown = Shutdown::new();
    tokio::spawn(app.run(shutdown.clone()));
    let client = reqwest::Client::new();
    let res = client
        .put(format!("{base}/v1/admin/faults"))
        .bearer_auth("t0ken")
        .json(&json!({"latency_ms": 1500}))
        .send()
        .await
        .expect("faults");
    assert_eq!(res.status(), 200);
    let body = json!({"symbol": "BTC-USD", "features": {"ret_1m": 0.001, "ret_5m": 0.003,
        "vol_5m": 0.004, "vol_15m": 0.003, "volume_z": 2.0, "trade_rate": 8.0}});
    let slow = tokio::spawn({
        let (client, url, body) = (client.clone(), format!("{base}/v1/predict"), body.clone());
        async move {
            client
                .post(url)
                .json(&body)
                .send()
                .await
                .expect("slow")
                .status()
        }
    });
    // The first request holds the place for 1.5 s; the second finds it taken.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let shed = client
        .post(format!("{base}/v1/predict"))
        .json(&body)
        .send()
        .await
        .expect("shed");
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    let err: Value = shed.json().await.expect("json");
    assert_eq!(err["error"]["code"], "overloaded");
    let ready = client
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .expect("ready");
    assert_eq!(ready.status(), 200, "probes are not limited");
    // Counted as shed, and as a server error of its kind (the recorder is shared by this
    // process's tests, so at least one).
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        counter_sum(&metrics, "tidewatch_http_requests_shed_total", &[]) >= 1.0,
        "{metrics}"
    );
    assert!(
        counter_sum(
            &metrics,
            "tidewatch_http_server_errors_total",
            &[("error_type", "overloaded")]
        ) >= 1.0
    );
    assert_eq!(
        slow.await.expect("slow task"),
        200,
        "the admitted request is served"
    );
    shutdown.trigger();
}
