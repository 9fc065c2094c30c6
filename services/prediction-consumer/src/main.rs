//! Binary entry point: load the model and its reference profile, run the stage until
//! SIGTERM.

use anyhow::Context as _;
use prediction_consumer::{registry_sync, PredictionConsumer, Settings, SERVICE};
use tidewatch_kafka::service::StageService;
use tidewatch_model::Model;

fn main() -> anyhow::Result<()> {
    tidewatch_telemetry::runner::run(
        SERVICE,
        env!("CARGO_PKG_VERSION"),
        "0.0.0.0:8001",
        |settings: Settings, telemetry, shutdown| async move {
            let model = Model::load(&settings.model_path)
                .context("the model artifact could not be loaded; the service cannot start")?;
            let profile =
                prediction_consumer::load_profile(&settings.reference_profile_path, &model)
                    .context(
                        "the reference profile could not be loaded; the service cannot start",
                    )?;
            let mut processor = PredictionConsumer::new(&settings, model, profile)?;
            if let Some(url) = &settings.database_url {
                let args = tidewatch_db::DatabaseArgs {
                    database_url: url.clone(),
                    database_password: settings.database_password.clone(),
                    database_max_connections: 2,
                    database_start_timeout_seconds: 30,
                };
                let pool = tidewatch_db::connect_and_migrate(&args).await?;
                let registry = tidewatch_db::registry::Registry::new(pool);
                registry_sync::seed(
                    &registry,
                    &settings.model_path,
                    &settings.reference_profile_path,
                )
                .await?;
                let lineup = registry_sync::read(&registry, None)
                    .await
                    .context("the model registry could not be read; the service cannot start")?;
                let (tx, rx) = tokio::sync::watch::channel(lineup);
                let (decide, decisions) = tokio::sync::mpsc::unbounded_channel();
                tokio::spawn(registry_sync::run(
                    registry,
                    std::time::Duration::from_secs(settings.registry_poll_seconds),
                    tx,
                    decisions,
                    shutdown.token(),
                ));
                processor = processor.with_registry(&settings, rx, decide);
            }
            let api = prediction_consumer::api(processor.drift_tracker());
            StageService::build(
                SERVICE,
                settings.listen,
                &settings.stage,
                &settings.input_topic,
                &[&settings.output_topic, &settings.outcomes_topic],
                telemetry,
            )
            .await?
            .with_api(api, 0)
            .run(processor, shutdown)
            .await
        },
    )
}
