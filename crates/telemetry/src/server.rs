//! The operational HTTP surface every service shares, and the middleware stack around it.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

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

/// Serves `app` (a `Router`, or `tidewatch_web::App`) until shutdown is triggered, then
/// stops accepting and lets the requests in flight finish, for at most `grace`. Readiness
/// turns false as soon as the shutdown starts. Its connections are counted
/// ([`open_connections`]).
pub async fn serve<S>(
    listener: TcpListener,
    app: S,
    telemetry: &Telemetry,
    shutdown: Shutdown,
    grace: Duration,
) -> std::io::Result<()>
where
    S: tower::Service<axum::extract::Request, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let health = telemetry.health.clone();
    let stop = shutdown.cancelled();
    let app = axum::ServiceExt::<axum::extract::Request>::into_make_service(app);
    let server = axum::serve(Counted(listener), app).with_graceful_shutdown(async move {
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

/// Connections open to the servers of this process that were started through [`serve`] or
/// a [`Counted`] listener.
static OPEN_CONNECTIONS: AtomicUsize = AtomicUsize::new(0);

/// How many connections are open to this process's servers, counting only those accepted
/// by a [`Counted`] listener ([`serve`] uses one): 0 when nothing counts them. The
/// concurrency limit (`tidewatch_web::shed`) reads it to skip work that cannot matter while
/// there are too few connections to fill it.
pub fn open_connections() -> usize {
    OPEN_CONNECTIONS.load(Ordering::Relaxed)
}

/// A TCP listener whose connections are counted in [`open_connections`] from accept until
/// they are dropped.
#[derive(Debug)]
pub struct Counted(pub TcpListener);

impl axum::serve::Listener for Counted {
    type Io = CountedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (CountedStream, std::net::SocketAddr) {
        // axum's own accept loop: errors (out of file descriptors, say) are logged and
        // retried after a pause.
        let (stream, addr) = axum::serve::Listener::accept(&mut self.0).await;
        OPEN_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        (CountedStream(stream), addr)
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.0.local_addr()
    }
}

/// A connection a [`Counted`] listener accepted; counted until dropped.
#[derive(Debug)]
pub struct CountedStream(TcpStream);

impl Drop for CountedStream {
    fn drop(&mut self) {
        OPEN_CONNECTIONS.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connection is counted from accept until the server drops it, whatever the client
    /// does; bytes pass through unchanged, vectored writes included.
    #[tokio::test]
    async fn connections_are_counted_while_open() {
        let mut listener = Counted(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let addr = axum::serve::Listener::local_addr(&listener).unwrap();
        let before = open_connections();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = axum::serve::Listener::accept(&mut listener).await;
        // Other tests of this binary may hold counted connections too: at least ours.
        assert!(open_connections() > before);
        let n = server
            .write_vectored(&[io::IoSlice::new(b"he"), io::IoSlice::new(b"llo")])
            .await
            .unwrap();
        server.write_all(&b"hello"[n..]).await.unwrap();
        let mut got = [0u8; 5];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        let counted = open_connections();
        drop(server);
        assert_eq!(
            open_connections(),
            counted - 1,
            "dropped, no longer counted"
        );
    }
}
