//! Property tests of the read API's query parameters and path segments: arbitrary query
//! strings built from the known parameter names (and unknown ones) with arbitrary values.
//! The database is deliberately unreachable (a closed port), so every request either is
//! refused as the client's mistake (400/422, the JSON error naming the parameter) or passes
//! validation and meets the unreachable database (503); never a 500, never a panic.
//! The same validation against a live database is in `store_and_api.rs`.

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt as _;
use project::api;
use project::store::Store;
use proptest::prelude::*;
use serde_json::Value;
use tower::ServiceExt as _;

fn router() -> axum::Router {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_millis(20))
        .connect_lazy("postgres://tidewatch@127.0.0.1:1/nowhere")
        .expect("a lazy pool");
    api::router(Store::new(pool))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn get(rt: &tokio::runtime::Runtime, uri: &str) -> Result<(u16, Value), TestCaseError> {
    let request = Request::get(uri)
        .body(Body::empty())
        .map_err(|e| TestCaseError::reject(format!("not a URI: {e}")))?;
    rt.block_on(async {
        let res = router().oneshot(request).await.expect("infallible");
        let status = res.status().as_u16();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    })
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,30}",
        Just("BTC-USD".to_owned()),
        Just("1m".to_owned()),
        Just("5m".to_owned()),
        Just("2026-11-23T10:00:00Z".to_owned()),
        Just("2026-11-23T10:00:00+01:00".to_owned()),
        (-5i64..2_000).prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        Just(String::new()),
    ]
}

fn name() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "symbol", "interval", "from", "to", "limit", "cursor", "sort", "", "symbol[]",
    ])
}

fn query() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    prop::collection::vec((name(), value()), 0..6)
}

/// Percent-encodes everything but the unreserved characters.
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn encode(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn check(status: u16, body: &Value, what: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        matches!(status, 200 | 400 | 404 | 422 | 503),
        "{what}: {status} {body}"
    );
    if matches!(status, 400 | 422) {
        let field = body["error"]["field"].as_str().unwrap_or_default();
        prop_assert!(!field.is_empty(), "{what}: {status} names no field: {body}");
    }
    if status == 503 {
        prop_assert_eq!(&body["error"]["code"], "database_unavailable", "{}", what);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn query_strings(path in prop::sample::select(vec!["/v1/bars", "/v1/predictions", "/v1/symbols"]),
                     pairs in query()) {
        let rt = runtime();
        let uri = format!("{path}?{}", encode(&pairs));
        let (status, body) = get(&rt, &uri)?;
        check(status, &body, &uri)?;
    }

    #[test]
    fn raw_query_bytes(path in prop::sample::select(vec!["/v1/bars", "/v1/predictions"]),
                       raw in "[ -~]{0,60}") {
        let rt = runtime();
        let uri = format!("{path}?{raw}");
        if let Ok((status, body)) = get(&rt, &uri) {
            check(status, &body, &uri)?;
        }
    }

    #[test]
    fn symbol_path_segments(symbol in ".{1,40}") {
        let rt = runtime();
        let uri = format!("/v1/symbols/{}/latest", pct(&symbol));
        let (status, body) = get(&rt, &uri)?;
        check(status, &body, &uri)?;
    }
}

/// Found by `scripts/fuzz` (target `read_api_query`): a segment whose percent-encoded bytes
/// are not UTF-8 got axum's own plain-text 400.
#[test]
fn a_symbol_segment_that_is_not_utf8_is_refused_as_json_naming_it() {
    let rt = runtime();
    for uri in ["/v1/symbols/%FF/latest", "/v1/symbols/BTC%C3-USD/latest"] {
        let (status, body) = get(&rt, uri).expect("a URI");
        assert_eq!(status, 422, "{uri}: {body}");
        assert_eq!(body["error"]["code"], "invalid_symbol", "{uri}: {body}");
        assert_eq!(body["error"]["field"], "symbol", "{uri}: {body}");
    }
}
