//! The trace context every stage reads from a message's headers
//! (`tidewatch_kafka::trace::remote_context`) on arbitrary header sets: the input is split
//! into headers at 0xff bytes, each into name and value at its first 0xfe byte (names are
//! what librdkafka hands over: text; a name that is not UTF-8 is skipped, as the stage loop
//! skips it). Beyond not panicking: a context found is valid and remote, its trace and
//! parent ids are exactly those of the message's first `traceparent` (no short id padded),
//! and written back into headers it reads the same (what a stage forwards, the next stage
//! reads). Its first crash, short ids taken by OpenTelemetry's propagator, is a case of
//! `only_a_valid_traceparent_is_a_context` in `crates/kafka/src/trace.rs` now.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;

fuzz_target!(|data: &[u8]| {
    let headers: Vec<(&str, &[u8])> = data
        .split(|&b| b == 0xff)
        .filter_map(|h| {
            let at = h.iter().position(|&b| b == 0xfe)?;
            let name = std::str::from_utf8(&h[..at]).ok()?;
            Some((name, &h[at + 1..]))
        })
        .collect();
    let Some(cx) = tidewatch_kafka::trace::remote_context(&headers) else {
        return;
    };
    let sc = cx.span().span_context().clone();
    assert!(sc.is_valid() && sc.is_remote(), "{sc:?}");
    // The context is the first `traceparent` header's, ids exactly as written there.
    let first = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("traceparent"))
        .map(|(_, value)| String::from_utf8_lossy(value).trim().to_owned())
        .expect("a context comes from a traceparent header");
    let fields: Vec<&str> = first.split('-').collect();
    assert_eq!(
        (fields[1], fields[2]),
        (
            sc.trace_id().to_string().as_str(),
            sc.span_id().to_string().as_str()
        ),
        "{first:?}"
    );
    let mut written = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut written);
    let again: Vec<(&str, &[u8])> = written
        .iter()
        .map(|(k, v): (&String, &String)| (k.as_str(), v.as_bytes()))
        .collect();
    let round = tidewatch_kafka::trace::remote_context(&again).expect("what we write, we read");
    let round = round.span().span_context().clone();
    assert_eq!(
        (round.trace_id(), round.span_id(), round.trace_flags()),
        (sc.trace_id(), sc.span_id(), sc.trace_flags())
    );
});
