//! `alert-receiver`: the webhook every Alertmanager receiver of Tidewatch points at by
//! default, so alert routing works (and can be watched) without Slack or PagerDuty.
//!
//! `POST /v1/webhook/{receiver}` takes Alertmanager's webhook payload (version 4), logs one
//! line per alert with its labels, counts notifications and alerts, and keeps the most
//! recent ones in a bounded buffer that `GET /v1/notifications` lists (newest first,
//! filterable by receiver, alert name and status). Receiver names come from a fixed list
//! (`--receivers`), so they can be metric labels; any other path is a 404.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Json, Router};
use clap::Parser;
use serde::{Deserialize, Serialize};
use tidewatch_telemetry::catalog;
use tidewatch_telemetry::server::{instrument, ops_router, serve};
use tidewatch_telemetry::{Shutdown, Telemetry, TelemetryArgs};
use tidewatch_web::openapi::{self, BodyRefusals};
use tidewatch_web::{ApiError, BodyLimit, ErrorBody, JsonBody};
use tokio::net::TcpListener;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa_axum::{router::OpenApiRouter, routes};

pub const SERVICE: &str = "alert-receiver";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "alert-receiver",
    version,
    about = "Receives Alertmanager webhooks: logs, counts and lists them"
)]
pub struct Settings {
    #[arg(long = "listen", env = "LISTEN_ADDR", default_value = "0.0.0.0:9095")]
    pub listen: SocketAddr,
    /// Receiver names accepted in `/v1/webhook/{receiver}` (those of alertmanager.yml).
    #[arg(
        long,
        env = "RECEIVERS",
        value_delimiter = ',',
        default_value = "page,ml-page,ticket,ml-ticket,info,slo-page,slo-ticket,security"
    )]
    pub receivers: Vec<String>,
    /// Notifications kept for `GET /v1/notifications`, at most (oldest dropped).
    #[arg(long, env = "MAX_NOTIFICATIONS", default_value_t = 1000)]
    pub max_notifications: usize,
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

impl tidewatch_telemetry::runner::ServiceSettings for Settings {
    fn telemetry(&self) -> &TelemetryArgs {
        &self.telemetry
    }
    fn public_view(&self) -> serde_json::Value {
        serde_json::json!({
            "listen": self.listen.to_string(),
            "receivers": self.receivers,
            "max_notifications": self.max_notifications,
            "max_body_bytes": self.max_body_bytes,
            "telemetry": self.telemetry,
        })
    }
}

/// Alertmanager's webhook payload (the fields used here; others are accepted and ignored).
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    pub version: Option<String>,
    pub status: String,
    #[serde(default)]
    pub group_key: String,
    #[serde(default)]
    pub group_labels: BTreeMap<String, String>,
    pub alerts: Vec<Alert>,
}

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub status: String,
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub starts_at: String,
    #[serde(default)]
    pub ends_at: String,
    #[serde(default)]
    pub fingerprint: String,
}

/// One received notification, as listed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Notification {
    /// Sequence number since start.
    pub id: u64,
    pub receiver: String,
    /// Unix milliseconds when it arrived.
    pub received_at_ms: u64,
    pub status: String,
    pub group_labels: BTreeMap<String, String>,
    pub alerts: Vec<Alert>,
}

#[derive(Debug)]
struct Inner {
    receivers: Vec<String>,
    max: usize,
    max_body_bytes: usize,
    recent: Mutex<(u64, VecDeque<Notification>)>,
}

#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

impl BodyLimit for AppState {
    fn max_body_bytes(&self) -> usize {
        self.0.max_body_bytes
    }
}

const STATUSES: [&str; 2] = ["firing", "resolved"];
const SEVERITIES: [&str; 4] = ["critical", "warning", "info", "other"];

impl AppState {
    pub fn new(settings: &Settings) -> Self {
        for r in &settings.receivers {
            for s in STATUSES {
                catalog::ALERT_NOTIFICATIONS
                    .counter(&[("receiver", r), ("status", s)])
                    .increment(0);
                for sev in SEVERITIES {
                    catalog::ALERTS_RECEIVED
                        .counter(&[("receiver", r), ("status", s), ("severity", sev)])
                        .increment(0);
                }
            }
        }
        Self(Arc::new(Inner {
            receivers: settings.receivers.clone(),
            max: settings.max_notifications.max(1),
            max_body_bytes: settings.max_body_bytes,
            recent: Mutex::default(),
        }))
    }

    fn record(&self, receiver: &str, hook: Webhook) -> u64 {
        let status = bounded(&hook.status, &STATUSES);
        catalog::ALERT_NOTIFICATIONS
            .counter(&[("receiver", receiver), ("status", status)])
            .increment(1);
        for a in &hook.alerts {
            let severity = bounded(
                a.labels.get("severity").map_or("", String::as_str),
                &SEVERITIES,
            );
            let alert_status = bounded(&a.status, &STATUSES);
            catalog::ALERTS_RECEIVED
                .counter(&[
                    ("receiver", receiver),
                    ("status", alert_status),
                    ("severity", severity),
                ])
                .increment(1);
            tracing::info!(
                receiver,
                status = %a.status,
                alertname = a.labels.get("alertname").map_or("", String::as_str),
                severity,
                service = a.labels.get("service").map_or("", String::as_str),
                labels = ?a.labels,
                "alert notification"
            );
        }
        let mut guard = self.0.recent.lock().unwrap_or_else(|e| e.into_inner());
        let (next, recent) = &mut *guard;
        *next += 1;
        recent.push_front(Notification {
            id: *next,
            receiver: receiver.to_owned(),
            received_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            status: hook.status,
            group_labels: hook.group_labels,
            alerts: hook.alerts,
        });
        recent.truncate(self.0.max);
        *next
    }
}

/// A label value from a fixed set, or the set's last entry.
fn bounded<'a>(value: &str, set: &[&'a str]) -> &'a str {
    set.iter()
        .find(|s| **s == value)
        .copied()
        .unwrap_or(set[set.len() - 1])
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    pub id: u64,
    pub alerts: usize,
}

/// One notification from Alertmanager for `receiver`.
#[utoipa::path(post, path = "/v1/webhook/{receiver}", tag = "alerts",
    params(("receiver" = String, Path, description = "A receiver of alertmanager.yml (`--receivers`)")),
    request_body = Webhook,
    responses((status = 200, description = "Recorded: its sequence number and alert count", body = Accepted),
        (status = 404, description = "No such receiver", body = ErrorBody),
        BodyRefusals))]
async fn webhook(
    State(state): State<AppState>,
    receiver: Result<Path<String>, PathRejection>,
    body: Result<JsonBody<Webhook>, ApiError>,
) -> Result<Json<Accepted>, ApiError> {
    // A segment that does not decode (a percent-encoded byte that is not UTF-8) names no
    // receiver; axum's own rejection would answer in plain text.
    let receiver = receiver.map(|Path(r)| r).unwrap_or_default();
    let Some(receiver) = state.0.receivers.iter().find(|r| **r == receiver).cloned() else {
        return Err(ApiError::client(
            StatusCode::NOT_FOUND,
            "unknown_receiver",
            Some("receiver"),
            format!(
                "no receiver {receiver:?}; known: {}",
                state.0.receivers.join(", ")
            ),
        ));
    };
    let JsonBody(hook) = body?;
    let alerts = hook.alerts.len();
    let id = state.record(&receiver, hook);
    Ok(Json(Accepted { id, alerts }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only this receiver's notifications.
    receiver: Option<String>,
    /// Only notifications carrying an alert of this name.
    alertname: Option<String>,
    /// Only notifications of this status (`firing`, `resolved`).
    status: Option<String>,
    /// How many, newest first (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NotificationList {
    pub notifications: Vec<Notification>,
}

/// The notifications received, newest first.
#[utoipa::path(get, path = "/v1/notifications", tag = "alerts", params(ListQuery),
    responses((status = 200, description = "Newest first", body = NotificationList),
        (status = 400, description = "The query string cannot be read", body = ErrorBody),
        (status = 422, description = "`limit` out of range", body = ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<NotificationList>, ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError::client(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            Some("query"),
            format!("{e}; parameters: receiver, alertname, status, limit"),
        )
    })?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            "invalid_limit",
            "limit must be from 1 to 1000",
        ));
    }
    let guard = state.0.recent.lock().unwrap_or_else(|e| e.into_inner());
    let notifications = guard
        .1
        .iter()
        .filter(|n| q.receiver.as_ref().is_none_or(|r| *r == n.receiver))
        .filter(|n| q.status.as_ref().is_none_or(|s| *s == n.status))
        .filter(|n| {
            q.alertname.as_ref().is_none_or(|a| {
                n.alerts
                    .iter()
                    .any(|al| al.labels.get("alertname") == Some(a))
            })
        })
        .take(limit)
        .cloned()
        .collect();
    Ok(Json(NotificationList { notifications }))
}

/// The routes, documented at `/openapi.json`, with JSON 404/405 and the ops endpoints.
pub fn router(state: AppState, telemetry: Telemetry) -> Router {
    let receivers = state.0.receivers.clone();
    let (api, mut doc) = OpenApiRouter::with_openapi(openapi::document(
        "Tidewatch alert-receiver",
        "Receives Alertmanager webhooks: logs, counts and lists them.",
    ))
    .routes(routes!(webhook))
    .routes(routes!(list))
    .with_state(state)
    .split_for_parts();
    name_receivers(&mut doc, receivers);
    instrument(openapi::finish(api.merge(ops_router(telemetry)), &doc))
}

/// The webhook's `receiver` takes exactly the configured names.
fn name_receivers(doc: &mut utoipa::openapi::OpenApi, receivers: Vec<String>) {
    let parameters = doc
        .paths
        .paths
        .get_mut("/v1/webhook/{receiver}")
        .and_then(|item| item.post.as_mut())
        .and_then(|op| op.parameters.as_mut());
    for parameter in parameters.into_iter().flatten() {
        if parameter.name == "receiver" {
            parameter.schema = Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(receivers.clone()))
                    .into(),
            );
        }
    }
}

/// A built service: listener bound (port 0 works).
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    router: Router,
    telemetry: Telemetry,
}

impl Application {
    pub async fn build(settings: &Settings, telemetry: Telemetry) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        Ok(Self {
            router: router(AppState::new(settings), telemetry.clone()),
            listener,
            telemetry,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub async fn run(self, shutdown: Shutdown) -> std::io::Result<()> {
        tracing::info!(addr = %self.listener.local_addr()?, "listening");
        serve(
            self.listener,
            self.router,
            &self.telemetry,
            shutdown,
            Duration::from_secs(5),
        )
        .await
    }
}
