//! Binary entry point: load the model, run the stage until SIGTERM.

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
            let processor = PredictionConsumer::new(&settings, model)?;
            StageService::build(
                SERVICE,
                settings.listen,
                &settings.stage,
                &settings.input_topic,
                &[&settings.output_topic, &settings.outcomes_topic],
                telemetry,
            )
            .await?
            .run(processor, shutdown)
            .await
        },
    )
}
