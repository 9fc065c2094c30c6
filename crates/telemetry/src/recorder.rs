//! Installs the process-wide Prometheus recorder and renders `/metrics`.
//!
//! Buckets and descriptions come from the [`crate::catalog`]; process metrics and uptime are
//! refreshed on every scrape, and a background task runs the exporter's upkeep so histogram
//! samples are drained even when nobody scrapes.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use metrics::Gauge;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::catalog::{self, MetricKind};

/// How often the exporter drains buffered histogram samples: often, so that under load the
/// buffers stay small and the drain work is spread out rather than done in bursts.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static INSTALL: Mutex<()> = Mutex::new(());

/// Installs the global recorder once per process and returns its handle; later calls (several
/// services in one test binary) get the same handle.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let mut builder = PrometheusBuilder::new();
    for m in catalog::ALL
        .iter()
        .filter(|m| m.kind == MetricKind::Histogram)
    {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(m.name.to_owned()), m.buckets)
            .with_context(|| format!("buckets for {}", m.name))?;
    }
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .context("another metrics recorder is already installed")?;
    for m in catalog::ALL {
        match m.kind {
            MetricKind::Counter => metrics::describe_counter!(m.name, m.help),
            MetricKind::Gauge => metrics::describe_gauge!(m.name, m.help),
            MetricKind::Histogram => metrics::describe_histogram!(m.name, m.help),
        }
    }
    // metrics-process describes its own series; its help text matches the catalogue's intent.
    metrics_process::Collector::default().describe();
    let _ = HANDLE.set(handle.clone());
    Ok(handle)
}

/// Identity of the running binary, for `tidewatch_build_info` and `/v1/system/info`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildInfo {
    pub service: &'static str,
    pub version: &'static str,
    pub git_commit: &'static str,
    pub rustc: &'static str,
}

impl BuildInfo {
    /// `version` is the calling crate's `CARGO_PKG_VERSION`.
    pub fn new(service: &'static str, version: &'static str) -> Self {
        Self {
            service,
            version,
            git_commit: env!("TIDEWATCH_GIT_COMMIT"),
            rustc: env!("TIDEWATCH_RUSTC_VERSION"),
        }
    }
}

/// The metrics side of [`crate::Telemetry`]: render handle, process collector, uptime.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<MetricsInner>,
}

struct MetricsInner {
    handle: PrometheusHandle,
    process: metrics_process::Collector,
    started: Instant,
    uptime: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("started", &self.inner.started)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn install(build: &BuildInfo) -> anyhow::Result<Self> {
        let handle = install_recorder()?;
        catalog::BUILD_INFO
            .gauge(&[
                ("service", build.service),
                ("version", build.version),
                ("git_commit", build.git_commit),
                ("rustc", build.rustc),
            ])
            .set(1.0);
        let metrics = Self {
            inner: Arc::new(MetricsInner {
                handle,
                process: metrics_process::Collector::default(),
                started: Instant::now(),
                uptime: catalog::UPTIME.gauge(&[]),
            }),
        };
        metrics.refresh();
        Ok(metrics)
    }

    /// Runs the exporter's upkeep until the token is cancelled. Needs a tokio runtime.
    pub fn spawn_upkeep(&self, stop: tokio_util::sync::CancellationToken) {
        let handle = self.inner.handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => handle.run_upkeep(),
                }
            }
        });
    }

    fn refresh(&self) {
        self.inner.process.collect();
        self.inner
            .uptime
            .set(self.inner.started.elapsed().as_secs_f64());
    }

    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// The Prometheus text exposition, with process metrics and uptime refreshed first.
    pub fn render(&self) -> String {
        self.refresh();
        self.inner.handle.render()
    }
}
