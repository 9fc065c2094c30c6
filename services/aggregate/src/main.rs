//! Binary entry point: parse settings, start telemetry, run the stage until SIGTERM.

use aggregate::{Aggregate, Settings, SERVICE};
use clap::Parser as _;
use tidewatch_kafka::service::StageService;
use tidewatch_telemetry::{BuildInfo, Shutdown, Telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    settings.telemetry.init_logging()?;
    let build = BuildInfo::new(SERVICE, env!("CARGO_PKG_VERSION"));
    tracing::info!(version = build.version, settings = %settings.public_view(), "starting");
    let telemetry = Telemetry::new(build)?;
    let service = StageService::build(
        SERVICE,
        settings.listen,
        &settings.stage,
        &settings.input_topic,
        &[&settings.bars_topic, &settings.features_topic],
        telemetry,
    )
    .await?;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signal();
    service.run(Aggregate::new(&settings), shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}
