//! Structured logs with `tracing`: JSON lines in containers, readable text on a terminal.
//! A line written while a request is being served also names that request (`request_id`,
//! `method`, `route`; see `http.rs`), without a span per request.

use std::io::IsTerminal as _;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

use crate::http::{with_current, CurrentRequest};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stdout is not a terminal (containers, files), pretty text otherwise.
    Auto,
    /// One JSON object per line; a line written while serving a request carries its
    /// `request_id`, `method` and `route`.
    Json,
    /// Human-readable text.
    Pretty,
}

impl LogFormat {
    fn resolve(self) -> LogFormat {
        match self {
            LogFormat::Auto if std::io::stdout().is_terminal() => LogFormat::Pretty,
            LogFormat::Auto => LogFormat::Json,
            other => other,
        }
    }
}

/// Installs the global subscriber. `filter` uses `RUST_LOG` syntax (`info,tower_http=debug`).
/// A second call in the same process (tests) leaves the first subscriber in place.
pub fn init(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("invalid log filter {filter:?}: {e}"))?;
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format.resolve() {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .fmt_fields(format::JsonFields::new())
                    .event_format(WithRequest::json(json_format())),
            )
            .try_init(),
        _ => registry
            .with(fmt::layer().event_format(WithRequest::text(fmt::format().with_target(false))))
            .try_init(),
    };
    // Only "already initialised" can fail here, which is expected in tests.
    drop(result);
    Ok(())
}

fn json_format() -> format::Format<format::Json> {
    fmt::format()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(true)
}

/// An event format that adds the thread's current request to each line: as top-level
/// fields of the JSON object, or as `key=value` pairs at the end of a text line. Lines
/// written outside a request go straight to the wrapped format.
#[derive(Debug)]
pub struct WithRequest<F> {
    inner: F,
    /// The same format with ANSI colours forced on, for a writer that takes them (a line
    /// with a request is formatted into a buffer first, which has no colour setting).
    inner_ansi: F,
    json: bool,
}

impl<T: Clone> WithRequest<format::Format<format::Json, T>> {
    pub fn json(inner: format::Format<format::Json, T>) -> Self {
        Self {
            inner_ansi: inner.clone(),
            inner,
            json: true,
        }
    }
}

impl<T: Clone> WithRequest<format::Format<format::Full, T>> {
    pub fn text(inner: format::Format<format::Full, T>) -> Self {
        Self {
            inner_ansi: inner.clone().with_ansi(true),
            inner: inner.with_ansi(false),
            json: false,
        }
    }
}

impl<S, N, F> FormatEvent<S, N> for WithRequest<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        // `inner` has colours off, so choose by the writer on every line, not only buffered ones.
        let inner = if writer.has_ansi_escapes() {
            &self.inner_ansi
        } else {
            &self.inner
        };
        let Some(request) = with_current(|r| r.cloned()) else {
            return inner.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        inner.format_event(ctx, Writer::new(&mut line), event)?;
        let body = line.trim_end_matches('\n');
        let newline = &line[body.len()..];
        if self.json {
            match body.strip_suffix('}') {
                Some(open) => {
                    writer.write_str(open)?;
                    write_json_fields(&mut writer, &request, open.ends_with('{'))?;
                    writer.write_char('}')?;
                }
                None => writer.write_str(body)?,
            }
        } else {
            write!(
                writer,
                "{body} request_id={} method={} route={}",
                request.id(),
                request.method(),
                request.route()
            )?;
        }
        writer.write_str(newline)
    }
}

fn write_json_fields(
    writer: &mut Writer<'_>,
    request: &CurrentRequest,
    empty: bool,
) -> std::fmt::Result {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"-\"".to_owned());
    write!(
        writer,
        "{}\"request_id\":{},\"method\":\"{}\",\"route\":{}",
        if empty { "" } else { "," },
        quote(request.id()),
        request.method(),
        quote(request.route())
    )
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::routing::get;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;
    use crate::http::{HttpMetricsLayer, X_REQUEST_ID};

    /// Log lines, as the JSON subscriber writes them.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lines").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Lines {
        fn json(&self) -> Vec<serde_json::Value> {
            String::from_utf8(self.0.lock().expect("lines").clone())
                .expect("utf-8")
                .lines()
                .map(|l| serde_json::from_str(l).expect("every line is one JSON object"))
                .collect()
        }
    }

    async fn inside() -> &'static str {
        tracing::info!(answer = 42, "inside the handler");
        tokio::task::yield_now().await;
        tracing::warn!("after a yield");
        "ok"
    }

    async fn fails() -> http::StatusCode {
        http::StatusCode::INTERNAL_SERVER_ERROR
    }

    #[tokio::test(flavor = "current_thread")]
    async fn every_line_a_request_writes_names_it_and_no_other_line_does() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry().with(
            fmt::layer()
                .fmt_fields(format::JsonFields::new())
                .event_format(WithRequest::json(json_format()))
                .with_writer(move || writer.clone()),
        );
        let _default = tracing::subscriber::set_default(subscriber);
        let app = axum::Router::new()
            .route("/items/{id}", get(inside))
            .route("/broken", get(fails))
            .layer(HttpMetricsLayer::new());

        tracing::info!("before any request");
        let response = app
            .clone()
            .oneshot(
                http::Request::get("/items/7")
                    .header(&X_REQUEST_ID, "client-\"id\"")
                    .body(axum::body::Body::empty())
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(response.headers()[&X_REQUEST_ID], "client-\"id\"");
        response.into_body().collect().await.expect("body");
        let response = app
            .oneshot(
                http::Request::get("/broken")
                    .body(axum::body::Body::empty())
                    .expect("request"),
            )
            .await
            .expect("response");
        let generated = response.headers()[&X_REQUEST_ID]
            .to_str()
            .expect("ascii")
            .to_owned();
        tracing::info!("after every request");

        let lines = lines.json();
        let by_message = |m: &str| {
            lines
                .iter()
                .find(|l| l["message"] == m)
                .unwrap_or_else(|| panic!("no line {m:?} in {lines:?}"))
        };
        for m in ["inside the handler", "after a yield"] {
            let line = by_message(m);
            assert_eq!(line["request_id"], "client-\"id\"", "{line}");
            assert_eq!(line["method"], "GET", "{line}");
            assert_eq!(line["route"], "/items/{id}", "{line}");
        }
        assert_eq!(by_message("inside the handler")["answer"], 42);
        let failed = by_message("request failed");
        assert_eq!(failed["request_id"], generated.as_str(), "{failed}");
        assert_eq!(failed["route"], "/broken");
        assert_eq!(failed["status"], 500);
        for m in ["before any request", "after every request"] {
            assert!(by_message(m).get("request_id").is_none(), "{m}");
        }
    }
}
