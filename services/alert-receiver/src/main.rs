//! Binary entry point: parse settings, start telemetry, receive until SIGTERM.

use alert_receiver::{Application, Settings, SERVICE};
use clap::Parser as _;
use tidewatch_telemetry::{BuildInfo, Shutdown, Telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `alert-receiver healthcheck`: the container health probe (no curl in the image).
    tidewatch_telemetry::healthcheck::exit_if_requested("0.0.0.0:9095");
    let settings = Settings::parse();
    settings.telemetry.init_logging()?;
    let build = BuildInfo::new(SERVICE, env!("CARGO_PKG_VERSION"));
    tracing::info!(version = build.version, receivers = ?settings.receivers, "starting");
    let telemetry = Telemetry::new(build)?;
    let app = Application::build(&settings, telemetry).await?;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signal();
    app.run(shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}
