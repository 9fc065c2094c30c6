//! Binary entry point: receive Alertmanager's webhooks until SIGTERM.

use alert_receiver::{Application, Settings, SERVICE};

fn main() -> anyhow::Result<()> {
    tidewatch_telemetry::runner::run(
        SERVICE,
        env!("CARGO_PKG_VERSION"),
        "0.0.0.0:9095",
        |settings: Settings, telemetry, shutdown| async move {
            let app = Application::build(&settings, telemetry).await?;
            Ok(app.run(shutdown).await?)
        },
    )
}
