//! The metric catalogue: the one place in the workspace where metric names are written.
//!
//! Every metric a Tidewatch process can expose is a [`MetricDef`] constant here, with its
//! type, unit, labels, help text and (for histograms) explicit buckets. The recorder registers
//! descriptions and buckets from [`ALL`], `METRICS.md` is generated from it, and tests check
//! that dashboards, alert rules and `/metrics` agree with it. Services never spell a metric
//! name; they call [`MetricDef::counter`], [`MetricDef::gauge`] or [`MetricDef::histogram`].
//!
//! Label values must come from small fixed sets (route templates, enum variants, field names
//! from a schema): never ids, raw paths, error messages or free text.

use metrics::{Counter, Gauge, Histogram, Label};

/// What kind of Prometheus series a metric produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// Which part of the system exposes a metric; a service declares the groups it serves so a
/// test can prove that everything it promises is really exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// RED metrics of every HTTP server (the [`crate::http`] layer).
    Http,
    /// Process resource metrics, collected by `metrics-process`.
    Process,
    /// Build information and uptime.
    Runtime,
    /// Component health state.
    Health,
    /// The volatility-spike model as served online.
    Prediction,
    /// Admin endpoints.
    Admin,
    /// Kafka clients and the stage loop every streaming service runs.
    Kafka,
    /// Input data quality, measured where raw records are validated.
    Quality,
    /// The market generator.
    Generator,
    /// Instrument reference data and its cache (enrich).
    Reference,
    /// Anomaly detection and its score against planted labels (enrich).
    Anomaly,
    /// Event-time windows: bars, features, watermark, late trades (aggregate).
    Windowing,
    /// Predictions judged by observed outcomes, drift, online learning (prediction-consumer).
    Outcomes,
    /// PostgreSQL as a sink: pool, statements, rows, transactions (project).
    Database,
    /// Alertmanager notifications received (alert-receiver).
    Alerting,
    /// The load driver's requests to the prediction API and their outcomes (loadgen).
    Load,
    /// Training runs and the model registry (trainer).
    Training,
    /// Trace export over OTLP (every service, when an endpoint is set).
    Tracing,
}

impl Group {
    pub fn as_str(self) -> &'static str {
        match self {
            Group::Http => "http",
            Group::Process => "process",
            Group::Runtime => "runtime",
            Group::Health => "health",
            Group::Prediction => "prediction",
            Group::Admin => "admin",
            Group::Kafka => "kafka",
            Group::Quality => "quality",
            Group::Generator => "generator",
            Group::Reference => "reference",
            Group::Anomaly => "anomaly",
            Group::Windowing => "windowing",
            Group::Outcomes => "outcomes",
            Group::Database => "database",
            Group::Alerting => "alerting",
            Group::Load => "load",
            Group::Training => "training",
            Group::Tracing => "tracing",
        }
    }
}

/// One metric: everything a reader of `/metrics`, a dashboard or an alert needs to know.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: MetricKind,
    /// Unit as written in the name's suffix (`seconds`, `bytes`), or `None` for counts/ratios.
    pub unit: Option<&'static str>,
    pub labels: &'static [&'static str],
    pub help: &'static str,
    /// Histogram bucket upper bounds. Every histogram has explicit buckets: the exporter
    /// would otherwise render a summary, which cannot be aggregated across instances.
    pub buckets: &'static [f64],
    pub group: Group,
}

impl MetricDef {
    /// A counter handle for the given label values; keep it rather than calling this per event.
    pub fn counter(&'static self, labels: &[(&'static str, &str)]) -> Counter {
        debug_assert_eq!(
            self.kind,
            MetricKind::Counter,
            "{} is not a counter",
            self.name
        );
        self.check_labels(labels);
        metrics::counter!(self.name, to_labels(labels))
    }

    /// A gauge handle for the given label values.
    pub fn gauge(&'static self, labels: &[(&'static str, &str)]) -> Gauge {
        debug_assert_eq!(self.kind, MetricKind::Gauge, "{} is not a gauge", self.name);
        self.check_labels(labels);
        metrics::gauge!(self.name, to_labels(labels))
    }

    /// A histogram handle for the given label values.
    pub fn histogram(&'static self, labels: &[(&'static str, &str)]) -> Histogram {
        debug_assert_eq!(
            self.kind,
            MetricKind::Histogram,
            "{} is not a histogram",
            self.name
        );
        self.check_labels(labels);
        metrics::histogram!(self.name, to_labels(labels))
    }

    fn check_labels(&self, labels: &[(&'static str, &str)]) {
        debug_assert!(
            labels.len() == self.labels.len()
                && labels
                    .iter()
                    .zip(self.labels)
                    .all(|((k, _), want)| k == want),
            "{}: labels {:?} do not match the catalogue {:?}",
            self.name,
            labels.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            self.labels
        );
    }
}

fn to_labels(labels: &[(&'static str, &str)]) -> Vec<Label> {
    labels
        .iter()
        .map(|(k, v)| Label::new(*k, v.to_string()))
        .collect()
}

/// Request latency buckets: fine below 100 ms, where the latency SLO sits.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Body sizes, powers of four from 64 B to 4 MiB.
const SIZE_BUCKETS: &[f64] = &[
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
];
/// Model inference runs in microseconds.
const INFERENCE_BUCKETS: &[f64] = &[
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3,
];
/// Database statements: a primary-key read is sub-millisecond, a batch upsert tens of ms.
const DB_LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
const PROBABILITY_BUCKETS: &[f64] = &[0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0];

const HTTP_RED_LABELS: &[&str] = &[
    "http_request_method",
    "http_route",
    "http_response_status_code",
];

// --- HTTP server (OpenTelemetry HTTP semantic conventions, Prometheus form) ---

pub const HTTP_SERVER_REQUEST_DURATION: MetricDef = MetricDef {
    name: "http_server_request_duration_seconds",
    kind: MetricKind::Histogram,
    unit: Some("seconds"),
    labels: HTTP_RED_LABELS,
    help: "Time from receiving a request to sending its response headers.",
    buckets: LATENCY_BUCKETS,
    group: Group::Http,
};
pub const HTTP_SERVER_REQUESTS: MetricDef = MetricDef {
    name: "http_server_requests_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: HTTP_RED_LABELS,
    help: "HTTP requests answered, by method, route template and status code.",
    buckets: &[],
    group: Group::Http,
};
pub const HTTP_SERVER_ACTIVE_REQUESTS: MetricDef = MetricDef {
    name: "http_server_active_requests",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &["http_request_method"],
    help: "HTTP requests currently being handled.",
    buckets: &[],
    group: Group::Http,
};
pub const HTTP_SERVER_REQUEST_BODY_SIZE: MetricDef = MetricDef {
    name: "http_server_request_body_size_bytes",
    kind: MetricKind::Histogram,
    unit: Some("bytes"),
    labels: &["http_request_method", "http_route"],
    help: "Size of HTTP request bodies (from Content-Length or the body's exact size).",
    buckets: SIZE_BUCKETS,
    group: Group::Http,
};
pub const HTTP_SERVER_RESPONSE_BODY_SIZE: MetricDef = MetricDef {
    name: "http_server_response_body_size_bytes",
    kind: MetricKind::Histogram,
    unit: Some("bytes"),
    labels: &["http_request_method", "http_route"],
    help: "Size of HTTP response bodies whose size is known when headers are sent.",
    buckets: SIZE_BUCKETS,
    group: Group::Http,
};

pub const HTTP_SERVER_ERRORS: MetricDef = MetricDef {
    name: "tidewatch_http_server_errors_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["error_type"],
    help: "API responses with a 5xx status, by the error code of their body (internal, overloaded, database_unavailable).",
    buckets: &[],
    group: Group::Http,
};
pub const HTTP_MAX_CONCURRENT_REQUESTS: MetricDef = MetricDef {
    name: "tidewatch_http_max_concurrent_requests",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &[],
    help: "The API's limit on requests served at once (MAX_CONCURRENT_REQUESTS); absent when unlimited.",
    buckets: &[],
    group: Group::Http,
};
pub const HTTP_REQUESTS_SHED: MetricDef = MetricDef {
    name: "tidewatch_http_requests_shed_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &[],
    help: "Requests answered 503 overloaded at once because the concurrency limit was reached.",
    buckets: &[],
    group: Group::Http,
};

// --- Process (names fixed by metrics-process, which follows the Prometheus client convention) ---

pub const PROCESS_CPU_SECONDS: MetricDef = MetricDef {
    name: "process_cpu_seconds_total",
    kind: MetricKind::Counter,
    unit: Some("seconds"),
    labels: &[],
    help: "Total user and system CPU time spent.",
    buckets: &[],
    group: Group::Process,
};
pub const PROCESS_RESIDENT_MEMORY: MetricDef = MetricDef {
    name: "process_resident_memory_bytes",
    kind: MetricKind::Gauge,
    unit: Some("bytes"),
    labels: &[],
    help: "Resident memory size.",
    buckets: &[],
    group: Group::Process,
};
pub const PROCESS_VIRTUAL_MEMORY: MetricDef = MetricDef {
    name: "process_virtual_memory_bytes",
    kind: MetricKind::Gauge,
    unit: Some("bytes"),
    labels: &[],
    help: "Virtual memory size.",
    buckets: &[],
    group: Group::Process,
};
pub const PROCESS_VIRTUAL_MEMORY_MAX: MetricDef = MetricDef {
    name: "process_virtual_memory_max_bytes",
    kind: MetricKind::Gauge,
    unit: Some("bytes"),
    labels: &[],
    help: "Maximum amount of virtual memory available.",
    buckets: &[],
    group: Group::Process,
};
pub const PROCESS_OPEN_FDS: MetricDef = MetricDef {
    name: "process_open_fds",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &[],
    help: "Open file descriptors.",
    buckets: &[],
    group: Group::Process,
};
pub const PROCESS_MAX_FDS: MetricDef = MetricDef {
    name: "process_max_fds",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &[],
    help: "Maximum number of open file descriptors.",
    buckets: &[],
    group: Group::Process,
};
pub const PROCESS_START_TIME: MetricDef = MetricDef {
    name: "process_start_time_seconds",
    kind: MetricKind::Gauge,
    unit: Some("seconds"),
    labels: &[],
    help: "Start time of the process since the Unix epoch.",
    buckets: &[],
    group: Group::Process,
};
pub const PROCESS_THREADS: MetricDef = MetricDef {
    name: "process_threads",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &[],
    help: "Number of OS threads in the process.",
    buckets: &[],
    group: Group::Process,
};

// --- Tracing ---

pub const TRACE_SPANS_EXPORTED: MetricDef = MetricDef {
    name: "tidewatch_trace_spans_exported_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &[],
    help:
        "Finished spans the OTLP endpoint accepted. Only when OTEL_EXPORTER_OTLP_ENDPOINT is set.",
    buckets: &[],
    group: Group::Tracing,
};
pub const TRACE_SPANS_DROPPED: MetricDef = MetricDef {
    name: "tidewatch_trace_spans_dropped_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["reason"],
    help: "Finished spans that were not exported, by reason: queue_full (the bounded export queue was full, OTEL_BSP_MAX_QUEUE_SIZE) or export_failed (the endpoint refused the batch, was unreachable or timed out).",
    buckets: &[],
    group: Group::Tracing,
};

// --- Runtime ---

pub const BUILD_INFO: MetricDef = MetricDef {
    name: "tidewatch_build_info",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &["service", "version", "git_commit", "rustc"],
    help: "Always 1; labels identify the running build.",
    buckets: &[],
    group: Group::Runtime,
};
pub const UPTIME: MetricDef = MetricDef {
    name: "tidewatch_uptime_seconds",
    kind: MetricKind::Gauge,
    unit: Some("seconds"),
    labels: &[],
    help: "Seconds since the service started.",
    buckets: &[],
    group: Group::Runtime,
};

// --- Health ---

pub const HEALTH_STATUS: MetricDef = MetricDef {
    name: "tidewatch_health_status",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &["component", "status"],
    help: "1 for the component's current status (healthy, degraded, unhealthy), 0 for the others.",
    buckets: &[],
    group: Group::Health,
};

// --- Prediction ---

pub const PREDICTIONS: MetricDef = MetricDef {
    name: "tidewatch_predictions_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["model", "variant", "outcome"],
    help: "Predictions served, by model, variant and outcome (spike, no_spike).",
    buckets: &[],
    group: Group::Prediction,
};
pub const PREDICTION_PROBABILITY: MetricDef = MetricDef {
    name: "tidewatch_prediction_probability",
    kind: MetricKind::Histogram,
    unit: None,
    labels: &["variant"],
    help: "Distribution of predicted spike probabilities.",
    buckets: PROBABILITY_BUCKETS,
    group: Group::Prediction,
};
pub const PREDICTION_INFERENCE_DURATION: MetricDef = MetricDef {
    name: "tidewatch_prediction_inference_duration_seconds",
    kind: MetricKind::Histogram,
    unit: Some("seconds"),
    labels: &["variant"],
    help: "Time spent in the model for one prediction.",
    buckets: INFERENCE_BUCKETS,
    group: Group::Prediction,
};
pub const PREDICTION_VALIDATION_ERRORS: MetricDef = MetricDef {
    name: "tidewatch_prediction_validation_errors_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["field"],
    help: "Prediction requests rejected, by the offending field (without item indices).",
    buckets: &[],
    group: Group::Prediction,
};
pub const MODEL_INFO: MetricDef = MetricDef {
    name: "tidewatch_model_info",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &["model", "version"],
    help: "Always 1; labels identify the loaded model artifact.",
    buckets: &[],
    group: Group::Prediction,
};
pub const MODEL_VARIANT_ACTIVE: MetricDef = MetricDef {
    name: "tidewatch_model_variant_active",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &["variant"],
    help: "1 for the variant currently serving predictions, 0 for the others.",
    buckets: &[],
    group: Group::Prediction,
};
pub const MODEL_HELDOUT_SCORE: MetricDef = MetricDef {
    name: "tidewatch_model_heldout_score",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &["variant", "metric"],
    help: "Score of each variant on the artifact's held-out set (accuracy, precision, recall, f1, auc).",
    buckets: &[],
    group: Group::Prediction,
};

// --- Admin ---

pub const ADMIN_AUTH_FAILURES: MetricDef = MetricDef {
    name: "tidewatch_admin_auth_failures_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["reason"],
    help: "Rejected admin requests, by reason (missing, invalid, not_configured).",
    buckets: &[],
    group: Group::Admin,
};
pub const ADMIN_ACTIONS: MetricDef = MetricDef {
    name: "tidewatch_admin_actions_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["action"],
    help: "Admin actions carried out, by action.",
    buckets: &[],
    group: Group::Admin,
};

pub const FAULT_INJECTED: MetricDef = MetricDef {
    name: "tidewatch_fault_injected",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &["fault"],
    help: "Injected fault switches (PUT /v1/admin/faults): the error rate, the latency or slowdown in milliseconds, or 1 for an on/off switch; 0 when off.",
    buckets: &[],
    group: Group::Admin,
};

// --- Kafka and streaming stages (after Vector's component specification) ---

/// Produce round trips on loopback take milliseconds; across a network, more.
const PRODUCE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Processing one message is microseconds; a slow stage shows up to seconds.
const PROCESSING_BUCKETS: &[f64] = &[
    1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1.0,
];
const EVENTS_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

pub const KAFKA_PRODUCED: MetricDef = MetricDef {
    name: "tidewatch_kafka_produced_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["topic", "outcome"],
    help: "Messages whose delivery the broker answered, by topic and outcome (acked, failed).",
    buckets: &[],
    group: Group::Kafka,
};
pub const KAFKA_PRODUCER_RENEWALS: MetricDef = MetricDef {
    name: "tidewatch_kafka_producer_renewals_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["reason"],
    help: "Times a producer was replaced by a new one (a new producer id), by reason: fatal (librdkafka called it unusable) or stalled (sends failed and none was acknowledged for a while, as after a broker that lost its state).",
    buckets: &[],
    group: Group::Kafka,
};
pub const KAFKA_POSITION_RESETS: MetricDef = MetricDef {
    name: "tidewatch_kafka_position_resets_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &[],
    help: "Partitions a consumer found itself past the end of (its next offset above the high watermark for 15 s: the broker lost the partition's data and recreated it), consumed again from the beginning.",
    buckets: &[],
    group: Group::Kafka,
};
pub const KAFKA_SKIPPED_OFFSETS: MetricDef = MetricDef {
    name: "tidewatch_kafka_skipped_offsets_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &[],
    help: "Offsets the broker skipped: a message arrived past the offset expected next (the committed or sought position, or the previous message plus one), and the consumer sought back to read them again. Kafka leaves such gaps only in compacted or transactional topics, which Tidewatch does not use; tansu 0.6 answers a fetch starting inside a record batch with the batches after it.",
    buckets: &[],
    group: Group::Kafka,
};
pub const KAFKA_UNREADABLE_HEADERS: MetricDef = MetricDef {
    name: "tidewatch_kafka_unreadable_headers_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &[],
    help: "Headers of consumed messages left out because their names are not UTF-8 (rdkafka cannot read such a name); the message itself is processed.",
    buckets: &[],
    group: Group::Kafka,
};
pub const KAFKA_PRODUCE_DURATION: MetricDef = MetricDef {
    name: "tidewatch_kafka_produce_duration_seconds",
    kind: MetricKind::Histogram,
    unit: Some("seconds"),
    labels: &["topic"],
    help: "Time from handing a message to the producer to the broker's acknowledgement.",
    buckets: PRODUCE_BUCKETS,
    group: Group::Kafka,
};
pub const KAFKA_CONSUMER_LAG: MetricDef = MetricDef {
    name: "tidewatch_kafka_consumer_lag_messages",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &["topic", "partition"],
    help: "Messages of the partition the stage has not yet taken: high watermark minus the consumed position (librdkafka statistics; not the committed lag, which a stateful stage keeps at its oldest open window).",
    buckets: &[],
    group: Group::Kafka,
};
pub const KAFKA_FRESHNESS_LAG: MetricDef = MetricDef {
    name: "tidewatch_kafka_freshness_lag_seconds",
    kind: MetricKind::Gauge,
    unit: Some("seconds"),
    labels: &["stage"],
    help: "Now minus the ingest time of the last message the stage finished.",
    buckets: &[],
    group: Group::Kafka,
};
pub const KAFKA_COMMITS: MetricDef = MetricDef {
    name: "tidewatch_kafka_commits_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["outcome"],
    help: "Offset commits, by outcome (ok, failed).",
    buckets: &[],
    group: Group::Kafka,
};
pub const KAFKA_REBALANCES: MetricDef = MetricDef {
    name: "tidewatch_kafka_rebalances_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["kind"],
    help: "Consumer group rebalances seen, by kind (assign, revoke, error).",
    buckets: &[],
    group: Group::Kafka,
};
pub const COMPONENT_RECEIVED_EVENTS: MetricDef = MetricDef {
    name: "tidewatch_component_received_events_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["stage"],
    help: "Events a stage read from its input.",
    buckets: &[],
    group: Group::Kafka,
};
pub const COMPONENT_RECEIVED_BYTES: MetricDef = MetricDef {
    name: "tidewatch_component_received_event_bytes_total",
    kind: MetricKind::Counter,
    unit: Some("bytes"),
    labels: &["stage"],
    help: "Payload bytes a stage read from its input.",
    buckets: &[],
    group: Group::Kafka,
};
pub const COMPONENT_SENT_EVENTS: MetricDef = MetricDef {
    name: "tidewatch_component_sent_events_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["stage", "topic"],
    help: "Events a stage wrote and the broker acknowledged, by output topic (`postgresql` for rows the projection committed).",
    buckets: &[],
    group: Group::Kafka,
};
pub const COMPONENT_SENT_BYTES: MetricDef = MetricDef {
    name: "tidewatch_component_sent_event_bytes_total",
    kind: MetricKind::Counter,
    unit: Some("bytes"),
    labels: &["stage", "topic"],
    help: "Payload bytes a stage wrote and the broker acknowledged, by output topic (`postgresql`: payloads of the messages the projection committed).",
    buckets: &[],
    group: Group::Kafka,
};
pub const COMPONENT_ERRORS: MetricDef = MetricDef {
    name: "tidewatch_component_errors_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["stage", "error_type"],
    help: "Errors in a stage, by bounded error type.",
    buckets: &[],
    group: Group::Kafka,
};
pub const COMPONENT_DISCARDED_EVENTS: MetricDef = MetricDef {
    name: "tidewatch_component_discarded_events_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["stage", "intentional"],
    help: "Events a stage did not pass on: intentional (filtered, dead-lettered) or not (lost to an error).",
    buckets: &[],
    group: Group::Kafka,
};
pub const COMPONENT_PROCESSING_DURATION: MetricDef = MetricDef {
    name: "tidewatch_component_processing_duration_seconds",
    kind: MetricKind::Histogram,
    unit: Some("seconds"),
    labels: &["stage"],
    help: "Time a stage spent turning one input event into its outputs (for the projection: one batch written, retries included).",
    buckets: PROCESSING_BUCKETS,
    group: Group::Kafka,
};
pub const COMPONENT_BATCH_SIZE: MetricDef = MetricDef {
    name: "tidewatch_component_batch_size_events",
    kind: MetricKind::Histogram,
    unit: None,
    labels: &["stage"],
    help:
        "Events a stage had in flight (processed, awaiting acknowledgement) when it stored offsets.",
    buckets: EVENTS_BUCKETS,
    group: Group::Kafka,
};
pub const DLQ_MESSAGES: MetricDef = MetricDef {
    name: "tidewatch_dlq_messages_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["stage", "error_code", "cause"],
    help: "Messages sent to the dead-letter topic, by stage, bounded error code and cause (input: the producer sent a record that must be refused; pipeline: a record the pipeline should have handled was lost).",
    buckets: &[],
    group: Group::Kafka,
};

// --- Data quality ---

pub const DATA_QUALITY_ISSUES: MetricDef = MetricDef {
    name: "tidewatch_data_quality_issues_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["stage", "field", "issue"],
    help: "Rejected raw records, by field and issue (missing, invalid, out_of_range, malformed, unknown_venue).",
    buckets: &[],
    group: Group::Quality,
};
pub const SCHEMA_VIOLATIONS: MetricDef = MetricDef {
    name: "tidewatch_schema_violations_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["stage", "kind"],
    help: "Raw records that do not match either venue's schema (malformed, unknown_venue, invalid type or format).",
    buckets: &[],
    group: Group::Quality,
};
pub const DATA_QUALITY_SCORE: MetricDef = MetricDef {
    name: "tidewatch_data_quality_score",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &["stage"],
    help: "Share of valid records among the last 1,000, as 0-100.",
    buckets: &[],
    group: Group::Quality,
};

// --- Generator ---

pub const GENERATOR_RECORDS: MetricDef = MetricDef {
    name: "tidewatch_generator_records_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["kind"],
    help: "Records published to trades.raw and acknowledged, by kind (valid, anomaly, malformed, missing_field, out_of_range, unknown_symbol, late).",
    buckets: &[],
    group: Group::Generator,
};
pub const GENERATOR_TARGET_RATE: MetricDef = MetricDef {
    name: "tidewatch_generator_target_rate",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &[],
    help: "Configured records per second (0: as fast as the broker takes them).",
    buckets: &[],
    group: Group::Generator,
};
pub const GENERATOR_RATE: MetricDef = MetricDef {
    name: "tidewatch_generator_rate",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &[],
    help: "Records published per second, measured over the last second.",
    buckets: &[],
    group: Group::Generator,
};
pub const GENERATOR_PACING_WAIT: MetricDef = MetricDef {
    name: "tidewatch_generator_pacing_wait_ratio",
    kind: MetricKind::Gauge,
    unit: Some("ratio"),
    labels: &[],
    help: "Share of the last second the generator spent waiting for its pace (rate or event time); near 0 while it publishes, it runs flat out and cannot keep its pace.",
    buckets: &[],
    group: Group::Generator,
};
pub const GENERATOR_PAUSED: MetricDef = MetricDef {
    name: "tidewatch_generator_paused",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &[],
    help: "1 while publishing is paused by an admin, else 0.",
    buckets: &[],
    group: Group::Generator,
};
pub const GENERATOR_EVENT_TIME: MetricDef = MetricDef {
    name: "tidewatch_generator_event_time_seconds",
    kind: MetricKind::Gauge,
    unit: Some("seconds"),
    labels: &[],
    help: "Event time of the last on-time record published, as a Unix timestamp.",
    buckets: &[],
    group: Group::Generator,
};
pub const MARKET_REGIME: MetricDef = MetricDef {
    name: "tidewatch_market_regime",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &["symbol", "regime"],
    help:
        "1 for each simulated symbol's current volatility regime (calm, normal, turbulent), else 0.",
    buckets: &[],
    group: Group::Generator,
};

// --- Reference data (enrich) ---

const LOOKUP_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

pub const REFERENCE_CACHE_REQUESTS: MetricDef = MetricDef {
    name: "tidewatch_reference_cache_requests_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["result"],
    help: "Instrument cache lookups, by result (hit, miss, stale: served past its time to live because the database could not be asked).",
    buckets: &[],
    group: Group::Reference,
};
pub const REFERENCE_CACHE_EVICTIONS: MetricDef = MetricDef {
    name: "tidewatch_reference_cache_evictions_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &[],
    help: "Instrument cache entries evicted to stay within capacity.",
    buckets: &[],
    group: Group::Reference,
};
pub const REFERENCE_CACHE_ENTRIES: MetricDef = MetricDef {
    name: "tidewatch_reference_cache_entries",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &[],
    help: "Instruments (and known-unknown symbols) held in the cache.",
    buckets: &[],
    group: Group::Reference,
};
pub const REFERENCE_LOOKUPS: MetricDef = MetricDef {
    name: "tidewatch_reference_lookups_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["outcome"],
    help: "Instrument queries to PostgreSQL, by outcome (found, not_found, failed).",
    buckets: &[],
    group: Group::Reference,
};
pub const REFERENCE_LOOKUP_DURATION: MetricDef = MetricDef {
    name: "tidewatch_reference_lookup_duration_seconds",
    kind: MetricKind::Histogram,
    unit: Some("seconds"),
    labels: &[],
    help: "Time to query one instrument from PostgreSQL.",
    buckets: LOOKUP_BUCKETS,
    group: Group::Reference,
};

// --- Anomaly detection (enrich) ---

pub const ANOMALIES: MetricDef = MetricDef {
    name: "tidewatch_anomalies_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["type", "severity"],
    help: "Trades flagged as anomalous, by type (price_band, price_jump, outsized_size) and severity (warning, critical).",
    buckets: &[],
    group: Group::Anomaly,
};
const ANOMALY_SCORE_BUCKETS: &[f64] = &[0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0];
pub const ANOMALY_SCORE_RATIO: MetricDef = MetricDef {
    name: "tidewatch_anomaly_score_ratio",
    kind: MetricKind::Histogram,
    unit: Some("ratio"),
    labels: &["type"],
    help: "Score of each flagged trade over its type's critical threshold (1 = critical: 5% off the recent price, 100 typical sizes; a price outside the band counts 1).",
    buckets: ANOMALY_SCORE_BUCKETS,
    group: Group::Anomaly,
};
pub const ANOMALY_OUTCOMES: MetricDef = MetricDef {
    name: "tidewatch_anomaly_detection_outcomes_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["outcome"],
    help: "Detection against the generator's planted labels: the confusion matrix (true_positive, false_positive, false_negative, true_negative).",
    buckets: &[],
    group: Group::Anomaly,
};
pub const ANOMALY_SCORE: MetricDef = MetricDef {
    name: "tidewatch_anomaly_detection_score",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &["metric"],
    help: "Precision, recall and F1 of anomaly detection against planted labels since start (0-1).",
    buckets: &[],
    group: Group::Anomaly,
};

// --- Event-time windows (aggregate) ---

pub const BARS_CLOSED: MetricDef = MetricDef {
    name: "tidewatch_bars_closed_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &[],
    help: "OHLC bars closed by the watermark and published.",
    buckets: &[],
    group: Group::Windowing,
};
pub const FEATURES_EMITTED: MetricDef = MetricDef {
    name: "tidewatch_features_emitted_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &[],
    help: "Model feature vectors published (one per closed bar once a symbol has warmed up).",
    buckets: &[],
    group: Group::Windowing,
};
pub const LATE_TRADES: MetricDef = MetricDef {
    name: "tidewatch_late_trades_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &[],
    help: "Trades that arrived after the watermark closed their window (dead-lettered).",
    buckets: &[],
    group: Group::Windowing,
};
pub const DUPLICATE_TRADES: MetricDef = MetricDef {
    name: "tidewatch_duplicate_trades_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &[],
    help: "Trades seen again (an upstream replay) and dropped, so no trade counts twice in a bar.",
    buckets: &[],
    group: Group::Windowing,
};
pub const OPEN_WINDOWS: MetricDef = MetricDef {
    name: "tidewatch_open_windows",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &[],
    help: "Windows accumulating trades, waiting for the watermark.",
    buckets: &[],
    group: Group::Windowing,
};
pub const WATERMARK: MetricDef = MetricDef {
    name: "tidewatch_watermark_seconds",
    kind: MetricKind::Gauge,
    unit: Some("seconds"),
    labels: &["partition"],
    help: "Event-time watermark of each input partition, as a Unix timestamp.",
    buckets: &[],
    group: Group::Windowing,
};
pub const CHECKPOINT_RESETS: MetricDef = MetricDef {
    name: "tidewatch_checkpoint_resets_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &[],
    help: "Partitions whose checkpoint the topic no longer holds (the broker lost its data while the database kept the checkpoint): their windows start over from what the topic holds.",
    buckets: &[],
    group: Group::Windowing,
};
pub const REPLAYED_MESSAGES: MetricDef = MetricDef {
    name: "tidewatch_replayed_messages_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &[],
    help: "Messages read again after an assignment to rebuild window state, without output.",
    buckets: &[],
    group: Group::Windowing,
};

// --- Outcomes, drift and online learning (prediction-consumer) ---

pub const PREDICTION_OUTCOMES: MetricDef = MetricDef {
    name: "tidewatch_prediction_outcomes_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["variant", "outcome"],
    help: "Predictions judged by what the market did over their horizon: the confusion matrix (true_positive, false_positive, false_negative, true_negative), by variant (ml, baseline, online).",
    buckets: &[],
    group: Group::Outcomes,
};
pub const PREDICTION_ROLLING_SCORE: MetricDef = MetricDef {
    name: "tidewatch_prediction_rolling_score",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &["variant", "metric"],
    help:
        "Accuracy, precision, recall and F1 over the last 500 judged predictions, by variant (0-1).",
    buckets: &[],
    group: Group::Outcomes,
};
pub const PENDING_PREDICTIONS: MetricDef = MetricDef {
    name: "tidewatch_pending_predictions",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &[],
    help: "Predictions waiting for their horizon to pass.",
    buckets: &[],
    group: Group::Outcomes,
};
pub const PENDING_DROPPED: MetricDef = MetricDef {
    name: "tidewatch_pending_predictions_dropped_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["reason"],
    help: "Predictions never judged, by reason (full: memory bound reached, oldest dropped; gap: the bar that would judge it never came).",
    buckets: &[],
    group: Group::Outcomes,
};
pub const DRIFT_EVENTS: MetricDef = MetricDef {
    name: "tidewatch_drift_events_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["detector", "level"],
    help: "Drift detector signals, by detector (ddm, page_hinkley, adwin_error over the model's errors; adwin_input over an input: scaled vol_5m in prediction-consumer, reported probabilities in prediction-api) and level (warning, drift).",
    buckets: &[],
    group: Group::Outcomes,
};
pub const DRIFT_STATE: MetricDef = MetricDef {
    name: "tidewatch_drift_state",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &["detector"],
    help: "Each detector's level after its latest input: 0 stable, 1 warning, 2 drift.",
    buckets: &[],
    group: Group::Outcomes,
};
pub const DRIFT_STATISTIC: MetricDef = MetricDef {
    name: "tidewatch_drift_statistic",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &["detector", "statistic"],
    help: "Detector internals: ddm error_rate and best (p+s), page_hinkley cumulative, adwin width and mean.",
    buckets: &[],
    group: Group::Outcomes,
};
pub const ONLINE_UPDATES: MetricDef = MetricDef {
    name: "tidewatch_online_model_updates_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &[],
    help: "Gradient steps of the online model, one per judged prediction.",
    buckets: &[],
    group: Group::Outcomes,
};
pub const ONLINE_LAST_UPDATE: MetricDef = MetricDef {
    name: "tidewatch_online_model_last_update_timestamp_seconds",
    kind: MetricKind::Gauge,
    unit: Some("seconds"),
    labels: &[],
    help: "When the online model last learnt, as a Unix timestamp.",
    buckets: &[],
    group: Group::Outcomes,
};
pub const FEATURE_DRIFT: MetricDef = MetricDef {
    name: "tidewatch_feature_drift",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &["feature", "statistic"],
    help: "Distance between the live window and the served model's training data, per feature (the six model inputs and probability, the served output) and statistic (psi: population stability index, drifted at 0.25; ks: binned Kolmogorov-Smirnov; js: Jensen-Shannon distance). Set once the window holds its minimum.",
    buckets: &[],
    group: Group::Outcomes,
};
pub const FEATURE_DRIFTED: MetricDef = MetricDef {
    name: "tidewatch_feature_drifted",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &["feature"],
    help: "1 while the feature's PSI against the training data is at or above 0.25, else 0.",
    buckets: &[],
    group: Group::Outcomes,
};
pub const FEATURE_DRIFT_WINDOW: MetricDef = MetricDef {
    name: "tidewatch_feature_drift_window_vectors",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &[],
    help: "Live feature vectors in the per-feature drift window.",
    buckets: &[],
    group: Group::Outcomes,
};

// --- PostgreSQL as a sink (project) ---

pub const DB_POOL_CONNECTIONS: MetricDef = MetricDef {
    name: "tidewatch_db_pool_connections",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &["state"],
    help: "Connections in the pool by state (idle, in_use), sampled every second.",
    buckets: &[],
    group: Group::Database,
};
pub const DB_POOL_MAX_CONNECTIONS: MetricDef = MetricDef {
    name: "tidewatch_db_pool_max_connections",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &[],
    help: "The pool's configured size: in_use reaching it means requests wait for a connection.",
    buckets: &[],
    group: Group::Database,
};
pub const DB_QUERY_DURATION: MetricDef = MetricDef {
    name: "tidewatch_db_query_duration_seconds",
    kind: MetricKind::Histogram,
    unit: Some("seconds"),
    labels: &["statement"],
    help: "Time of one statement, by statement name (a fixed set, e.g. upsert_bars, select_bars, commit).",
    buckets: DB_LATENCY_BUCKETS,
    group: Group::Database,
};
pub const DB_ROWS_WRITTEN: MetricDef = MetricDef {
    name: "tidewatch_db_rows_written_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["table"],
    help: "Rows whose values committed transactions inserted or changed, by table (a replay, an older version arriving late and a newer version with the same values are not counted).",
    buckets: &[],
    group: Group::Database,
};
pub const DB_TRANSACTION_ERRORS: MetricDef = MetricDef {
    name: "tidewatch_db_transaction_errors_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["error_type"],
    help: "Write transactions that failed and were rolled back, by error type (connection: the database could not be reached; database: it refused the statement).",
    buckets: &[],
    group: Group::Database,
};
pub const DB_TRANSACTION_RETRIES: MetricDef = MetricDef {
    name: "tidewatch_db_transaction_retries_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &[],
    help: "Write transactions attempted again after a failure (with backoff, consumption paused).",
    buckets: &[],
    group: Group::Database,
};

// --- Alert notifications (alert-receiver) ---

pub const ALERT_NOTIFICATIONS: MetricDef = MetricDef {
    name: "tidewatch_alert_notifications_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["receiver", "status"],
    help: "Webhook notifications received from Alertmanager, by receiver (page, ml-page, ticket, ml-ticket, info) and group status (firing, resolved).",
    buckets: &[],
    group: Group::Alerting,
};
pub const ALERTS_RECEIVED: MetricDef = MetricDef {
    name: "tidewatch_alerts_received_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["receiver", "status", "severity"],
    help: "Alerts carried by those notifications, by receiver, alert status (firing, resolved) and severity (critical, warning, info, other).",
    buckets: &[],
    group: Group::Alerting,
};

// --- The load driver (loadgen) ---

pub const LOADGEN_REQUESTS: MetricDef = MetricDef {
    name: "tidewatch_loadgen_requests_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["endpoint", "outcome"],
    help: "Requests the load driver made to the prediction API, by endpoint (predict, predict_batch) and outcome (ok, client_error, server_error, failed: no answer, skipped: not sent because too many were awaiting answers).",
    buckets: &[],
    group: Group::Load,
};
pub const LOADGEN_REQUEST_DURATION: MetricDef = MetricDef {
    name: "tidewatch_loadgen_request_duration_seconds",
    kind: MetricKind::Histogram,
    unit: Some("seconds"),
    labels: &["endpoint"],
    help: "Time from sending a request to the end of its answer, as the load driver saw it (the client's view of the API's latency).",
    buckets: LATENCY_BUCKETS,
    group: Group::Load,
};
pub const LOADGEN_TARGET_RATE: MetricDef = MetricDef {
    name: "tidewatch_loadgen_target_rate",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &[],
    help: "Requests per second the load driver is set to send (0: none).",
    buckets: &[],
    group: Group::Load,
};
pub const LOADGEN_IN_FLIGHT: MetricDef = MetricDef {
    name: "tidewatch_loadgen_in_flight_requests",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &[],
    help: "The load driver's requests awaiting an answer.",
    buckets: &[],
    group: Group::Load,
};

/// Every metric in the workspace, in the order `METRICS.md` lists them.
pub const ALL: &[&MetricDef] = &[
    &HTTP_SERVER_REQUEST_DURATION,
    &HTTP_SERVER_REQUESTS,
    &HTTP_SERVER_ACTIVE_REQUESTS,
    &HTTP_SERVER_REQUEST_BODY_SIZE,
    &HTTP_SERVER_RESPONSE_BODY_SIZE,
    &HTTP_SERVER_ERRORS,
    &HTTP_MAX_CONCURRENT_REQUESTS,
    &HTTP_REQUESTS_SHED,
    &PROCESS_CPU_SECONDS,
    &PROCESS_RESIDENT_MEMORY,
    &PROCESS_VIRTUAL_MEMORY,
    &PROCESS_VIRTUAL_MEMORY_MAX,
    &PROCESS_OPEN_FDS,
    &PROCESS_MAX_FDS,
    &PROCESS_START_TIME,
    &PROCESS_THREADS,
    &BUILD_INFO,
    &UPTIME,
    &HEALTH_STATUS,
    &PREDICTIONS,
    &PREDICTION_PROBABILITY,
    &PREDICTION_INFERENCE_DURATION,
    &PREDICTION_VALIDATION_ERRORS,
    &MODEL_INFO,
    &MODEL_VARIANT_ACTIVE,
    &MODEL_HELDOUT_SCORE,
    &ADMIN_AUTH_FAILURES,
    &ADMIN_ACTIONS,
    &FAULT_INJECTED,
    &KAFKA_PRODUCED,
    &KAFKA_PRODUCER_RENEWALS,
    &KAFKA_POSITION_RESETS,
    &KAFKA_SKIPPED_OFFSETS,
    &KAFKA_UNREADABLE_HEADERS,
    &KAFKA_PRODUCE_DURATION,
    &KAFKA_CONSUMER_LAG,
    &KAFKA_FRESHNESS_LAG,
    &KAFKA_COMMITS,
    &KAFKA_REBALANCES,
    &COMPONENT_RECEIVED_EVENTS,
    &COMPONENT_RECEIVED_BYTES,
    &COMPONENT_SENT_EVENTS,
    &COMPONENT_SENT_BYTES,
    &COMPONENT_ERRORS,
    &COMPONENT_DISCARDED_EVENTS,
    &COMPONENT_PROCESSING_DURATION,
    &COMPONENT_BATCH_SIZE,
    &DLQ_MESSAGES,
    &DATA_QUALITY_ISSUES,
    &SCHEMA_VIOLATIONS,
    &DATA_QUALITY_SCORE,
    &GENERATOR_RECORDS,
    &GENERATOR_TARGET_RATE,
    &GENERATOR_RATE,
    &GENERATOR_PACING_WAIT,
    &GENERATOR_PAUSED,
    &GENERATOR_EVENT_TIME,
    &MARKET_REGIME,
    &REFERENCE_CACHE_REQUESTS,
    &REFERENCE_CACHE_EVICTIONS,
    &REFERENCE_CACHE_ENTRIES,
    &REFERENCE_LOOKUPS,
    &REFERENCE_LOOKUP_DURATION,
    &ANOMALIES,
    &ANOMALY_SCORE_RATIO,
    &ANOMALY_OUTCOMES,
    &ANOMALY_SCORE,
    &BARS_CLOSED,
    &FEATURES_EMITTED,
    &LATE_TRADES,
    &DUPLICATE_TRADES,
    &OPEN_WINDOWS,
    &WATERMARK,
    &REPLAYED_MESSAGES,
    &CHECKPOINT_RESETS,
    &PREDICTION_OUTCOMES,
    &PREDICTION_ROLLING_SCORE,
    &PENDING_PREDICTIONS,
    &PENDING_DROPPED,
    &DRIFT_EVENTS,
    &DRIFT_STATE,
    &DRIFT_STATISTIC,
    &ONLINE_UPDATES,
    &ONLINE_LAST_UPDATE,
    &FEATURE_DRIFT,
    &FEATURE_DRIFTED,
    &FEATURE_DRIFT_WINDOW,
    &DB_POOL_CONNECTIONS,
    &DB_POOL_MAX_CONNECTIONS,
    &DB_QUERY_DURATION,
    &DB_ROWS_WRITTEN,
    &DB_TRANSACTION_ERRORS,
    &DB_TRANSACTION_RETRIES,
    &ALERT_NOTIFICATIONS,
    &ALERTS_RECEIVED,
    &LOADGEN_REQUESTS,
    &LOADGEN_REQUEST_DURATION,
    &LOADGEN_TARGET_RATE,
    &LOADGEN_IN_FLIGHT,
    &TRAINING_RUNS,
    &TRAINING_DURATION,
    &TRAINING_SAMPLES,
    &TRAINING_LAST_SUCCESS,
    &TRAINING_HELDOUT_SCORE,
    &REGISTRY_ALIAS_VERSION,
    &MODEL_ROLE_ROLLING_SCORE,
    &MODEL_DECISIONS,
    &TRACE_SPANS_EXPORTED,
    &TRACE_SPANS_DROPPED,
];

const TRAINING_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

pub const TRAINING_RUNS: MetricDef = MetricDef {
    name: "tidewatch_training_runs_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["trigger", "status"],
    help: "Training runs by what started them (schedule, drift, manual) and how they ended (success: registered as challenger; insufficient_data: too few stored bars to train on; failure: an error).",
    buckets: &[],
    group: Group::Training,
};
pub const TRAINING_DURATION: MetricDef = MetricDef {
    name: "tidewatch_training_duration_seconds",
    kind: MetricKind::Histogram,
    unit: Some("seconds"),
    labels: &["trigger"],
    help: "Wall time of a training run: reading the stored bars, fitting, scoring and registering.",
    buckets: TRAINING_BUCKETS,
    group: Group::Training,
};
pub const TRAINING_SAMPLES: MetricDef = MetricDef {
    name: "tidewatch_training_samples",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &["set"],
    help: "Labelled examples the last successful run used, by set (train, test: held out for scoring).",
    buckets: &[],
    group: Group::Training,
};
pub const TRAINING_LAST_SUCCESS: MetricDef = MetricDef {
    name: "tidewatch_training_last_success_timestamp_seconds",
    kind: MetricKind::Gauge,
    unit: Some("seconds"),
    labels: &[],
    help: "Unix time the last training run succeeded; absent until one has (since the trainer started).",
    buckets: &[],
    group: Group::Training,
};
pub const TRAINING_HELDOUT_SCORE: MetricDef = MetricDef {
    name: "tidewatch_training_heldout_score",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &["variant", "metric"],
    help: "The last trained version's scores on its held-out bars (variant ml or baseline; metric accuracy, precision, recall, f1, auc).",
    buckets: &[],
    group: Group::Training,
};
pub const REGISTRY_ALIAS_VERSION: MetricDef = MetricDef {
    name: "tidewatch_model_registry_alias_version",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &["alias"],
    help: "The registry version a role points at (champion, challenger; previous: the champion before, which a rollback returns to), as the trainer or the prediction consumer last read it; 0: none.",
    buckets: &[],
    group: Group::Training,
};

pub const MODEL_ROLE_ROLLING_SCORE: MetricDef = MetricDef {
    name: "tidewatch_model_role_rolling_score",
    kind: MetricKind::Gauge,
    unit: None,
    labels: &["role", "metric"],
    help: "Accuracy, precision, recall and F1 of the champion, the challenger and the previous champion, each over the same last judged outcomes (as many as promotion needs); 0 for a role nobody holds.",
    buckets: &[],
    group: Group::Outcomes,
};
pub const MODEL_DECISIONS: MetricDef = MetricDef {
    name: "tidewatch_model_decisions_total",
    kind: MetricKind::Counter,
    unit: None,
    labels: &["decision"],
    help: "Decisions taken on live outcomes: promoted (the challenger beat the champion by the margin), rejected (it did not, or drifted), rolled_back (the champion fell behind the previous one).",
    buckets: &[],
    group: Group::Outcomes,
};

/// Looks a metric up by the name it has in the Prometheus exposition (histogram series
/// suffixes `_bucket`, `_sum` and `_count` resolve to their histogram).
pub fn lookup(series_name: &str) -> Option<&'static MetricDef> {
    ALL.iter()
        .copied()
        .find(|m| m.name == series_name)
        .or_else(|| {
            ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
                let base = series_name.strip_suffix(suffix)?;
                ALL.iter()
                    .copied()
                    .find(|m| m.name == base && m.kind == MetricKind::Histogram)
            })
        })
}

/// Renders the catalogue as the Markdown table in `METRICS.md`.
pub fn markdown() -> String {
    let mut out = String::from(
        "# Metrics\n\n\
         Generated from `crates/telemetry/src/catalog.rs` by \
         `cargo run -p tidewatch-telemetry --example metrics_doc > METRICS.md`; \
         a test fails when this file is out of date.\n\n\
         | name | type | unit | labels | group | help |\n\
         |---|---|---|---|---|---|\n",
    );
    for m in ALL {
        let labels = if m.labels.is_empty() {
            "-".to_owned()
        } else {
            m.labels
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {} |\n",
            m.name,
            m.kind.as_str(),
            m.unit.unwrap_or("-"),
            labels,
            m.group.as_str(),
            m.help
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_follow_prometheus_conventions() {
        let mut seen = HashSet::new();
        for m in ALL {
            assert!(seen.insert(m.name), "{} is catalogued twice", m.name);
            assert!(
                m.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{} is not snake_case",
                m.name
            );
            assert_eq!(
                m.kind == MetricKind::Counter,
                m.name.ends_with("_total"),
                "{}: counters and only counters end in _total",
                m.name
            );
            if let Some(unit) = m.unit {
                let stem = m.name.trim_end_matches("_total");
                assert!(
                    stem.ends_with(unit),
                    "{} must end in its unit {unit}",
                    m.name
                );
            }
            assert!(!m.help.is_empty(), "{} has no help", m.name);
        }
    }

    #[test]
    fn every_histogram_has_explicit_sorted_buckets() {
        for m in ALL.iter().filter(|m| m.kind == MetricKind::Histogram) {
            assert!(!m.buckets.is_empty(), "{} has no buckets", m.name);
            assert!(
                m.buckets.windows(2).all(|w| w[0] < w[1]),
                "{} buckets unsorted",
                m.name
            );
        }
        for m in ALL.iter().filter(|m| m.kind != MetricKind::Histogram) {
            assert!(
                m.buckets.is_empty(),
                "{} is not a histogram but has buckets",
                m.name
            );
        }
    }

    #[test]
    fn histogram_series_suffixes_resolve_to_their_histogram() {
        let m = lookup("http_server_request_duration_seconds_bucket").expect("found");
        assert_eq!(m.name, HTTP_SERVER_REQUEST_DURATION.name);
        assert!(lookup("http_server_requests_total_bucket").is_none());
        assert!(lookup("no_such_metric").is_none());
    }

    #[test]
    fn metrics_md_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../METRICS.md");
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == markdown(),
            "METRICS.md is out of date: run `cargo run -p tidewatch-telemetry --example metrics_doc > METRICS.md`"
        );
    }
}
