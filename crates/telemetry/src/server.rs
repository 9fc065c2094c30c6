//! The operational HTTP surface every service shares, and the middleware stack around it.

use std::time::Duration;

use axum::extract::{MatchedPath, State};
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::http::{HttpMetricsLayer, UNMATCHED_ROUTE};
use crate::shutdown::Shutdown;
use crate::Telemetry;

/// Content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `/metrics`, `/health`, `/health/live` and `/health/ready`, to merge into a service's router.
pub fn ops_router(telemetry: Telemetry) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .with_state(telemetry)
}

async fn metrics(State(t): State<Telemetry>) -> Response {
    let body = t.metrics.render();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROMETHEUS_TEXT),
        )],
        body,
    )
        .into_response()
}

async fn health(State(t): State<Telemetry>) -> Response {
    let report = t.health.report().await;
    let code = if report.status == crate::health::Status::Unhealthy {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = serde_json::json!({
        "service": t.build.service,
        "version": t.build.version,
        "status": report.status,
        "ready": report.ready,
        "draining": report.draining,
        "uptime_seconds": t.metrics.uptime().as_secs(),
        "components": report.components,
    });
    (code, Json(body)).into_response()
}

async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "alive" }))
}

async fn ready(State(t): State<Telemetry>) -> Response {
    let report = t.health.report().await;
    let code = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "ready": report.ready,
        "status": report.status,
        "draining": report.draining,
        "components": report.components,
    });
    (code, Json(body)).into_response()
}

/// Wraps a finished router (routes and fallback already added) in request ids, request
/// spans and RED metrics. Applied with `Router::layer`, so it runs after routing and sees
/// the matched route template.
pub fn instrument(router: Router) -> Router {
    router.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(SequentialRequestId::new()))
            .layer(TraceLayer::new_for_http().make_span_with(request_span))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(HttpMetricsLayer::new()),
    )
}

/// Request ids of the form `<process prefix>-<sequence>`, both 16 hex digits: unique across
/// processes (the prefix is random per start) and about ten times cheaper than a formatted
/// UUIDv4, which measured as the largest single cost of the middleware stack.
#[derive(Clone, Debug)]
pub struct SequentialRequestId {
    prefix: u64,
    next: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl SequentialRequestId {
    pub fn new() -> Self {
        Self {
            prefix: uuid::Uuid::new_v4().as_u64_pair().0,
            next: Default::default(),
        }
    }
}

impl Default for SequentialRequestId {
    fn default() -> Self {
        Self::new()
    }
}

fn hex16(out: &mut [u8], value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = DIGITS[((value >> (60 - 4 * i)) & 0xf) as usize];
    }
}

impl MakeRequestId for SequentialRequestId {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        let seq = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut id = [b'-'; 33];
        hex16(&mut id[..16], self.prefix);
        hex16(&mut id[17..], seq);
        HeaderValue::from_bytes(&id).ok().map(RequestId::new)
    }
}

fn request_span<B>(req: &Request<B>) -> tracing::Span {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED_ROUTE, MatchedPath::as_str);
    tracing::info_span!("request", request_id, method = %req.method(), route)
}

/// Serves `app` until shutdown is triggered, then stops accepting and lets the requests in
/// flight finish, for at most `grace`. Readiness turns false as soon as the shutdown starts.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    telemetry: &Telemetry,
    shutdown: Shutdown,
    grace: Duration,
) -> std::io::Result<()> {
    let health = telemetry.health.clone();
    let stop = shutdown.cancelled();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        stop.await;
        health.set_draining();
    });
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = server => result,
        () = deadline => {
            tracing::warn!(grace_seconds = grace.as_secs(), "requests still in flight after the grace period; exiting anyway");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_unique_and_share_the_process_prefix() {
        let mut ids = SequentialRequestId::new();
        let req = Request::new(());
        let a = ids.make_request_id(&req).expect("id");
        let b = ids.make_request_id(&req).expect("id");
        let (a, b) = (
            a.header_value().to_str().expect("ascii"),
            b.header_value().to_str().expect("ascii"),
        );
        assert_ne!(a, b);
        assert_eq!(a.len(), 33);
        assert_eq!(a[..17], b[..17]);
        assert!(b.ends_with("0000000000000001"), "{b}");
    }
}
