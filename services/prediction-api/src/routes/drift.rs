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

use tidewatch_web::openapi::{AdminRefusals, BodyRefusals};
use tidewatch_web::{ApiError, JsonBody};
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};

use crate::state::AppState;

/// A 0/1 label as JSON: `true`/`false` or the numbers `1`/`0` (`1.0` too: JSON Schema's
/// `enum: [0, 1]`, which the document gives, takes it).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum Label {
    Bool(bool),
    Number(f64),
}

/// `true`, `false`, `0` or `1`.
fn label_schema() -> Schema {
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Boolean))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .enum_values(Some([0, 1])),
        )
        .into()
}

fn label(field: &str, value: Option<Label>) -> Result<bool, ApiError> {
    match value {
        None => Err(ApiError::invalid(
            field,
            "missing_field",
            format!("{field} is required"),
        )),
        Some(Label::Bool(b)) => Ok(b),
        Some(Label::Number(0.0)) => Ok(false),
        Some(Label::Number(1.0)) => Ok(true),
        Some(Label::Number(_)) => Err(ApiError::invalid(
            field,
            "invalid_value",
            format!("{field} must be 0, 1, true or false"),
        )),
    }
}

/// One judged prediction. `prediction` and `actual` are 0/1 (or booleans).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct DriftUpdate {
    /// What the model predicted: 1 (spike) or 0, or a boolean.
    #[schema(required = true, schema_with = label_schema, example = 1)]
    pub prediction: Option<Label>,
    /// What happened: 1 (spike) or 0, or a boolean.
    #[schema(required = true, schema_with = label_schema, example = 0)]
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
        BodyRefusals,
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
        AdminRefusals,
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
