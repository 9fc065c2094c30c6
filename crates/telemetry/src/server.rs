//! The operational HTTP surface every service shares, and the middleware stack around it.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;

use crate::http::HttpMetricsLayer;
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
    // The health gauges are refreshed on every scrape, so ReadinessFailing sees what a
    // probe would see even when nothing else probes the service.
    t.health.report().await;
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

/// Wraps a finished router (routes and fallback already added) in the request telemetry
/// layer. Applied with `Router::layer`, so it runs after routing and sees the matched route
/// template.
pub fn instrument(router: Router) -> Router {
    router.layer(HttpMetricsLayer::new())
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
