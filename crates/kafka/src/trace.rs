//! Traces across Kafka: the W3C trace context (`traceparent`, `tracestate`) in record
//! headers, and the spans of the OpenTelemetry messaging conventions.
//!
//! Every record a traced service writes carries the context of its `send` span; every
//! message a stage reads starts a `process` span (kind consumer) under the context its
//! headers carry, and each output gets a `send` span (kind producer) under that. Where many
//! records become one (trades into a bar, rows into a batch, a prediction judged later),
//! the new span carries links to the contributing spans instead, at most
//! [`MAX_LINKS`]. Spans are made only when traces are exported
//! ([`tidewatch_telemetry::trace::enabled`]); otherwise the loops make none.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
pub use opentelemetry::trace::SpanContext;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use tidewatch_telemetry::trace::TARGET;

use crate::producer::Record;
use crate::stage::Input;

/// The header a record's trace context travels in (W3C Trace Context).
pub const TRACEPARENT: &str = "traceparent";
/// Vendor trace state, forwarded with the context.
pub const TRACESTATE: &str = "tracestate";

/// Most links one span carries: a bar of a busy minute is made of thousands of trades, and
/// a batch of up to a thousand rows. The first ones are kept (the SDK's own limit is 128).
pub const MAX_LINKS: usize = 32;

struct HeaderReader<'a>(&'a [(&'a str, &'a [u8])]);

impl Extractor for HeaderReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| *k).collect()
    }
}

struct HeaderWriter<'a>(&'a mut Vec<(String, Vec<u8>)>);

impl Injector for HeaderWriter<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value.into_bytes()));
    }
}

/// The trace context a message's headers carry, if they carry a valid one. Anything else
/// (no header, a malformed or all-zero one, bytes that are not text) is no context: the
/// message starts a trace of its own.
pub fn remote_context(headers: &[(&str, &[u8])]) -> Option<Context> {
    let reader = HeaderReader(headers);
    if !reader
        .get(TRACEPARENT)
        .is_some_and(tidewatch_telemetry::trace::valid_traceparent)
    {
        return None;
    }
    let cx = TraceContextPropagator::new().extract(&reader);
    cx.span().span_context().is_valid().then_some(cx)
}

/// Writes `span`'s context into `headers`, replacing any context they held.
pub fn inject(span: &tracing::Span, headers: &mut Vec<(String, Vec<u8>)>) {
    headers.retain(|(k, _)| {
        !k.eq_ignore_ascii_case(TRACEPARENT) && !k.eq_ignore_ascii_case(TRACESTATE)
    });
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderWriter(headers));
}

/// The context of `span`, to link to later; `None` unless it is exported (sampled).
pub fn link_to(span: &tracing::Span) -> Option<SpanContext> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    (sc.is_valid() && sc.is_sampled()).then_some(sc)
}

/// A span of the messaging conventions: the attributes every Kafka span carries, then the
/// caller's, then the status fields [`fail`] fills in.
macro_rules! messaging_span {
    ($parent:expr, $name:literal, $kind:literal, $operation:literal, $($field:tt)*) => {
        tracing::info_span!(
            target: TARGET,
            parent: $parent,
            $name,
            otel.kind = $kind,
            messaging.system = "kafka",
            messaging.operation.type = $operation,
            messaging.operation.name = $operation,
            $($field)*
            otel.status_code = Empty,
            otel.status_description = Empty,
            error.type = Empty,
        )
    };
}

/// The `process` span of one consumed message, a child of the context its headers carry
/// (a trace of its own when they carry none).
pub fn process_span(stage: &'static str, group: &str, input: &Input<'_>) -> tracing::Span {
    let span = messaging_span!(
        None,
        "process",
        "consumer",
        "process",
        otel.name = %format_args!("process {}", input.topic),
        messaging.destination.name = input.topic,
        messaging.destination.partition.id = %input.partition,
        messaging.kafka.offset = input.offset,
        messaging.kafka.message.key = input.key.and_then(|k| std::str::from_utf8(k).ok()),
        messaging.consumer.group.name = group,
        messaging.message.body.size = input.payload.len(),
        tidewatch.stage = stage,
    );
    if let Some(parent) = remote_context(&input.headers) {
        let _ = span.set_parent(parent);
    }
    span
}

/// The `send` span of one record, under `parent` (the `process` span of the message it came
/// from, or none for a record that starts a trace), linked to `record.links`.
pub fn send_span(parent: Option<&tracing::Span>, record: &Record) -> tracing::Span {
    let key = record
        .key
        .as_deref()
        .and_then(|k| std::str::from_utf8(k).ok())
        .unwrap_or("");
    let span = messaging_span!(
        parent.and_then(tracing::Span::id),
        "send",
        "producer",
        "send",
        otel.name = %format_args!("send {}", record.topic),
        messaging.destination.name = record.topic.as_str(),
        messaging.kafka.message.key = key,
        messaging.message.body.size = record.payload.len(),
    );
    add_links(&span, &record.links);
    span
}

/// The `process` span of a batch of messages written together (a sink's batch): a trace of
/// its own, linked to the messages' contexts (at most [`MAX_LINKS`]).
pub fn batch_span(
    stage: &'static str,
    group: &str,
    topics: &str,
    messages: usize,
    links: &[SpanContext],
) -> tracing::Span {
    let span = messaging_span!(
        None,
        "process batch",
        "consumer",
        "process",
        otel.name = %format_args!("process {topics}"),
        messaging.destination.name = topics,
        messaging.consumer.group.name = group,
        messaging.batch.message_count = messages,
        tidewatch.stage = stage,
    );
    add_links(&span, links);
    span
}

fn add_links(span: &tracing::Span, links: &[SpanContext]) {
    for link in links.iter().take(MAX_LINKS) {
        span.add_link(link.clone());
    }
}

/// Ends `span` as failed: error status, the bounded `error.type` and the reason.
pub fn fail(span: &tracing::Span, error_type: &str, reason: &str) {
    span.record("otel.status_code", "error");
    span.record("otel.status_description", reason);
    span.record("error.type", error_type);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_valid_traceparent_is_a_context() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = remote_context(&[("traceparent", good.as_bytes())]).expect("valid");
        let sc = cx.span().span_context().clone();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(sc.is_remote() && sc.is_sampled());
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736",
            // Short ids, which OpenTelemetry's propagator alone would pad (scripts/fuzz).
            b"00-4bf9e7643-01f137-01",
            b"00-34da6a3ce929d0e0e4736-01f067aa0ba902b7-01",
            b"00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"\xff\xfe",
            b"",
        ] {
            assert!(remote_context(&[("traceparent", bad)]).is_none(), "{bad:?}");
        }
        assert!(remote_context(&[("other", good.as_bytes())]).is_none());
    }
}
