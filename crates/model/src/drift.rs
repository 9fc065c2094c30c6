//! Concept-drift detectors over a stream of numbers (prediction errors as 0/1, or an input
//! feature), after the standard definitions:
//!
//! - [`Ddm`]: Drift Detection Method (Gama et al., 2004) over a binary error stream: warning
//!   when the error rate plus its standard deviation exceeds the best seen by 2 standard
//!   deviations, drift at 3. The rate is Laplace-smoothed so a model that has not erred yet
//!   does not drift on its first error.
//! - [`PageHinkley`]: cumulative deviation from the running mean (Page, 1954), for an
//!   increase in the mean; drift when it exceeds `lambda` above its minimum.
//! - [`Adwin`]: ADaptive WINdowing (Bifet and Gavaldà, 2007): a window of exponential-
//!   histogram buckets, cut wherever two sub-windows' means differ by more than a bound
//!   that holds with confidence `delta`; drift when a cut happens.
//!
//! Each detector is a pure state machine: feed values, read the level.

use std::collections::VecDeque;

/// What a detector concluded after the latest value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Stable,
    Warning,
    Drift,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Stable => "stable",
            Level::Warning => "warning",
            Level::Drift => "drift",
        }
    }
}

/// Drift Detection Method over errors (1.0 wrong, 0.0 right).
#[derive(Debug, Clone)]
pub struct Ddm {
    min_samples: u64,
    n: u64,
    errors: f64,
    best_p: f64,
    best_s: f64,
    level: Level,
}

impl Default for Ddm {
    fn default() -> Self {
        Self::new(30)
    }
}

impl Ddm {
    pub fn new(min_samples: u64) -> Self {
        Self {
            min_samples: min_samples.max(1),
            n: 0,
            errors: 0.0,
            best_p: f64::MAX,
            best_s: f64::MAX,
            level: Level::Stable,
        }
    }

    /// Adds one outcome; after a drift the detector starts over.
    pub fn update(&mut self, error: bool) -> Level {
        if self.level == Level::Drift {
            *self = Self::new(self.min_samples);
        }
        self.n += 1;
        self.errors += f64::from(u8::from(error));
        // Laplace-smoothed: with no error yet the plain estimate has p = s = 0, and then a
        // single error would count as drift.
        let p = (self.errors + 1.0) / (self.n as f64 + 2.0);
        let s = (p * (1.0 - p) / self.n as f64).sqrt();
        if self.n < self.min_samples {
            self.level = Level::Stable;
            return self.level;
        }
        if p + s < self.best_p + self.best_s {
            self.best_p = p;
            self.best_s = s;
        }
        self.level = if p + s >= self.best_p + 3.0 * self.best_s {
            Level::Drift
        } else if p + s >= self.best_p + 2.0 * self.best_s {
            Level::Warning
        } else {
            Level::Stable
        };
        self.level
    }

    /// The error rate now and its lowest (p + s) so far: the statistics the levels compare.
    pub fn statistics(&self) -> (f64, f64) {
        let p = if self.n == 0 {
            0.0
        } else {
            self.errors / self.n as f64
        };
        let best = if self.best_p == f64::MAX {
            0.0
        } else {
            self.best_p + self.best_s
        };
        (p, best)
    }

    pub fn samples(&self) -> u64 {
        self.n
    }
}

/// Page-Hinkley test for an increase in the mean.
#[derive(Debug, Clone)]
pub struct PageHinkley {
    delta: f64,
    lambda: f64,
    min_samples: u64,
    n: u64,
    mean: f64,
    cumulative: f64,
    minimum: f64,
    drifted: bool,
}

impl Default for PageHinkley {
    /// Tuned for 0/1 error streams: tolerates 0.005 of slack per value, drifts at 20.
    fn default() -> Self {
        Self::new(0.005, 20.0, 30)
    }
}

impl PageHinkley {
    pub fn new(delta: f64, lambda: f64, min_samples: u64) -> Self {
        Self {
            delta,
            lambda,
            min_samples,
            n: 0,
            mean: 0.0,
            cumulative: 0.0,
            minimum: 0.0,
            drifted: false,
        }
    }

    pub fn update(&mut self, x: f64) -> Level {
        if self.drifted {
            *self = Self::new(self.delta, self.lambda, self.min_samples);
        }
        self.n += 1;
        self.mean += (x - self.mean) / self.n as f64;
        self.cumulative += x - self.mean - self.delta;
        self.minimum = self.minimum.min(self.cumulative);
        self.drifted = self.n >= self.min_samples && self.statistic() > self.lambda;
        if self.drifted {
            Level::Drift
        } else {
            Level::Stable
        }
    }

    /// How far the cumulative deviation is above its minimum (drift above `lambda`).
    pub fn statistic(&self) -> f64 {
        self.cumulative - self.minimum
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    count: f64,
    sum: f64,
    sum_sq: f64,
}

/// ADWIN over values in [0, 1] (errors) or any bounded stream.
#[derive(Debug, Clone)]
pub struct Adwin {
    delta: f64,
    /// Buckets per size before the two oldest of that size merge.
    max_per_size: usize,
    /// Oldest first; sizes are non-increasing from oldest to newest.
    buckets: VecDeque<Bucket>,
    count: f64,
    sum: f64,
    sum_sq: f64,
    clock: u64,
    check_every: u64,
}

impl Default for Adwin {
    fn default() -> Self {
        Self::new(0.002)
    }
}

impl Adwin {
    pub fn new(delta: f64) -> Self {
        Self {
            delta,
            max_per_size: 5,
            buckets: VecDeque::new(),
            count: 0.0,
            sum: 0.0,
            sum_sq: 0.0,
            clock: 0,
            check_every: 8,
        }
    }

    /// Values in the window now.
    pub fn width(&self) -> u64 {
        self.count as u64
    }

    pub fn mean(&self) -> f64 {
        if self.count == 0.0 {
            0.0
        } else {
            self.sum / self.count
        }
    }

    pub fn update(&mut self, x: f64) -> Level {
        self.buckets.push_back(Bucket {
            count: 1.0,
            sum: x,
            sum_sq: x * x,
        });
        self.count += 1.0;
        self.sum += x;
        self.sum_sq += x * x;
        self.compress();
        self.clock += 1;
        if !self.clock.is_multiple_of(self.check_every) || self.count < 32.0 {
            return Level::Stable;
        }
        let mut cut = false;
        while self.cut_oldest() {
            cut = true;
        }
        if cut {
            Level::Drift
        } else {
            Level::Stable
        }
    }

    /// Keeps at most `max_per_size` buckets of each size by merging the two oldest.
    fn compress(&mut self) {
        let mut i = self.buckets.len();
        loop {
            // Find the run of buckets with the size of the bucket just before `i`.
            if i == 0 {
                return;
            }
            let size = self.buckets[i - 1].count;
            let mut start = i - 1;
            while start > 0 && self.buckets[start - 1].count == size {
                start -= 1;
            }
            if i - start <= self.max_per_size {
                return;
            }
            // Merge the two oldest of this size.
            let (a, b) = (self.buckets[start], self.buckets[start + 1]);
            self.buckets[start] = Bucket {
                count: a.count + b.count,
                sum: a.sum + b.sum,
                sum_sq: a.sum_sq + b.sum_sq,
            };
            self.buckets.remove(start + 1);
            i = start + 1;
        }
    }

    /// Drops the oldest bucket if some split of the window shows a change.
    fn cut_oldest(&mut self) -> bool {
        if self.buckets.len() < 2 {
            return false;
        }
        let n = self.count;
        let variance = (self.sum_sq / n - (self.sum / n).powi(2)).max(0.0);
        let delta_prime = self.delta / n.ln().max(1.0);
        let (mut n0, mut s0) = (0.0, 0.0);
        for b in self.buckets.iter().take(self.buckets.len() - 1) {
            n0 += b.count;
            s0 += b.sum;
            let n1 = n - n0;
            if n0 < 5.0 || n1 < 5.0 {
                continue;
            }
            let m = 1.0 / (1.0 / n0 + 1.0 / n1);
            let ln = (2.0 / delta_prime).ln();
            let epsilon = (2.0 / m * variance * ln).sqrt() + 2.0 / (3.0 * m) * ln;
            if (s0 / n0 - (self.sum - s0) / n1).abs() > epsilon {
                let oldest = self.buckets.pop_front().expect("two buckets at least");
                self.count -= oldest.count;
                self.sum -= oldest.sum;
                self.sum_sq -= oldest.sum_sq;
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng as _, SeedableRng as _};
    use rand_chacha::ChaCha8Rng;

    /// Index of the first drift at or after `from`, and whether any came before.
    fn first_drift(levels: &[Level], from: usize) -> (Option<usize>, bool) {
        let early = levels[..from].contains(&Level::Drift);
        let first = levels[from..].iter().position(|l| *l == Level::Drift);
        (first, early)
    }

    fn bernoulli(rng: &mut ChaCha8Rng, p: f64, n: usize) -> Vec<bool> {
        (0..n).map(|_| rng.random_bool(p)).collect()
    }

    #[test]
    fn ddm_warns_then_drifts_soon_after_the_error_rate_jumps() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut stream = bernoulli(&mut rng, 0.1, 1_000);
        stream.extend(bernoulli(&mut rng, 0.4, 500));
        let mut ddm = Ddm::default();
        let levels: Vec<Level> = stream.iter().map(|e| ddm.update(*e)).collect();
        let (first, early) = first_drift(&levels, 1_000);
        assert!(!early, "no drift while the rate is stable");
        let after = first.expect("drift detected");
        assert!(after <= 250, "drift {after} outcomes after the change");
        let warn = levels[1_000..]
            .iter()
            .position(|l| *l == Level::Warning)
            .expect("warning");
        assert!(warn <= after, "warning comes first");
    }

    #[test]
    fn page_hinkley_detects_a_mean_increase() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut stream: Vec<f64> = bernoulli(&mut rng, 0.1, 1_000)
            .into_iter()
            .map(f64::from)
            .collect();
        stream.extend(bernoulli(&mut rng, 0.4, 500).into_iter().map(f64::from));
        let mut ph = PageHinkley::default();
        let levels: Vec<Level> = stream.iter().map(|x| ph.update(*x)).collect();
        let (first, early) = first_drift(&levels, 1_000);
        assert!(!early, "no drift while the mean is stable");
        assert!(first.expect("drift") <= 150);
    }

    #[test]
    fn adwin_cuts_its_window_at_a_change_and_not_before() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut stream: Vec<f64> = (0..2_000).map(|_| rng.random_range(0.0..0.4)).collect();
        stream.extend((0..1_000).map(|_| rng.random_range(0.4..0.8)));
        let mut adwin = Adwin::default();
        let mut levels = Vec::new();
        let mut width_before = 0;
        for (i, x) in stream.iter().enumerate() {
            levels.push(adwin.update(*x));
            if i == 1_999 {
                width_before = adwin.width();
            }
        }
        let (first, early) = first_drift(&levels, 2_000);
        assert!(!early, "no cut while the stream is stationary");
        assert_eq!(
            width_before, 2_000,
            "the window grew to the whole stable stream"
        );
        assert!(first.expect("drift") <= 100);
        assert!(
            adwin.width() < 1_500,
            "the old regime was cut away: width {}",
            adwin.width()
        );
        assert!(
            (adwin.mean() - 0.6).abs() < 0.05,
            "mean follows the new regime: {}",
            adwin.mean()
        );
    }
}
