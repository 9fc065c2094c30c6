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

/// `api`'s routes behind the concurrency limit (`max_concurrent`, 0 for none; [`shed`])
/// and, inside it, the fault switches ([`faults`]), in one `Router::layer`: axum boxes each
/// layer it applies around every route and clones the box on every request, so the two
/// share one (BENCHMARKS.md, "Prediction API").
pub fn guard<S: Clone + Send + Sync + 'static>(
    api: Router<S>,
    faults: &Faults,
    max_concurrent: usize,
) -> Router<S> {
    api.layer(
        tower::ServiceBuilder::new()
            .option_layer(shed::layer(max_concurrent))
            .layer(faults.layer()),
    )
}
