//! Binary entry point: load the model, run the stage until SIGTERM.

use anyhow::Context as _;
use clap::Parser as _;
use prediction_consumer::{PredictionConsumer, Settings, SERVICE};
use tidewatch_kafka::service::StageService;
use tidewatch_model::Model;
use tidewatch_telemetry::{BuildInfo, Shutdown, Telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `prediction-consumer healthcheck`: the container health probe (no curl in the image).
    tidewatch_telemetry::healthcheck::exit_if_requested("0.0.0.0:8001");
    let settings = Settings::parse();
    settings.telemetry.init_logging()?;
    let build = BuildInfo::new(SERVICE, env!("CARGO_PKG_VERSION"));
    tracing::info!(version = build.version, settings = %settings.public_view(), "starting");
    let telemetry = Telemetry::new(build)?;
    let model = Model::load(&settings.model_path)
        .context("the model artifact could not be loaded; the service cannot start")?;
    let processor = PredictionConsumer::new(&settings, model)?;
    let service = StageService::build(
        SERVICE,
        settings.listen,
        &settings.stage,
        &settings.input_topic,
        &[&settings.output_topic, &settings.outcomes_topic],
        telemetry,
    )
    .await?;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signal();
    service.run(processor, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}
