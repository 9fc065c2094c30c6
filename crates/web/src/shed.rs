//! Load shedding: at most a fixed number of requests are served at once, and a request that
//! arrives when all the places are taken is answered `503 {"error": {"code": "overloaded"}}`
//! with `Retry-After` at once instead of waiting in a queue. Above capacity, the requests that
//! are served keep a bounded latency and the rest fail fast, so clients can back off or go to
//! another instance (`scripts/bench-overload` measures both sides).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use metrics::Counter;
use tidewatch_telemetry::catalog;
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
        places: Places::new(max_concurrent),
        shed: catalog::HTTP_REQUESTS_SHED.counter(&[]),
        open_connections: tidewatch_telemetry::server::open_connections,
    })
}

/// The places of the limit: how many are taken, counted by one atomic. A request that finds
/// them all taken is shed rather than queued, so nothing ever waits for a place and no
/// waiter list (a semaphore's, whose release takes a lock) is needed.
#[derive(Clone, Debug)]
pub(crate) struct Places {
    taken: Arc<AtomicUsize>,
    max: usize,
}

impl Places {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            taken: Arc::default(),
            max,
        }
    }

    /// A place, if one is free; it is given back when the returned guard is dropped.
    fn try_take(&self) -> Option<Place> {
        self.taken
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |taken| {
                (taken < self.max).then_some(taken + 1)
            })
            .ok()
            .map(|_| Place(self.taken.clone()))
    }
}

/// A taken place of the limit, given back on drop.
#[derive(Debug)]
pub struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

/// The limit as one tower layer: a place is taken without waiting ([`Places`]), or the
/// request is answered 503 at once; an admitted request yields once before its handler
/// runs while the connections could fill half the places (see [`ShedFuture`]), and gives
/// its place back when its response is ready or it is dropped.
/// One service and one future instead of tower's load-shed, concurrency-limit and
/// error-handling layers and a `from_fn` middleware, each of which boxed a future or
/// cloned a service per request (BENCHMARKS.md, "Prediction API").
#[derive(Clone, Debug)]
pub struct ShedLayer {
    places: Places,
    shed: Counter,
    /// [`tidewatch_telemetry::server::open_connections`]; a test's own count in tests.
    open_connections: fn() -> usize,
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;
    fn layer(&self, inner: S) -> Shed<S> {
        Shed {
            inner,
            places: self.places.clone(),
            shed: self.shed.clone(),
            open_connections: self.open_connections,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Shed<S> {
    inner: S,
    places: Places,
    shed: Counter,
    open_connections: fn() -> usize,
}

impl<S> Shed<S> {
    /// Whether an admitted request must yield before its handler runs: unless it came over
    /// HTTP/1 while fewer connections are open than half the places. Such a connection
    /// carries one request at a time, so requests queued for the CPU are at most as many as
    /// the connections, and with fewer connections than places nothing could ever be shed;
    /// the yield would only cost a trip through the scheduler and hyper's dispatcher (about
    /// 1,900 instructions, BENCHMARKS.md). The bound is half the places, not all of them, so
    /// that the requests in flight (`http_server_active_requests`, and ActiveRequestsHigh at
    /// 80% of the limit) count the queued ones whenever they come near the limit. HTTP/2 carries
    /// many requests over one connection, and 0 open connections means nothing counts them
    /// (a server not started through `tidewatch_telemetry::server::serve`): both yield.
    fn must_yield(&self, request: &Request) -> bool {
        let open = (self.open_connections)();
        open == 0 || open * 2 >= self.places.max || request.version() > Version::HTTP_11
    }
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
        match self.places.try_take() {
            // The handler's future is made now, and first polled after one yield unless
            // the yield cannot matter (see `ShedFuture`).
            Some(place) => ShedFuture::Admitted {
                yielded: !self.must_yield(&request),
                inner: self.inner.call(request),
                _place: place,
            },
            None => {
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
    pub enum ShedFuture<F> {
        Admitted { #[pin] inner: F, yielded: bool, _place: Place },
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
                // itself, and requests beyond it are shed. `Shed::must_yield` says when
                // the yield can be skipped (`yielded` starts true).
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    /// A limit of `places` in front of a handler that never waits, seeing `open` connections.
    fn limit(places: usize, open: fn() -> usize) -> Shed<tower::util::ServiceFn<Handler>> {
        ShedLayer {
            places: Places::new(places),
            shed: catalog::HTTP_REQUESTS_SHED.counter(&[]),
            open_connections: open,
        }
        .layer(tower::service_fn(answer as Handler))
    }

    type Handler = fn(Request) -> std::future::Ready<Result<Response, Infallible>>;

    fn answer(_: Request) -> std::future::Ready<Result<Response, Infallible>> {
        std::future::ready(Ok(StatusCode::OK.into_response()))
    }

    fn request(version: Version) -> Request {
        let mut request = Request::new(axum::body::Body::empty());
        *request.version_mut() = version;
        request
    }

    /// How many polls the answer takes, and its status.
    fn polls(mut future: impl Future<Output = Result<Response, Infallible>> + Unpin) -> (u32, u16) {
        let mut cx = Context::from_waker(Waker::noop());
        for n in 1..=3 {
            if let Poll::Ready(Ok(response)) = Pin::new(&mut future).poll(&mut cx) {
                return (n, response.status().as_u16());
            }
        }
        panic!("no answer in 3 polls");
    }

    #[test]
    fn an_admitted_request_yields_once_only_while_the_connections_could_fill_half_the_places() {
        // 3 connections, 8 places: nothing can be shed, the handler runs in the first poll.
        let mut few = limit(8, || 3);
        assert_eq!(polls(few.call(request(Version::HTTP_11))), (1, 200));
        // 4 connections (half of 8) and more: the admitted request waits one turn, holding
        // its place, so the queue for the CPU is counted against the limit.
        let mut half = limit(8, || 4);
        assert_eq!(polls(half.call(request(Version::HTTP_11))), (2, 200));
        // HTTP/2 carries many requests over a connection; 0 means nothing counts them.
        assert_eq!(polls(few.call(request(Version::HTTP_2))), (2, 200));
        let mut uncounted = limit(8, || 0);
        assert_eq!(polls(uncounted.call(request(Version::HTTP_11))), (2, 200));
    }

    #[test]
    fn requests_beyond_the_places_are_shed_at_once_and_a_place_comes_back_with_its_answer() {
        let mut one = limit(1, || 5);
        let first = one.call(request(Version::HTTP_11));
        let (n, status) = polls(one.call(request(Version::HTTP_11)));
        assert_eq!((n, status), (1, 503), "shed in its first poll");
        assert_eq!(polls(first), (2, 200), "the admitted one is served");
        assert_eq!(
            polls(one.call(request(Version::HTTP_11))),
            (2, 200),
            "its place came back"
        );
    }
}
