//! Per-request telemetry for axum servers, in one layer: a request id that reaches every log
//! line the request writes, and RED metrics named after the OpenTelemetry HTTP semantic
//! conventions.
//!
//! One layer rather than tower-http's request-id and trace layers plus a metrics layer: the
//! handlers of this workspace answer in tens of microseconds, so every per-request
//! allocation, header copy and wrapper future shows in throughput (see BENCHMARKS.md).
//!
//! No `tracing` span is opened per request unless traces are exported and the sampler keeps
//! the request: the layer asks the configured sampler first ([`crate::trace::sample`]), and
//! a span, with its registry slot, its OpenTelemetry builder and an enter and exit per
//! poll, is made only for a request that will be exported (about 20,000 instructions a
//! request otherwise spent on a span nobody sees). Instead, while the request's future is
//! polled, the thread knows its request ([`with_current`]), and the log formatter
//! (`logging.rs`) adds `request_id`, `method`, `route` and the trace to any line written
//! then.
//!
//! What a request costs is counted in instructions under callgrind by `scripts/bench-api`
//! (see BENCHMARKS.md), so it is kept to what cannot be avoided:
//! - the route's handles are found once per route: each route's copy of the layer keeps
//!   the handles of the route it wraps, so a request compares the matched template with
//!   them and hashes nothing; only the first request of a route takes the shared map's lock;
//! - the handles of status 200 sit beside the route's, so the usual answer hashes nothing
//!   either;
//! - the request's identity lives in its future, and while the future is polled the thread
//!   holds a reference to it (a scoped thread-local the log formatter reads), so it costs
//!   no allocation and no reference count; a generated request id stays 33 bytes inline
//!   until the response header is made, whose bytes come from a per-thread chunk;
//! - two clock reads, the start and the end, and no formatting unless something is logged.
//!
//! [`HttpMetricsLayer`] must be applied with `Router::layer` (after routing) so that the
//! route label is the matched template (`/v1/items/{id}`), never the raw path; requests that
//! match no route all share the label value [`UNMATCHED_ROUTE`]. In front of the router,
//! where the template is already known, [`HttpMetricsLayer::for_template`] labels with it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::MatchedPath;
use bytes::BytesMut;
use http::{HeaderName, HeaderValue, Method, Request, Response};
use http_body::Body;
use metrics::{Counter, Gauge, Histogram};
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator};
use tower::{Layer, Service};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::catalog;

/// The `http_route` value of every request that matched no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The request id header, taken from the client when sensible and always echoed back.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The W3C trace context header a caller's trace arrives in.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The W3C response header naming the trace and span that served the request
/// (`00-<trace id>-<span id>-<flags>`; flags `00` when the span was not exported).
pub static TRACERESPONSE: HeaderName = HeaderName::from_static("traceresponse");
/// Longer client-supplied ids are replaced: they go into every log line of the request.
const MAX_CLIENT_ID_LEN: usize = 128;

/// Tower layer: request id, request span, and request duration, count, in-flight requests
/// and body sizes.
#[derive(Clone, Debug, Default)]
pub struct HttpMetricsLayer {
    state: Arc<State>,
    /// The route's template, when applied in front of the router ([`Self::for_template`]).
    template: Option<Arc<str>>,
}

impl HttpMetricsLayer {
    pub fn new() -> Self {
        // Server errors are counted by kind where the error body is made (tidewatch-web's
        // ApiError); the commonest kind exists at zero, so a rate has a series from the start.
        catalog::HTTP_SERVER_ERRORS
            .counter(&[("error_type", "internal")])
            .absolute(0);
        Self::default()
    }

    /// The layer for a service in front of the router that serves the routes of one
    /// `template` only (`tidewatch_web::assemble` finds the template itself, so that no
    /// layer has to be boxed around each route): requests are labelled with `template`
    /// instead of the matched path the router would have recorded.
    pub fn for_template(&self, template: &str) -> Self {
        Self {
            state: self.state.clone(),
            template: Some(Arc::from(template)),
        }
    }
}

impl<S> Layer<S> for HttpMetricsLayer {
    type Service = HttpMetrics<S>;
    /// Called once per route and method by `Router::layer`, or once per template by
    /// `tidewatch_web::assemble`: each copy gets its own cache.
    fn layer(&self, inner: S) -> Self::Service {
        HttpMetrics {
            inner,
            state: self.state.clone(),
            route: Arc::default(),
            template: self.template.clone(),
        }
    }
}

/// Handles of one route, by method label.
type ByMethod = HashMap<&'static str, Arc<RouteHandles>>;

#[derive(Debug, Default)]
struct State {
    routes: RwLock<HashMap<Box<str>, ByMethod>>,
    ids: RequestIds,
}

/// Request ids of the form `<process prefix>-<sequence>`, both 16 hex digits: unique across
/// processes (the prefix is random per start) and about ten times cheaper than a formatted
/// UUIDv4, which measured as the largest single cost of the middleware under callgrind.
#[derive(Debug)]
struct RequestIds {
    /// The prefix in hex and the dash, written once.
    prefix: [u8; 17],
    next: std::sync::atomic::AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        let mut prefix = [b'-'; 17];
        hex(
            &mut prefix[..16],
            &uuid::Uuid::new_v4().as_u64_pair().0.to_be_bytes(),
        );
        Self {
            prefix,
            next: Default::default(),
        }
    }
}

/// Writes `bytes` into `out` as lower-case hex, two digits a byte, each byte's pair looked
/// up in one table.
fn hex(out: &mut [u8], bytes: &[u8]) {
    const PAIRS: [[u8; 2]; 256] = {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut pairs = [[0; 2]; 256];
        let mut i = 0;
        while i < 256 {
            pairs[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
            i += 1;
        }
        pairs
    };
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&PAIRS[usize::from(*byte)]);
    }
}

impl RequestIds {
    fn next(&self) -> RequestId {
        let seq = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut id = [0; 33];
        id[..17].copy_from_slice(&self.prefix);
        hex(&mut id[17..], &seq.to_be_bytes());
        RequestId::Generated(id)
    }

    /// The client's id if it is short printable ASCII, otherwise a new one.
    fn for_request(&self, given: Option<&HeaderValue>) -> RequestId {
        match given {
            Some(v)
                if !v.is_empty()
                    && v.len() <= MAX_CLIENT_ID_LEN
                    && v.as_bytes().iter().all(|b| b.is_ascii_graphic()) =>
            {
                RequestId::Client(v.clone())
            }
            _ => self.next(),
        }
    }
}

/// A request id: the client's header value (a reference into the request's buffer), or
/// one of ours, kept inline until the response header needs it.
#[derive(Debug)]
enum RequestId {
    Client(HeaderValue),
    Generated([u8; 33]),
}

impl RequestId {
    fn as_str(&self) -> &str {
        let bytes = match self {
            Self::Client(v) => v.as_bytes(),
            Self::Generated(id) => id,
        };
        // Both are printable ASCII by construction.
        std::str::from_utf8(bytes).unwrap_or("-")
    }

    /// The response header's value. A generated id is copied into the thread's current
    /// chunk of id bytes and shared from there, so the header costs no allocation of its own
    /// (about 200 instructions fewer a request than a copy of its own, BENCHMARKS.md): a
    /// chunk holds [`ID_CHUNK`] bytes, about 120 ids, and is freed with the last response
    /// that names one of them.
    fn header_value(&self) -> HeaderValue {
        match self {
            Self::Client(v) => v.clone(),
            Self::Generated(id) => ID_BYTES
                .with(|chunk| {
                    let mut chunk = chunk.borrow_mut();
                    if chunk.capacity() - chunk.len() < id.len() {
                        *chunk = BytesMut::with_capacity(ID_CHUNK);
                    }
                    chunk.extend_from_slice(id);
                    HeaderValue::from_maybe_shared(chunk.split().freeze())
                })
                .unwrap_or_else(|_| HeaderValue::from_static("-")),
        }
    }
}

/// The size of a thread's chunk of generated request id bytes.
const ID_CHUNK: usize = 4096;

thread_local! {
    static ID_BYTES: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

struct RouteHandles {
    /// The method the handles were made for, compared on each request of the route; its
    /// label is [`RouteHandles::method`].
    http_method: Method,
    route: Box<str>,
    active: Gauge,
    request_size: Histogram,
    response_size: Histogram,
    /// Status 200's handles, made on its first use.
    ok: OnceLock<StatusHandles>,
    /// Every other status's, in the order first seen.
    by_status: RwLock<Vec<(u16, StatusHandles)>>,
    /// Whether a request starts a trace when its caller did not: not for `/metrics` and the
    /// health probes, which would fill the trace store with scrapes.
    traced: bool,
}

impl std::fmt::Debug for RouteHandles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteHandles")
            .field("method", &self.method())
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

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
                    http_method: method.clone(),
                    route: route.into(),
                    active: catalog::HTTP_SERVER_ACTIVE_REQUESTS
                        .gauge(&[("http_request_method", m)]),
                    request_size: catalog::HTTP_SERVER_REQUEST_BODY_SIZE
                        .histogram(&[("http_request_method", m), ("http_route", route)]),
                    response_size: catalog::HTTP_SERVER_RESPONSE_BODY_SIZE
                        .histogram(&[("http_request_method", m), ("http_route", route)]),
                    ok: OnceLock::new(),
                    by_status: RwLock::default(),
                    traced: route != "/metrics" && !route.starts_with("/health"),
                })
            })
            .clone()
    }
}

impl RouteHandles {
    /// The method label.
    fn method(&self) -> &'static str {
        method_label(&self.http_method)
    }

    /// Counts a response with status `code` that took `seconds`, on handles made at the
    /// status's first use and borrowed after (no clone, no hashing).
    fn record(&self, code: u16, seconds: f64) {
        let record = |h: &StatusHandles| {
            h.duration.record(seconds);
            h.requests.increment(1);
        };
        if code == 200 {
            return record(self.ok.get_or_init(|| self.register(code)));
        }
        {
            let seen = self.by_status.read().unwrap_or_else(|e| e.into_inner());
            if let Some((_, h)) = seen.iter().find(|(c, _)| *c == code) {
                return record(h);
            }
        }
        let mut seen = self.by_status.write().unwrap_or_else(|e| e.into_inner());
        if !seen.iter().any(|(c, _)| *c == code) {
            let h = self.register(code);
            seen.push((code, h));
        }
        if let Some((_, h)) = seen.iter().find(|(c, _)| *c == code) {
            record(h);
        }
    }

    fn register(&self, code: u16) -> StatusHandles {
        let code = code.to_string();
        let labels = [
            ("http_request_method", self.method()),
            ("http_route", &*self.route),
            ("http_response_status_code", &code),
        ];
        StatusHandles {
            duration: catalog::HTTP_SERVER_REQUEST_DURATION.histogram(&labels),
            requests: catalog::HTTP_SERVER_REQUESTS.counter(&labels),
        }
    }
}

/// The service produced by [`HttpMetricsLayer`].
#[derive(Clone, Debug)]
pub struct HttpMetrics<S> {
    inner: S,
    state: Arc<State>,
    /// The handles of the route this copy wraps, once its first request found them.
    route: Arc<OnceLock<Arc<RouteHandles>>>,
    /// The route's template when the router has not matched yet
    /// ([`HttpMetricsLayer::for_template`]).
    template: Option<Arc<str>>,
}

impl<S> HttpMetrics<S> {
    fn handles(&self, method: &Method, route: &str) -> Arc<RouteHandles> {
        if let Some(h) = self.route.get() {
            // Methods compare by their enum (an extension method other than the one that
            // made the handles takes the shared map, as a new route does); a copy made for a
            // template serves that template only.
            if h.http_method == *method && (self.template.is_some() || *h.route == *route) {
                return h.clone();
            }
        }
        let h = self.state.route(method, route);
        let _ = self.route.set(h.clone());
        h
    }
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
        let read = ReadHeaders::of(req.headers());
        let caller = read
            .traceparent
            .and_then(|tp| incoming_trace(req.headers(), tp));
        let id = self.state.ids.for_request(read.request_id);
        let route = match &self.template {
            Some(template) => template,
            None => req
                .extensions()
                .get::<MatchedPath>()
                .map_or(UNMATCHED_ROUTE, MatchedPath::as_str),
        };
        let handles = self.handles(req.method(), route);
        // The body knows its length from `content-length` (hyper's and axum's bodies say so
        // exactly), so the header is not read here a second time.
        if let Some(size) = req.body().size_hint().exact() {
            handles.request_size.record(size as f64);
        }
        handles.active.increment(1.0);
        // Probes and scrapes start no trace of their own; a caller's trace is continued.
        // The sampler decides before any span is made: a request it drops makes none.
        let decision = (crate::trace::enabled() && (handles.traced || caller.is_some()))
            .then(|| crate::trace::sample(caller.as_ref()));
        let (span, trace) = match decision {
            Some(Ok(())) => {
                let (span, sc) = crate::trace::keep_sampled(|| {
                    let span = server_span(&handles, req.uri().path(), caller);
                    let sc = span.context().span().span_context().clone();
                    (span, sc)
                });
                (Some(span), Some(sc))
            }
            // Not exported: the request's trace (the caller's, or when traces are on a new
            // one) still reaches the logs and the response.
            Some(Err(trace_id)) => (None, Some(unrecorded(trace_id))),
            None => (
                None,
                caller.map(|c| unrecorded(c.span().span_context().trace_id())),
            ),
        };
        let current = CurrentRequest { id, handles, trace };
        // The inner services' `call` only makes their futures (axum's handlers run when
        // polled), so the request is made current for the polls, not for this call.
        let inner = {
            let _entered = span.as_ref().map(tracing::Span::enter);
            self.inner.call(req)
        };
        ResponseFuture {
            inner,
            span,
            guard: Some(InFlight { current, start }),
        }
    }
}

/// The request headers the layer reads, the first value of each, as `HeaderMap::get` gives.
struct ReadHeaders<'a> {
    traceparent: Option<&'a HeaderValue>,
    request_id: Option<&'a HeaderValue>,
}

impl<'a> ReadHeaders<'a> {
    /// Looks through the names only (each once, however many values it has) and fetches
    /// the value of a name that is there: most requests have neither header.
    fn of(headers: &'a http::HeaderMap) -> Self {
        let (mut request_id, mut traceparent) = (false, false);
        for name in headers.keys() {
            request_id |= name == X_REQUEST_ID;
            traceparent |= name == TRACEPARENT;
        }
        Self {
            request_id: request_id.then(|| headers.get(&X_REQUEST_ID)).flatten(),
            traceparent: traceparent.then(|| headers.get(&TRACEPARENT)).flatten(),
        }
    }
}

/// The caller's trace context, if the request's `traceparent` is valid.
fn incoming_trace(
    headers: &http::HeaderMap,
    traceparent: &HeaderValue,
) -> Option<opentelemetry::Context> {
    if !traceparent
        .to_str()
        .is_ok_and(crate::trace::valid_traceparent)
    {
        return None;
    }
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    cx.span().span_context().is_valid().then_some(cx)
}

/// The server span of one sampled request (OpenTelemetry HTTP conventions), a child of the
/// caller's span when the request continued a trace.
fn server_span(
    handles: &RouteHandles,
    path: &str,
    caller: Option<opentelemetry::Context>,
) -> tracing::Span {
    let span = tracing::info_span!(
        target: crate::trace::TARGET,
        "request",
        otel.name = %format_args!("{} {}", handles.method(), handles.route),
        otel.kind = "server",
        http.request.method = handles.method(),
        http.route = &*handles.route,
        url.path = path,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    if let Some(caller) = caller {
        let _ = span.set_parent(caller);
    }
    span
}

/// The request a thread is working on, as log lines name it. It lives in the request's
/// future; while the future is polled the thread holds a reference to it (a scoped
/// thread-local), so making it current costs neither an allocation nor a reference count.
#[derive(Debug)]
pub struct CurrentRequest {
    id: RequestId,
    handles: Arc<RouteHandles>,
    /// The request's span: exported, or only carrying the caller's trace on.
    trace: Option<SpanContext>,
}

impl CurrentRequest {
    /// The `x-request-id` value (the client's, or generated).
    pub fn id(&self) -> &str {
        self.id.as_str()
    }

    /// The method label (`GET`, ..., `_OTHER`).
    pub fn method(&self) -> &'static str {
        self.handles.method()
    }

    /// The matched route template, or [`UNMATCHED_ROUTE`].
    pub fn route(&self) -> &str {
        &self.handles.route
    }

    /// The trace and span of the request, when it is traced or continued a caller's trace.
    pub fn trace(&self) -> Option<(TraceId, SpanId)> {
        self.trace.as_ref().map(|t| (t.trace_id(), t.span_id()))
    }
}

scoped_tls::scoped_thread_local! {
    /// The request whose future this thread is polling.
    static CURRENT: CurrentRequest
}

/// Calls `f` with the request whose future this thread is polling, if any: what the log
/// formatter adds to a line.
pub fn with_current<T>(f: impl FnOnce(Option<&CurrentRequest>) -> T) -> T {
    if CURRENT.is_set() {
        CURRENT.with(|current| f(Some(current)))
    } else {
        f(None)
    }
}

/// Decrements the in-flight gauge even when the client goes away and the future is dropped.
struct InFlight {
    current: CurrentRequest,
    start: Instant,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.current.handles.active.decrement(1.0);
    }
}

pin_project_lite::pin_project! {
    /// Future of [`HttpMetrics`]: polls the handler with its request current on the thread
    /// and records the outcome when the response is ready.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        // Entered while the handler is polled (only when traces are exported).
        span: Option<tracing::Span>,
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
        let Some(guard) = this.guard.as_ref() else {
            return this.inner.poll(cx);
        };
        let _entered = this.span.as_ref().map(tracing::Span::enter);
        let mut result = std::task::ready!(CURRENT.set(&guard.current, || this.inner.poll(cx)));
        if let (Some(guard), Ok(response)) = (this.guard.take(), &mut result) {
            // Current while finishing too: a failure's log line names its request.
            CURRENT.set(&guard.current, || {
                guard.finish(response, this.span.as_ref())
            });
        }
        Poll::Ready(result)
    }
}

impl InFlight {
    /// Records the response's metrics, logs a failure, and echoes the request id and the
    /// trace (W3C `traceresponse`).
    fn finish<B: Body>(&self, response: &mut Response<B>, span: Option<&tracing::Span>) {
        let code = response.status().as_u16();
        let elapsed = self.start.elapsed();
        let info = &self.current;
        let handles = &info.handles;
        handles.record(code, elapsed.as_secs_f64());
        if let Some(size) = response.body().size_hint().exact() {
            handles.response_size.record(size as f64);
        }
        let latency_ms = elapsed.as_secs_f64() * 1e3;
        if code >= 500 {
            tracing::error!(status = code, latency_ms, "request failed");
        } else {
            tracing::debug!(status = code, latency_ms, "request finished");
        }
        if let Some(span) = span {
            span.record("http.response.status_code", code);
            if code >= 500 {
                span.record("otel.status_code", "error");
            }
        }
        let headers = response.headers_mut();
        headers.insert(X_REQUEST_ID.clone(), info.id.header_value());
        if let Some(t) = &info.trace {
            if let Ok(value) = HeaderValue::from_bytes(&traceresponse(t)) {
                headers.insert(TRACERESPONSE.clone(), value);
            }
        }
    }
}

/// The context of a request in trace `trace_id` that records nothing: a span id of this
/// server's, flags 00.
fn unrecorded(trace_id: TraceId) -> SpanContext {
    SpanContext::new(
        trace_id,
        RandomIdGenerator::default().new_span_id(),
        TraceFlags::default(),
        false,
        TraceState::NONE,
    )
}

/// `00-<trace id>-<span id>-<flags>` in lower-case hex, written without the formatting
/// machinery (`format!` of the ids cost about 2,500 instructions a request).
fn traceresponse(sc: &SpanContext) -> [u8; 55] {
    let mut out = [b'-'; 55];
    out[..2].copy_from_slice(b"00");
    hex(&mut out[3..35], &sc.trace_id().to_bytes());
    hex(&mut out[36..52], &sc.span_id().to_bytes());
    hex(&mut out[53..], &[sc.trace_flags().to_u8()]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_well_formed_traceparent_continues_a_trace() {
        let trace = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(&TRACEPARENT, HeaderValue::from_str(value).expect("header"));
            incoming_trace(&headers, ReadHeaders::of(&headers).traceparent?)
                .map(|cx| cx.span().span_context().trace_id().to_string())
        };
        assert_eq!(
            trace("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        // A later version may append fields.
        assert!(trace("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x").is_some());
        for bad in [
            "00-4bf9e7643-01f137-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            assert_eq!(trace(bad), None, "{bad}");
        }
    }

    #[test]
    fn one_pass_reads_the_first_value_of_each_header_as_get_does() {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::HOST, HeaderValue::from_static("h"));
        headers.append(&X_REQUEST_ID, HeaderValue::from_static("first"));
        headers.append(&X_REQUEST_ID, HeaderValue::from_static("second"));
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        let read = ReadHeaders::of(&headers);
        assert_eq!(read.request_id, headers.get(&X_REQUEST_ID));
        assert_eq!(read.traceparent, None);
    }

    #[test]
    fn traceresponse_is_the_w3c_form() {
        let sc = SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").expect("trace id"),
            SpanId::from_hex("00f067aa0ba902b7").expect("span id"),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        );
        assert_eq!(
            std::str::from_utf8(&traceresponse(&sc)).expect("ascii"),
            "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
        );
        let unsampled = SpanContext::new(
            sc.trace_id(),
            sc.span_id(),
            TraceFlags::default(),
            false,
            TraceState::NONE,
        );
        assert!(traceresponse(&unsampled).ends_with(b"-00"));
    }

    #[test]
    fn generated_request_ids_are_unique_and_share_the_process_prefix() {
        let ids = RequestIds::default();
        let (a, b) = (ids.next(), ids.next());
        let (a, b) = (a.as_str(), b.as_str());
        assert_ne!(a, b);
        assert_eq!(a.len(), 33);
        assert_eq!(a[..17], b[..17]);
        assert!(b.ends_with("0000000000000001"), "{b}");
    }

    #[test]
    fn generated_ids_keep_their_own_header_values_across_chunks() {
        let ids = RequestIds::default();
        // Enough ids to fill several chunks, all values kept alive together.
        let made: Vec<(RequestId, HeaderValue)> = (0..3 * ID_CHUNK / 33)
            .map(|_| {
                let id = ids.next();
                let value = id.header_value();
                (id, value)
            })
            .collect();
        for (id, value) in &made {
            assert_eq!(value.to_str().expect("ascii"), id.as_str());
        }
        let distinct: std::collections::HashSet<&HeaderValue> =
            made.iter().map(|(_, v)| v).collect();
        assert_eq!(distinct.len(), made.len());
    }

    #[test]
    fn a_client_request_id_is_kept_only_when_short_and_printable() {
        let ids = RequestIds::default();
        let keep = HeaderValue::from_static("abc-123");
        let long = HeaderValue::from_str(&"x".repeat(MAX_CLIENT_ID_LEN + 1)).expect("header");
        let spaced = HeaderValue::from_static("a b");
        assert_eq!(ids.for_request(Some(&keep)).header_value(), keep);
        assert_ne!(ids.for_request(Some(&long)).header_value(), long);
        assert_ne!(ids.for_request(Some(&spaced)).header_value(), spaced);
        assert_eq!(ids.for_request(None).as_str().len(), 33);
    }
}
