//! Binary entry point: retrain and register until SIGTERM.

use trainer::{Settings, Trainer, SERVICE};

fn main() -> anyhow::Result<()> {
    tidewatch_telemetry::runner::run(
        SERVICE,
        env!("CARGO_PKG_VERSION"),
        "0.0.0.0:9107",
        |settings: Settings, telemetry, shutdown| async move {
            Trainer::build(&settings, telemetry)
                .await?
                .run(shutdown)
                .await
        },
    )
}
