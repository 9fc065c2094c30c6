//! What every service's OpenAPI document shares: the bearer scheme of the admin token, the
//! error answers every JSON-body and admin operation can give, and the `/openapi.json` route.
//!
//! An operation lists its own success answer and adds [`AdminRefusals`] (it is behind the
//! admin token) and [`BodyRefusals`] (it reads a JSON body) to its `responses(...)`, so a
//! generated client knows every status the server can send and the error body that comes
//! with it. `scripts/check-contracts` holds every service to its document.

use axum::body::Bytes;
use axum::http::header;
use axum::routing::get;
use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ComponentsBuilder, InfoBuilder, OpenApi, OpenApiBuilder};

use crate::{ApiError, ErrorBody, ErrorDetail};

/// The name operations behind the admin token refer to in `security(("bearer" = []))`.
pub const BEARER: &str = "bearer";

/// The answers of an operation behind the admin token when the token does not let it in.
#[derive(Debug, utoipa::IntoResponses)]
pub enum AdminRefusals {
    /// The `Authorization: Bearer` header is missing or carries the wrong token.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// Admin operations are disabled: the service has no token configured.
    #[response(status = 403)]
    Disabled(ErrorBody),
}

/// The answers of an operation reading a JSON body ([`crate::JsonBody`]) when the body is
/// refused: each names the field (or `body`, `content-type`) at fault.
#[derive(Debug, utoipa::IntoResponses)]
pub enum BodyRefusals {
    /// The body is not JSON, or a field has the wrong type.
    #[response(status = 400)]
    Malformed(ErrorBody),
    /// The body is larger than the service's limit.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// The `Content-Type` is not JSON.
    #[response(status = 415)]
    NotJson(ErrorBody),
    /// A field is missing, unknown or out of range.
    #[response(status = 422)]
    Invalid(ErrorBody),
}

/// An empty document with this title and description, at the workspace version, with the admin
/// token's bearer scheme and the error body: the base every service's routes are added to.
pub fn document(title: &str, description: &str) -> OpenApi {
    let mut doc = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title(title)
                .description(Some(description))
                .version(env!("CARGO_PKG_VERSION")),
        )
        .build();
    // The refusals refer to the error body by name: it must be among the components.
    let mut components = ComponentsBuilder::new()
        .schema_from::<ErrorBody>()
        .schema_from::<ErrorDetail>()
        .build();
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    doc.components = Some(components);
    doc
}

/// `routes` with `GET /openapi.json` answering `doc` (serialised once) and the JSON 404 and
/// 405 for every other path and method: how every service finishes its router.
pub fn finish(routes: Router, doc: &OpenApi) -> Router {
    let body = Bytes::from(serde_json::to_vec(doc).unwrap_or_default());
    routes
        .route(
            "/openapi.json",
            get(move || {
                let body = body.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], body) }
            }),
        )
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
}
