//! The versioned model artifact: a JSON file holding weights, feature scaling, the baseline
//! rule, training metadata and held-out scores. Loading validates everything, so a served
//! model is never half-read.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::features::FEATURE_NAMES;

/// The artifact layout this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelArtifact {
    pub schema_version: u32,
    pub name: String,
    pub version: String,
    pub features: Vec<String>,
    /// Per-feature transform applied before scaling.
    pub transforms: Vec<Transform>,
    pub scaler: Scaler,
    pub weights: Vec<f64>,
    pub intercept: f64,
    /// Probability at or above which a spike is predicted.
    pub threshold: f64,
    pub baseline: BaselineRule,
    pub training: TrainingMetadata,
    pub heldout: HeldOut,
}

/// Transforms that make heavy-tailed inputs closer to linear in the log-odds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    Identity,
    /// `ln(x + 1e-6)`, for volatilities.
    Log,
    /// `ln(1 + x)`, for rates.
    Log1p,
}

impl Transform {
    pub fn apply(self, x: f64) -> f64 {
        match self {
            Transform::Identity => x,
            Transform::Log => (x + 1e-6).ln(),
            Transform::Log1p => x.ln_1p(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Scaler {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

/// The baseline variant: a spike is predicted when short-term volatility runs above
/// long-term volatility by more than `ratio_threshold`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BaselineRule {
    pub ratio_threshold: f64,
    /// Slope of the logistic that turns the ratio into a probability.
    pub steepness: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainingMetadata {
    /// The command that reproduces this file byte for byte.
    pub command: String,
    pub seed: u64,
    pub symbols: Vec<String>,
    pub minutes_per_symbol: u64,
    pub horizon_minutes: u64,
    /// Realised one-minute volatility over the horizon above which the label is "spike".
    pub spike_threshold: f64,
    pub train_rows: u64,
    pub test_rows: u64,
    pub train_positive_rate: f64,
    pub test_positive_rate: f64,
    pub l2: f64,
    pub newton_iterations: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Scores {
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub auc: f64,
}

/// Scores on the held-out (later, unseen) part of the simulated data.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeldOut {
    pub ml: Scores,
    pub baseline: Scores,
}

/// Why an artifact could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read model artifact {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "model artifact {path} is not valid JSON for schema version {SCHEMA_VERSION}: {source}"
    )]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("model artifact {path} is invalid: {reason}")]
    Invalid { path: String, reason: String },
}

impl ModelArtifact {
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::from_json(&text).map_err(|e| match e {
            LoadError::Parse { source, .. } => LoadError::Parse {
                path: shown.clone(),
                source,
            },
            LoadError::Invalid { reason, .. } => LoadError::Invalid {
                path: shown.clone(),
                reason,
            },
            other => other,
        })
    }

    pub fn from_json(text: &str) -> Result<Self, LoadError> {
        let artifact: Self = serde_json::from_str(text).map_err(|source| LoadError::Parse {
            path: String::new(),
            source,
        })?;
        artifact.validate().map_err(|reason| LoadError::Invalid {
            path: String::new(),
            reason,
        })?;
        Ok(artifact)
    }

    /// Pretty JSON with a trailing newline, as committed to the repository.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    fn validate(&self) -> Result<(), String> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(format!(
                "schema_version {} is not {SCHEMA_VERSION}",
                self.schema_version
            ));
        }
        if self.features != FEATURE_NAMES {
            return Err(format!(
                "features {:?} are not {:?}",
                self.features, FEATURE_NAMES
            ));
        }
        let n = FEATURE_NAMES.len();
        for (what, len) in [
            ("transforms", self.transforms.len()),
            ("scaler.mean", self.scaler.mean.len()),
            ("scaler.std", self.scaler.std.len()),
            ("weights", self.weights.len()),
        ] {
            if len != n {
                return Err(format!("{what} has {len} entries, expected {n}"));
            }
        }
        let numbers = self
            .scaler
            .mean
            .iter()
            .chain(&self.scaler.std)
            .chain(&self.weights)
            .chain([&self.intercept]);
        if numbers.clone().any(|x| !x.is_finite()) {
            return Err("weights and scaling must be finite".into());
        }
        if self.scaler.std.iter().any(|s| *s <= 0.0) {
            return Err("scaler.std must be positive".into());
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(format!("threshold {} is outside [0, 1]", self.threshold));
        }
        if !(self.baseline.ratio_threshold.is_finite() && self.baseline.steepness.is_finite()) {
            return Err("baseline rule must be finite".into());
        }
        Ok(())
    }
}
