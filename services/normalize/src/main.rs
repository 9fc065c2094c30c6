//! Binary entry point: run the stage until SIGTERM.

use normalize::{Normalize, Settings, SERVICE};
use tidewatch_kafka::service::StageService;

fn main() -> anyhow::Result<()> {
    tidewatch_telemetry::runner::run(
        SERVICE,
        env!("CARGO_PKG_VERSION"),
        "0.0.0.0:9101",
        |settings: Settings, telemetry, shutdown| async move {
            StageService::build(
                SERVICE,
                settings.listen,
                &settings.stage,
                &settings.input_topic,
                &[&settings.output_topic],
                telemetry,
            )
            .await?
            .run(Normalize::new(settings.output_topic.clone()), shutdown)
            .await
        },
    )
}
