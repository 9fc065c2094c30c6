//! Binary entry point: project into PostgreSQL and serve the read API until SIGTERM.

use project::{Project, Settings, SERVICE};

fn main() -> anyhow::Result<()> {
    tidewatch_telemetry::runner::run(
        SERVICE,
        env!("CARGO_PKG_VERSION"),
        "0.0.0.0:9104",
        |settings: Settings, telemetry, shutdown| async move {
            Project::build(&settings, telemetry)
                .await?
                .run(shutdown)
                .await
        },
    )
}
