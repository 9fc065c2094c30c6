//! `loadgen`: standing load on the prediction API, so its dashboards and SLOs show live data
//! in a demo stack. It sends a steady rate of `POST /v1/predict` and (a share of)
//! `POST /v1/predict/batch` requests whose features come from the same seeded market the
//! generator publishes, computed by the model crate's `FeatureBuilder` (so the model sees
//! the inputs it was trained on), and counts every request's outcome and latency.
//!
//! - `GET /v1/status`: the rate, the target and the requests sent by endpoint and outcome.
//! - `PUT /v1/admin/rate` `{"requests_per_second": 20}` (0 stops sending) behind the admin
//!   token.
//!
//! The load is open-loop (requests leave on schedule whether or not earlier ones were
//! answered), bounded by `--max-in-flight`: a request that would exceed it is not sent and
//! is counted as `skipped`, so a slow target shows up as skips rather than as a queue.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::{Json, Router};
use clap::Parser;
use metrics::{Counter, Gauge, Histogram};
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tidewatch_market_sim::{Market, MarketConfig};
use tidewatch_model::features::{Bar, FeatureBuilder, Features};
use tidewatch_telemetry::server::{instrument, ops_router, serve};
use tidewatch_telemetry::{catalog, Shutdown, Telemetry, TelemetryArgs};
use tidewatch_web::openapi::{self, AdminRefusals, BodyRefusals};
use tidewatch_web::{AdminAuth, ApiError, BodyLimit, JsonBody};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use utoipa_axum::{router::OpenApiRouter, routes};

pub const SERVICE: &str = "loadgen";
/// Most requests per second the admin endpoint accepts.
pub const MAX_RATE: f64 = 10_000.0;
/// The endpoints it calls, as metric labels.
const ENDPOINTS: [&str; 2] = ["predict", "predict_batch"];
/// Request outcomes, as metric labels.
const OUTCOMES: [&str; 5] = ["ok", "client_error", "server_error", "failed", "skipped"];

#[derive(Debug, Clone, Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Sends a steady, adjustable rate of realistic prediction requests to the prediction API"
)]
pub struct Settings {
    /// Address of the HTTP server (status, admin, /metrics, /health).
    #[arg(long = "listen", env = "LISTEN_ADDR", default_value = "0.0.0.0:9105")]
    pub listen: SocketAddr,
    /// The prediction API's base URL.
    #[arg(long, env = "TARGET_URL", default_value = "http://localhost:8000")]
    pub target_url: String,
    /// Requests per second (0: none until the admin endpoint sets a rate).
    #[arg(long, env = "RATE", default_value_t = 5.0, value_parser = rate)]
    pub rate: f64,
    /// Share of requests sent to /v1/predict/batch instead of /v1/predict.
    #[arg(long, env = "BATCH_SHARE", default_value_t = 0.1, value_parser = tidewatch_telemetry::runner::fraction)]
    pub batch_share: f64,
    /// Items in each batch request (1-1000).
    #[arg(long, env = "BATCH_SIZE", default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub batch_size: u16,
    /// Seed of the market the features come from.
    #[arg(long, env = "SEED", default_value_t = 42)]
    pub seed: u64,
    /// Requests awaiting an answer, at most; beyond it a request is skipped (and counted).
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 64)]
    pub max_in_flight: usize,
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 5_000)]
    pub request_timeout_ms: u64,
    /// Bearer token for the admin endpoint; without one it answers 403.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 16 * 1024)]
    pub max_body_bytes: usize,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

fn rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && (0.0..=MAX_RATE).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not a rate between 0 and {MAX_RATE}"))
    }
}

impl tidewatch_telemetry::runner::ServiceSettings for Settings {
    fn telemetry(&self) -> &TelemetryArgs {
        &self.telemetry
    }
    fn public_view(&self) -> serde_json::Value {
        serde_json::json!({
            "listen": self.listen.to_string(),
            "target_url": self.target_url,
            "rate": self.rate,
            "batch_share": self.batch_share,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "max_in_flight": self.max_in_flight,
            "request_timeout_ms": self.request_timeout_ms,
            "admin_token_set": self.admin_token.is_some(),
            "telemetry": self.telemetry,
        })
    }
}

/// Feature vectors for every symbol, minute after minute, from the seeded market: what
/// the aggregate stage would compute from the generator's trades.
pub struct FeatureSource {
    market: Market,
    symbols: Vec<&'static str>,
    builders: Vec<FeatureBuilder>,
    ready: VecDeque<(&'static str, Features)>,
}

impl std::fmt::Debug for FeatureSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureSource")
            .field("ready", &self.ready.len())
            .finish_non_exhaustive()
    }
}

impl FeatureSource {
    pub fn new(seed: u64) -> Self {
        let config = MarketConfig::new(seed);
        let symbols: Vec<&'static str> = config.symbols.iter().map(|s| s.symbol).collect();
        Self {
            market: Market::new(&config),
            builders: symbols.iter().map(|_| FeatureBuilder::new()).collect(),
            symbols,
            ready: VecDeque::new(),
        }
    }

    /// The next symbol and its features (the first ones after the builders warmed up).
    pub fn next_features(&mut self) -> (&'static str, Features) {
        loop {
            if let Some(next) = self.ready.pop_front() {
                return next;
            }
            let start = self.market.now_ms();
            let mut bars: Vec<Option<Bar>> = vec![None; self.symbols.len()];
            for trade in self.market.next_minute() {
                let Some(i) = self.symbols.iter().position(|s| *s == trade.symbol) else {
                    continue;
                };
                match &mut bars[i] {
                    Some(bar) => bar.add(trade.price, trade.size),
                    slot => *slot = Some(Bar::open_at(start, trade.price, trade.size)),
                }
            }
            for (i, bar) in bars.into_iter().enumerate() {
                if let Some(features) = bar.and_then(|b| self.builders[i].push(&b)) {
                    self.ready.push_back((self.symbols[i], features));
                }
            }
        }
    }

    /// One `/v1/predict` body.
    pub fn predict_body(&mut self) -> serde_json::Value {
        let (symbol, features) = self.next_features();
        serde_json::json!({"symbol": symbol, "features": features})
    }
}

/// The rate, changed by the admin endpoint while the loop runs.
#[derive(Debug)]
pub struct Control {
    /// Requests per second, as `f64` bits.
    rate: AtomicU64,
    changed: Notify,
    in_flight: AtomicUsize,
}

impl Control {
    fn new(rate: f64) -> Self {
        Self {
            rate: AtomicU64::new(rate.to_bits()),
            changed: Notify::new(),
            in_flight: AtomicUsize::new(0),
        }
    }

    pub fn rate(&self) -> f64 {
        f64::from_bits(self.rate.load(Ordering::Acquire))
    }

    /// Sets the rate; returns the previous one.
    pub fn set_rate(&self, rate: f64) -> f64 {
        let previous = f64::from_bits(self.rate.swap(rate.to_bits(), Ordering::AcqRel));
        self.changed.notify_one();
        previous
    }
}

/// Handles for one endpoint's metrics.
#[derive(Clone)]
struct EndpointMetrics {
    outcomes: HashMap<&'static str, Counter>,
    duration: Histogram,
}

#[derive(Clone)]
struct LoadMetrics {
    endpoints: HashMap<&'static str, EndpointMetrics>,
    target_rate: Gauge,
    in_flight: Gauge,
}

impl LoadMetrics {
    fn new() -> Self {
        let endpoints = ENDPOINTS
            .into_iter()
            .map(|endpoint| {
                let outcomes = OUTCOMES
                    .into_iter()
                    .map(|outcome| {
                        let c = catalog::LOADGEN_REQUESTS
                            .counter(&[("endpoint", endpoint), ("outcome", outcome)]);
                        c.absolute(0);
                        (outcome, c)
                    })
                    .collect();
                let duration =
                    catalog::LOADGEN_REQUEST_DURATION.histogram(&[("endpoint", endpoint)]);
                (endpoint, EndpointMetrics { outcomes, duration })
            })
            .collect();
        Self {
            endpoints,
            target_rate: catalog::LOADGEN_TARGET_RATE.gauge(&[]),
            in_flight: catalog::LOADGEN_IN_FLIGHT.gauge(&[]),
        }
    }

    fn count(&self, endpoint: &'static str, outcome: &'static str) {
        if let Some(c) = self
            .endpoints
            .get(endpoint)
            .and_then(|e| e.outcomes.get(outcome))
        {
            c.increment(1);
        }
    }
}

/// The outcome label of an answer's status.
fn outcome_of(status: u16) -> &'static str {
    match status {
        200..=299 => "ok",
        400..=499 => "client_error",
        _ => "server_error",
    }
}

/// A built load generator: listener bound, HTTP client ready.
pub struct LoadGenerator {
    listener: TcpListener,
    telemetry: Telemetry,
    control: Arc<Control>,
    client: reqwest::Client,
    settings: Settings,
}

impl std::fmt::Debug for LoadGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadGenerator")
            .field("target", &self.settings.target_url)
            .finish_non_exhaustive()
    }
}

impl LoadGenerator {
    pub async fn build(settings: &Settings, telemetry: Telemetry) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.request_timeout_ms))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            listener,
            telemetry,
            control: Arc::new(Control::new(settings.rate)),
            client,
            settings: settings.clone(),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Sends requests until `shutdown`, then waits (a few seconds at most) for the answers.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let Self {
            listener,
            telemetry,
            control,
            client,
            settings,
        } = self;
        let metrics = LoadMetrics::new();
        let admin = Arc::new(AdminAuth::new(
            settings.admin_token.clone().map(SecretString::from),
        ));
        let state = AppState {
            control: control.clone(),
            admin,
            settings: Arc::new(settings.public_view_json()),
            max_body_bytes: settings.max_body_bytes,
        };
        let app = instrument(router(state).merge(ops_router(telemetry.clone())));
        tracing::info!(addr = %listener.local_addr()?, target = settings.target_url, "listening");
        let server_stop = Shutdown::new();
        let server = tokio::spawn({
            let (telemetry, stop) = (telemetry.clone(), server_stop.clone());
            async move { serve(listener, app, &telemetry, stop, Duration::from_secs(5)).await }
        });
        let mut requests = tokio::task::JoinSet::new();
        send(
            &settings,
            &client,
            &control,
            &metrics,
            &mut requests,
            &shutdown,
        )
        .await;
        let drain = tokio::time::timeout(Duration::from_secs(5), async {
            while requests.join_next().await.is_some() {}
        })
        .await;
        if drain.is_err() {
            tracing::warn!(
                left = requests.len(),
                "requests still unanswered at shutdown"
            );
            requests.abort_all();
        }
        server_stop.trigger();
        server
            .await
            .context("HTTP server task")?
            .context("HTTP server")
    }
}

impl Settings {
    fn public_view_json(&self) -> serde_json::Value {
        tidewatch_telemetry::runner::ServiceSettings::public_view(self)
    }
}

/// The sending loop: one request every 1/rate seconds, paced from a fixed start so the
/// rate holds on average; a new rate applies at once.
async fn send(
    settings: &Settings,
    client: &reqwest::Client,
    control: &Arc<Control>,
    metrics: &LoadMetrics,
    requests: &mut tokio::task::JoinSet<()>,
    shutdown: &Shutdown,
) {
    let mut source = FeatureSource::new(settings.seed);
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    let base = settings.target_url.trim_end_matches('/').to_owned();
    let mut rate = control.rate();
    let (mut anchor, mut sent) = (Instant::now(), 0u64);
    metrics.target_rate.set(rate);
    tracing::info!(rate, "sending");
    loop {
        while requests.try_join_next().is_some() {}
        let wanted = control.rate();
        if wanted != rate {
            tracing::info!(from = rate, to = wanted, "rate changed");
            rate = wanted;
            metrics.target_rate.set(rate);
            (anchor, sent) = (Instant::now(), 0);
        }
        if rate <= 0.0 {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = control.changed.notified() => continue,
            }
        }
        let Some(due) = next_due(anchor, sent, rate) else {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = control.changed.notified() => continue,
            }
        };
        tokio::select! {
            () = tokio::time::sleep_until(due.into()) => {}
            () = shutdown.cancelled() => return,
            () = control.changed.notified() => continue,
        }
        sent += 1;
        let batch = rng.random_bool(settings.batch_share);
        let (endpoint, path, body) = if batch {
            let items: Vec<_> = (0..settings.batch_size)
                .map(|_| source.predict_body())
                .collect();
            (
                "predict_batch",
                "/v1/predict/batch",
                serde_json::json!({ "items": items }),
            )
        } else {
            ("predict", "/v1/predict", source.predict_body())
        };
        if control.in_flight.load(Ordering::Acquire) >= settings.max_in_flight {
            metrics.count(endpoint, "skipped");
            continue;
        }
        control.in_flight.fetch_add(1, Ordering::AcqRel);
        metrics.in_flight.increment(1.0);
        let (client, control, metrics) = (client.clone(), control.clone(), metrics.clone());
        let url = format!("{base}{path}");
        requests.spawn(async move {
            let started = Instant::now();
            let outcome = match client.post(&url).json(&body).send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    // Read the body: the request is not done until the answer is.
                    match response.bytes().await {
                        Ok(_) => outcome_of(status),
                        Err(_) => "failed",
                    }
                }
                Err(_) => "failed",
            };
            if let Some(e) = metrics.endpoints.get(endpoint) {
                e.duration.record(started.elapsed().as_secs_f64());
            }
            metrics.count(endpoint, outcome);
            control.in_flight.fetch_sub(1, Ordering::AcqRel);
            metrics.in_flight.decrement(1.0);
        });
    }
}

#[derive(Clone, Debug)]
struct AppState {
    control: Arc<Control>,
    admin: Arc<AdminAuth>,
    settings: Arc<serde_json::Value>,
    max_body_bytes: usize,
}

impl BodyLimit for AppState {
    fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }
}

/// The routes, documented at `/openapi.json`, with JSON 404/405.
fn router(state: AppState) -> Router {
    let (api, doc) = OpenApiRouter::with_openapi(openapi::document(
        "Tidewatch loadgen",
        "Steady prediction requests to the API: status, and the rate behind the admin token.",
    ))
    .routes(routes!(status))
    .routes(routes!(set_rate))
    .with_state(state)
    .split_for_parts();
    openapi::finish(api, &doc)
}

#[derive(Serialize, utoipa::ToSchema)]
struct Status {
    /// The settings the load driver runs with (no secrets).
    #[schema(value_type = Object)]
    settings: serde_json::Value,
    requests_per_second: f64,
    in_flight: usize,
}

#[utoipa::path(get, path = "/v1/status", tag = "loadgen",
    responses((status = 200, description = "Settings, rate and requests in flight", body = Status)))]
async fn status(State(state): State<AppState>) -> Json<Status> {
    Json(Status {
        settings: (*state.settings).clone(),
        requests_per_second: state.control.rate(),
        in_flight: state.control.in_flight.load(Ordering::Acquire),
    })
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SetRate {
    /// Requests per second, from 0 (none) to 10,000.
    #[schema(
        required = true,
        nullable = false,
        minimum = 0.0,
        maximum = 10_000.0,
        example = 5.0
    )]
    requests_per_second: Option<f64>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct RateChange {
    requests_per_second: f64,
    previous: f64,
}

/// Sets the request rate.
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
    let rate = req.requests_per_second.ok_or_else(|| {
        ApiError::invalid(
            "requests_per_second",
            "missing_field",
            "requests_per_second is required",
        )
    })?;
    if !rate.is_finite() || !(0.0..=MAX_RATE).contains(&rate) {
        return Err(ApiError::invalid(
            "requests_per_second",
            "invalid_value",
            format!("requests_per_second must be between 0 and {MAX_RATE}"),
        ));
    }
    let previous = state.control.set_rate(rate);
    Ok(Json(RateChange {
        requests_per_second: rate,
        previous,
    }))
}

/// When request `sent` (counted from `anchor`) is due at `rate` per second; None when a
/// rate so small (1e-300 is a valid one) puts it beyond any clock.
fn next_due(anchor: Instant, sent: u64, rate: f64) -> Option<Instant> {
    Duration::try_from_secs_f64(sent as f64 / rate)
        .ok()
        .and_then(|offset| anchor.checked_add(offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tiny_rate_puts_the_next_request_nowhere_instead_of_panicking() {
        // schemathesis found it: PUT /v1/admin/rate {"requests_per_second": 5e-324} took the
        // whole process down in Duration::from_secs_f64.
        let now = Instant::now();
        assert_eq!(next_due(now, 0, 5e-324), Some(now));
        assert_eq!(next_due(now, 1, 5e-324), None);
        assert_eq!(next_due(now, 1, 1e-300), None);
        assert_eq!(
            next_due(now, 3, 2.0),
            Some(now + Duration::from_millis(1500))
        );
    }

    #[test]
    fn features_come_from_the_market_for_every_symbol_and_are_valid_model_inputs() {
        let mut source = FeatureSource::new(42);
        let vectors: Vec<_> = (0..600).map(|_| source.next_features()).collect();
        let symbols: std::collections::HashSet<_> = vectors.iter().map(|(s, _)| *s).collect();
        assert_eq!(symbols.len(), MarketConfig::new(42).symbols.len());
        for (_, f) in &vectors {
            assert!(f.to_array().iter().all(|v| v.is_finite()));
            assert!(f.vol_5m >= 0.0 && f.vol_15m >= 0.0 && f.trade_rate >= 0.0);
        }
        // The same seed, the same requests.
        let mut again = FeatureSource::new(42);
        assert_eq!(again.next_features(), vectors[0]);
    }

    #[test]
    fn answers_are_classified_by_status() {
        assert_eq!(outcome_of(200), "ok");
        assert_eq!(outcome_of(422), "client_error");
        assert_eq!(outcome_of(503), "server_error");
    }
}
