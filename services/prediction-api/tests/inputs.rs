//! Property tests of every request body and parameter the prediction API reads, against the
//! real service on port 0: valid bodies with one field replaced, removed or added, arbitrary
//! JSON and arbitrary bytes. The service never answers 5xx to them (no panic, no internal
//! error) and every 4xx is the JSON error naming the field or the body.

use std::sync::OnceLock;

use clap::Parser as _;
use prediction_api::settings::Settings;
use prediction_api::{Application, SERVICE};
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use tidewatch_telemetry::{BuildInfo, Shutdown, Telemetry};

const TOKEN: &str = "property-token";

struct Served {
    runtime: tokio::runtime::Runtime,
    base: String,
    client: reqwest::Client,
    _shutdown: Shutdown,
}

/// One service for every case of every property (a fresh one per case would test start-up).
fn served() -> &'static Served {
    static SERVED: OnceLock<Served> = OnceLock::new();
    SERVED.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let model = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/volatility-spike.json"
        );
        let settings = Settings::try_parse_from([
            "prediction-api",
            "--listen",
            "127.0.0.1:0",
            "--model",
            model,
            "--admin-token",
            TOKEN,
        ])
        .expect("settings");
        let shutdown = Shutdown::new();
        let base = runtime.block_on(async {
            let telemetry = Telemetry::new(BuildInfo::new(SERVICE, "test")).expect("telemetry");
            let app = Application::build(&settings, telemetry).await.expect("app");
            let base = format!("http://{}", app.local_addr().expect("addr"));
            tokio::spawn(app.run(shutdown.clone()));
            base
        });
        Served {
            runtime,
            base,
            client: reqwest::Client::new(),
            _shutdown: shutdown,
        }
    })
}

/// Sends `body` (raw bytes, as JSON) and checks the answer's contract.
fn check(method: &str, path: &str, body: Vec<u8>) -> Result<(), TestCaseError> {
    let s = served();
    let (status, text) = s.runtime.block_on(async {
        let res = s
            .client
            .request(method.parse().unwrap(), format!("{}{path}", s.base))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(body)
            .send()
            .await
            .expect("the service answers");
        (res.status().as_u16(), res.text().await.unwrap_or_default())
    });
    prop_assert!(status < 500, "{method} {path}: {status} {text}");
    if status >= 400 {
        let v: Value = serde_json::from_str(&text).map_err(|e| {
            TestCaseError::fail(format!("{method} {path}: {status} not JSON ({e}): {text}"))
        })?;
        let field = v["error"]["field"].as_str().unwrap_or_default();
        prop_assert!(
            !field.is_empty(),
            "{method} {path}: {status} names no field: {text}"
        );
        prop_assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{text}"
        );
    }
    Ok(())
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop_oneof![Just(-1.0), Just(0.0), Just(1e308), Just(0.5), Just(2.0)].prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        prop_oneof![Just("ml"), Just("baseline"), Just("BTC-USD"), Just("")].prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// `value` with one change somewhere inside (objects and arrays are walked into).
fn mutate(value: Value) -> BoxedStrategy<Value> {
    match value {
        Value::Object(obj) if !obj.is_empty() => {
            let keys: Vec<String> = obj.keys().cloned().collect();
            (prop::sample::select(keys), 0..4u8, any_json())
                .prop_flat_map(move |(key, how, replacement)| {
                    let obj: Map<String, Value> = obj.clone();
                    let inner = obj[&key].clone();
                    let rebuilt = move |changed: Option<Value>| {
                        let mut o = obj.clone();
                        match changed {
                            Some(v) => o.insert(key.clone(), v),
                            None => o.remove(&key),
                        };
                        Value::Object(o)
                    };
                    match how {
                        0 => Just(rebuilt(Some(replacement))).boxed(),
                        1 => Just(rebuilt(None)).boxed(),
                        2 => {
                            let mut extra = rebuilt(Some(inner.clone()));
                            extra["unexpected"] = replacement;
                            Just(extra).boxed()
                        }
                        _ => mutate(inner).prop_map(move |v| rebuilt(Some(v))).boxed(),
                    }
                })
                .boxed()
        }
        Value::Array(items) if !items.is_empty() => {
            let n = items.len();
            (0..n, any_json())
                .prop_map(move |(i, v)| {
                    let mut items = items.clone();
                    items[i] = v;
                    Value::Array(items)
                })
                .boxed()
        }
        _ => any_json().boxed(),
    }
}

fn predict_body() -> Value {
    json!({"symbol": "BTC-USD", "features": {"ret_1m": 0.001, "ret_5m": 0.003, "vol_5m": 0.004,
        "vol_15m": 0.003, "volume_z": 2.0, "trade_rate": 8.0}})
}

/// Every endpoint with a body, with a valid body for it.
fn endpoints() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        ("POST", "/v1/predict", predict_body()),
        (
            "POST",
            "/v1/predict/batch",
            json!({"items": [predict_body(), predict_body()]}),
        ),
        (
            "POST",
            "/v1/drift/update",
            json!({"prediction": 1, "actual": 0, "probability": 0.7}),
        ),
        ("PUT", "/v1/admin/model/variant", json!({"variant": "ml"})),
        // A valid fault change is reverted in the same body: error_rate 0 and latency 0.
        (
            "PUT",
            "/v1/admin/faults",
            json!({"error_rate": 0.0, "latency_ms": 0}),
        ),
    ]
}

#[test]
fn valid_bodies_are_accepted() {
    for (method, path, body) in endpoints() {
        let s = served();
        let status = s.runtime.block_on(async {
            s.client
                .request(method.parse().unwrap(), format!("{}{path}", s.base))
                .header("authorization", format!("Bearer {TOKEN}"))
                .json(&body)
                .send()
                .await
                .expect("answer")
                .status()
                .as_u16()
        });
        assert_eq!(status, 200, "{method} {path}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn bodies_with_one_change((method, path, body) in prop::sample::select(endpoints())
        .prop_flat_map(|(m, p, b)| (Just(m), Just(p), mutate(b)))) {
        // A fault switch that a mutation turned on would make later cases fail for the
        // wrong reason: only bodies that keep every switch off go to the faults route.
        let turns_a_fault_on = path == "/v1/admin/faults"
            && body.as_object().is_some_and(|o| o.values().any(|v| v != &json!(0) && v != &json!(0.0) && v != &json!(false)));
        prop_assume!(!turns_a_fault_on);
        check(method, path, serde_json::to_vec(&body).unwrap())?;
    }

    #[test]
    fn arbitrary_json((method, path, _) in prop::sample::select(endpoints()), body in any_json()) {
        prop_assume!(path != "/v1/admin/faults");
        check(method, path, serde_json::to_vec(&body).unwrap())?;
    }

    #[test]
    fn arbitrary_bytes((method, path, _) in prop::sample::select(endpoints()),
                       body in prop::collection::vec(any::<u8>(), 0..512)) {
        check(method, path, body)?;
    }
}
