//! Binary entry point: parse settings, connect to PostgreSQL (migrations applied, cache
//! warmed), run the stage until SIGTERM.

use clap::Parser as _;
use enrich::{Settings, SERVICE};
use tidewatch_kafka::service::StageService;
use tidewatch_telemetry::{BuildInfo, Shutdown, Telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `enrich healthcheck`: the container health probe (no curl in the image).
    tidewatch_telemetry::healthcheck::exit_if_requested("0.0.0.0:9102");
    let settings = Settings::parse();
    settings.telemetry.init_logging()?;
    let build = BuildInfo::new(SERVICE, env!("CARGO_PKG_VERSION"));
    tracing::info!(version = build.version, settings = %settings.public_view(), "starting");
    let telemetry = Telemetry::new(build)?;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signal();
    let processor = enrich::build(&settings, &telemetry, shutdown.clone())
        .await
        .inspect_err(|e| tracing::error!(error = format!("{e:#}"), "start-up failed"))?;
    let service = StageService::build(
        SERVICE,
        settings.listen,
        &settings.stage,
        &settings.input_topic,
        &[&settings.output_topic],
        telemetry,
    )
    .await?;
    service.run(processor, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}
