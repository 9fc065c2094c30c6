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
use axum::routing::{get, post, put};
use axum::{Json, Router};
use metrics::Counter;
use serde::Deserialize;
use tidewatch_market_sim::{AnomalySeverity, Regime};
use tidewatch_telemetry::catalog;
use tidewatch_web::{AdminAuth, ApiError, BodyLimit, JsonBody};

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

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/admin/rate", put(set_rate))
        .route("/v1/admin/regime", put(set_regime).delete(release_regime))
        .route("/v1/admin/bad-records", put(set_bad_records))
        .route(
            "/v1/admin/anomalies",
            put(set_anomalies).delete(reset_anomalies),
        )
        .route("/v1/admin/pause", post(pause))
        .route("/v1/admin/resume", post(resume))
        .with_state(state)
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
}

async fn status(State(state): State<AppState>) -> Json<serde_json::Value> {
    let progress = state
        .shared
        .progress
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let control = &state.shared.control;
    Json(serde_json::json!({
        "settings": state.shared.settings,
        "records_per_second": control.rate(),
        "paused": control.paused(),
        "bad_fraction": control.bad_fraction(),
        "anomaly_rate": control.anomalies().0,
        "anomaly_severity": control.anomalies().1.as_str(),
        "regime_held": control.held_regime().map(Regime::as_str),
        "progress": progress,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetRate {
    records_per_second: Option<u64>,
}

async fn set_rate(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<JsonBody<SetRate>, ApiError>,
) -> Result<Json<serde_json::Value>, ApiError> {
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
    Ok(Json(
        serde_json::json!({"records_per_second": rate, "previous": previous}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetBadRecords {
    bad_fraction: Option<f64>,
}

async fn set_bad_records(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<JsonBody<SetBadRecords>, ApiError>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.admin.authorize(&headers)?;
    let JsonBody(req) = body?;
    let fraction = req.bad_fraction.ok_or_else(|| {
        ApiError::invalid("bad_fraction", "missing_field", "bad_fraction is required")
    })?;
    let late = state.shared.settings["late_fraction"]
        .as_f64()
        .unwrap_or(0.0);
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
    Ok(Json(
        serde_json::json!({"bad_fraction": fraction, "previous": previous}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetAnomalies {
    anomaly_rate: Option<f64>,
    severity: Option<String>,
}

fn anomalies_json(plan: (f64, AnomalySeverity)) -> serde_json::Value {
    serde_json::json!({"anomaly_rate": plan.0, "severity": plan.1.as_str()})
}

async fn set_anomalies(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<JsonBody<SetAnomalies>, ApiError>,
) -> Result<Json<serde_json::Value>, ApiError> {
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
    Ok(Json(serde_json::json!({
        "anomalies": anomalies_json((rate, severity)),
        "previous": anomalies_json(previous),
    })))
}

async fn reset_anomalies(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.admin.authorize(&headers)?;
    let control = &state.shared.control;
    let previous = control.set_anomalies(None);
    state.actions[7].increment(1);
    tracing::info!("planted anomalies back to the configured ones");
    Ok(Json(serde_json::json!({
        "anomalies": anomalies_json(control.anomalies()),
        "previous": anomalies_json(previous),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetRegime {
    regime: Option<String>,
}

async fn set_regime(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<JsonBody<SetRegime>, ApiError>,
) -> Result<Json<serde_json::Value>, ApiError> {
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
    Ok(Json(serde_json::json!({
        "regime_held": regime.as_str(),
        "previous": previous.map(Regime::as_str),
    })))
}

async fn release_regime(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.admin.authorize(&headers)?;
    let previous = state.shared.control.hold_regime(None);
    state.actions[5].increment(1);
    tracing::info!("regime release requested");
    Ok(Json(serde_json::json!({
        "regime_held": null,
        "previous": previous.map(Regime::as_str),
    })))
}

async fn pause(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.admin.authorize(&headers)?;
    let was = state.shared.control.set_paused(true);
    state.actions[2].increment(1);
    tracing::info!("publishing paused");
    Ok(Json(serde_json::json!({"paused": true, "was_paused": was})))
}

async fn resume(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.admin.authorize(&headers)?;
    let was = state.shared.control.set_paused(false);
    state.actions[3].increment(1);
    tracing::info!("publishing resumed");
    Ok(Json(
        serde_json::json!({"paused": false, "was_paused": was}),
    ))
}
