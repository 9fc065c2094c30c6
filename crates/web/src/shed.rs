//! Load shedding: at most a fixed number of requests are served at once, and a request that
//! arrives when all the places are taken is answered `503 {"error": {"code": "overloaded"}}`
//! with `Retry-After` at once instead of waiting in a queue. Above capacity, the requests that
//! are served keep a bounded latency and the rest fail fast, so clients can back off or go to
//! another instance (`scripts/bench-overload` measures both sides).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use metrics::Counter;
use tidewatch_telemetry::catalog;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::response::{Response as DocResponse, ResponseBuilder};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::{OpenApi, Ref, RefOr};

use crate::ApiError;

/// The limit of `max_concurrent` requests in flight over all the routes it is applied to
/// together, as a layer ([`crate::guard`] applies it); 0 means no limit (requests queue in
/// the runtime without bound).
pub(crate) fn layer(max_concurrent: usize) -> Option<ShedLayer> {
    if max_concurrent == 0 {
        return None;
    }
    catalog::HTTP_MAX_CONCURRENT_REQUESTS
        .gauge(&[])
        .set(max_concurrent as f64);
    // The series exists at zero: an alert on its rate needs it before the first shed.
    catalog::HTTP_REQUESTS_SHED.counter(&[]).absolute(0);
    Some(ShedLayer {
        places: Arc::new(Semaphore::new(max_concurrent)),
        shed: catalog::HTTP_REQUESTS_SHED.counter(&[]),
    })
}

/// The limit as one tower layer: a place is taken without waiting (`try_acquire`), or the
/// request is answered 503 at once; an admitted request yields once before its handler
/// runs (see below) and gives its place back when its response is ready or it is dropped.
/// One service and one future instead of tower's load-shed, concurrency-limit and
/// error-handling layers and a `from_fn` middleware, each of which boxed a future or
/// cloned a service per request (BENCHMARKS.md, "Prediction API").
#[derive(Clone, Debug)]
pub(crate) struct ShedLayer {
    places: Arc<Semaphore>,
    shed: Counter,
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;
    fn layer(&self, inner: S) -> Shed<S> {
        Shed {
            inner,
            places: self.places.clone(),
            shed: self.shed.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Shed<S> {
    inner: S,
    places: Arc<Semaphore>,
    shed: Counter,
}

impl<S> Service<Request> for Shed<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ShedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match self.places.clone().try_acquire_owned() {
            // The handler's future is made now and first polled after one yield.
            Ok(place) => ShedFuture::Admitted {
                inner: self.inner.call(request),
                yielded: false,
                _place: place,
            },
            Err(_) => {
                self.shed.increment(1);
                ShedFuture::Shed {
                    response: Some(overloaded()),
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    #[project = ShedProj]
    pub(crate) enum ShedFuture<F> {
        Admitted { #[pin] inner: F, yielded: bool, _place: OwnedSemaphorePermit },
        Shed { response: Option<Response> },
    }
}

impl<F: Future<Output = Result<Response, Infallible>>> Future for ShedFuture<F> {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ShedProj::Admitted { inner, yielded, .. } => {
                // Handlers that never wait (the model's arithmetic) would finish within the
                // poll that admitted them, so the limit would never see more than one
                // request and the queue would form, unbounded, in front of it (runnable
                // connection tasks). Yielding once after admission keeps an admitted request
                // counted while it waits for the CPU: the limit then bounds the queue
                // itself, and requests beyond it are shed.
                if !*yielded {
                    *yielded = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                inner.poll(cx)
            }
            ShedProj::Shed { response } => {
                Poll::Ready(Ok(response.take().unwrap_or_else(overloaded)))
            }
        }
    }
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

fn overloaded() -> Response {
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
    res
}
