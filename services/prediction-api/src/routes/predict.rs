//! `POST /v1/predict` and `POST /v1/predict/batch`.

use std::time::Instant;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use tidewatch_model::{Features, Variant};

use crate::state::AppState;
use tidewatch_web::extract::from_value;
use tidewatch_web::openapi::BodyRefusals;
use tidewatch_web::{ApiError, ErrorDetail, JsonBody};

/// Most items one batch may carry.
pub const MAX_BATCH_ITEMS: usize = 1_000;
const MAX_SYMBOL_LEN: usize = 32;

/// A prediction request. Every field is required; they are optional here only so that a
/// missing one is reported by name rather than as a generic parse error.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct PredictRequest {
    /// 1-32 characters of `[A-Za-z0-9._-]`.
    #[schema(
        required = true,
        nullable = false,
        example = "BTC-USD",
        pattern = r"^[A-Za-z0-9._-]{1,32}$"
    )]
    pub symbol: Option<String>,
    #[schema(required = true, nullable = false)]
    pub features: Option<FeaturesInput>,
}

/// The six model features; all finite, `vol_5m`, `vol_15m` and `trade_rate` non-negative.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct FeaturesInput {
    #[schema(required = true, nullable = false, example = 0.0012)]
    pub ret_1m: Option<f64>,
    #[schema(required = true, nullable = false, example = 0.003)]
    pub ret_5m: Option<f64>,
    #[schema(required = true, nullable = false, minimum = 0.0, example = 0.0031)]
    pub vol_5m: Option<f64>,
    #[schema(required = true, nullable = false, minimum = 0.0, example = 0.0022)]
    pub vol_15m: Option<f64>,
    #[schema(required = true, nullable = false, example = 1.7)]
    pub volume_z: Option<f64>,
    #[schema(required = true, nullable = false, minimum = 0.0, example = 6.5)]
    pub trade_rate: Option<f64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PredictResponse {
    pub symbol: String,
    /// Probability of a volatility spike over the model's horizon, in [0, 1].
    pub probability: f64,
    pub spike: bool,
    pub model_version: String,
    #[schema(value_type = String, example = "ml")]
    pub variant: Variant,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct BatchRequest {
    /// 1 to 1,000 prediction requests (`PredictRequest`). Each is checked on its own: one
    /// that is not a valid request gets an `error` entry in the answer, the others a `result`.
    #[schema(required = true, nullable = false, value_type = Vec<Value>, min_items = 1, max_items = 1000)]
    pub items: Option<Vec<serde_json::Value>>,
}

/// One entry per request item, in order: either `result` or `error`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum BatchItem {
    Ok { result: PredictResponse },
    Err { error: ErrorDetail },
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchResponse {
    pub results: Vec<BatchItem>,
    pub succeeded: usize,
    pub failed: usize,
}

fn at(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_owned()
    } else {
        format!("{prefix}.{field}")
    }
}

/// Checks every field; `prefix` locates the request inside a batch (`items[3]`).
fn validate(req: PredictRequest, prefix: &str) -> Result<(String, Features), ApiError> {
    let symbol = req.symbol.ok_or_else(|| {
        ApiError::invalid(&at(prefix, "symbol"), "missing_field", "symbol is required")
    })?;
    let symbol_ok = (1..=MAX_SYMBOL_LEN).contains(&symbol.chars().count())
        && symbol
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !symbol_ok {
        return Err(ApiError::invalid(
            &at(prefix, "symbol"),
            "invalid_value",
            format!(
                "symbol must be 1-{MAX_SYMBOL_LEN} characters of A-Z, a-z, 0-9, '.', '_' or '-'"
            ),
        ));
    }
    let f = req.features.ok_or_else(|| {
        ApiError::invalid(
            &at(prefix, "features"),
            "missing_field",
            "features is required",
        )
    })?;
    // Field paths are only built when something is wrong: this runs on every request.
    let get = |name: &str, value: Option<f64>, non_negative: bool| -> Result<f64, ApiError> {
        let fail = |code, message: String| {
            ApiError::invalid(&at(prefix, &format!("features.{name}")), code, message)
        };
        let v =
            value.ok_or_else(|| fail("missing_field", format!("features.{name} is required")))?;
        if !v.is_finite() {
            return Err(fail(
                "invalid_value",
                format!("features.{name} must be a finite number"),
            ));
        }
        if non_negative && v < 0.0 {
            return Err(fail(
                "invalid_value",
                format!("features.{name} must be >= 0, got {v}"),
            ));
        }
        Ok(v)
    };
    let features = Features {
        ret_1m: get("ret_1m", f.ret_1m, false)?,
        ret_5m: get("ret_5m", f.ret_5m, false)?,
        vol_5m: get("vol_5m", f.vol_5m, true)?,
        vol_15m: get("vol_15m", f.vol_15m, true)?,
        volume_z: get("volume_z", f.volume_z, false)?,
        trade_rate: get("trade_rate", f.trade_rate, true)?,
    };
    Ok((symbol, features))
}

fn field_of(e: &ApiError) -> Option<&str> {
    match e {
        ApiError::Client { detail, .. } => detail.field.as_deref(),
        ApiError::Unexpected(_) => None,
    }
}

/// Counts a rejection by field and passes it on.
fn rejected(state: &AppState, e: ApiError) -> ApiError {
    state.metrics().validation_error(field_of(&e));
    e
}

fn run(state: &AppState, variant: Variant, symbol: String, features: &Features) -> PredictResponse {
    let start = Instant::now();
    let served = state.model();
    let prediction = served.model.predict(variant, features);
    state
        .metrics()
        .prediction(variant, &prediction, start.elapsed());
    PredictResponse {
        symbol,
        probability: prediction.probability,
        spike: prediction.spike,
        model_version: served.model.artifact().version.clone(),
        variant,
    }
}

/// Predicts whether the symbol's volatility will spike over the model's horizon.
#[utoipa::path(
    post,
    path = "/v1/predict",
    tag = "predict",
    request_body = PredictRequest,
    responses(
        (status = 200, description = "Prediction", body = PredictResponse),
        BodyRefusals,
    )
)]
pub async fn predict(
    State(state): State<AppState>,
    body: Result<JsonBody<PredictRequest>, ApiError>,
) -> Result<Json<PredictResponse>, ApiError> {
    let JsonBody(req) = body.map_err(|e| rejected(&state, e))?;
    let (symbol, features) = validate(req, "").map_err(|e| rejected(&state, e))?;
    let variant = state.variant();
    Ok(Json(run(&state, variant, symbol, &features)))
}

/// Predicts up to 1,000 items at once; one result or error per item, in order.
#[utoipa::path(
    post,
    path = "/v1/predict/batch",
    tag = "predict",
    request_body = BatchRequest,
    responses(
        (status = 200, description = "One entry per item", body = BatchResponse),
        BodyRefusals,
    )
)]
pub async fn predict_batch(
    State(state): State<AppState>,
    body: Result<JsonBody<BatchRequest>, ApiError>,
) -> Result<Json<BatchResponse>, ApiError> {
    let JsonBody(req) = body.map_err(|e| rejected(&state, e))?;
    let items = req.items.ok_or_else(|| {
        rejected(
            &state,
            ApiError::invalid("items", "missing_field", "items is required"),
        )
    })?;
    if items.is_empty() || items.len() > MAX_BATCH_ITEMS {
        let (code, message) = if items.is_empty() {
            (
                "empty_batch",
                "items must hold at least one request".to_owned(),
            )
        } else {
            (
                "too_many_items",
                format!(
                    "items holds {} requests; at most {MAX_BATCH_ITEMS} are allowed",
                    items.len()
                ),
            )
        };
        return Err(rejected(&state, ApiError::invalid("items", code, message)));
    }
    // One variant for the whole batch, even if it is switched meanwhile.
    let variant = state.variant();
    let mut failed = 0;
    let results = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let prefix = format!("items[{i}]");
            let outcome =
                from_value::<PredictRequest>(item, &prefix).and_then(|req| validate(req, &prefix));
            match outcome {
                Ok((symbol, features)) => BatchItem::Ok {
                    result: run(&state, variant, symbol, &features),
                },
                Err(e) => {
                    failed += 1;
                    match rejected(&state, e) {
                        ApiError::Client { detail, .. } => BatchItem::Err { error: detail },
                        ApiError::Unexpected(e) => {
                            tracing::error!(
                                error = format!("{e:#}"),
                                "batch item failed unexpectedly"
                            );
                            BatchItem::Err {
                                error: ErrorDetail {
                                    code: "internal",
                                    message: "internal server error".into(),
                                    field: None,
                                },
                            }
                        }
                    }
                }
            }
        })
        .collect::<Vec<_>>();
    Ok(Json(BatchResponse {
        succeeded: results.len() - failed,
        failed,
        results,
    }))
}
