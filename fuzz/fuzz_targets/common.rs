//! What the HTTP targets share: one current-thread runtime, a request through a router
//! in-process (no socket), and the checks every answer must pass.

use axum::body::Body;
use axum::Router;
use clap::Parser as _;
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The alert receiver's whole router (with its ops routes), one receiver named `default`.
/// Call inside the runtime: its telemetry starts tasks.
pub fn alert_receiver() -> Router {
    let telemetry = tidewatch_telemetry::Telemetry::new(tidewatch_telemetry::BuildInfo::new(
        "fuzz",
        env!("CARGO_PKG_VERSION"),
    ))
    .expect("telemetry");
    let settings =
        alert_receiver::Settings::parse_from(["alert-receiver", "--receivers", "default"]);
    alert_receiver::router(alert_receiver::AppState::new(&settings), telemetry)
}

/// The status and the JSON body (`Null` when empty) of `request` as `router` answers it.
pub async fn send(router: &Router, request: Request<Body>) -> (StatusCode, serde_json::Value) {
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("axum routers are infallible");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("an in-memory body")
        .to_bytes();
    let body = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{status}: the answer is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    (status, body)
}

/// An answer to input a client chose: never a 5xx, and every refusal is the documented
/// error body with a code and a message; `field_required` when the refusal must name the
/// part of the request at fault.
pub fn check_answer(
    what: &str,
    status: StatusCode,
    body: &serde_json::Value,
    field_required: bool,
) {
    assert!(
        !status.is_server_error(),
        "{what}: {status} on client input: {body}"
    );
    if status.is_client_error() {
        let error = &body["error"];
        assert!(
            error["code"].as_str().is_some_and(|c| !c.is_empty()),
            "{what}: {status} without an error code: {body}"
        );
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {status} without a message: {body}"
        );
        if field_required && matches!(status.as_u16(), 400 | 413 | 415 | 422) {
            assert!(
                error["field"].as_str().is_some_and(|f| !f.is_empty()),
                "{what}: {status} does not name the field: {body}"
            );
        }
    }
}
