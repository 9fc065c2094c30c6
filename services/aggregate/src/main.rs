//! Binary entry point: parse settings, start telemetry, run the stage until SIGTERM.

use aggregate::checkpoint::CheckpointStore;
use aggregate::{Aggregate, Settings, SERVICE};
use clap::Parser as _;
use tidewatch_kafka::service::StageService;
use tidewatch_telemetry::{BuildInfo, Shutdown, Telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `aggregate healthcheck`: the container health probe (no curl in the image).
    tidewatch_telemetry::healthcheck::exit_if_requested("0.0.0.0:9103");
    let settings = Settings::parse();
    settings.telemetry.init_logging()?;
    let build = BuildInfo::new(SERVICE, env!("CARGO_PKG_VERSION"));
    tracing::info!(version = build.version, settings = %settings.public_view(), "starting");
    let telemetry = Telemetry::new(build)?;
    let pool = tidewatch_db::connect_and_migrate(&settings.database).await?;
    let group = settings
        .stage
        .group_id
        .clone()
        .unwrap_or_else(|| SERVICE.to_owned());
    let checkpoints = CheckpointStore::new(pool, group, settings.input_topic.clone());
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
    let saver = checkpoints.spawn_saver(shutdown.clone());
    let outcome = service
        .run(Aggregate::new(&settings, checkpoints.clone()), shutdown)
        .await;
    saver.abort();
    // What the stage acknowledged while draining.
    checkpoints.save().await?;
    outcome?;
    tracing::info!("stopped");
    Ok(())
}
