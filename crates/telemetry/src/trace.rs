//! Traces: `tracing` spans exported as OpenTelemetry spans over OTLP, set up once for every
//! service, and the W3C trace context that carries a trace across processes.
//!
//! Tracing is on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! is set and `OTEL_SDK_DISABLED` is not `true`. Then [`layer`] gives the
//! `tracing-opentelemetry` layer the logging set-up installs, and [`enabled`] is true. When it
//! is off, nothing is installed, [`enabled`] is false, and the hot paths (the request layer,
//! the stage and sink loops, the generator) create no span at all: one relaxed atomic load.
//!
//! The standard variables are honoured: `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`
//! (the service's own name otherwise), `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`
//! (default `parentbased_traceidratio` at 0.1: a caller's decision is followed, and a tenth
//! of new traces are kept), `OTEL_EXPORTER_OTLP_*` (endpoint, headers, timeout; OTLP/HTTP
//! with protobuf is the one protocol), and the batch processor's `OTEL_BSP_MAX_QUEUE_SIZE`,
//! `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, `OTEL_BSP_SCHEDULE_DELAY` and `OTEL_BSP_EXPORT_TIMEOUT`.
//!
//! Finished spans go through a bounded queue to one export thread ([`QueueProcessor`]). The
//! SDK's own batch processor counts the spans it drops only in a log line at shutdown, so
//! this one is ours: a span that finds the queue full is dropped at once (the service never
//! waits for its traces) and counted in `tidewatch_trace_spans_dropped_total`.
//! [`shutdown`] exports what is queued before the process exits.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use opentelemetry::trace::{
    Link, SamplingDecision, SamplingResult, SpanContext, SpanKind, TraceContextExt as _, TraceId,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    IdGenerator as _, RandomIdGenerator, Sampler, SdkTracerProvider, ShouldSample, SpanData,
    SpanExporter as _, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use tokio::sync::mpsc;
use tracing_subscriber::registry::LookupSpan;

use crate::catalog;

/// The target of every span Tidewatch makes (`tracing::info_span!(target: TARGET, ...)`).
pub const TARGET: &str = "tidewatch::trace";

static ENABLED: AtomicBool = AtomicBool::new(false);
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
/// The configured sampler, for callers that decide before they make a span ([`sample`]).
static SAMPLER: OnceLock<Sampler> = OnceLock::new();

/// Whether `value` is a W3C `traceparent` as the Trace Context specification writes it:
/// version, trace id, parent id and flags of exactly 2, 32, 16 and 2 lower-case hex digits,
/// the version not `ff`, and exactly those four fields for version `00` (a later version
/// may append fields). OpenTelemetry's propagator checks less: it parses each field with
/// `from_str_radix`, so it takes `00-4bf9e7643-01f137-01`, short ids padded with zeros
/// into ids the caller never sent (found by `scripts/fuzz`, target `kafka_headers`). Every
/// incoming context, from HTTP or Kafka headers, passes this first.
pub fn valid_traceparent(value: &str) -> bool {
    let hex = |s: &str, digits: usize| {
        s.len() == digits && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let mut fields = value.trim().split('-');
    let (Some(version), Some(trace_id), Some(parent_id), Some(flags)) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return false;
    };
    hex(version, 2)
        && version != "ff"
        && hex(trace_id, 32)
        && hex(parent_id, 16)
        && hex(flags, 2)
        && (version != "00" || fields.next().is_none())
}

/// Whether spans are exported: callers create spans only then.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The trace settings read from the standard `OTEL_*` variables.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The sampler's name, as `OTEL_TRACES_SAMPLER` spells it.
    pub sampler: String,
    /// The ratio of the ratio-based samplers.
    pub ratio: f64,
    pub max_queue: usize,
    pub max_batch: usize,
    pub delay: Duration,
    pub export_timeout: Duration,
}

/// The default share of new traces kept.
pub const DEFAULT_RATIO: f64 = 0.1;

impl Settings {
    /// `None` when no OTLP endpoint is set, the SDK is disabled, or the exporter is `none`.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<Self>> {
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match set("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                anyhow::bail!("OTEL_TRACES_EXPORTER={other:?} is not supported: use otlp (or none)")
            }
        }
        if set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .is_none()
        {
            return Ok(None);
        }
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(p) = set(name).filter(|p| p.trim() != "http/protobuf") {
                anyhow::bail!("{name}={p:?} is not supported: Tidewatch exports OTLP over HTTP with protobuf (http/protobuf)");
            }
        }
        let sampler = set("OTEL_TRACES_SAMPLER").map_or_else(
            || "parentbased_traceidratio".to_owned(),
            |s| s.trim().to_owned(),
        );
        let ratio = match set("OTEL_TRACES_SAMPLER_ARG") {
            None => DEFAULT_RATIO,
            Some(arg) => arg
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| {
                    anyhow::anyhow!("OTEL_TRACES_SAMPLER_ARG={arg:?} is not a ratio from 0 to 1")
                })?,
        };
        let number = |name: &str, default: u64| -> anyhow::Result<u64> {
            match set(name) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| anyhow::anyhow!("{name}={v:?} is not a positive integer")),
            }
        };
        let settings = Settings {
            sampler,
            ratio,
            max_queue: number("OTEL_BSP_MAX_QUEUE_SIZE", 2048)? as usize,
            max_batch: number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)? as usize,
            delay: Duration::from_millis(number("OTEL_BSP_SCHEDULE_DELAY", 5000)?),
            export_timeout: Duration::from_millis(number("OTEL_BSP_EXPORT_TIMEOUT", 30_000)?),
        };
        settings.sampler()?;
        Ok(Some(settings))
    }

    fn sampler(&self) -> anyhow::Result<Sampler> {
        let ratio = Sampler::TraceIdRatioBased(self.ratio);
        Ok(match self.sampler.as_str() {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => ratio,
            "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            "parentbased_traceidratio" => Sampler::ParentBased(Box::new(ratio)),
            other => anyhow::bail!(
                "OTEL_TRACES_SAMPLER={other:?} is not one of always_on, always_off, traceidratio, \
                 parentbased_always_on, parentbased_always_off, parentbased_traceidratio"
            ),
        })
    }
}

/// The layer that turns `tracing` spans into exported OpenTelemetry spans, when the
/// environment asks for traces; it also makes [`enabled`] true. `None` when it does not.
pub fn layer<S>(
    service: &'static str,
    version: &'static str,
) -> anyhow::Result<Option<impl tracing_subscriber::Layer<S>>>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let Some(settings) = Settings::from_env(|name| std::env::var(name).ok())? else {
        return Ok(None);
    };
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none_or(|v| v.is_empty()) {
        resource = resource.with_service_name(service);
    }
    let resource = resource
        .with_attribute(opentelemetry::KeyValue::new("service.version", version))
        .build();
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| anyhow::anyhow!("setting up the OTLP trace exporter: {e}"))?;
    exporter.set_resource(&resource);
    let processor = QueueProcessor::start(exporter, &settings)?;
    let sampler = settings.sampler()?;
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Decided(sampler.clone()))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer(service);
    if PROVIDER.set(provider).is_err() {
        // A second set-up in one process (tests): the first one exports.
        return Ok(None);
    }
    let _ = SAMPLER.set(sampler);
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    ENABLED.store(true, Ordering::Relaxed);
    tracing::debug!(?settings, "exporting traces over OTLP");
    Ok(Some(
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_threads(false),
    ))
}

/// The sampling decision for a span that is made only if it is sampled (the request layer's
/// server span), taken before the span exists so that an unsampled request makes none.
///
/// `parent` is the caller's context, if any: the configured sampler (`OTEL_TRACES_SAMPLER`)
/// decides on it exactly as it would for the span, and a parent-based sampler follows the
/// caller's flag. `Ok` when it is sampled: make the span and its context inside
/// [`keep_sampled`], so that the provider keeps it without deciding again (a second draw of
/// a ratio sampler would keep ratio² of the spans). `Err` when it is not: the trace the
/// request belongs to, the caller's or a new one, for its log lines and its `traceresponse`.
pub fn sample(parent: Option<&Context>) -> Result<(), TraceId> {
    let trace_id = parent.map_or_else(
        || RandomIdGenerator::default().new_trace_id(),
        |cx| cx.span().span_context().trace_id(),
    );
    let Some(sampler) = SAMPLER.get() else {
        return Err(trace_id);
    };
    match sampler
        .should_sample(parent, trace_id, "request", &SpanKind::Server, &[], &[])
        .decision
    {
        SamplingDecision::RecordAndSample => Ok(()),
        SamplingDecision::Drop | SamplingDecision::RecordOnly => Err(trace_id),
    }
}

thread_local! {
    /// Set while a span [`sample`] kept is started: the provider's sampler keeps it.
    static KEEP: Cell<bool> = const { Cell::new(false) };
}

/// Runs `start`, which must make a span and start it (ask for its context), with the
/// provider told to keep it: the decision [`sample`] took stands. Spans started later, under
/// it, are the configured sampler's to decide as usual.
pub fn keep_sampled<T>(start: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            KEEP.with(|k| k.set(false));
        }
    }
    KEEP.with(|k| k.set(true));
    let _reset = Reset;
    start()
}

/// The provider's sampler: the configured one, except for the span started inside
/// [`keep_sampled`], which is kept (once: the flag is used up by that span).
#[derive(Debug, Clone)]
struct Decided(Sampler);

impl ShouldSample for Decided {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        if KEEP.with(|k| k.replace(false)) {
            return SamplingResult {
                decision: SamplingDecision::RecordAndSample,
                attributes: Vec::new(),
                trace_state: parent_context
                    .map(|cx| cx.span().span_context().trace_state().clone())
                    .unwrap_or_default(),
            };
        }
        self.0
            .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

/// Exports every span still queued and stops the export thread; waits at most the export
/// timeout. Called by the runner when the service stops; a no-op when tracing is off.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(e) = provider.shutdown() {
            tracing::warn!(error = %e, "flushing traces at shutdown failed");
        }
    }
}

/// Creates the export series at zero (every service has them, so a dashboard shows that a
/// service exports nothing, rather than no data). Called once the recorder is installed.
pub fn register_metrics() {
    for reason in ["queue_full", "export_failed"] {
        catalog::TRACE_SPANS_DROPPED
            .counter(&[("reason", reason)])
            .absolute(0);
    }
    catalog::TRACE_SPANS_EXPORTED.counter(&[]).absolute(0);
}

/// The span context of the innermost entered span on this thread, if it is valid: what a
/// log line names (`trace_id`, `span_id`).
pub fn current_span_context() -> Option<SpanContext> {
    let cx = Context::current();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.clone())
}

enum Control {
    Flush(std::sync::mpsc::Sender<()>),
    Shutdown(std::sync::mpsc::Sender<()>),
}

/// A span processor with a bounded queue and one export thread, which counts what it drops.
#[derive(Debug)]
pub struct QueueProcessor {
    spans: mpsc::Sender<SpanData>,
    control: mpsc::UnboundedSender<Control>,
    timeout: Duration,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl QueueProcessor {
    /// Starts the export thread (with a single-threaded runtime of its own, so export never
    /// competes with the service's tasks).
    pub fn start<E>(exporter: E, settings: &Settings) -> anyhow::Result<Self>
    where
        E: opentelemetry_sdk::trace::SpanExporter + 'static,
    {
        let (spans, rx) = mpsc::channel(settings.max_queue);
        let (control, control_rx) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (max_batch, delay, timeout) =
            (settings.max_batch, settings.delay, settings.export_timeout);
        let worker = std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || {
                runtime.block_on(export_loop(
                    exporter, rx, control_rx, max_batch, delay, timeout,
                ));
            })?;
        Ok(Self {
            spans,
            control,
            timeout,
            worker: Mutex::new(Some(worker)),
        })
    }

    /// Sends a flush or shutdown to the export thread and waits for it to finish, at most
    /// the export timeout (a blocking wait on a std channel, so callable from a runtime).
    fn ask(&self, make: impl FnOnce(std::sync::mpsc::Sender<()>) -> Control) -> OTelSdkResult {
        let (tx, rx) = std::sync::mpsc::channel();
        self.control
            .send(make(tx))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        let timeout = self.timeout + Duration::from_secs(1);
        rx.recv_timeout(timeout).map_err(|e| match e {
            std::sync::mpsc::RecvTimeoutError::Timeout => OTelSdkError::Timeout(timeout),
            std::sync::mpsc::RecvTimeoutError::Disconnected => OTelSdkError::AlreadyShutdown,
        })
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.spans.try_send(span).is_err() {
            catalog::TRACE_SPANS_DROPPED
                .counter(&[("reason", "queue_full")])
                .increment(1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Control::Flush)
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        let result = self.ask(Control::Shutdown);
        if let Some(worker) = self
            .worker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            if result.is_ok() {
                let _ = worker.join();
            }
        }
        result
    }
}

async fn export_loop<E: opentelemetry_sdk::trace::SpanExporter>(
    mut exporter: E,
    mut spans: mpsc::Receiver<SpanData>,
    mut control: mpsc::UnboundedReceiver<Control>,
    max_batch: usize,
    delay: Duration,
    timeout: Duration,
) {
    let mut batch = Vec::with_capacity(max_batch);
    let mut failing = false;
    let mut tick = tokio::time::interval(delay);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            message = control.recv() => {
                while let Ok(span) = spans.try_recv() {
                    batch.push(span);
                    if batch.len() >= max_batch {
                        export(&exporter, &mut batch, timeout, &mut failing).await;
                    }
                }
                export(&exporter, &mut batch, timeout, &mut failing).await;
                match message {
                    Some(Control::Flush(done)) => {
                        let _ = done.send(());
                    }
                    Some(Control::Shutdown(done)) => {
                        let _ = exporter.shutdown();
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                }
            }
            span = spans.recv() => match span {
                Some(span) => {
                    batch.push(span);
                    if batch.len() >= max_batch {
                        export(&exporter, &mut batch, timeout, &mut failing).await;
                        tick.reset();
                    }
                }
                None => {
                    export(&exporter, &mut batch, timeout, &mut failing).await;
                    return;
                }
            },
            _ = tick.tick() => export(&exporter, &mut batch, timeout, &mut failing).await,
        }
    }
}

async fn export<E: opentelemetry_sdk::trace::SpanExporter>(
    exporter: &E,
    batch: &mut Vec<SpanData>,
    timeout: Duration,
    failing: &mut bool,
) {
    if batch.is_empty() {
        return;
    }
    let spans = std::mem::take(batch);
    let count = spans.len() as u64;
    let result = match tokio::time::timeout(timeout, exporter.export(spans)).await {
        Ok(result) => result,
        Err(_) => Err(OTelSdkError::Timeout(timeout)),
    };
    match result {
        Ok(()) => {
            catalog::TRACE_SPANS_EXPORTED.counter(&[]).increment(count);
            if std::mem::take(failing) {
                tracing::info!("trace export works again");
            }
        }
        Err(e) => {
            catalog::TRACE_SPANS_DROPPED
                .counter(&[("reason", "export_failed")])
                .increment(count);
            // One line per failing spell, not per batch.
            if !std::mem::replace(failing, true) {
                tracing::warn!(error = %e, spans = count, "trace export failed; dropping spans until it works again");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> anyhow::Result<Option<Settings>> {
        Settings::from_env(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn traces_are_off_without_an_endpoint_or_when_disabled() {
        assert_eq!(settings(&[]).expect("valid"), None);
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        assert_eq!(
            settings(&[endpoint, ("OTEL_SDK_DISABLED", "true")]).expect("valid"),
            None
        );
        assert_eq!(
            settings(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]).expect("valid"),
            None
        );
        let on = settings(&[endpoint]).expect("valid").expect("on");
        assert_eq!(on.sampler, "parentbased_traceidratio");
        assert_eq!(on.ratio, DEFAULT_RATIO);
        assert_eq!((on.max_queue, on.max_batch), (2048, 512));
        assert!(
            settings(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://x/v1/traces")])
                .expect("valid")
                .is_some()
        );
    }

    #[test]
    fn a_decision_taken_before_the_span_is_kept_once_and_later_spans_are_sampled_as_configured() {
        let never = Decided(Sampler::AlwaysOff);
        let sample = || {
            never
                .should_sample(None, TraceId::from(7), "x", &SpanKind::Server, &[], &[])
                .decision
        };
        assert_eq!(keep_sampled(sample), SamplingDecision::RecordAndSample);
        // Used up by the first span: one started under it is the configured sampler's.
        assert_eq!(
            keep_sampled(|| (sample(), sample())),
            (SamplingDecision::RecordAndSample, SamplingDecision::Drop)
        );
        assert_eq!(sample(), SamplingDecision::Drop);
    }

    #[test]
    fn bad_settings_are_refused_with_the_variable_named() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        for (var, value) in [
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
        ] {
            let error = settings(&[endpoint, (var, value)]).expect_err(var);
            assert!(error.to_string().contains(var), "{error}");
        }
        let s = settings(&[
            endpoint,
            ("OTEL_TRACES_SAMPLER", "always_on"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ])
        .expect("valid")
        .expect("on");
        assert_eq!((s.sampler.as_str(), s.ratio), ("always_on", 0.5));
        assert_eq!(s.delay, Duration::from_millis(200));
    }
}
