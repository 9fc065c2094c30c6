//! Binary entry point: serve the model until SIGTERM.

use prediction_api::settings::Settings;
use prediction_api::{Application, SERVICE};

fn main() -> anyhow::Result<()> {
    tidewatch_telemetry::runner::run(
        SERVICE,
        env!("CARGO_PKG_VERSION"),
        "0.0.0.0:8000",
        |settings: Settings, telemetry, shutdown| async move {
            let app = Application::build(&settings, telemetry).await?;
            Ok(app.run(shutdown).await?)
        },
    )
}
