//! Binary entry point: load the model and its reference profile, run the stage until
//! SIGTERM.

use anyhow::Context as _;
use prediction_consumer::{PredictionConsumer, Settings, SERVICE};
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
            let processor = PredictionConsumer::new(&settings, model, profile)?;
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
            .with_api(api)
            .run(processor, shutdown)
            .await
        },
    )
}
