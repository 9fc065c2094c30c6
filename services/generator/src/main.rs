//! Binary entry point: publish until SIGTERM or the configured record count.

use generator::{Generator, Settings, SERVICE};

fn main() -> anyhow::Result<()> {
    tidewatch_telemetry::runner::run(
        SERVICE,
        env!("CARGO_PKG_VERSION"),
        "0.0.0.0:9100",
        |settings: Settings, telemetry, shutdown| async move {
            Generator::build(&settings, telemetry)
                .await?
                .run(shutdown)
                .await
        },
    )
}
