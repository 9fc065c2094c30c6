//! Binary entry point: parse settings, start telemetry, run the stage until SIGTERM.

use clap::Parser as _;
use normalize::{Normalize, Settings, SERVICE};
use tidewatch_kafka::service::StageService;
use tidewatch_telemetry::{BuildInfo, Shutdown, Telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `normalize healthcheck`: the container health probe (no curl in the image).
    tidewatch_telemetry::healthcheck::exit_if_requested("0.0.0.0:9101");
    let settings = Settings::parse();
    settings.telemetry.init_logging()?;
    let build = BuildInfo::new(SERVICE, env!("CARGO_PKG_VERSION"));
    tracing::info!(version = build.version, settings = %serde_json::to_string(&settings_view(&settings))?, "starting");
    let telemetry = Telemetry::new(build)?;
    let service = StageService::build(
        SERVICE,
        settings.listen,
        &settings.stage,
        &settings.input_topic,
        &[&settings.output_topic],
        telemetry,
    )
    .await?;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signal();
    service
        .run(Normalize::new(settings.output_topic.clone()), shutdown)
        .await?;
    tracing::info!("stopped");
    Ok(())
}

fn settings_view(s: &Settings) -> serde_json::Value {
    serde_json::json!({
        "listen": s.listen.to_string(),
        "input_topic": s.input_topic,
        "output_topic": s.output_topic,
        "stage": s.stage,
        "telemetry": s.telemetry,
    })
}
