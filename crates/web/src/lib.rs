//! What every Tidewatch HTTP API shares, so their clients see one behaviour:
//!
//! - [`error`]: [`ApiError`], answered as `{"error": {"code", "message", "field"}}` with a
//!   4xx naming the field for client mistakes and a bare 500 (details only in the log) for ours.
//! - [`extract`]: [`JsonBody`], a JSON extractor that checks content type and size and
//!   names the failing field path; [`extract::parse`] and [`extract::from_value`] for parts.
//! - [`admin`]: the admin bearer token, compared in constant time, refusals counted.
//! - [`shed`]: a global limit on requests in flight, above which requests get a fast 503.
//! - [`faults`]: fault-injection switches behind the admin token, for the alert scenarios.
//! - [`openapi`]: the bearer scheme, the shared error answers and `/openapi.json`.

pub mod admin;
pub mod error;
pub mod extract;
pub mod faults;
pub mod openapi;
pub mod shed;

pub use admin::{AdminAuth, AuthFailure};
pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use extract::{BodyLimit, JsonBody};
pub use faults::{Fault, Faults};

use axum::Router;
use tidewatch_telemetry::http::HttpMetricsLayer;

/// A service's whole router from its parts:
/// - `api` behind the concurrency limit (`max_concurrent`, 0 for none; [`shed`]) and,
///   inside it, the fault switches ([`faults`]);
/// - `rest` (admin and ops routes) behind neither, with `/openapi.json` (`doc`) and the
///   JSON 404 and 405 answers ([`openapi::finish`]);
/// - `http` (the request telemetry layer, `None` for an uninstrumented router) around
///   both, so every route and the fallback are counted once.
///
/// Each part is wrapped by one `Router::layer`: axum boxes each layer it applies around
/// every route and clones the box on every request, so the API's three layers share one
/// (BENCHMARKS.md, "Prediction API"). `api` must have no fallback; its 405 answer is set
/// before the layers, so that a wrong method is counted like any other answer.
pub fn assemble(
    api: Router,
    rest: Router,
    doc: &utoipa::openapi::OpenApi,
    faults: &Faults,
    max_concurrent: usize,
    http: Option<HttpMetricsLayer>,
) -> Router {
    let api = api
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(
            tower::ServiceBuilder::new()
                .option_layer(http.clone())
                .option_layer(shed::layer(max_concurrent))
                .layer(faults.layer()),
        );
    let rest = openapi::finish(rest, doc);
    let rest = match http {
        Some(http) => rest.layer(http),
        None => rest,
    };
    api.merge(rest)
}
