//! Binary entry point: parse settings, start telemetry, run the service until SIGTERM.

use clap::Parser as _;
use prediction_api::settings::Settings;
use prediction_api::{Application, SERVICE};
use tidewatch_telemetry::{BuildInfo, Shutdown, Telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `prediction-api healthcheck`: the container health probe (no curl in the image).
    tidewatch_telemetry::healthcheck::exit_if_requested("0.0.0.0:8000");
    let settings = Settings::parse();
    settings.telemetry.init_logging()?;
    let build = BuildInfo::new(SERVICE, env!("CARGO_PKG_VERSION"));
    tracing::info!(
        version = build.version,
        git_commit = build.git_commit,
        settings = %serde_json::to_string(&settings.public_view())?,
        "starting"
    );
    let telemetry = Telemetry::new(build)?;
    let app = Application::build(&settings, telemetry)
        .await
        .inspect_err(|e| tracing::error!(error = format!("{e:#}"), "start-up failed"))?;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signal();
    app.run(shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}
