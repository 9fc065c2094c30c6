//! Binary entry point: parse settings, start telemetry, project and serve until SIGTERM.

use clap::Parser as _;
use project::{Project, Settings, SERVICE};
use tidewatch_telemetry::{BuildInfo, Shutdown, Telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `project healthcheck`: the container health probe (no curl in the image).
    tidewatch_telemetry::healthcheck::exit_if_requested("0.0.0.0:9104");
    let settings = Settings::parse();
    settings.telemetry.init_logging()?;
    let build = BuildInfo::new(SERVICE, env!("CARGO_PKG_VERSION"));
    tracing::info!(version = build.version, settings = %settings.public_view(), "starting");
    let telemetry = Telemetry::new(build)?;
    let project = Project::build(&settings, telemetry).await?;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signal();
    project.run(shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}
