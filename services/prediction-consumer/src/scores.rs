//! Rolling scores of one prediction variant against observed outcomes.

use std::collections::VecDeque;

use metrics::{Counter, Gauge};
use tidewatch_telemetry::catalog;

/// Judged predictions the rolling scores are computed over.
pub const WINDOW: usize = 500;

/// The confusion matrix since start (counters) and over the last [`WINDOW`] outcomes
/// (gauges: accuracy, precision, recall, F1).
pub struct RollingScore {
    recent: VecDeque<(bool, bool)>,
    /// tp, fp, fn, tn over `recent`.
    counts: [u64; 4],
    outcomes: [Counter; 4],
    gauges: [Gauge; 4],
}

impl std::fmt::Debug for RollingScore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RollingScore")
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

/// The confusion-matrix cell (tp, fp, fn, tn) of one judgement.
pub(crate) fn cell(predicted: bool, actual: bool) -> usize {
    match (predicted, actual) {
        (true, true) => 0,
        (true, false) => 1,
        (false, true) => 2,
        (false, false) => 3,
    }
}

impl RollingScore {
    pub fn new(variant: &str) -> Self {
        let outcomes = [
            "true_positive",
            "false_positive",
            "false_negative",
            "true_negative",
        ]
        .map(|o| {
            let c = catalog::PREDICTION_OUTCOMES.counter(&[("variant", variant), ("outcome", o)]);
            c.absolute(0);
            c
        });
        let gauges = ["accuracy", "precision", "recall", "f1"].map(|m| {
            catalog::PREDICTION_ROLLING_SCORE.gauge(&[("variant", variant), ("metric", m)])
        });
        Self {
            recent: VecDeque::with_capacity(WINDOW),
            counts: [0; 4],
            outcomes,
            gauges,
        }
    }

    pub fn record(&mut self, predicted: bool, actual: bool) {
        let i = cell(predicted, actual);
        self.outcomes[i].increment(1);
        self.counts[i] += 1;
        self.recent.push_back((predicted, actual));
        if self.recent.len() > WINDOW {
            if let Some((p, a)) = self.recent.pop_front() {
                self.counts[cell(p, a)] -= 1;
            }
        }
        let s = self.scores();
        for (g, v) in self
            .gauges
            .iter()
            .zip([s.accuracy, s.precision, s.recall, s.f1])
        {
            g.set(v);
        }
    }

    pub fn scores(&self) -> Scores {
        Scores::from_counts(self.counts)
    }
}

/// Scores from a confusion matrix; each is 0 while undefined.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scores {
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

impl Scores {
    /// From (tp, fp, fn, tn).
    pub fn from_counts([tp, fp, fn_, tn]: [u64; 4]) -> Self {
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let precision = ratio(tp, tp + fp);
        let recall = ratio(tp, tp + fn_);
        Self {
            accuracy: ratio(tp + tn, tp + fp + fn_ + tn),
            precision,
            recall,
            f1: if precision + recall == 0.0 {
                0.0
            } else {
                2.0 * precision * recall / (precision + recall)
            },
        }
    }
}
