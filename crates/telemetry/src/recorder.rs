//! The process-wide metrics recorder and the `/metrics` render.
//!
//! Every series is one atomic cell that the handles the services keep write to directly: a
//! counter is an `AtomicU64`, a gauge an `AtomicU64` holding an `f64`, a histogram one
//! atomic count per bucket of the catalogue's explicit buckets and an atomic sum. Recording
//! a sample is a bucket search and two atomic adds, with no clock read, no buffer and no
//! background drain. The request path records five samples a request;
//! `metrics-exporter-prometheus`'s recorder, which stores each sample with a timestamp in a
//! lock-free buffer and drains the buffers into histograms later, cost more than twice as
//! much per sample (BENCHMARKS.md).
//!
//! The exposition is written by `metrics-exporter-prometheus`'s formatting functions (the
//! Prometheus text format, as before: names, help lines, label escaping and number format
//! are that crate's), so nothing here writes the format by hand. Process metrics and uptime
//! are refreshed on every scrape.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::formatting::{
    sanitize_metric_name, write_help_line, write_metric_line, write_type_line,
};
use metrics_exporter_prometheus::LabelSet;

use crate::catalog;

/// The buckets of a histogram the catalogue does not know (Prometheus's default buckets).
const DEFAULT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static REGISTRY: OnceLock<Arc<Registry>> = OnceLock::new();

/// Installs the global recorder once per process and returns its registry; later calls
/// (several services in one test binary) get the same one.
pub fn install_recorder() -> anyhow::Result<Arc<Registry>> {
    let mut installed = Ok(());
    let registry = REGISTRY.get_or_init(|| {
        let registry = Arc::new(Registry::default());
        installed = metrics::set_global_recorder(Shared(registry.clone()))
            .map_err(|_| anyhow::anyhow!("another metrics recorder is already installed"));
        for m in catalog::ALL {
            registry.describe(
                KeyName::from_const_str(m.name),
                SharedString::const_str(m.help),
            );
        }
        // metrics-process describes its own series too; the catalogue's text, set first,
        // stays for every series it names, so /metrics says what METRICS.md says.
        metrics_process::Collector::default().describe();
        registry
    });
    installed.map(|()| registry.clone())
}

/// The recorder installed as the global one: the registry it shares with [`Metrics`].
struct Shared(Arc<Registry>);

/// Every series of the process, by kind and name, and the help text of each name.
#[derive(Default)]
pub struct Registry {
    inner: RwLock<Inner>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    counters: Kind<AtomicU64>,
    gauges: Kind<AtomicU64>,
    histograms: Kind<AtomicHistogram>,
    /// Help text by (sanitized) name.
    help: HashMap<String, SharedString>,
}

/// The series of one kind: found by key when a handle is made, rendered by name.
struct Kind<T> {
    by_key: HashMap<Key, Arc<T>>,
    /// Name -> the name's series, in the order of their label sets.
    families: BTreeMap<String, Vec<Series<T>>>,
}

impl<T> Default for Kind<T> {
    fn default() -> Self {
        Self {
            by_key: HashMap::new(),
            families: BTreeMap::new(),
        }
    }
}

struct Series<T> {
    /// For the order of a name's series: its labels, in the order given.
    key: Key,
    labels: LabelSet,
    cell: Arc<T>,
}

impl<T> Kind<T> {
    /// The cell of `key`, made by `new` on the key's first registration.
    fn register(&mut self, key: &Key, new: impl FnOnce(&str) -> T) -> Arc<T> {
        if let Some(cell) = self.by_key.get(key) {
            return cell.clone();
        }
        let name = sanitize_metric_name(key.name());
        let cell = Arc::new(new(key.name()));
        let family = self.families.entry(name).or_default();
        let at = family.partition_point(|s| s.key < *key);
        family.insert(
            at,
            Series {
                key: key.clone(),
                labels: LabelSet::from_key_and_global(key, &Default::default()),
                cell: cell.clone(),
            },
        );
        self.by_key.insert(key.clone(), cell.clone());
        cell
    }
}

impl Registry {
    fn describe(&self, name: KeyName, help: SharedString) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner
            .help
            .entry(sanitize_metric_name(name.as_str()))
            .or_insert(help);
    }

    fn write<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.write().unwrap_or_else(|e| e.into_inner()))
    }

    fn found<T>(&self, f: impl FnOnce(&Inner) -> Option<T>) -> Option<T> {
        f(&self.inner.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn counter(&self, key: &Key) -> Counter {
        let cell = self
            .found(|i| i.counters.by_key.get(key).cloned())
            .unwrap_or_else(|| self.write(|i| i.counters.register(key, |_| AtomicU64::new(0))));
        Counter::from_arc(cell)
    }

    fn gauge(&self, key: &Key) -> Gauge {
        let cell = self
            .found(|i| i.gauges.by_key.get(key).cloned())
            .unwrap_or_else(|| self.write(|i| i.gauges.register(key, |_| AtomicU64::new(0))));
        Gauge::from_arc(cell)
    }

    fn histogram(&self, key: &Key) -> Histogram {
        let cell = self
            .found(|i| i.histograms.by_key.get(key).cloned())
            .unwrap_or_else(|| {
                self.write(|i| {
                    i.histograms
                        .register(key, |name| AtomicHistogram::new(buckets_of(name)))
                })
            });
        Histogram::from_arc(cell)
    }

    /// The Prometheus text exposition of every series: counters, gauges, then histograms,
    /// each by name, a name's series by label values.
    pub fn render(&self) -> String {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let mut out = String::with_capacity(64 * 1024);
        let header = |out: &mut String, name: &str, kind: &str| {
            if let Some(help) = inner.help.get(name) {
                write_help_line(out, name, None, None, help);
            }
            write_type_line(out, name, None, None, kind);
        };
        for (name, series) in &inner.counters.families {
            header(&mut out, name, "counter");
            for s in series {
                let value = s.cell.load(Ordering::Relaxed);
                write_metric_line::<&str, u64>(&mut out, name, None, &s.labels, None, value, None);
            }
            out.push('\n');
        }
        for (name, series) in &inner.gauges.families {
            header(&mut out, name, "gauge");
            for s in series {
                let value = f64::from_bits(s.cell.load(Ordering::Relaxed));
                write_metric_line::<&str, f64>(&mut out, name, None, &s.labels, None, value, None);
            }
            out.push('\n');
        }
        for (name, series) in &inner.histograms.families {
            header(&mut out, name, "histogram");
            for s in series {
                let h = &s.cell;
                let mut cumulative = 0;
                for (le, count) in h.bounds.iter().zip(&h.counts) {
                    cumulative += count.load(Ordering::Relaxed);
                    write_metric_line(
                        &mut out,
                        name,
                        Some("bucket"),
                        &s.labels,
                        Some(("le", le)),
                        cumulative,
                        None,
                    );
                }
                if let Some(over) = h.counts.last() {
                    cumulative += over.load(Ordering::Relaxed);
                }
                write_metric_line(
                    &mut out,
                    name,
                    Some("bucket"),
                    &s.labels,
                    Some(("le", "+Inf")),
                    cumulative,
                    None,
                );
                let sum = f64::from_bits(h.sum.load(Ordering::Relaxed));
                write_metric_line::<&str, f64>(
                    &mut out,
                    name,
                    Some("sum"),
                    &s.labels,
                    None,
                    sum,
                    None,
                );
                write_metric_line::<&str, u64>(
                    &mut out,
                    name,
                    Some("count"),
                    &s.labels,
                    None,
                    cumulative,
                    None,
                );
            }
            out.push('\n');
        }
        out
    }
}

/// The catalogue's buckets for histogram `name`.
fn buckets_of(name: &str) -> &'static [f64] {
    catalog::ALL
        .iter()
        .find(|m| m.name == name && !m.buckets.is_empty())
        .map_or(DEFAULT_BUCKETS, |m| m.buckets)
}

impl Recorder for Shared {
    fn describe_counter(&self, key: KeyName, _: Option<Unit>, help: SharedString) {
        self.0.describe(key, help);
    }
    fn describe_gauge(&self, key: KeyName, _: Option<Unit>, help: SharedString) {
        self.0.describe(key, help);
    }
    fn describe_histogram(&self, key: KeyName, _: Option<Unit>, help: SharedString) {
        self.0.describe(key, help);
    }
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.0.counter(key)
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.0.gauge(key)
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.0.histogram(key)
    }
}

/// A histogram with fixed buckets: a count per bucket (the last for samples above every
/// bound) and the sum of the samples, each an atomic.
///
/// A scrape reads the counts one after another while samples may arrive, so the rendered
/// `_count` (the sum of the counts read) and `_sum` can be one sample apart; each bucket and
/// the count are always consistent with each other, which is what `histogram_quantile` and
/// rates need.
struct AtomicHistogram {
    bounds: &'static [f64],
    counts: Box<[AtomicU64]>,
    /// The `f64` sum's bits.
    sum: AtomicU64,
}

impl AtomicHistogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }
}

impl HistogramFn for AtomicHistogram {
    fn record(&self, value: f64) {
        // The first bucket whose bound is at least the value (`le`); NaN goes above all.
        // A scan from the lowest bound, as Prometheus's Go client does for short bucket
        // lists: the catalogue's lists are at most 15 long, and most samples (latencies,
        // body sizes) fall in the first few buckets.
        let at = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        self.counts[at].fetch_add(1, Ordering::Relaxed);
        let mut current = self.sum.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(current) + value).to_bits();
            match self.sum.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(seen) => current = seen,
            }
        }
    }
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
    registry: Arc<Registry>,
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
        let registry = install_recorder()?;
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
                registry,
                process: metrics_process::Collector::default(),
                started: Instant::now(),
                uptime: catalog::UPTIME.gauge(&[]),
            }),
        };
        metrics.refresh();
        Ok(metrics)
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
        self.inner.registry.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
        Key::from_parts(
            name,
            labels
                .iter()
                .map(|(k, v)| metrics::Label::new(*k, *v))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn a_histogram_counts_each_sample_in_the_first_bucket_whose_bound_is_at_least_it() {
        let registry = Registry::default();
        registry.describe(
            KeyName::from_const_str("http_server_request_duration_seconds"),
            SharedString::const_str("Duration."),
        );
        let name = catalog::HTTP_SERVER_REQUEST_DURATION.name;
        let bounds = catalog::HTTP_SERVER_REQUEST_DURATION.buckets;
        let h = registry.histogram(&key(name, &[("route", "/a")]));
        // On a bound (le is inclusive), between two, above every bound, and not a number.
        for v in [
            bounds[0],
            (bounds[1] + bounds[2]) / 2.0,
            bounds[bounds.len() - 1] * 2.0,
        ] {
            h.record(v);
        }
        h.record(f64::NAN);
        let text = registry.render();
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("the render parses as the Prometheus text format");
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .expect("the histogram is rendered");
        let prometheus_parse::Value::Histogram(buckets) = &sample.value else {
            panic!("{name} is not a histogram: {text}");
        };
        let cumulative: Vec<f64> = buckets.iter().map(|b| b.count).collect();
        let mut want = vec![1.0, 1.0];
        want.resize(bounds.len(), 2.0);
        want.push(4.0);
        assert_eq!(cumulative, want, "{text}");
        assert!(
            text.contains(&format!("{name}_count{{route=\"/a\"}} 4\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "# HELP {name} Duration.\n# TYPE {name} histogram\n"
            )),
            "{text}"
        );
    }

    #[test]
    fn a_key_registered_twice_is_one_series_and_series_render_in_label_order() {
        let registry = Registry::default();
        let name = "tidewatch_test_events_total";
        registry.counter(&key(name, &[("kind", "b")])).increment(2);
        registry.counter(&key(name, &[("kind", "a")])).increment(1);
        registry.counter(&key(name, &[("kind", "b")])).increment(3);
        let gauge = registry.gauge(&key("tidewatch_test_level", &[]));
        gauge.set(4.0);
        gauge.increment(1.5);
        gauge.decrement(0.5);
        let text = registry.render();
        assert_eq!(
            text,
            "# TYPE tidewatch_test_events_total counter\n\
             tidewatch_test_events_total{kind=\"a\"} 1\n\
             tidewatch_test_events_total{kind=\"b\"} 5\n\n\
             # TYPE tidewatch_test_level gauge\n\
             tidewatch_test_level 5\n\n"
        );
    }
}
