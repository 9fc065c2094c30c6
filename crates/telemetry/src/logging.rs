//! Structured logs with `tracing`: JSON lines in containers, readable text on a terminal.
//! A line written while a request is being served also names that request (`request_id`,
//! `method`, `route`; see `http.rs`), without a span per request.

use std::io::IsTerminal as _;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::layer::Layered;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{fmt, prelude::*, EnvFilter, Registry};

use opentelemetry::trace::{SpanId, TraceId};

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
    init_with_traces(format, filter, None)
}

/// [`init`], and for a service (name, version) the trace export the `OTEL_*` environment
/// asks for (see [`crate::trace`]). The log filter applies to log lines; Tidewatch's spans
/// (target [`crate::trace::TARGET`]) are exported whatever `LOG_LEVEL` says.
pub fn init_with_traces(
    format: LogFormat,
    filter: &str,
    service: Option<(&'static str, &'static str)>,
) -> anyhow::Result<()> {
    let mut filter = EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("invalid log filter {filter:?}: {e}"))?;
    let traces = match service {
        Some((name, version)) => {
            crate::trace::layer::<Layered<EnvFilter, Registry>>(name, version)?
        }
        None => None,
    };
    if traces.is_some() {
        // Every span Tidewatch makes has this target, which no log line uses: spans are
        // exported whatever LOG_LEVEL says about log lines.
        filter = filter.add_directive(
            format!("{}=info", crate::trace::TARGET)
                .parse()
                .map_err(|e| anyhow::anyhow!("trace span directive: {e}"))?,
        );
    }
    // One global filter, not one per layer: a per-layer EnvFilter swallows the next log
    // line after a `log`-crate `enabled` query (sqlx makes them), tokio-rs/tracing#2519.
    let registry = tracing_subscriber::registry().with(filter).with(traces);
    let result = match format.resolve() {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .fmt_fields(format::JsonFields::new())
                    .event_format(WithRequest::json(json_format()))
                    .with_filter(not_trace_spans()),
            )
            .try_init(),
        _ => registry
            .with(
                fmt::layer()
                    .event_format(WithRequest::text(fmt::format().with_target(false)))
                    .with_filter(not_trace_spans()),
            )
            .try_init(),
    };
    // Only "already initialised" can fail here, which is expected in tests.
    drop(result);
    Ok(())
}

/// Keeps the spans made only to be exported (target [`crate::trace::TARGET`]) from the log
/// layer. It would format every field of each such span into JSON when the span starts and
/// again when a field is recorded, whether or not a line is ever logged inside it: under
/// callgrind about 36,000 instructions per request of the prediction API with traces on,
/// most of the request's cost (BENCHMARKS.md). Log lines name those spans by `trace_id`
/// and `span_id` instead, which come from the OpenTelemetry context. Events all pass: the
/// global filter alone decides which lines are written (see above).
fn not_trace_spans() -> tracing_subscriber::filter::FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool>
{
    tracing_subscriber::filter::filter_fn(|meta| {
        !(meta.is_span() && meta.target() == crate::trace::TARGET)
    })
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
        with_current(|request| {
            let trace = trace_ids(request);
            if request.is_none() && trace.is_none() {
                return inner.format_event(ctx, writer, event);
            }
            let mut line = String::with_capacity(256);
            inner.format_event(ctx, Writer::new(&mut line), event)?;
            let body = line.trim_end_matches('\n');
            let newline = &line[body.len()..];
            if self.json {
                match body.strip_suffix('}') {
                    Some(open) => {
                        writer.write_str(open)?;
                        write_json_fields(&mut writer, request, trace, open.ends_with('{'))?;
                        writer.write_char('}')?;
                    }
                    None => writer.write_str(body)?,
                }
            } else {
                writer.write_str(body)?;
                if let Some(request) = request {
                    write!(
                        writer,
                        " request_id={} method={} route={}",
                        request.id(),
                        request.method(),
                        request.route()
                    )?;
                }
                if let Some((trace_id, span_id)) = trace {
                    write!(writer, " trace_id={trace_id} span_id={span_id}")?;
                }
            }
            writer.write_str(newline)
        })
    }
}

/// The trace and span a line belongs to: the innermost entered span's when traces are
/// exported, otherwise the trace a request continued (its `traceparent`), if any.
fn trace_ids(request: Option<&CurrentRequest>) -> Option<(TraceId, SpanId)> {
    if crate::trace::enabled() {
        if let Some(sc) = crate::trace::current_span_context() {
            return Some((sc.trace_id(), sc.span_id()));
        }
    }
    request.and_then(CurrentRequest::trace)
}

fn write_json_fields(
    writer: &mut Writer<'_>,
    request: Option<&CurrentRequest>,
    trace: Option<(TraceId, SpanId)>,
    empty: bool,
) -> std::fmt::Result {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"-\"".to_owned());
    let mut separator = if empty { "" } else { "," };
    if let Some(request) = request {
        write!(
            writer,
            "{separator}\"request_id\":{},\"method\":\"{}\",\"route\":{}",
            quote(request.id()),
            request.method(),
            quote(request.route())
        )?;
        separator = ",";
    }
    if let Some((trace_id, span_id)) = trace {
        write!(
            writer,
            "{separator}\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\""
        )?;
    }
    Ok(())
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
        /// The JSON subscriber of the services, writing here.
        fn subscriber(&self) -> impl tracing::Subscriber {
            let writer = self.clone();
            tracing_subscriber::registry().with(
                fmt::layer()
                    .fmt_fields(format::JsonFields::new())
                    .event_format(WithRequest::json(json_format()))
                    .with_writer(move || writer.clone()),
            )
        }

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
        let _default = tracing::subscriber::set_default(lines.subscriber());
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

    #[tokio::test(flavor = "current_thread")]
    async fn a_request_that_continues_a_trace_answers_with_it_and_its_lines_carry_it() {
        let lines = Lines::default();
        let _default = tracing::subscriber::set_default(lines.subscriber());
        let app = axum::Router::new()
            .route("/items/{id}", get(inside))
            .layer(HttpMetricsLayer::new());
        let call = |traceparent: Option<&'static str>| {
            let mut request = http::Request::get("/items/1");
            if let Some(t) = traceparent {
                request = request.header("traceparent", t);
            }
            app.clone()
                .oneshot(request.body(axum::body::Body::empty()).expect("request"))
        };

        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let response = call(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ))
        .await
        .expect("response");
        let answer = response.headers()["traceresponse"].to_str().expect("ascii");
        let parts: Vec<&str> = answer.split('-').collect();
        assert_eq!(parts.len(), 4, "{answer}");
        assert_eq!((parts[0], parts[1]), ("00", trace), "{answer}");
        // This server's own span id, not the caller's; nothing exported, so not sampled.
        assert_ne!(parts[2], "00f067aa0ba902b7");
        assert_eq!(parts[3], "00");
        for line in lines.json() {
            assert_eq!(line["trace_id"], trace, "{line}");
            assert_eq!(line["span_id"], parts[2], "{line}");
        }

        // No trace, a malformed one: no trace id invented, no header.
        for traceparent in [None, Some("00-zz-00f067aa0ba902b7-01")] {
            let before = lines.json().len();
            let response = call(traceparent).await.expect("response");
            assert!(response.headers().get("traceresponse").is_none());
            for line in &lines.json()[before..] {
                assert!(line.get("trace_id").is_none(), "{line}");
            }
        }
    }
}
