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

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use futures::future::Either;
use tidewatch_telemetry::http::{HttpMetrics, HttpMetricsLayer};
use tower::{Layer, Service};

/// A service's whole HTTP surface from its parts:
/// - `api` (its paths documented in `api_doc`) behind the concurrency limit
///   (`max_concurrent`, 0 for none; [`shed`]) and, inside it, the fault switches
///   ([`faults`]);
/// - `rest` (admin and ops routes) behind neither, with `/openapi.json` (`doc`) and the
///   JSON 404 and 405 answers ([`openapi::finish`]);
/// - `http` (the request telemetry layer, `None` for an uninstrumented service) around
///   both, so every route and the fallback are counted once.
///
/// The API's layers sit in front of its router, not around each route: [`App`] matches the
/// path against the API's templates itself (with the matcher axum uses) and hands the
/// request to that template's copy of the layers, which label it with the template. axum
/// boxes every layer a `Router::layer` applies around every route and clones and moves the
/// box on every request, about 1,000 instructions a request here (BENCHMARKS.md,
/// "Prediction API"). `rest` is not on the hot path and keeps `Router::layer`. `api` must
/// have no fallback and every route of it must be in `api_doc` (a route missing there
/// would be answered 404); its 405 answer is set before the layers, so that a wrong method
/// is counted like any other answer.
pub fn assemble(
    api: Router,
    api_doc: &utoipa::openapi::OpenApi,
    rest: Router,
    doc: &utoipa::openapi::OpenApi,
    faults: &Faults,
    max_concurrent: usize,
    http: Option<HttpMetricsLayer>,
) -> App {
    let api = api.method_not_allowed_fallback(|| async { ApiError::method_not_allowed() });
    let shed = shed::layer(max_concurrent);
    let mut matcher = matchit::Router::new();
    let mut routes = Vec::new();
    for template in api_doc.paths.paths.keys() {
        let guarded = tower::ServiceBuilder::new()
            .option_layer(shed.clone())
            .layer(faults.layer())
            .service(api.clone());
        let route = match &http {
            Some(http) => tower::util::Either::Left(http.for_template(template).layer(guarded)),
            None => tower::util::Either::Right(guarded),
        };
        // The API's own router accepted the same templates, so they cannot conflict here.
        if let Err(e) = matcher.insert(template.as_str(), routes.len()) {
            panic!("the API's documented template {template} is not a route template: {e}");
        }
        routes.push(route);
    }
    let rest = openapi::finish(rest, doc);
    let rest = match http {
        Some(http) => rest.layer(http),
        None => rest,
    };
    App {
        api: Arc::new(Api { matcher, routes }),
        rest,
    }
}

/// The fault switches and the limit in front of the API router, and the request layer
/// around them when instrumented.
type Guarded =
    tower::util::Either<shed::Shed<faults::FaultService<Router>>, faults::FaultService<Router>>;
type ApiRoute = tower::util::Either<HttpMetrics<Guarded>, Guarded>;

/// A service's HTTP surface ([`assemble`]): served by `tidewatch_telemetry::server::serve`,
/// or called as any tower service in tests.
#[derive(Clone)]
pub struct App {
    api: Arc<Api>,
    rest: Router,
}

struct Api {
    /// The API's templates, each to its index in `routes`.
    matcher: matchit::Router<usize>,
    routes: Vec<ApiRoute>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("api_routes", &self.api.routes.len())
            .finish_non_exhaustive()
    }
}

impl Service<Request> for App {
    type Response = Response;
    type Error = Infallible;
    type Future =
        Either<<ApiRoute as Service<Request>>::Future, <Router as Service<Request>>::Future>;

    /// Always ready: routers are, and so are the layers in front of them (the limit sheds
    /// in `call`, it does not wait).
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let hit = self
            .api
            .matcher
            .at(request.uri().path())
            .ok()
            .map(|m| *m.value);
        match hit {
            // A clone of the route's layers (reference counts only), called at once: every
            // service in it is always ready.
            Some(i) => Either::Left(self.api.routes[i].clone().call(request)),
            None => Either::Right(self.rest.call(request)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use axum::routing::get;
    use tower::ServiceExt as _;
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem, PathsBuilder};
    use utoipa::openapi::{OpenApi, OpenApiBuilder};

    /// A document of `paths`, each with a GET.
    pub(crate) fn documented(paths: &[&str]) -> OpenApi {
        let mut builder = PathsBuilder::new();
        for path in paths {
            builder = builder.path(
                *path,
                PathItem::new(HttpMethod::Get, OperationBuilder::new()),
            );
        }
        OpenApiBuilder::new().paths(builder).build()
    }

    async fn answer(app: &App, method: &str, path: &str) -> (u16, String) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(axum::body::Body::empty())
            .expect("request");
        let response = app.clone().oneshot(request).await.expect("infallible");
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// The API's templates go to the API behind the fault switches (with a parameter, as
    /// axum matches it); a wrong method gets the JSON 405; everything else goes to the rest,
    /// which no fault reaches, and an unknown path gets the JSON 404.
    #[tokio::test]
    async fn the_api_templates_reach_the_api_behind_the_switches_and_the_rest_does_not() {
        let faults = Faults::new(&Fault::API);
        let app = assemble(
            Router::new()
                .route("/v1/items/{id}", get(|| async { "item" }))
                .route("/v1/items", get(|| async { "items" })),
            &documented(&["/v1/items/{id}", "/v1/items"]),
            Router::new().route("/v1/admin/state", get(|| async { "admin" })),
            &OpenApi::default(),
            &faults,
            0,
            None,
        );
        assert_eq!(
            answer(&app, "GET", "/v1/items/7").await,
            (200, "item".into())
        );
        assert_eq!(
            answer(&app, "GET", "/v1/items").await,
            (200, "items".into())
        );
        assert_eq!(
            answer(&app, "GET", "/v1/admin/state").await,
            (200, "admin".into())
        );
        let (status, body) = answer(&app, "POST", "/v1/items").await;
        assert_eq!(status, 405, "{body}");
        assert!(body.contains("method_not_allowed"), "{body}");
        let (status, body) = answer(&app, "GET", "/v1/nothing").await;
        assert_eq!(status, 404, "{body}");
        assert!(body.contains("not_found"), "{body}");

        faults
            .apply(&faults::FaultState {
                error_rate: Some(1.0),
                ..faults::FaultState::default()
            })
            .expect("errors");
        assert_eq!(answer(&app, "GET", "/v1/items/7").await.0, 500);
        assert_eq!(
            answer(&app, "GET", "/v1/admin/state").await.0,
            200,
            "not the rest"
        );
    }
}
