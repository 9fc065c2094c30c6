//! The volatility-spike model shared by the prediction API and the prediction consumer.
//!
//! - [`features`]: one-minute bars and the rolling features computed from them.
//! - [`artifact`]: the versioned JSON artifact and its validation.
//! - [`train`]: the reproducible trainer (simulated market, logistic regression, scores).
//! - [`drift`]: DDM, Page-Hinkley and ADWIN as pure state machines; [`monitor`] runs them
//!   together over a served model's errors and inputs, with their metrics.
//! - [`profile`]: the training data binned per feature, and PSI, KS and Jensen-Shannon
//!   distance between binned distributions; [`feature_drift`] compares a live window with
//!   it, as gauges and as a report (JSON or HTML).
//!
//! [`Model`] serves both variants from one artifact: `ml`, the trained logistic regression,
//! and `baseline`, a volatility-ratio rule kept for comparison and rollback. Inference does
//! no I/O and never panics: inputs are validated by callers, outputs are clamped to [0, 1].

pub mod artifact;
pub mod drift;
pub mod feature_drift;
pub mod features;
pub mod monitor;
pub mod profile;
pub mod train;

use serde::{Deserialize, Serialize};

pub use artifact::{LoadError, ModelArtifact};
pub use features::{Features, FEATURE_NAMES};

/// Which predictor answers.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// The trained logistic regression.
    Ml,
    /// The volatility-ratio rule.
    Baseline,
}

impl Variant {
    pub const ALL: [Variant; 2] = [Variant::Ml, Variant::Baseline];

    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Ml => "ml",
            Variant::Baseline => "baseline",
        }
    }
}

impl std::str::FromStr for Variant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ml" => Ok(Variant::Ml),
            "baseline" => Ok(Variant::Baseline),
            other => Err(format!(
                "unknown variant {other:?}, expected ml or baseline"
            )),
        }
    }
}

/// One prediction.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prediction {
    pub probability: f64,
    pub spike: bool,
}

/// A loaded artifact, ready to predict.
#[derive(Debug, Clone)]
pub struct Model {
    artifact: ModelArtifact,
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl Model {
    pub fn new(artifact: ModelArtifact) -> Self {
        Self { artifact }
    }

    pub fn load(path: &std::path::Path) -> Result<Self, LoadError> {
        ModelArtifact::load(path).map(Self::new)
    }

    pub fn artifact(&self) -> &ModelArtifact {
        &self.artifact
    }

    /// The features as the logistic regression sees them: transformed, then standardised.
    pub fn inputs(&self, features: &Features) -> [f64; 6] {
        let a = &self.artifact;
        let mut out = [0.0; 6];
        for (i, x) in features.to_array().iter().enumerate() {
            out[i] = (a.transforms[i].apply(*x) - a.scaler.mean[i]) / a.scaler.std[i];
        }
        out
    }

    /// The model's log-odds for the `ml` variant.
    fn logit(&self, x: &[f64; 6]) -> f64 {
        let a = &self.artifact;
        x.iter()
            .zip(&a.transforms)
            .zip(
                a.weights
                    .iter()
                    .zip(a.scaler.mean.iter().zip(&a.scaler.std)),
            )
            .fold(a.intercept, |z, ((x, t), (w, (mean, std)))| {
                z + w * (t.apply(*x) - mean) / std
            })
    }

    pub fn predict(&self, variant: Variant, features: &Features) -> Prediction {
        let probability = match variant {
            Variant::Ml => sigmoid(self.logit(&features.to_array())),
            Variant::Baseline => {
                let rule = self.artifact.baseline;
                let ratio = features.vol_5m / features.vol_15m.max(1e-12);
                sigmoid(rule.steepness * (ratio - rule.ratio_threshold))
            }
        };
        // NaN can only come from non-finite input, which callers reject; never leak it.
        let probability = if probability.is_nan() {
            0.0
        } else {
            probability.clamp(0.0, 1.0)
        };
        let threshold = match variant {
            Variant::Ml => self.artifact.threshold,
            Variant::Baseline => 0.5,
        };
        Prediction {
            probability,
            spike: probability >= threshold,
        }
    }
}
