//! The prediction API's business metrics, with handles registered once at start.
//!
//! Every label value is from a fixed set (variants, outcomes, the request schema's field
//! names), so all series exist from the first scrape and none can be created by a client.

use std::collections::HashMap;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use tidewatch_model::{ModelArtifact, Prediction, Variant};
use tidewatch_telemetry::catalog;

/// Field label values for validation errors; anything else is counted as `other`.
pub const VALIDATION_FIELDS: &[&str] = &[
    "body",
    "content-type",
    "symbol",
    "features",
    "features.ret_1m",
    "features.ret_5m",
    "features.vol_5m",
    "features.vol_15m",
    "features.volume_z",
    "features.trade_rate",
    "items",
    "variant",
    "other",
];

struct VariantHandles {
    spike: Counter,
    no_spike: Counter,
    probability: Histogram,
    inference: Histogram,
    active: Gauge,
}

/// All metric handles of the service. `disabled()` gives no-op handles for the benchmark's
/// uninstrumented baseline.
pub struct ApiMetrics {
    variants: [VariantHandles; 2],
    validation: HashMap<&'static str, Counter>,
    variant_switches: Counter,
    drift_resets: Counter,
}

impl std::fmt::Debug for ApiMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiMetrics").finish_non_exhaustive()
    }
}

fn index(variant: Variant) -> usize {
    match variant {
        Variant::Ml => 0,
        Variant::Baseline => 1,
    }
}

impl ApiMetrics {
    /// The served model changed: its info gauge and held-out scores follow.
    pub fn model_changed(&self, from: &ModelArtifact, to: &ModelArtifact) {
        catalog::MODEL_INFO
            .gauge(&[("model", from.name.as_str()), ("version", &from.version)])
            .set(0.0);
        model_gauges(to);
    }

    pub fn register(artifact: &ModelArtifact) -> Self {
        let model = artifact.name.as_str();
        model_gauges(artifact);
        let variant = |v: Variant| {
            let name = v.as_str();
            VariantHandles {
                spike: catalog::PREDICTIONS.counter(&[
                    ("model", model),
                    ("variant", name),
                    ("outcome", "spike"),
                ]),
                no_spike: catalog::PREDICTIONS.counter(&[
                    ("model", model),
                    ("variant", name),
                    ("outcome", "no_spike"),
                ]),
                probability: catalog::PREDICTION_PROBABILITY.histogram(&[("variant", name)]),
                inference: catalog::PREDICTION_INFERENCE_DURATION.histogram(&[("variant", name)]),
                active: catalog::MODEL_VARIANT_ACTIVE.gauge(&[("variant", name)]),
            }
        };
        let metrics = Self {
            variants: [variant(Variant::Ml), variant(Variant::Baseline)],
            validation: VALIDATION_FIELDS
                .iter()
                .map(|f| {
                    (
                        *f,
                        catalog::PREDICTION_VALIDATION_ERRORS.counter(&[("field", f)]),
                    )
                })
                .collect(),
            variant_switches: catalog::ADMIN_ACTIONS.counter(&[("action", "set_variant")]),
            drift_resets: catalog::ADMIN_ACTIONS.counter(&[("action", "drift_reset")]),
        };
        for c in metrics.validation.values() {
            c.absolute(0);
        }
        metrics.variant_switches.absolute(0);
        metrics.drift_resets.absolute(0);
        for v in &metrics.variants {
            v.spike.absolute(0);
            v.no_spike.absolute(0);
        }
        metrics
    }

    pub fn disabled() -> Self {
        let variant = || VariantHandles {
            spike: Counter::noop(),
            no_spike: Counter::noop(),
            probability: Histogram::noop(),
            inference: Histogram::noop(),
            active: Gauge::noop(),
        };
        Self {
            variants: [variant(), variant()],
            validation: HashMap::new(),
            variant_switches: Counter::noop(),
            drift_resets: Counter::noop(),
        }
    }

    pub fn prediction(&self, variant: Variant, prediction: &Prediction, took: Duration) {
        let h = &self.variants[index(variant)];
        if prediction.spike {
            &h.spike
        } else {
            &h.no_spike
        }
        .increment(1);
        h.probability.record(prediction.probability);
        h.inference.record(took.as_secs_f64());
    }

    /// Counts a rejected field; item indices (`items[3].`) are stripped to keep labels bounded.
    pub fn validation_error(&self, field: Option<&str>) {
        let field = field.unwrap_or("body");
        let field = match field.strip_prefix("items[") {
            Some(rest) => rest.split_once("].").map_or("items", |(_, f)| f),
            None => field,
        };
        if let Some(c) = self
            .validation
            .get(field)
            .or_else(|| self.validation.get("other"))
        {
            c.increment(1);
        }
    }

    pub fn variant_active(&self, active: Variant) {
        for v in Variant::ALL {
            self.variants[index(v)]
                .active
                .set(if v == active { 1.0 } else { 0.0 });
        }
    }

    pub fn variant_switched(&self) {
        self.variant_switches.increment(1);
    }

    pub fn drift_reset(&self) {
        self.drift_resets.increment(1);
    }
}

/// The served model's info gauge (1) and held-out scores.
fn model_gauges(artifact: &ModelArtifact) {
    catalog::MODEL_INFO
        .gauge(&[
            ("model", artifact.name.as_str()),
            ("version", &artifact.version),
        ])
        .set(1.0);
    for (variant, scores) in [
        ("ml", artifact.heldout.ml),
        ("baseline", artifact.heldout.baseline),
    ] {
        for (metric, value) in [
            ("accuracy", scores.accuracy),
            ("precision", scores.precision),
            ("recall", scores.recall),
            ("f1", scores.f1),
            ("auc", scores.auc),
        ] {
            catalog::MODEL_HELDOUT_SCORE
                .gauge(&[("variant", variant), ("metric", metric)])
                .set(value);
        }
    }
}
