//! `GET /v1/model` and the admin variant switch `PUT /v1/admin/model/variant`.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use tidewatch_model::artifact::{BaselineRule, HeldOut, TrainingMetadata};
use tidewatch_model::Variant;

use tidewatch_web::openapi::{AdminRefusals, BodyRefusals};
use tidewatch_web::{ApiError, JsonBody};

use crate::state::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    /// The variant serving predictions now.
    #[schema(value_type = String, example = "ml")]
    pub variant: Variant,
    #[schema(value_type = Vec<String>)]
    pub variants: [Variant; 2],
    pub features: Vec<String>,
    pub threshold: f64,
    pub baseline_rule: BaselineRule,
    pub training: TrainingMetadata,
    /// Held-out scores of both variants.
    pub heldout: HeldOut,
    /// The model registry's version of the model serving (null: the file given at start,
    /// no registry configured or none read yet).
    pub registry_version: Option<i32>,
    /// When this model started serving (RFC 3339).
    pub serving_since: String,
}

/// Describes the loaded model: version, active variant, features, training and scores.
#[utoipa::path(get, path = "/v1/model", tag = "model", responses((status = 200, body = ModelInfo)))]
pub async fn model_info(State(state): State<AppState>) -> Json<ModelInfo> {
    let served = state.model();
    let a = served.model.artifact();
    Json(ModelInfo {
        name: a.name.clone(),
        version: a.version.clone(),
        variant: state.variant(),
        variants: Variant::ALL,
        features: a.features.clone(),
        threshold: a.threshold,
        baseline_rule: a.baseline,
        training: a.training.clone(),
        heldout: a.heldout,
        registry_version: served.registry_version,
        serving_since: served
            .since
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    })
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SetVariant {
    #[schema(required = true, nullable = false, value_type = Option<VariantName>, example = "baseline")]
    pub variant: Option<String>,
}

/// The served variants, as the API names them.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // documents the values
enum VariantName {
    Ml,
    Baseline,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VariantChanged {
    #[schema(value_type = String)]
    pub variant: Variant,
    #[schema(value_type = String)]
    pub previous: Variant,
}

/// Switches the serving variant at run time (rollback without restart). Needs the token.
#[utoipa::path(
    put,
    path = "/v1/admin/model/variant",
    tag = "admin",
    request_body = SetVariant,
    security(("bearer" = [])),
    responses(
        (status = 200, body = VariantChanged),
        AdminRefusals,
        BodyRefusals,
    )
)]
pub async fn set_variant(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<JsonBody<SetVariant>, ApiError>,
) -> Result<Json<VariantChanged>, ApiError> {
    state.admin().authorize(&headers)?;
    let JsonBody(req) = body?;
    let requested = req
        .variant
        .ok_or_else(|| ApiError::invalid("variant", "missing_field", "variant is required"))?;
    let variant: Variant = requested
        .parse()
        .map_err(|msg: String| ApiError::invalid("variant", "invalid_value", msg))?;
    let previous = state.set_variant(variant);
    tracing::info!(
        from = previous.as_str(),
        to = variant.as_str(),
        "model variant switched"
    );
    Ok(Json(VariantChanged { variant, previous }))
}
