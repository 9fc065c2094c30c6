//! Binary entry point: send requests to the prediction API until SIGTERM.

use loadgen::{LoadGenerator, Settings, SERVICE};

fn main() -> anyhow::Result<()> {
    tidewatch_telemetry::runner::run(
        SERVICE,
        env!("CARGO_PKG_VERSION"),
        "0.0.0.0:9105",
        |settings: Settings, telemetry, shutdown| async move {
            LoadGenerator::build(&settings, telemetry)
                .await?
                .run(shutdown)
                .await
        },
    )
}
