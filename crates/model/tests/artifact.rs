//! The committed artifact is valid, loads, and is what the documented command produces.

use std::path::PathBuf;

use tidewatch_model::profile::ReferenceProfile;
use tidewatch_model::train::{train_with_profile, TrainConfig};
use tidewatch_model::{Features, LoadError, Model, ModelArtifact, Variant};

fn committed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/volatility-spike.json")
}

#[test]
fn the_committed_artifact_is_what_the_training_command_produces() {
    let on_disk = ModelArtifact::load(&committed()).expect("committed artifact loads");
    let config = TrainConfig {
        seed: on_disk.training.seed,
        minutes: on_disk.training.minutes_per_symbol,
        horizon: on_disk.training.horizon_minutes,
        spike_threshold: on_disk.training.spike_threshold,
        version: on_disk.version.clone(),
        ..TrainConfig::default()
    };
    let (retrained, profile) = train_with_profile(&config);
    // Scores and counts must match exactly; weights to float noise across libm versions.
    assert_eq!(retrained.heldout, on_disk.heldout);
    assert_eq!(retrained.training, on_disk.training);
    for (a, b) in retrained.weights.iter().zip(&on_disk.weights) {
        assert!((a - b).abs() < 1e-9, "weights drifted: {a} vs {b}");
    }
    assert!(
        on_disk.heldout.ml.auc > 0.85,
        "held-out AUC {}",
        on_disk.heldout.ml.auc
    );
    assert!(on_disk.heldout.ml.f1 > on_disk.heldout.baseline.f1);

    // The reference profile beside it is the same command's, to float noise.
    let path = committed().with_file_name("volatility-spike.profile.json");
    let text = std::fs::read_to_string(&path).expect("committed profile");
    let committed_profile = ReferenceProfile::from_json(&text).expect("valid profile");
    assert_eq!(committed_profile.model_version, on_disk.version);
    assert_eq!(committed_profile.rows, on_disk.training.train_rows);
    assert_eq!(committed_profile.columns.len(), profile.columns.len());
    for (a, b) in committed_profile.columns.iter().zip(&profile.columns) {
        assert_eq!(a.name, b.name);
        for (x, y) in a.shares.iter().zip(&b.shares) {
            assert!((x - y).abs() < 1e-4, "{}: share {x} vs {y}", a.name);
        }
        assert_eq!(a.cuts.len(), b.cuts.len(), "{}", a.name);
        for (x, y) in a.cuts.iter().zip(&b.cuts) {
            assert!(
                (x - y).abs() <= 1e-9 * y.abs().max(1e-12),
                "{}: {x} vs {y}",
                a.name
            );
        }
    }
}

#[test]
fn calm_and_turbulent_inputs_get_low_and_high_probabilities() {
    let model = Model::load(&committed()).expect("loads");
    let calm = Features {
        ret_1m: 0.0001,
        ret_5m: 0.0002,
        vol_5m: 0.0005,
        vol_15m: 0.0005,
        volume_z: -0.5,
        trade_rate: 2.0,
    };
    let turbulent = Features {
        ret_1m: -0.004,
        ret_5m: -0.01,
        vol_5m: 0.006,
        vol_15m: 0.005,
        volume_z: 3.0,
        trade_rate: 10.0,
    };
    for variant in Variant::ALL {
        for f in [calm, turbulent] {
            let p = model.predict(variant, &f).probability;
            assert!((0.0..=1.0).contains(&p));
        }
    }
    assert!(model.predict(Variant::Ml, &calm).probability < 0.1);
    assert!(model.predict(Variant::Ml, &turbulent).probability > 0.8);
}

#[test]
fn a_missing_or_malformed_artifact_is_a_clear_error() {
    let missing =
        Model::load(std::path::Path::new("/nonexistent/model.json")).expect_err("missing");
    assert!(matches!(missing, LoadError::Read { .. }));
    assert!(missing.to_string().contains("/nonexistent/model.json"));

    let text = std::fs::read_to_string(committed()).expect("read");
    let truncated = ModelArtifact::from_json(&text[..text.len() / 2]).expect_err("truncated");
    assert!(matches!(truncated, LoadError::Parse { .. }));

    let mut artifact: serde_json::Value = serde_json::from_str(&text).expect("json");
    artifact["weights"] = serde_json::json!([1.0, 2.0]);
    let short = ModelArtifact::from_json(&artifact.to_string()).expect_err("short weights");
    assert!(
        short.to_string().contains("weights has 2 entries"),
        "{short}"
    );
}
