//! Binary entry point: connect to PostgreSQL (migrations applied, cache warmed), run the
//! stage until SIGTERM.

use enrich::{Settings, SERVICE};
use tidewatch_kafka::service::StageService;

fn main() -> anyhow::Result<()> {
    tidewatch_telemetry::runner::run(
        SERVICE,
        env!("CARGO_PKG_VERSION"),
        "0.0.0.0:9102",
        |settings: Settings, telemetry, shutdown| async move {
            let processor = enrich::build(&settings, &telemetry, shutdown.clone()).await?;
            let api = enrich::api(processor.cache_stats());
            StageService::build(
                SERVICE,
                settings.listen,
                &settings.stage,
                &settings.input_topic,
                &[&settings.output_topic],
                telemetry,
            )
            .await?
            .with_api(api, 0)
            .run(processor, shutdown)
            .await
        },
    )
}
