//! Reference profiles and the distances between binned distributions.
//!
//! A model's reference profile holds, for every input feature and for its output
//! probability, the training data binned: ten bins per feature cut at the training deciles
//! (equal-frequency, so every bin holds data however the feature is scaled; cut points that
//! coincide are merged), ten equal-width bins over [0, 1] for the probability. Live data is
//! counted into the same bins and compared with three statistics:
//!
//! - **PSI** (population stability index): `sum (c - r) ln(c / r)` over bins, each share
//!   floored at [`EPSILON`] so an empty bin does not make it infinite. The usual reading:
//!   under 0.1 stable, 0.1-0.25 moderate, [`PSI_DRIFT`] (0.25) and above drifted.
//! - **KS**: the largest gap between the two cumulative distributions at the cut points (the
//!   binned two-sample Kolmogorov-Smirnov statistic, at most the statistic of the raw samples).
//! - **JS distance**: the square root of the Jensen-Shannon divergence in bits, in [0, 1].
//!
//! Bin `i` holds values from cut `i - 1` (inclusive) to cut `i` (exclusive); the first bin
//! everything below the first cut, the last everything from the last cut up.

use serde::{Deserialize, Serialize};

use crate::features::FEATURE_NAMES;

/// Floor of a bin's share in PSI.
pub const EPSILON: f64 = 1e-4;
/// PSI at which a column counts as drifted.
pub const PSI_DRIFT: f64 = 0.25;
/// Bins per column.
pub const BINS: usize = 10;
/// The name the output probability goes by next to the features.
pub const PROBABILITY: &str = "probability";

/// One column's reference: its cut points and the share of training rows in each bin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ColumnProfile {
    pub name: String,
    /// Increasing cut points; `cuts.len() + 1` bins.
    pub cuts: Vec<f64>,
    /// Share of rows per bin; sums to 1.
    pub shares: Vec<f64>,
}

impl ColumnProfile {
    /// Equal-frequency bins at the deciles of `values` (finite values only).
    pub fn quantiles(name: &str, values: &[f64]) -> Self {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let mut cuts: Vec<f64> = Vec::with_capacity(BINS - 1);
        if !sorted.is_empty() {
            for i in 1..BINS {
                let cut = sorted[(i * sorted.len() / BINS).min(sorted.len() - 1)];
                // A cut equal to the smallest value or to the previous cut makes an empty bin.
                if cut > sorted[0] && cuts.last().is_none_or(|last| cut > *last) {
                    cuts.push(cut);
                }
            }
        }
        Self::with_cuts(name, cuts, &sorted)
    }

    /// Equal-width bins over [0, 1], for probabilities.
    pub fn unit_interval(name: &str, values: &[f64]) -> Self {
        let cuts = (1..BINS).map(|i| i as f64 / BINS as f64).collect();
        Self::with_cuts(name, cuts, values)
    }

    fn with_cuts(name: &str, cuts: Vec<f64>, values: &[f64]) -> Self {
        let mut counts = vec![0u64; cuts.len() + 1];
        for v in values.iter().filter(|v| v.is_finite()) {
            counts[bin(&cuts, *v)] += 1;
        }
        Self {
            name: name.to_owned(),
            shares: shares(&counts),
            cuts,
        }
    }

    /// The bin `value` falls in.
    pub fn bin(&self, value: f64) -> usize {
        bin(&self.cuts, value)
    }
}

/// The bin of `value` among `cuts`.
fn bin(cuts: &[f64], value: f64) -> usize {
    cuts.partition_point(|c| *c <= value)
}

/// Counts as shares of their total (all zero when there are none).
pub fn shares(counts: &[u64]) -> Vec<f64> {
    let total: u64 = counts.iter().sum();
    counts
        .iter()
        .map(|c| {
            if total == 0 {
                0.0
            } else {
                *c as f64 / total as f64
            }
        })
        .collect()
}

/// A model's training data, binned: every feature of [`FEATURE_NAMES`] in order, then the
/// output probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReferenceProfile {
    /// The model version whose training data this describes.
    pub model_version: String,
    /// Training rows profiled.
    pub rows: u64,
    pub columns: Vec<ColumnProfile>,
}

impl ReferenceProfile {
    /// Profiles rows of features and the model's probability for each.
    pub fn build(model_version: &str, features: &[[f64; 6]], probabilities: &[f64]) -> Self {
        let mut columns: Vec<ColumnProfile> = FEATURE_NAMES
            .iter()
            .enumerate()
            .map(|(j, name)| {
                let values: Vec<f64> = features.iter().map(|row| row[j]).collect();
                ColumnProfile::quantiles(name, &values)
            })
            .collect();
        columns.push(ColumnProfile::unit_interval(PROBABILITY, probabilities));
        Self {
            model_version: model_version.to_owned(),
            rows: features.len() as u64,
            columns,
        }
    }

    pub fn from_json(text: &str) -> Result<Self, String> {
        let profile: Self = serde_json::from_str(text).map_err(|e| e.to_string())?;
        profile.validate()?;
        Ok(profile)
    }

    /// Pretty JSON with a trailing newline, as committed to the repository.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    fn validate(&self) -> Result<(), String> {
        let names: Vec<&str> = self.columns.iter().map(|c| c.name.as_str()).collect();
        let mut want: Vec<&str> = FEATURE_NAMES.to_vec();
        want.push(PROBABILITY);
        if names != want {
            return Err(format!("columns {names:?} are not {want:?}"));
        }
        for c in &self.columns {
            if c.cuts.len() >= BINS {
                return Err(format!(
                    "{}: {} cuts, at most {}",
                    c.name,
                    c.cuts.len(),
                    BINS - 1
                ));
            }
            if c.shares.len() != c.cuts.len() + 1 {
                return Err(format!(
                    "{}: {} shares for {} cuts",
                    c.name,
                    c.shares.len(),
                    c.cuts.len()
                ));
            }
            if !c.cuts.windows(2).all(|w| w[0] < w[1]) || c.cuts.iter().any(|x| !x.is_finite()) {
                return Err(format!("{}: cuts must be finite and increasing", c.name));
            }
            let sum: f64 = c.shares.iter().sum();
            if c.shares.iter().any(|s| !(0.0..=1.0).contains(s)) || (sum - 1.0).abs() > 1e-6 {
                return Err(format!("{}: shares must be in [0, 1] and sum to 1", c.name));
            }
        }
        Ok(())
    }
}

/// The three statistics between a current and a reference distribution over the same bins.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Distances {
    pub psi: f64,
    pub ks: f64,
    pub js: f64,
}

impl Distances {
    pub fn between(current: &[f64], reference: &[f64]) -> Self {
        let floor = |p: f64| p.max(EPSILON);
        let psi = current
            .iter()
            .zip(reference)
            .map(|(c, r)| (floor(*c) - floor(*r)) * (floor(*c) / floor(*r)).ln())
            .sum();
        let (mut cc, mut cr, mut ks) = (0.0, 0.0, 0.0f64);
        for (c, r) in current.iter().zip(reference) {
            cc += c;
            cr += r;
            ks = ks.max((cc - cr).abs());
        }
        // KL(p || m) in bits, with 0 log 0 = 0.
        let kl = |p: &[f64], m: &[f64]| -> f64 {
            p.iter()
                .zip(m)
                .filter(|(p, _)| **p > 0.0)
                .map(|(p, m)| p * (p / m).log2())
                .sum()
        };
        let m: Vec<f64> = current
            .iter()
            .zip(reference)
            .map(|(c, r)| (c + r) / 2.0)
            .collect();
        let divergence = 0.5 * kl(current, &m) + 0.5 * kl(reference, &m);
        Self {
            psi,
            ks,
            js: divergence.clamp(0.0, 1.0).sqrt(),
        }
    }

    pub fn drifted(&self) -> bool {
        self.psi >= PSI_DRIFT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decile_cuts_give_equal_shares_and_merge_ties() {
        let values: Vec<f64> = (0..1000).map(f64::from).collect();
        let p = ColumnProfile::quantiles("x", &values);
        assert_eq!(p.cuts.len(), 9);
        assert!(p.shares.iter().all(|s| (s - 0.1).abs() < 1e-12), "{p:?}");
        assert_eq!(p.bin(-5.0), 0);
        assert_eq!(p.bin(100.0), 1, "a cut belongs to the bin above it");
        assert_eq!(p.bin(1e9), 9);
        // Half the values equal: their cuts merge, no bin is empty.
        let ties: Vec<f64> = (0..1000)
            .map(|i| if i < 500 { 0.0 } else { f64::from(i) })
            .collect();
        let p = ColumnProfile::quantiles("t", &ties);
        assert!(p.cuts.len() < 9);
        assert!(p.shares.iter().all(|s| *s > 0.0), "{p:?}");
        assert!((p.shares.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn identical_distributions_are_zero_apart_and_disjoint_ones_far() {
        let r = [0.25, 0.25, 0.25, 0.25];
        let same = Distances::between(&r, &r);
        assert_eq!((same.psi, same.ks, same.js), (0.0, 0.0, 0.0));
        let d = Distances::between(&[0.0, 0.0, 0.5, 0.5], &[0.5, 0.5, 0.0, 0.0]);
        assert!((d.ks - 1.0).abs() < 1e-12);
        assert!((d.js - 1.0).abs() < 1e-12, "disjoint: one bit");
        assert!(d.drifted());
        // Hand-computed PSI for a small shift: 2 * 0.05 * ln(0.3 / 0.2) = 0.0405.
        let d = Distances::between(&[0.3, 0.2], &[0.25, 0.25]);
        let want = 0.05 * (0.3f64 / 0.25).ln() + (-0.05) * (0.2f64 / 0.25).ln();
        assert!((d.psi - want).abs() < 1e-12);
        assert!((d.ks - 0.05).abs() < 1e-12);
        assert!(!d.drifted());
    }

    #[test]
    fn a_profile_round_trips_and_a_broken_one_is_refused() {
        let rows: Vec<[f64; 6]> = (0..200)
            .map(|i| std::array::from_fn(|j| f64::from(i * (j as i32 + 1))))
            .collect();
        let probs: Vec<f64> = (0..200).map(|i| f64::from(i) / 200.0).collect();
        let p = ReferenceProfile::build("1.0.0", &rows, &probs);
        assert_eq!(ReferenceProfile::from_json(&p.to_json()), Ok(p.clone()));
        let mut broken = p.clone();
        broken.columns[0].shares.pop();
        assert!(ReferenceProfile::from_json(&broken.to_json())
            .unwrap_err()
            .contains("ret_1m"));
        let mut renamed = p;
        renamed.columns.swap(0, 1);
        assert!(ReferenceProfile::from_json(&renamed.to_json()).is_err());
    }
}
