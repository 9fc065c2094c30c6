//! The drift detectors of [`crate::drift`] as one monitor that a service feeds and reads:
//! DDM, Page-Hinkley and ADWIN over the served model's errors, ADWIN over one input, each
//! level change counted and every statistic exported as a gauge. The prediction consumer
//! feeds it the outcomes it observes; the prediction API the outcomes clients report.

use metrics::{Counter, Gauge};
use tidewatch_telemetry::catalog;

use crate::drift::{Adwin, Ddm, Level, PageHinkley};

/// One detector with its metrics.
struct Watched<D> {
    name: &'static str,
    detector: D,
    level: Level,
    warning: Counter,
    drift: Counter,
    state: Gauge,
}

impl<D> Watched<D> {
    fn new(name: &'static str, detector: D) -> Self {
        let event = |level| {
            // Registered at zero; never reset, since a process may hold several monitors.
            let c = catalog::DRIFT_EVENTS.counter(&[("detector", name), ("level", level)]);
            c.increment(0);
            c
        };
        let state = catalog::DRIFT_STATE.gauge(&[("detector", name)]);
        state.set(0.0);
        Self {
            name,
            detector,
            level: Level::Stable,
            warning: event("warning"),
            drift: event("drift"),
            state,
        }
    }

    fn observe(&mut self, level: Level) {
        if level != self.level {
            match level {
                Level::Warning => self.warning.increment(1),
                Level::Drift => {
                    self.drift.increment(1);
                    tracing::warn!(detector = self.name, "drift detected");
                }
                Level::Stable => {}
            }
        }
        self.level = level;
        self.state.set(match level {
            Level::Stable => 0.0,
            Level::Warning => 1.0,
            Level::Drift => 2.0,
        });
    }

    /// Starts the detector afresh; the counters keep what happened before.
    fn reset(&mut self, detector: D) {
        self.detector = detector;
        self.observe(Level::Stable);
    }
}

fn statistic(detector: &'static str, name: &'static str, value: f64) {
    catalog::DRIFT_STATISTIC
        .gauge(&[("detector", detector), ("statistic", name)])
        .set(value);
}

/// One detector's state, as the drift status endpoint shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct DetectorStatus {
    /// `ddm`, `page_hinkley`, `adwin_error` or `adwin_input`.
    pub detector: &'static str,
    /// `stable`, `warning` or `drift`.
    #[schema(value_type = String, example = "stable")]
    pub level: Level,
    /// The detector's internals, by name (see the `tidewatch_drift_statistic` metric).
    pub statistics: Vec<(&'static str, f64)>,
}

/// Drift detection over a model's errors and over one input, with metrics.
pub struct DriftMonitor {
    ddm: Watched<Ddm>,
    page_hinkley: Watched<PageHinkley>,
    adwin_error: Watched<Adwin>,
    adwin_input: Watched<Adwin>,
    errors_seen: u64,
}

impl std::fmt::Debug for DriftMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriftMonitor")
            .field("errors_seen", &self.errors_seen)
            .finish_non_exhaustive()
    }
}

impl Default for DriftMonitor {
    fn default() -> Self {
        let m = Self {
            ddm: Watched::new("ddm", Ddm::default()),
            page_hinkley: Watched::new("page_hinkley", PageHinkley::default()),
            adwin_error: Watched::new("adwin_error", Adwin::default()),
            adwin_input: Watched::new("adwin_input", Adwin::default()),
            errors_seen: 0,
        };
        m.export();
        m
    }
}

impl DriftMonitor {
    /// One judged prediction: was the model wrong?
    pub fn error(&mut self, error: bool) {
        self.errors_seen += 1;
        let x = f64::from(u8::from(error));
        let level = self.ddm.detector.update(error);
        self.ddm.observe(level);
        let level = self.page_hinkley.detector.update(x);
        self.page_hinkley.observe(level);
        let level = self.adwin_error.detector.update(x);
        self.adwin_error.observe(level);
        self.export();
    }

    /// An input value scaled to about [0, 1] (ADWIN's bound assumes bounded values).
    pub fn input(&mut self, value: f64) {
        let level = self.adwin_input.detector.update(value.clamp(0.0, 1.0));
        self.adwin_input.observe(level);
        self.export();
    }

    /// Forgets everything seen (after a retrain or a deliberate change); the event
    /// counters keep their history.
    pub fn reset(&mut self) {
        self.ddm.reset(Ddm::default());
        self.page_hinkley.reset(PageHinkley::default());
        self.adwin_error.reset(Adwin::default());
        self.adwin_input.reset(Adwin::default());
        self.errors_seen = 0;
        self.export();
    }

    pub fn ddm_level(&self) -> Level {
        self.ddm.level
    }

    /// Judged predictions fed since start or the last reset.
    pub fn errors_seen(&self) -> u64 {
        self.errors_seen
    }

    /// Every detector's level and statistics.
    pub fn status(&self) -> Vec<DetectorStatus> {
        let (p, best) = self.ddm.detector.statistics();
        vec![
            DetectorStatus {
                detector: self.ddm.name,
                level: self.ddm.level,
                statistics: vec![("error_rate", p), ("best", best)],
            },
            DetectorStatus {
                detector: self.page_hinkley.name,
                level: self.page_hinkley.level,
                statistics: vec![("cumulative", self.page_hinkley.detector.statistic())],
            },
            DetectorStatus {
                detector: self.adwin_error.name,
                level: self.adwin_error.level,
                statistics: vec![
                    ("width", self.adwin_error.detector.width() as f64),
                    ("mean", self.adwin_error.detector.mean()),
                ],
            },
            DetectorStatus {
                detector: self.adwin_input.name,
                level: self.adwin_input.level,
                statistics: vec![
                    ("width", self.adwin_input.detector.width() as f64),
                    ("mean", self.adwin_input.detector.mean()),
                ],
            },
        ]
    }

    fn export(&self) {
        for d in self.status() {
            for (name, value) in d.statistics {
                statistic(d.detector, name, value);
            }
        }
    }
}
