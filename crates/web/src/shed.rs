//! Load shedding: at most a fixed number of requests are served at once, and a request that
//! arrives when all the places are taken is answered `503 {"error": {"code": "overloaded"}}`
//! with `Retry-After` at once instead of waiting in a queue. Above capacity, the requests that
//! are served keep a bounded latency and the rest fail fast, so clients can back off or go to
//! another instance (`scripts/bench-overload` measures both sides).

use std::convert::Infallible;

use axum::error_handling::HandleErrorLayer;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tidewatch_telemetry::catalog;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::{BoxError, ServiceBuilder};

use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::response::{Response as DocResponse, ResponseBuilder};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::{OpenApi, Ref, RefOr};

use crate::ApiError;

/// Limits `api` to `max_concurrent` requests in flight over all its routes together;
/// 0 means no limit (requests queue in the runtime without bound).
pub fn limit<S: Clone + Send + Sync + 'static>(api: Router<S>, max_concurrent: usize) -> Router<S> {
    if max_concurrent == 0 {
        return api;
    }
    catalog::HTTP_MAX_CONCURRENT_REQUESTS
        .gauge(&[])
        .set(max_concurrent as f64);
    // The series exists at zero: an alert on its rate needs it before the first shed.
    catalog::HTTP_REQUESTS_SHED.counter(&[]).absolute(0);
    api.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(overloaded))
            .layer(LoadShedLayer::new())
            .layer(GlobalConcurrencyLimitLayer::new(max_concurrent))
            .layer(axum::middleware::from_fn(yield_once)),
    )
}

/// Adds the 503 of a shed request to every operation of `doc` (the limited API's own).
pub fn document(doc: &mut OpenApi) {
    let shed: RefOr<DocResponse> = ResponseBuilder::new()
        .description("Too many requests in flight: shed at once; retry later")
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(RefOr::<Schema>::Ref(Ref::from_schema_name(
                    "ErrorBody",
                ))))
                .build(),
        )
        .build()
        .into();
    for item in doc.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            operation
                .responses
                .responses
                .entry("503".to_owned())
                .or_insert_with(|| shed.clone());
        }
    }
}

/// Handlers that never wait (the model's arithmetic) would finish within the poll that
/// admitted them, so the limit would never see more than one request and the queue would
/// form, unbounded, in front of it (runnable connection tasks). Yielding once after
/// admission keeps an admitted request counted while it waits for the CPU: the limit then
/// bounds the queue itself, and requests beyond it are shed.
async fn yield_once(request: Request, next: Next) -> Response {
    tokio::task::yield_now().await;
    next.run(request).await
}

async fn overloaded(_: BoxError) -> Result<Response, Infallible> {
    catalog::HTTP_REQUESTS_SHED.counter(&[]).increment(1);
    let mut res = ApiError::client(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        None,
        "the service is at capacity; retry after a second",
    )
    .into_response();
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    // The request body was not read: the connection cannot carry another request.
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    Ok(res)
}
