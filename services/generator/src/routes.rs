//! The generator's HTTP API: status for anyone, run-time control behind the admin token.
//!
//! - `GET /v1/status`: settings (no secrets), rate, pause state, records published by
//!   kind, event time, each symbol's regime.
//! - `PUT /v1/admin/rate` `{"records_per_second": 500}` (0: unlimited).
//! - `PUT /v1/admin/regime` `{"regime": "turbulent"}` (calm, normal, turbulent) holds every
//!   symbol in that regime until `DELETE /v1/admin/regime` lets the market move on by itself.
//! - `PUT /v1/admin/bad-records` `{"bad_fraction": 0.3}`: a bad-record burst (and its end).
//! - `PUT /v1/admin/anomalies` `{"anomaly_rate": 0.01, "severity": "severe"}` plants
//!   labelled anomalies at that share of trades (severity `mild` or `severe`, default the
//!   configured one) from the next simulated minute; `DELETE` goes back to the configured
//!   share and severity.
//! - `POST /v1/admin/pause`, `POST /v1/admin/resume`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use metrics::Counter;
use serde::{Deserialize, Serialize};
use tidewatch_market_sim::{AnomalySeverity, Regime};
use tidewatch_telemetry::catalog;
use tidewatch_web::openapi::{AdminRefusals, BodyRefusals};
use tidewatch_web::{AdminAuth, ApiError, BodyLimit, JsonBody};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::{OpenApi, RefOr};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::Shared;

/// Most records per second the admin endpoint accepts.
pub const MAX_RATE: u64 = 1_000_000;

#[derive(Clone, Debug)]
pub struct AppState {
    shared: Arc<Shared>,
    admin: Arc<AdminAuth>,
    max_body_bytes: usize,
    actions: Arc<[Counter; 8]>,
}

impl AppState {
    pub fn new(shared: Arc<Shared>, admin: Arc<AdminAuth>, max_body_bytes: usize) -> Self {
        let actions = [
            "set_rate",
            "set_regime",
            "pause",
            "resume",
            "set_bad_fraction",
            "release_regime",
            "set_anomalies",
            "reset_anomalies",
        ]
        .map(|a| {
            let c = catalog::ADMIN_ACTIONS.counter(&[("action", a)]);
            c.absolute(0);
            c
        });
        Self {
            shared,
            admin,
            max_body_bytes,
            actions: Arc::new(actions),
        }
    }
}

impl BodyLimit for AppState {
    fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }
}

/// The routes, documented. `bad_fraction`'s upper bound in the document is this run's
/// `1 - late_fraction`, as the server enforces it.
pub fn router(state: AppState) -> OpenApiRouter {
    let late = late_fraction(&state);
    let mut router = OpenApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(set_rate))
        .routes(routes!(set_regime, release_regime))
        .routes(routes!(set_bad_records))
        .routes(routes!(set_anomalies, reset_anomalies))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .with_state(state);
    bound_bad_fraction(router.get_openapi_mut(), 1.0 - late);
    router
}

fn late_fraction(state: &AppState) -> f64 {
    state.shared.settings["late_fraction"]
        .as_f64()
        .unwrap_or(0.0)
}

fn bound_bad_fraction(doc: &mut OpenApi, max: f64) {
    let schema = doc
        .components
        .as_mut()
        .and_then(|c| c.schemas.get_mut("SetBadRecords"));
    if let Some(RefOr::T(Schema::Object(object))) = schema {
        if let Some(RefOr::T(Schema::Object(field))) = object.properties.get_mut("bad_fraction") {
            field.maximum = Some(max.into());
        }
    }
}

/// Regimes, as the API names them.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // documents the values
enum RegimeName {
    Calm,
    Normal,
    Turbulent,
}

/// Anomaly severities, as the API names them.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // documents the values
enum SeverityName {
    Mild,
    Severe,
}

/// The generator's settings (no secrets), control state and progress.
#[derive(Serialize, utoipa::ToSchema)]
struct Status {
    /// The settings the generator runs with.
    #[schema(value_type = Object)]
    settings: serde_json::Value,
    /// Records per second asked for (0: unlimited).
    records_per_second: u64,
    paused: bool,
    bad_fraction: f64,
    anomaly_rate: f64,
    #[schema(value_type = SeverityName)]
    anomaly_severity: &'static str,
    /// The regime every symbol is held in, or null while the market moves by itself.
    #[schema(value_type = Option<RegimeName>)]
    regime_held: Option<&'static str>,
    /// Records published by kind, event time, each symbol's regime, where it resumed from.
    #[schema(value_type = Object)]
    progress: crate::Progress,
}

#[utoipa::path(get, path = "/v1/status", tag = "generator",
    responses((status = 200, description = "Settings, control state and progress", body = Status)))]
async fn status(State(state): State<AppState>) -> Json<Status> {
    let progress = state
        .shared
        .progress
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let control = &state.shared.control;
    Json(Status {
        settings: state.shared.settings.clone(),
        records_per_second: control.rate(),
        paused: control.paused(),
        bad_fraction: control.bad_fraction(),
        anomaly_rate: control.anomalies().0,
        anomaly_severity: control.anomalies().1.as_str(),
        regime_held: control.held_regime().map(Regime::as_str),
        progress,
    })
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SetRate {
    /// Records per second; 0 for as fast as the broker takes them.
    #[schema(
        required = true,
        nullable = false,
        minimum = 0,
        maximum = 1_000_000,
        example = 500
    )]
    #[serde(default, deserialize_with = "tidewatch_web::extract::whole_number")]
    records_per_second: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct RateChange {
    records_per_second: u64,
    previous: u64,
}

/// Sets the publishing rate.
#[utoipa::path(put, path = "/v1/admin/rate", tag = "admin", security(("bearer" = [])),
    request_body = SetRate,
    responses((status = 200, description = "The new rate and the one before", body = RateChange),
        AdminRefusals, BodyRefusals))]
async fn set_rate(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<JsonBody<SetRate>, ApiError>,
) -> Result<Json<RateChange>, ApiError> {
    state.admin.authorize(&headers)?;
    let JsonBody(req) = body?;
    let rate = req.records_per_second.ok_or_else(|| {
        ApiError::invalid(
            "records_per_second",
            "missing_field",
            "records_per_second is required",
        )
    })?;
    if rate > MAX_RATE {
        return Err(ApiError::invalid(
            "records_per_second",
            "invalid_value",
            format!("records_per_second must be at most {MAX_RATE} (0: unlimited)"),
        ));
    }
    let previous = state.shared.control.set_rate(rate);
    state.actions[0].increment(1);
    tracing::info!(from = previous, to = rate, "rate changed");
    Ok(Json(RateChange {
        records_per_second: rate,
        previous,
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SetBadRecords {
    /// Share of records made bad, from 0 to 1 - late_fraction.
    #[schema(
        required = true,
        nullable = false,
        minimum = 0.0,
        maximum = 1.0,
        example = 0.3
    )]
    bad_fraction: Option<f64>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct BadRecordsChange {
    bad_fraction: f64,
    previous: f64,
}

/// Starts (or ends, with 0) a burst of bad records.
#[utoipa::path(put, path = "/v1/admin/bad-records", tag = "admin", security(("bearer" = [])),
    request_body = SetBadRecords,
    responses((status = 200, description = "The new share and the one before", body = BadRecordsChange),
        AdminRefusals, BodyRefusals))]
async fn set_bad_records(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<JsonBody<SetBadRecords>, ApiError>,
) -> Result<Json<BadRecordsChange>, ApiError> {
    state.admin.authorize(&headers)?;
    let JsonBody(req) = body?;
    let fraction = req.bad_fraction.ok_or_else(|| {
        ApiError::invalid("bad_fraction", "missing_field", "bad_fraction is required")
    })?;
    let late = late_fraction(&state);
    if !(0.0..=1.0 - late).contains(&fraction) {
        return Err(ApiError::invalid(
            "bad_fraction",
            "invalid_value",
            format!(
                "bad_fraction must be between 0 and {} (1 - late_fraction)",
                1.0 - late
            ),
        ));
    }
    let previous = state.shared.control.set_bad_fraction(fraction);
    state.actions[4].increment(1);
    tracing::info!(from = previous, to = fraction, "bad-record share changed");
    Ok(Json(BadRecordsChange {
        bad_fraction: fraction,
        previous,
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SetAnomalies {
    /// Share of trades planted as anomalies, from the next simulated minute.
    #[schema(
        required = true,
        nullable = false,
        minimum = 0.0,
        maximum = 1.0,
        example = 0.01
    )]
    anomaly_rate: Option<f64>,
    /// Left out or null: the configured severity.
    #[schema(value_type = Option<SeverityName>)]
    severity: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Anomalies {
    anomaly_rate: f64,
    #[schema(value_type = SeverityName)]
    severity: &'static str,
}

impl From<(f64, AnomalySeverity)> for Anomalies {
    fn from((anomaly_rate, severity): (f64, AnomalySeverity)) -> Self {
        Self {
            anomaly_rate,
            severity: severity.as_str(),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct AnomaliesChange {
    anomalies: Anomalies,
    previous: Anomalies,
}

/// Plants labelled anomalies at this share of trades.
#[utoipa::path(put, path = "/v1/admin/anomalies", tag = "admin", security(("bearer" = [])),
    request_body = SetAnomalies,
    responses((status = 200, description = "The planted anomalies and the ones before", body = AnomaliesChange),
        AdminRefusals, BodyRefusals))]
async fn set_anomalies(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<JsonBody<SetAnomalies>, ApiError>,
) -> Result<Json<AnomaliesChange>, ApiError> {
    state.admin.authorize(&headers)?;
    let JsonBody(req) = body?;
    let rate = req.anomaly_rate.ok_or_else(|| {
        ApiError::invalid("anomaly_rate", "missing_field", "anomaly_rate is required")
    })?;
    if !(0.0..=1.0).contains(&rate) {
        return Err(ApiError::invalid(
            "anomaly_rate",
            "invalid_value",
            "anomaly_rate must be between 0 and 1",
        ));
    }
    let control = &state.shared.control;
    let severity = match req.severity {
        None => control.anomalies().1,
        Some(name) => AnomalySeverity::parse(&name).ok_or_else(|| {
            ApiError::invalid(
                "severity",
                "invalid_value",
                format!("unknown severity {name:?}; expected mild or severe"),
            )
        })?,
    };
    let previous = control.set_anomalies(Some((rate, severity)));
    state.actions[6].increment(1);
    tracing::info!(
        rate,
        severity = severity.as_str(),
        "planted anomalies requested"
    );
    Ok(Json(AnomaliesChange {
        anomalies: (rate, severity).into(),
        previous: previous.into(),
    }))
}

/// Back to the configured share and severity.
#[utoipa::path(delete, path = "/v1/admin/anomalies", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "The configured anomalies and the ones before", body = AnomaliesChange),
        AdminRefusals))]
async fn reset_anomalies(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<AnomaliesChange>, ApiError> {
    state.admin.authorize(&headers)?;
    let control = &state.shared.control;
    let previous = control.set_anomalies(None);
    state.actions[7].increment(1);
    tracing::info!("planted anomalies back to the configured ones");
    Ok(Json(AnomaliesChange {
        anomalies: control.anomalies().into(),
        previous: previous.into(),
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SetRegime {
    #[schema(required = true, nullable = false, value_type = Option<RegimeName>)]
    regime: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct RegimeChange {
    /// The regime every symbol is held in, or null when released.
    #[schema(value_type = Option<RegimeName>)]
    regime_held: Option<&'static str>,
    #[schema(value_type = Option<RegimeName>)]
    previous: Option<&'static str>,
}

/// Holds every symbol in one regime.
#[utoipa::path(put, path = "/v1/admin/regime", tag = "admin", security(("bearer" = [])),
    request_body = SetRegime,
    responses((status = 200, description = "The held regime and the one before", body = RegimeChange),
        AdminRefusals, BodyRefusals))]
async fn set_regime(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<JsonBody<SetRegime>, ApiError>,
) -> Result<Json<RegimeChange>, ApiError> {
    state.admin.authorize(&headers)?;
    let JsonBody(req) = body?;
    let name = req
        .regime
        .ok_or_else(|| ApiError::invalid("regime", "missing_field", "regime is required"))?;
    let regime = Regime::ALL
        .into_iter()
        .find(|r| r.as_str() == name)
        .ok_or_else(|| {
            ApiError::invalid(
                "regime",
                "invalid_value",
                format!("unknown regime {name:?}; expected calm, normal or turbulent"),
            )
        })?;
    let previous = state.shared.control.hold_regime(Some(regime));
    state.actions[1].increment(1);
    tracing::info!(regime = regime.as_str(), "regime hold requested");
    Ok(Json(RegimeChange {
        regime_held: Some(regime.as_str()),
        previous: previous.map(Regime::as_str),
    }))
}

/// Lets the market move between regimes by itself again.
#[utoipa::path(delete, path = "/v1/admin/regime", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "No regime held, and the one held before", body = RegimeChange),
        AdminRefusals))]
async fn release_regime(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<RegimeChange>, ApiError> {
    state.admin.authorize(&headers)?;
    let previous = state.shared.control.hold_regime(None);
    state.actions[5].increment(1);
    tracing::info!("regime release requested");
    Ok(Json(RegimeChange {
        regime_held: None,
        previous: previous.map(Regime::as_str),
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
struct PauseChange {
    paused: bool,
    was_paused: bool,
}

/// Stops publishing.
#[utoipa::path(post, path = "/v1/admin/pause", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "Paused, and whether it was already", body = PauseChange),
        AdminRefusals))]
async fn pause(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<PauseChange>, ApiError> {
    state.admin.authorize(&headers)?;
    let was = state.shared.control.set_paused(true);
    state.actions[2].increment(1);
    tracing::info!("publishing paused");
    Ok(Json(PauseChange {
        paused: true,
        was_paused: was,
    }))
}

/// Publishes again.
#[utoipa::path(post, path = "/v1/admin/resume", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "Publishing, and whether it was paused", body = PauseChange),
        AdminRefusals))]
async fn resume(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<PauseChange>, ApiError> {
    state.admin.authorize(&headers)?;
    let was = state.shared.control.set_paused(false);
    state.actions[3].increment(1);
    tracing::info!("publishing resumed");
    Ok(Json(PauseChange {
        paused: false,
        was_paused: was,
    }))
}
