//! Fault injection: switches that make a running service fail the way real services fail, so
//! that the alerts meant to catch each failure can be seen firing and resolving
//! (`scripts/scenario`). Every switch is off by default, each service declares the switches
//! that mean something for it, and the switches sit behind the admin token:
//!
//! - `GET /v1/admin/faults`: the current switches (needs the token too: it tells an
//!   attacker what is broken);
//! - `PUT /v1/admin/faults` `{"error_rate": 0.5, "latency_ms": 800, "slowdown_ms": 20,
//!   "not_ready": true, "database_unreachable": true}`: sets the fields given, leaves the
//!   others; a field the service does not support is a 422 naming it;
//! - `DELETE /v1/admin/faults`: everything off.
//!
//! Each switch's value is the gauge `tidewatch_fault_injected{fault}`, so a dashboard shows
//! when a failure is injected rather than real.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use metrics::{Counter, Gauge};
use serde::{Deserialize, Serialize};
use tidewatch_telemetry::{catalog, ComponentHealth, Criticality, Health, HealthHandle};

use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, SchemaType, Type};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::openapi::{AdminRefusals, BodyRefusals};
use crate::{AdminAuth, ApiError, BodyLimit, JsonBody};

/// Added latency and slowdown above this are refused: a fault is a test, not a hang.
pub const MAX_DELAY_MS: u64 = 60_000;

/// A fault switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Share of API requests answered with a 500.
    ErrorRate,
    /// Milliseconds added to every API request.
    LatencyMs,
    /// Milliseconds added to the processing of every message: each one a stage consumes (a
    /// lag spike), each one the generator publishes (a shortfall of its rate).
    SlowdownMs,
    /// Readiness fails (a critical health component turns unhealthy).
    NotReady,
    /// The store's database behaves as unreachable: writes and pings fail.
    DatabaseUnreachable,
}

impl Fault {
    pub const ALL: [Fault; 5] = [
        Fault::ErrorRate,
        Fault::LatencyMs,
        Fault::SlowdownMs,
        Fault::NotReady,
        Fault::DatabaseUnreachable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Fault::ErrorRate => "error_rate",
            Fault::LatencyMs => "latency_ms",
            Fault::SlowdownMs => "slowdown_ms",
            Fault::NotReady => "not_ready",
            Fault::DatabaseUnreachable => "database_unreachable",
        }
    }

    /// Switches for an HTTP API's requests.
    pub const API: [Fault; 2] = [Fault::ErrorRate, Fault::LatencyMs];
    /// Switches for a consumer of a topic.
    pub const STAGE: [Fault; 1] = [Fault::SlowdownMs];
}

/// The switches of one service; cheap to clone, shared by its routes and loops.
#[derive(Clone)]
pub struct Faults {
    inner: Arc<Inner>,
}

struct Inner {
    supported: Vec<Fault>,
    error_rate_bits: AtomicU64,
    latency_ms: AtomicU64,
    slowdown_ms: AtomicU64,
    not_ready: AtomicBool,
    database_unreachable: AtomicBool,
    gauges: [Gauge; 5],
    readiness: Mutex<Option<HealthHandle>>,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults")
            .field("state", &self.state())
            .finish()
    }
}

/// The switches as the API shows them (only the service's own). A field given as `null`
/// leaves that switch as it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultState {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::extract::whole_number"
    )]
    pub latency_ms: Option<u64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::extract::whole_number"
    )]
    pub slowdown_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_ready: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_unreachable: Option<bool>,
}

impl FaultState {
    fn given(&self) -> impl Iterator<Item = Fault> + '_ {
        Fault::ALL.into_iter().filter(|f| match f {
            Fault::ErrorRate => self.error_rate.is_some(),
            Fault::LatencyMs => self.latency_ms.is_some(),
            Fault::SlowdownMs => self.slowdown_ms.is_some(),
            Fault::NotReady => self.not_ready.is_some(),
            Fault::DatabaseUnreachable => self.database_unreachable.is_some(),
        })
    }
}

impl Faults {
    /// All switches off; `supported` are the ones this service honours. `NotReady` is
    /// always supported: every service has a readiness probe.
    pub fn new(supported: &[Fault]) -> Self {
        let mut supported = supported.to_vec();
        if !supported.contains(&Fault::NotReady) {
            supported.push(Fault::NotReady);
        }
        let gauges = Fault::ALL.map(|f| {
            let g = catalog::FAULT_INJECTED.gauge(&[("fault", f.as_str())]);
            g.set(0.0);
            g
        });
        Self {
            inner: Arc::new(Inner {
                supported,
                error_rate_bits: AtomicU64::new(0f64.to_bits()),
                latency_ms: AtomicU64::new(0),
                slowdown_ms: AtomicU64::new(0),
                not_ready: AtomicBool::new(false),
                database_unreachable: AtomicBool::new(false),
                gauges,
                readiness: Mutex::new(None),
            }),
        }
    }

    /// Registers the critical health component `fault_injection` that `not_ready` turns
    /// unhealthy. Call once, with the service's health registry.
    pub fn register_health(&self, health: &Health) {
        let handle = health.handle(
            "fault_injection",
            Criticality::Critical,
            ComponentHealth::healthy("no fault injected"),
        );
        *self.lock_readiness() = Some(handle);
        self.apply_readiness();
    }

    fn lock_readiness(&self) -> std::sync::MutexGuard<'_, Option<HealthHandle>> {
        self.inner
            .readiness
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn apply_readiness(&self) {
        if let Some(handle) = self.lock_readiness().as_ref() {
            handle.set(if self.not_ready() {
                ComponentHealth::unhealthy("readiness failure injected (PUT /v1/admin/faults)")
            } else {
                ComponentHealth::healthy("no fault injected")
            });
        }
    }

    pub fn supports(&self, fault: Fault) -> bool {
        self.inner.supported.contains(&fault)
    }

    pub fn error_rate(&self) -> f64 {
        f64::from_bits(self.inner.error_rate_bits.load(Ordering::Relaxed))
    }

    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.inner.latency_ms.load(Ordering::Relaxed))
    }

    pub fn slowdown(&self) -> Duration {
        Duration::from_millis(self.inner.slowdown_ms.load(Ordering::Relaxed))
    }

    pub fn not_ready(&self) -> bool {
        self.inner.not_ready.load(Ordering::Relaxed)
    }

    pub fn database_unreachable(&self) -> bool {
        self.inner.database_unreachable.load(Ordering::Relaxed)
    }

    /// Waits out the injected per-message slowdown, if any.
    pub async fn slow_down(&self) {
        let delay = self.slowdown();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    /// The service's switches and their values.
    pub fn state(&self) -> FaultState {
        let has = |f| self.supports(f);
        FaultState {
            error_rate: has(Fault::ErrorRate).then(|| self.error_rate()),
            latency_ms: has(Fault::LatencyMs).then(|| self.latency().as_millis() as u64),
            slowdown_ms: has(Fault::SlowdownMs).then(|| self.slowdown().as_millis() as u64),
            not_ready: has(Fault::NotReady).then(|| self.not_ready()),
            database_unreachable: has(Fault::DatabaseUnreachable)
                .then(|| self.database_unreachable()),
        }
    }

    /// Checks every given field (supported here, in range) before changing anything.
    pub fn apply(&self, change: &FaultState) -> Result<(), ApiError> {
        for fault in change.given() {
            if !self.supports(fault) {
                return Err(ApiError::invalid(
                    fault.as_str(),
                    "unsupported_fault",
                    format!(
                        "this service has no {} fault; it supports {}",
                        fault.as_str(),
                        self.inner
                            .supported
                            .iter()
                            .map(|f| f.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        if let Some(rate) = change.error_rate {
            if !(0.0..=1.0).contains(&rate) {
                return Err(ApiError::invalid(
                    "error_rate",
                    "invalid_value",
                    "error_rate must be between 0 and 1",
                ));
            }
        }
        for (field, value) in [
            ("latency_ms", change.latency_ms),
            ("slowdown_ms", change.slowdown_ms),
        ] {
            if value.is_some_and(|ms| ms > MAX_DELAY_MS) {
                return Err(ApiError::invalid(
                    field,
                    "invalid_value",
                    format!("{field} must be at most {MAX_DELAY_MS}"),
                ));
            }
        }
        let inner = &self.inner;
        if let Some(rate) = change.error_rate {
            inner
                .error_rate_bits
                .store(rate.to_bits(), Ordering::Relaxed);
            inner.gauges[0].set(rate);
        }
        if let Some(ms) = change.latency_ms {
            inner.latency_ms.store(ms, Ordering::Relaxed);
            inner.gauges[1].set(ms as f64);
        }
        if let Some(ms) = change.slowdown_ms {
            inner.slowdown_ms.store(ms, Ordering::Relaxed);
            inner.gauges[2].set(ms as f64);
        }
        if let Some(on) = change.not_ready {
            inner.not_ready.store(on, Ordering::Relaxed);
            inner.gauges[3].set(f64::from(u8::from(on)));
            self.apply_readiness();
        }
        if let Some(on) = change.database_unreachable {
            inner.database_unreachable.store(on, Ordering::Relaxed);
            inner.gauges[4].set(f64::from(u8::from(on)));
        }
        Ok(())
    }

    /// Every switch off.
    pub fn clear(&self) {
        let has = |f| self.supports(f);
        let off = FaultState {
            error_rate: has(Fault::ErrorRate).then_some(0.0),
            latency_ms: has(Fault::LatencyMs).then_some(0),
            slowdown_ms: has(Fault::SlowdownMs).then_some(0),
            not_ready: has(Fault::NotReady).then_some(false),
            database_unreachable: has(Fault::DatabaseUnreachable).then_some(false),
        };
        // Every field is supported and in range.
        let _ = self.apply(&off);
    }

    /// The fault check as a layer for the API's routes (never the ops or admin routes;
    /// [`crate::assemble`] applies it): the injected latency, then the injected share of 500s.
    pub(crate) fn layer(&self) -> FaultLayer {
        FaultLayer(self.clone())
    }
}

/// The fault check as a tower layer. With every switch off (always, outside a fault
/// scenario) a request costs two atomic loads and goes straight to the inner service's own
/// future: no boxed future, no state clone (an axum `from_fn` middleware cost both on every
/// request, measurable on the prediction API; BENCHMARKS.md).
#[derive(Clone, Debug)]
pub struct FaultLayer(Faults);

impl<S> tower::Layer<S> for FaultLayer {
    type Service = FaultService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        FaultService {
            inner,
            faults: self.0.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct FaultService<S> {
    inner: S,
    faults: Faults,
}

type Injected = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Response, std::convert::Infallible>> + Send>,
>;

impl<S> tower::Service<Request> for FaultService<S>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures::future::Either<S::Future, Injected>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let latency = self.faults.latency();
        let rate = self.faults.error_rate();
        if latency.is_zero() && rate <= 0.0 {
            return futures::future::Either::Left(self.inner.call(request));
        }
        // The ready service goes into the future; a clone stays for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        futures::future::Either::Right(Box::pin(async move {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            if rate > 0.0 && rand::random::<f64>() < rate {
                tracing::debug!("injected error");
                return Ok(
                    ApiError::from(anyhow::anyhow!("injected fault (error_rate {rate})"))
                        .into_response(),
                );
            }
            inner.call(request).await
        }))
    }
}

/// The admin routes' state: the switches, the token and the body limit.
#[derive(Clone)]
struct AdminState {
    faults: Faults,
    admin: Arc<AdminAuth>,
    max_body_bytes: usize,
    actions: [Counter; 2],
}

impl BodyLimit for AdminState {
    fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }
}

/// `/v1/admin/faults` (GET, PUT, DELETE) behind `admin`, documented: the `FaultState`
/// schema lists this service's switches only, with their ranges, and refuses any other.
pub fn router(faults: Faults, admin: Arc<AdminAuth>, max_body_bytes: usize) -> OpenApiRouter {
    let actions = ["set_faults", "clear_faults"].map(|a| {
        let c = catalog::ADMIN_ACTIONS.counter(&[("action", a)]);
        c.absolute(0);
        c
    });
    let schema = faults.schema();
    let mut router = OpenApiRouter::new()
        .routes(routes!(show, set, clear))
        .with_state(AdminState {
            faults,
            admin,
            max_body_bytes,
            actions,
        });
    router
        .get_openapi_mut()
        .components
        .get_or_insert_with(Default::default)
        .schemas
        .insert("FaultState".to_owned(), schema.into());
    router
}

impl Faults {
    /// The JSON schema of [`FaultState`] for this service's switches.
    fn schema(&self) -> Schema {
        let mut object = ObjectBuilder::new()
            .description(Some(
                "This service's fault switches; a field left out or null leaves its switch as it is",
            ))
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        for fault in &self.inner.supported {
            let (kind, min, max, description) = match fault {
                Fault::ErrorRate => (
                    Type::Number,
                    Some(0.0),
                    Some(1.0),
                    "Share of API requests answered with a 500",
                ),
                Fault::LatencyMs => (
                    Type::Integer,
                    Some(0.0),
                    Some(MAX_DELAY_MS as f64),
                    "Milliseconds added to every API request",
                ),
                Fault::SlowdownMs => (
                    Type::Integer,
                    Some(0.0),
                    Some(MAX_DELAY_MS as f64),
                    "Milliseconds added to every message processed",
                ),
                Fault::NotReady => (Type::Boolean, None, None, "Readiness fails while true"),
                Fault::DatabaseUnreachable => (
                    Type::Boolean,
                    None,
                    None,
                    "The database behaves as unreachable while true",
                ),
            };
            object = object.property(
                fault.as_str(),
                ObjectBuilder::new()
                    .schema_type(SchemaType::from_iter([kind, Type::Null]))
                    .minimum(min)
                    .maximum(max)
                    .description(Some(description)),
            );
        }
        object.build().into()
    }
}

#[utoipa::path(get, path = "/v1/admin/faults", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "The switches", body = FaultState), AdminRefusals))]
async fn show(
    State(state): State<AdminState>,
    headers: HeaderMap,
) -> Result<Json<FaultState>, ApiError> {
    state.admin.authorize(&headers)?;
    Ok(Json(state.faults.state()))
}

/// Sets the switches given, leaves the others.
#[utoipa::path(put, path = "/v1/admin/faults", tag = "admin", security(("bearer" = [])),
    request_body = FaultState,
    responses((status = 200, description = "The switches after the change", body = FaultState),
        AdminRefusals, BodyRefusals))]
async fn set(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Result<JsonBody<FaultState>, ApiError>,
) -> Result<Json<FaultState>, ApiError> {
    state.admin.authorize(&headers)?;
    let JsonBody(change) = body?;
    state.faults.apply(&change)?;
    state.actions[0].increment(1);
    tracing::warn!(faults = ?state.faults.state(), "faults injected");
    Ok(Json(state.faults.state()))
}

/// Every switch off.
#[utoipa::path(delete, path = "/v1/admin/faults", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "The switches, all off", body = FaultState), AdminRefusals))]
async fn clear(
    State(state): State<AdminState>,
    headers: HeaderMap,
) -> Result<Json<FaultState>, ApiError> {
    state.admin.authorize(&headers)?;
    state.faults.clear();
    state.actions[1].increment(1);
    tracing::info!("faults cleared");
    Ok(Json(state.faults.state()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;

    fn field(e: ApiError) -> Option<String> {
        match e {
            ApiError::Client { detail, .. } => detail.field,
            ApiError::Unexpected(_) => None,
        }
    }

    async fn status_after(app: &crate::App) -> (u16, std::time::Duration) {
        use tower::ServiceExt as _;
        let started = tokio::time::Instant::now();
        let response = app
            .clone()
            .oneshot(
                Request::get("/work")
                    .body(axum::body::Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible");
        (response.status().as_u16(), started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn the_layer_passes_requests_through_until_a_switch_is_set() {
        let faults = Faults::new(&Fault::API);
        let api_doc = crate::tests::documented(&["/work"]);
        let app = crate::assemble(
            Router::new().route("/work", axum::routing::get(|| async { "ok" })),
            &api_doc,
            Router::new(),
            &utoipa::openapi::OpenApi::default(),
            &faults,
            0,
            None,
        );
        let (status, took) = status_after(&app).await;
        assert_eq!((status, took), (200, std::time::Duration::ZERO));

        faults
            .apply(&FaultState {
                latency_ms: Some(800),
                ..FaultState::default()
            })
            .expect("latency");
        let (status, took) = status_after(&app).await;
        assert_eq!(status, 200);
        assert!(took >= std::time::Duration::from_millis(800), "{took:?}");

        faults
            .apply(&FaultState {
                latency_ms: Some(0),
                error_rate: Some(1.0),
                ..FaultState::default()
            })
            .expect("errors");
        assert_eq!(status_after(&app).await.0, 500);

        faults.clear();
        assert_eq!(status_after(&app).await.0, 200);
    }

    #[test]
    fn only_supported_switches_in_range_change() {
        let faults = Faults::new(&Fault::API);
        assert!(faults.supports(Fault::NotReady), "readiness always");
        let err = faults
            .apply(&FaultState {
                error_rate: Some(0.5),
                slowdown_ms: Some(10),
                ..FaultState::default()
            })
            .unwrap_err();
        assert_eq!(field(err).as_deref(), Some("slowdown_ms"));
        assert_eq!(faults.error_rate(), 0.0, "nothing changed on a refusal");
        let err = faults
            .apply(&FaultState {
                error_rate: Some(1.5),
                ..FaultState::default()
            })
            .unwrap_err();
        assert_eq!(field(err).as_deref(), Some("error_rate"));
        faults
            .apply(&FaultState {
                error_rate: Some(0.25),
                latency_ms: Some(100),
                not_ready: Some(true),
                ..FaultState::default()
            })
            .unwrap();
        assert_eq!(faults.error_rate(), 0.25);
        assert_eq!(faults.latency(), Duration::from_millis(100));
        assert!(faults.not_ready());
        faults.clear();
        assert_eq!(
            faults.state(),
            FaultState {
                error_rate: Some(0.0),
                latency_ms: Some(0),
                not_ready: Some(false),
                ..FaultState::default()
            }
        );
    }

    #[tokio::test]
    async fn readiness_follows_the_switch() {
        let faults = Faults::new(&[]);
        let health = Health::new();
        faults.register_health(&health);
        assert!(health.report().await.ready);
        faults
            .apply(&FaultState {
                not_ready: Some(true),
                ..FaultState::default()
            })
            .unwrap();
        let report = health.report().await;
        assert!(!report.ready);
        faults.clear();
        assert!(health.report().await.ready);
    }
}
