//! Drift over outcomes reported by clients: `GET /v1/drift/status`,
//! `POST /v1/drift/update` (one judged prediction), and the admin reset
//! `POST /v1/admin/drift/reset`. The detectors are the prediction consumer's
//! ([`tidewatch_model::monitor`]); here they watch the outcomes of online predictions.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use tidewatch_model::drift::Level;
use tidewatch_model::monitor::DetectorStatus;

use tidewatch_web::{ApiError, ErrorBody, JsonBody};

use crate::state::AppState;

/// A 0/1 label as JSON: `true`/`false` or the integers `1`/`0`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum Label {
    Bool(bool),
    Int(i64),
}

fn label(field: &str, value: Option<Label>) -> Result<bool, ApiError> {
    match value {
        None => Err(ApiError::invalid(
            field,
            "missing_field",
            format!("{field} is required"),
        )),
        Some(Label::Bool(b)) => Ok(b),
        Some(Label::Int(0)) => Ok(false),
        Some(Label::Int(1)) => Ok(true),
        Some(Label::Int(_)) => Err(ApiError::invalid(
            field,
            "invalid_value",
            format!("{field} must be 0, 1, true or false"),
        )),
    }
}

/// One judged prediction. `prediction` and `actual` are 0/1 (or booleans).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct DriftUpdate {
    /// What the model predicted: 1 (spike) or 0.
    #[schema(required = true, nullable = false, value_type = i64, example = 1)]
    pub prediction: Option<Label>,
    /// What happened: 1 (spike) or 0.
    #[schema(required = true, nullable = false, value_type = i64, example = 0)]
    pub actual: Option<Label>,
    /// The probability the model gave, in [0, 1]; watched by ADWIN for input drift.
    #[schema(
        required = true,
        nullable = false,
        minimum = 0.0,
        maximum = 1.0,
        example = 0.82
    )]
    pub probability: Option<f64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DriftStatus {
    /// Whether any detector is at `drift` now.
    pub drift_detected: bool,
    /// Whether any detector is at `warning` or above now.
    pub warning: bool,
    /// Outcomes fed since start or the last reset.
    pub samples: u64,
    pub detectors: Vec<DetectorStatus>,
}

fn status(state: &AppState) -> DriftStatus {
    let monitor = state.drift();
    let detectors = monitor.status();
    DriftStatus {
        drift_detected: detectors.iter().any(|d| d.level == Level::Drift),
        warning: detectors.iter().any(|d| d.level >= Level::Warning),
        samples: monitor.errors_seen(),
        detectors,
    }
}

/// The drift detectors' levels and statistics.
#[utoipa::path(get, path = "/v1/drift/status", tag = "drift", responses((status = 200, body = DriftStatus)))]
pub async fn drift_status(State(state): State<AppState>) -> Json<DriftStatus> {
    Json(status(&state))
}

/// Reports one outcome: what was predicted, what happened, with what probability.
#[utoipa::path(
    post,
    path = "/v1/drift/update",
    tag = "drift",
    request_body = DriftUpdate,
    responses(
        (status = 200, description = "The detectors after this outcome", body = DriftStatus),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 422, description = "A field is missing or out of range", body = ErrorBody),
    )
)]
pub async fn drift_update(
    State(state): State<AppState>,
    body: Result<JsonBody<DriftUpdate>, ApiError>,
) -> Result<Json<DriftStatus>, ApiError> {
    let JsonBody(req) = body?;
    let predicted = label("prediction", req.prediction)?;
    let actual = label("actual", req.actual)?;
    let probability = req.probability.ok_or_else(|| {
        ApiError::invalid("probability", "missing_field", "probability is required")
    })?;
    if !(0.0..=1.0).contains(&probability) {
        return Err(ApiError::invalid(
            "probability",
            "invalid_value",
            "probability must be a number in [0, 1]",
        ));
    }
    {
        let mut monitor = state.drift();
        monitor.error(predicted != actual);
        monitor.input(probability);
    }
    Ok(Json(status(&state)))
}

/// Starts every detector afresh (after a retrain or a deliberate change). Needs the token.
#[utoipa::path(
    post,
    path = "/v1/admin/drift/reset",
    tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The detectors after the reset", body = DriftStatus),
        (status = 401, description = "Token missing or wrong", body = ErrorBody),
        (status = 403, description = "Admin disabled: no token configured", body = ErrorBody),
    )
)]
pub async fn drift_reset(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<DriftStatus>, ApiError> {
    state.admin().authorize(&headers)?;
    state.drift().reset();
    state.metrics().drift_reset();
    tracing::info!("drift detectors reset");
    Ok(Json(status(&state)))
}
