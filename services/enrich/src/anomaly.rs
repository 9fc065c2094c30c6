//! Anomaly detection on single trades, and its score against the generator's labels.
//!
//! - `price_band`: the price is outside the instrument's plausible band (critical).
//! - `price_jump`: the price is far from the symbol's recent price, an exponentially
//!   weighted average of its unflagged trades (warning from 2.5%, critical from 5%).
//! - `outsized_size`: the size is many times the instrument's typical size (warning from
//!   25x, critical from 100x).

use std::collections::HashMap;

use metrics::{Counter, Gauge, Histogram};
use tidewatch_schema::Anomaly;
use tidewatch_telemetry::catalog;

use crate::reference::Instrument;

/// Relative deviation from the recent price that counts as a jump.
pub const JUMP_WARNING: f64 = 0.025;
pub const JUMP_CRITICAL: f64 = 0.05;
/// Multiples of the typical size that count as outsized.
pub const SIZE_WARNING: f64 = 25.0;
pub const SIZE_CRITICAL: f64 = 100.0;
/// Weight of the newest trade in the recent price.
const EWMA_ALPHA: f64 = 0.1;
/// Trades of a symbol seen before jumps are judged: the reference needs a few prints.
const WARMUP_TRADES: u32 = 5;

const TYPES: [&str; 3] = ["price_band", "price_jump", "outsized_size"];
const SEVERITIES: [&str; 2] = ["warning", "critical"];

#[derive(Debug, Default, Clone, Copy)]
struct Reference {
    price: f64,
    seen: u32,
}

pub struct Detector {
    recent: HashMap<String, Reference>,
    counters: HashMap<(&'static str, &'static str), Counter>,
    /// Each flagged trade's score over its type's critical threshold.
    scores: HashMap<&'static str, Histogram>,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("symbols", &self.recent.len())
            .finish_non_exhaustive()
    }
}

impl Default for Detector {
    fn default() -> Self {
        Self::new()
    }
}

impl Detector {
    pub fn new() -> Self {
        let mut counters = HashMap::new();
        let scores = TYPES
            .into_iter()
            .map(|t| (t, catalog::ANOMALY_SCORE_RATIO.histogram(&[("type", t)])))
            .collect();
        for t in TYPES {
            for s in SEVERITIES {
                let c = catalog::ANOMALIES.counter(&[("type", t), ("severity", s)]);
                c.absolute(0);
                counters.insert((t, s), c);
            }
        }
        Self {
            recent: HashMap::new(),
            counters,
            scores,
        }
    }

    /// What is anomalous about this trade (nothing: empty).
    pub fn inspect(&mut self, instrument: &Instrument, price: f64, size: f64) -> Vec<Anomaly> {
        let mut found = Vec::new();
        // `critical`: the score at which this kind turns critical.
        let mut flag = |kind: &'static str, severity: &'static str, score: f64, critical: f64| {
            if let Some(c) = self.counters.get(&(kind, severity)) {
                c.increment(1);
            }
            if let Some(h) = self.scores.get(kind) {
                h.record(score / critical);
            }
            found.push(Anomaly {
                kind: kind.to_owned(),
                severity: severity.to_owned(),
                score,
            });
        };
        if price < instrument.price_band_low || price > instrument.price_band_high {
            // Outside the band is critical however far: it counts as the threshold itself.
            flag("price_band", "critical", price, price);
        }
        let reference = self.recent.entry(instrument.symbol.clone()).or_default();
        let mut jumped = false;
        if reference.seen >= WARMUP_TRADES {
            let deviation = (price / reference.price - 1.0).abs();
            if deviation >= JUMP_WARNING {
                jumped = true;
                let severity = if deviation >= JUMP_CRITICAL {
                    "critical"
                } else {
                    "warning"
                };
                flag("price_jump", severity, deviation, JUMP_CRITICAL);
            }
        }
        // Flagged prints do not move the reference, or one jump would hide the next.
        if !jumped {
            reference.price = if reference.seen == 0 {
                price
            } else {
                EWMA_ALPHA * price + (1.0 - EWMA_ALPHA) * reference.price
            };
            reference.seen = reference.seen.saturating_add(1);
        }
        let multiple = size / instrument.typical_size;
        if multiple >= SIZE_WARNING {
            let severity = if multiple >= SIZE_CRITICAL {
                "critical"
            } else {
                "warning"
            };
            flag("outsized_size", severity, multiple, SIZE_CRITICAL);
        }
        found
    }
}

/// The confusion matrix of detection against planted labels, and the scores from it.
pub struct Scorecard {
    tp: u64,
    fp: u64,
    fn_: u64,
    tn: u64,
    outcomes: [Counter; 4],
    precision: Gauge,
    recall: Gauge,
    f1: Gauge,
}

impl std::fmt::Debug for Scorecard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scorecard")
            .field("tp", &self.tp)
            .field("fp", &self.fp)
            .field("fn", &self.fn_)
            .field("tn", &self.tn)
            .finish()
    }
}

impl Default for Scorecard {
    fn default() -> Self {
        Self::new()
    }
}

impl Scorecard {
    pub fn new() -> Self {
        let outcomes = [
            "true_positive",
            "false_positive",
            "false_negative",
            "true_negative",
        ]
        .map(|o| {
            let c = catalog::ANOMALY_OUTCOMES.counter(&[("outcome", o)]);
            c.absolute(0);
            c
        });
        let score = |m| catalog::ANOMALY_SCORE.gauge(&[("metric", m)]);
        Self {
            tp: 0,
            fp: 0,
            fn_: 0,
            tn: 0,
            outcomes,
            precision: score("precision"),
            recall: score("recall"),
            f1: score("f1"),
        }
    }

    pub fn record(&mut self, labelled: bool, detected: bool) {
        let i = match (labelled, detected) {
            (true, true) => {
                self.tp += 1;
                0
            }
            (false, true) => {
                self.fp += 1;
                1
            }
            (true, false) => {
                self.fn_ += 1;
                2
            }
            (false, false) => {
                self.tn += 1;
                3
            }
        };
        self.outcomes[i].increment(1);
        let (precision, recall, f1) = self.scores();
        self.precision.set(precision);
        self.recall.set(recall);
        self.f1.set(f1);
    }

    /// Precision, recall and F1; each 0 while undefined (nothing detected or labelled).
    pub fn scores(&self) -> (f64, f64, f64) {
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let precision = ratio(self.tp, self.tp + self.fp);
        let recall = ratio(self.tp, self.tp + self.fn_);
        let f1 = if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        };
        (precision, recall, f1)
    }

    pub fn matrix(&self) -> [u64; 4] {
        [self.tp, self.fp, self.fn_, self.tn]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn btc() -> Instrument {
        Instrument {
            symbol: "BTC-USD".into(),
            asset_class: "crypto".into(),
            base: "BTC".into(),
            quote: "USD".into(),
            tick_size: 0.01,
            lot_size: 0.00001,
            price_band_low: 32_500.0,
            price_band_high: 130_000.0,
            typical_size: 0.05,
        }
    }

    #[test]
    fn band_jump_and_size_are_flagged_with_severity() {
        let mut d = Detector::new();
        let i = btc();
        for _ in 0..10 {
            assert!(d.inspect(&i, 65_000.0, 0.05).is_empty());
        }
        let jump = d.inspect(&i, 65_000.0 * 1.03, 0.05);
        assert_eq!(
            (jump[0].kind.as_str(), jump[0].severity.as_str()),
            ("price_jump", "warning")
        );
        let big = d.inspect(&i, 65_000.0 * 1.08, 0.05);
        assert_eq!(big[0].severity, "critical");
        assert!(
            d.inspect(&i, 65_100.0, 0.05).is_empty(),
            "jumps did not move the reference"
        );
        let size = d.inspect(&i, 65_000.0, 0.05 * 30.0);
        assert_eq!(
            (size[0].kind.as_str(), size[0].severity.as_str()),
            ("outsized_size", "warning")
        );
        let band = d.inspect(&i, 10.0, 0.05);
        assert!(band
            .iter()
            .any(|a| a.kind == "price_band" && a.severity == "critical"));
    }

    #[test]
    fn scores_follow_the_confusion_matrix() {
        let mut s = Scorecard::new();
        assert_eq!(s.scores(), (0.0, 0.0, 0.0));
        for (l, d) in [
            (true, true),
            (true, true),
            (true, false),
            (false, true),
            (false, false),
        ] {
            s.record(l, d);
        }
        assert_eq!(s.matrix(), [2, 1, 1, 1]);
        let (p, r, f1) = s.scores();
        assert!((p - 2.0 / 3.0).abs() < 1e-12 && (r - 2.0 / 3.0).abs() < 1e-12);
        assert!((f1 - 2.0 / 3.0).abs() < 1e-12);
    }
}
