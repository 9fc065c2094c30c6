//! Binary entry point: the stage with its checkpoints in PostgreSQL, until SIGTERM.

use aggregate::checkpoint::CheckpointStore;
use aggregate::{Aggregate, Settings, SERVICE};
use tidewatch_kafka::service::StageService;

fn main() -> anyhow::Result<()> {
    tidewatch_telemetry::runner::run(
        SERVICE,
        env!("CARGO_PKG_VERSION"),
        "0.0.0.0:9103",
        |settings: Settings, telemetry, shutdown| async move {
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
            let saver = checkpoints.spawn_saver(shutdown.clone());
            let outcome = service
                .run(Aggregate::new(&settings, checkpoints.clone()), shutdown)
                .await;
            saver.abort();
            // What the stage acknowledged while draining.
            checkpoints.save().await?;
            outcome
        },
    )
}
