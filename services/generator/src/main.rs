//! Binary entry point: parse settings, start telemetry, publish until SIGTERM or the
//! configured record count.

use clap::Parser as _;
use generator::{Generator, Settings, SERVICE};
use tidewatch_telemetry::{BuildInfo, Shutdown, Telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `generator healthcheck`: the container health probe (no curl in the image).
    tidewatch_telemetry::healthcheck::exit_if_requested("0.0.0.0:9100");
    let settings = Settings::parse();
    settings.telemetry.init_logging()?;
    let build = BuildInfo::new(SERVICE, env!("CARGO_PKG_VERSION"));
    tracing::info!(version = build.version, settings = %settings.public_view(), "starting");
    let telemetry = Telemetry::new(build)?;
    let generator = Generator::build(&settings, telemetry)
        .await
        .inspect_err(|e| tracing::error!(error = format!("{e:#}"), "start-up failed"))?;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signal();
    generator.run(shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}
