//! `prediction-api`: the volatility-spike model served over HTTP.
//!
//! - [`settings`]: flags and environment variables.
//! - [`routes`]: handlers for prediction, model info and variant switch, system info, and
//!   drift over client-reported outcomes.
//! - [`extract`] and [`error`]: JSON input whose every rejection is a 4xx naming the field.
//! - [`state`]: the model, the active variant, the admin check.
//! - [`events`]: business metrics, registered once.
//!
//! [`Application::build`] loads the model and binds the listener (port 0 works and the real
//! address is reported); [`Application::run`] serves until the shutdown signal.

pub mod events;
pub mod routes;
pub mod settings;
pub mod state;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use tidewatch_db::registry::{Alias, Registry};
use tidewatch_model::{Model, ModelArtifact};
use tidewatch_telemetry::http::HttpMetricsLayer;
use tidewatch_telemetry::server::{ops_router, serve};
use tidewatch_telemetry::{ComponentHealth, Criticality, Shutdown, Telemetry};
use tidewatch_web::App;
use tokio::net::TcpListener;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::events::ApiMetrics;
use crate::settings::Settings;
use crate::state::AppState;
use tidewatch_web::{openapi, shed, ApiError, BodyLimit as _};

pub const SERVICE: &str = "prediction-api";

/// The API routes and their OpenAPI document, generated from the same handler annotations.
pub fn api(state: AppState) -> (Router, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(openapi::document(
        "Tidewatch prediction API",
        "Volatility-spike predictions from the Tidewatch model.",
    ))
    .routes(routes!(routes::predict::predict))
    .routes(routes!(routes::predict::predict_batch))
    .routes(routes!(routes::model::model_info))
    .routes(routes!(routes::model::set_variant))
    .routes(routes!(routes::system::system_info))
    .routes(routes!(routes::drift::drift_status))
    .routes(routes!(routes::drift::drift_update))
    .routes(routes!(routes::drift::drift_reset))
    .with_state(state)
    .split_for_parts()
}

/// The whole service: API, OpenAPI document, ops endpoints, JSON 404/405, instrumentation.
/// Injected faults (`/v1/admin/faults`) and the concurrency limit apply to the API routes
/// only, never to the ops or admin fault routes, so a fault can always be seen and cleared
/// and probes answer under overload.
pub fn router(state: AppState, telemetry: Telemetry) -> App {
    app(state, ops_router(telemetry), Some(HttpMetricsLayer::new()))
}

/// The API and admin routes with the fault switches and the concurrency limit, as
/// [`router`] serves them, but with no request layer and no ops routes: the benchmark's
/// middle server, which tells the instrumentation's cost from these features'.
pub fn uninstrumented_router(state: AppState) -> App {
    app(state, Router::new(), None)
}

/// The API behind the fault switches and the concurrency limit, the fault admin routes and
/// `ops` beside it, the document of both, and `http` around all.
fn app(state: AppState, ops: Router, http: Option<HttpMetricsLayer>) -> App {
    let faults = state.faults().clone();
    let fault_admin =
        tidewatch_web::faults::router(faults.clone(), state.admin_handle(), state.max_body_bytes());
    let max_concurrent = state.settings().max_concurrent_requests;
    let (api, mut api_doc) = api(state);
    if max_concurrent > 0 {
        shed::document(&mut api_doc);
    }
    let (fault_admin, doc) = OpenApiRouter::with_openapi(api_doc.clone())
        .merge(fault_admin)
        .split_for_parts();
    tidewatch_web::assemble(
        api,
        &api_doc,
        fault_admin.merge(ops),
        &doc,
        &faults,
        max_concurrent,
        http,
    )
}

/// The same API handlers with no instrumentation at all: the benchmark's baseline.
pub fn bare_router(state: AppState) -> Router {
    api(state).0.fallback(|| async { ApiError::not_found() })
}

/// A built service: model loaded, listener bound.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    router: App,
    telemetry: Telemetry,
    grace: Duration,
    /// The registry the served model follows, its state and how often it is read.
    registry: Option<(Registry, AppState, Duration)>,
}

impl Application {
    pub async fn build(settings: &Settings, telemetry: Telemetry) -> anyhow::Result<Self> {
        let model = Model::load(&settings.model_path)
            .context("the model artifact could not be loaded; the service cannot start")?;
        let artifact = model.artifact();
        tracing::info!(model = %artifact.name, version = %artifact.version, variant = settings.variant.as_str(), "model loaded");
        let state = AppState::new(
            model.clone(),
            settings.variant,
            settings.admin_token().cloned(),
            settings.max_body_bytes,
            ApiMetrics::register(artifact),
            telemetry.build.clone(),
            Some(telemetry.metrics.clone()),
            settings.public_view(),
        );
        let probe = state.clone();
        telemetry
            .health
            .register("model", Criticality::Critical, move || {
                let served = probe.model();
                let a = served.model.artifact();
                let health = ComponentHealth::healthy(format!(
                    "{} {} loaded, serving {}",
                    a.name,
                    a.version,
                    probe.variant().as_str()
                ));
                async move { health }
            });
        state.faults().register_health(&telemetry.health);
        let registry = match &settings.database_url {
            Some(url) => {
                let args = tidewatch_db::DatabaseArgs {
                    database_url: url.clone(),
                    database_password: settings.database_password.clone(),
                    database_max_connections: 2,
                    database_start_timeout_seconds: 30,
                };
                let registry = Registry::new(tidewatch_db::connect_and_migrate(&args).await?);
                follow_champion(&registry, &state).await;
                Some((
                    registry,
                    state.clone(),
                    Duration::from_secs(settings.registry_poll_seconds),
                ))
            }
            None => None,
        };
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        Ok(Self {
            listener,
            router: router(state, telemetry.clone()),
            telemetry,
            grace: Duration::from_secs(settings.shutdown_grace_seconds),
            registry,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is triggered and in-flight requests have finished.
    pub async fn run(self, shutdown: Shutdown) -> std::io::Result<()> {
        if let Some((registry, state, poll)) = self.registry {
            let stop = shutdown.token();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(poll) => follow_champion(&registry, &state).await,
                    }
                }
            });
        }
        let addr = self.listener.local_addr()?;
        tracing::info!(addr = %addr, "listening");
        serve(
            self.listener,
            self.router,
            &self.telemetry,
            shutdown,
            self.grace,
        )
        .await
    }
}

/// Serves the registry's champion if it is not what serves already; a champion that cannot
/// be read or loaded leaves the current model serving (and says why in the log).
async fn follow_champion(registry: &Registry, state: &AppState) {
    let champion = match registry.alias(Alias::Champion).await {
        Ok(Some(v)) => v,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot read the model registry");
            return;
        }
    };
    if state.model().registry_version == Some(champion.version) {
        return;
    }
    match ModelArtifact::from_json(&champion.artifact) {
        Ok(artifact) => {
            tracing::info!(
                registry_version = champion.version,
                model_version = artifact.version,
                "serving the registry's champion"
            );
            state.serve(Model::new(artifact), champion.version);
        }
        Err(e) => tracing::error!(
            registry_version = champion.version,
            error = %e,
            "the registry's champion is not a valid artifact; the current model keeps serving"
        ),
    }
}
