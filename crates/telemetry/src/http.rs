//! RED metrics for axum servers, named after the OpenTelemetry HTTP semantic conventions.
//!
//! [`HttpMetricsLayer`] must be applied with `Router::layer` (after routing) so that the
//! route label is the matched template (`/v1/items/{id}`), never the raw path; requests that
//! match no route all share the label value [`UNMATCHED_ROUTE`]. Handles for each
//! (method, route, status) are registered on first use and reused, so the hot path does two
//! map look-ups under a read lock and no string building.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::MatchedPath;
use http::{Method, Request, Response};
use http_body::Body;
use metrics::{Counter, Gauge, Histogram};
use tower::{Layer, Service};

use crate::catalog;

/// The `http_route` value of every request that matched no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Tower layer recording request duration, count, in-flight requests and body sizes.
#[derive(Clone, Debug, Default)]
pub struct HttpMetricsLayer {
    state: Arc<State>,
}

impl HttpMetricsLayer {
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for HttpMetricsLayer {
    type Service = HttpMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        HttpMetrics {
            inner,
            state: self.state.clone(),
        }
    }
}

/// Handles of one route, by method label.
type ByMethod = HashMap<&'static str, Arc<RouteHandles>>;

#[derive(Debug, Default)]
struct State {
    routes: RwLock<HashMap<Box<str>, ByMethod>>,
}

struct RouteHandles {
    method: &'static str,
    route: Box<str>,
    active: Gauge,
    request_size: Histogram,
    response_size: Histogram,
    by_status: RwLock<HashMap<u16, StatusHandles>>,
}

impl std::fmt::Debug for RouteHandles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteHandles")
            .field("method", &self.method)
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct StatusHandles {
    duration: Histogram,
    requests: Counter,
}

/// Methods outside the standard set collapse into `_OTHER`, as the conventions prescribe,
/// so a client cannot create series by inventing methods.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

impl State {
    fn route(&self, method: &Method, route: &str) -> Arc<RouteHandles> {
        let m = method_label(method);
        if let Some(found) = self
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(route)
            .and_then(|by_method| by_method.get(m))
        {
            return found.clone();
        }
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        let by_method = routes.entry(route.into()).or_default();
        by_method
            .entry(m)
            .or_insert_with(|| {
                Arc::new(RouteHandles {
                    method: m,
                    route: route.into(),
                    active: catalog::HTTP_SERVER_ACTIVE_REQUESTS
                        .gauge(&[("http_request_method", m)]),
                    request_size: catalog::HTTP_SERVER_REQUEST_BODY_SIZE
                        .histogram(&[("http_request_method", m), ("http_route", route)]),
                    response_size: catalog::HTTP_SERVER_RESPONSE_BODY_SIZE
                        .histogram(&[("http_request_method", m), ("http_route", route)]),
                    by_status: RwLock::default(),
                })
            })
            .clone()
    }
}

impl RouteHandles {
    fn status(&self, code: u16) -> StatusHandles {
        if let Some(h) = self
            .by_status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&code)
        {
            return h.clone();
        }
        let mut map = self.by_status.write().unwrap_or_else(|e| e.into_inner());
        map.entry(code)
            .or_insert_with(|| {
                let code = code.to_string();
                let labels = [
                    ("http_request_method", self.method),
                    ("http_route", &*self.route),
                    ("http_response_status_code", &code),
                ];
                StatusHandles {
                    duration: catalog::HTTP_SERVER_REQUEST_DURATION.histogram(&labels),
                    requests: catalog::HTTP_SERVER_REQUESTS.counter(&labels),
                }
            })
            .clone()
    }
}

/// The service produced by [`HttpMetricsLayer`].
#[derive(Clone, Debug)]
pub struct HttpMetrics<S> {
    inner: S,
    state: Arc<State>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for HttpMetrics<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: Body,
    ResBody: Body,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let start = Instant::now();
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map_or(UNMATCHED_ROUTE, MatchedPath::as_str);
        let handles = self.state.route(req.method(), route);
        let size = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .or_else(|| req.body().size_hint().exact());
        if let Some(size) = size {
            handles.request_size.record(size as f64);
        }
        handles.active.increment(1.0);
        ResponseFuture {
            inner: self.inner.call(req),
            guard: Some(InFlight { handles, start }),
        }
    }
}

/// Decrements the in-flight gauge even when the client goes away and the future is dropped.
struct InFlight {
    handles: Arc<RouteHandles>,
    start: Instant,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.handles.active.decrement(1.0);
    }
}

pin_project_lite::pin_project! {
    /// Future of [`HttpMetrics`]: records the outcome when the inner response is ready.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InFlight>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: Body,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let (Some(guard), Ok(response)) = (this.guard.take(), &result) {
            let status = guard.handles.status(response.status().as_u16());
            status.duration.record(guard.start.elapsed().as_secs_f64());
            status.requests.increment(1);
            if let Some(size) = response.body().size_hint().exact() {
                guard.handles.response_size.record(size as f64);
            }
        }
        Poll::Ready(result)
    }
}
