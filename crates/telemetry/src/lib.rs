//! Tidewatch's shared instrumentation: the only crate that names metrics.
//!
//! - [`catalog`]: every metric's name, type, unit, labels, help and buckets; `METRICS.md` is
//!   generated from it.
//! - [`recorder`]: the metrics recorder (atomic series, explicit buckets) and `/metrics`,
//!   build info, process metrics and uptime.
//! - [`http`]: the RED layer (OpenTelemetry HTTP conventions, route templates as labels).
//! - [`health`]: component checks behind `/health`, `/health/live` and `/health/ready`.
//! - [`server`]: the ops router, the middleware stack (request ids, spans, metrics), `serve`.
//! - [`logging`]: JSON or pretty `tracing` output.
//! - [`shutdown`]: the one graceful-shutdown signal.
//! - [`trace`]: OpenTelemetry traces over OTLP when an endpoint is set, and W3C trace context.
//! - [`healthcheck`]: the `<service> healthcheck` subcommand containers probe readiness with.
//! - [`runner`]: the start and end of every service binary (settings, logging, telemetry,
//!   signals), so each `main.rs` holds only what differs.
//!
//! A service builds one [`Telemetry`] at start, merges [`server::ops_router`] into its
//! router, wraps it with [`server::instrument`] and serves it with [`server::serve`].

pub mod catalog;
pub mod health;
pub mod healthcheck;
pub mod http;
pub mod logging;
pub mod recorder;
pub mod runner;
pub mod server;
pub mod shutdown;
pub mod trace;

pub use health::{ComponentHealth, Criticality, Health, HealthHandle};
pub use logging::LogFormat;
pub use recorder::{BuildInfo, Metrics};
pub use shutdown::Shutdown;

/// Everything a service needs to be observable. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Telemetry {
    pub build: BuildInfo,
    pub metrics: Metrics,
    pub health: Health,
}

impl Telemetry {
    /// Installs the recorder (once per process) and records build info.
    pub fn new(build: BuildInfo) -> anyhow::Result<Self> {
        let metrics = Metrics::install(&build)?;
        trace::register_metrics();
        Ok(Self {
            build,
            metrics,
            health: Health::new(),
        })
    }
}

/// Settings every service binary shares (flattened into its clap arguments).
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct TelemetryArgs {
    /// Log output: json, pretty, or auto (json unless stdout is a terminal).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "auto")]
    pub log_format: LogFormat,
    /// Log filter in RUST_LOG syntax, e.g. `info` or `info,tidewatch_telemetry=debug`.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

impl TelemetryArgs {
    /// Installs logging and, when the `OTEL_*` environment asks for them, trace export.
    pub fn init_logging(&self, service: &'static str, version: &'static str) -> anyhow::Result<()> {
        logging::init_with_traces(self.log_format, &self.log_level, Some((service, version)))
    }
}
