//! Trains the volatility-spike model on the seeded simulator and writes the artifact and
//! the reference profile of its training data.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use tidewatch_model::train::{train_with_profile, TrainConfig};

#[derive(Debug, Parser)]
#[command(about = "Train the volatility-spike model reproducibly from the seeded market simulator")]
struct Args {
    #[arg(long, default_value_t = TrainConfig::default().seed)]
    seed: u64,
    /// Simulated minutes per symbol.
    #[arg(long, default_value_t = TrainConfig::default().minutes)]
    minutes: u64,
    /// Label horizon in minutes.
    #[arg(long, default_value_t = TrainConfig::default().horizon)]
    horizon: u64,
    /// Realised one-minute volatility over the horizon that counts as a spike.
    #[arg(long, default_value_t = TrainConfig::default().spike_threshold)]
    spike_threshold: f64,
    #[arg(long, default_value_t = TrainConfig::default().version)]
    model_version: String,
    /// Where to write the artifact.
    #[arg(long, default_value = "models/volatility-spike.json")]
    out: PathBuf,
    /// Where to write the reference profile of the training data (for drift).
    #[arg(long, default_value = "models/volatility-spike.profile.json")]
    profile_out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = TrainConfig {
        seed: args.seed,
        minutes: args.minutes,
        horizon: args.horizon,
        spike_threshold: args.spike_threshold,
        version: args.model_version,
        ..TrainConfig::default()
    };
    let (artifact, profile) = train_with_profile(&config);
    std::fs::write(&args.out, artifact.to_json())
        .with_context(|| format!("writing {}", args.out.display()))?;
    std::fs::write(&args.profile_out, profile.to_json())
        .with_context(|| format!("writing {}", args.profile_out.display()))?;
    eprintln!(
        "wrote {}: held-out ml {:?}, baseline {:?}",
        args.out.display(),
        artifact.heldout.ml,
        artifact.heldout.baseline
    );
    Ok(())
}
