//! The prediction handlers with no instrumentation at all (no RED layer, no request ids, no
//! log subscriber, no-op business metrics): the baseline `scripts/bench-api` compares the
//! real binary against. With `BARE_SERVER_MIDDLEWARE=1`, the same handlers behind the real
//! router's fault switches and concurrency limit (`uninstrumented_router`), served with
//! graceful shutdown as the real binary is, still with no instrumentation: the middle
//! server, so the instrumentation's cost is told apart from those features'. Prints `listening ADDR` once bound.

use std::path::PathBuf;

use clap::Parser as _;
use prediction_api::events::ApiMetrics;
use prediction_api::settings::Settings;
use prediction_api::state::AppState;
use tidewatch_model::Model;
use tidewatch_telemetry::BuildInfo;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    let model = Model::load(&PathBuf::from(&settings.model_path))?;
    let state = AppState::new(
        model,
        settings.variant,
        None,
        settings.max_body_bytes,
        ApiMetrics::disabled(),
        BuildInfo::new("prediction-api-bare", env!("CARGO_PKG_VERSION")),
        None,
        settings.public_view(),
    );
    let listener = tokio::net::TcpListener::bind(settings.listen).await?;
    println!("listening {}", listener.local_addr()?);
    if std::env::var("BARE_SERVER_MIDDLEWARE").is_ok_and(|v| v == "1") {
        // Served as the real binary serves (connections counted for the limit, graceful
        // shutdown, which watches every connection), so that only the instrumentation
        // tells the two apart.
        let listener = tidewatch_telemetry::server::Counted(listener);
        let app = prediction_api::uninstrumented_router(state);
        axum::serve(listener, axum::ServiceExt::into_make_service(app))
            .with_graceful_shutdown(std::future::pending())
            .await?;
    } else {
        axum::serve(listener, prediction_api::bare_router(state)).await?;
    }
    Ok(())
}
