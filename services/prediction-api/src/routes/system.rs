//! `GET /v1/system/info`: what is running, for how long, with which settings (no secrets).

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use crate::settings::PublicSettings;
use crate::state::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SystemInfo {
    pub service: &'static str,
    pub version: &'static str,
    pub git_commit: &'static str,
    pub rustc: &'static str,
    pub uptime_seconds: u64,
    pub settings: PublicSettings,
}

#[utoipa::path(get, path = "/v1/system/info", tag = "system", responses((status = 200, body = SystemInfo)))]
pub async fn system_info(State(state): State<AppState>) -> Json<SystemInfo> {
    let b = state.build();
    Json(SystemInfo {
        service: b.service,
        version: b.version,
        git_commit: b.git_commit,
        rustc: b.rustc,
        uptime_seconds: state.uptime_seconds(),
        settings: state.settings().clone(),
    })
}
