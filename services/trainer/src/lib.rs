//! `trainer`: retrains the volatility-spike model on the one-minute bars `project` stored in
//! PostgreSQL, with the same deterministic trainer that made the committed model, and
//! registers every result as a new registry version and the challenger (the prediction
//! consumer judges it against the champion on live outcomes).
//!
//! A run starts on a schedule, when drift persists, or on demand:
//! - **schedule**: every `--train-every-seconds` (wall time) after start.
//! - **drift**: the trainer polls the prediction consumer's `GET /v1/drift/report` (the
//!   per-feature drift of live features against the champion's training data). When the
//!   report says dataset drift for `--drift-persist-seconds` without a break, one run starts;
//!   the next drift-triggered run needs the drift to clear first. The consumer already holds
//!   the window and the champion's reference profile, so reading its verdict costs one small
//!   request per poll and no second copy of the window (a topic of drift events would need a
//!   producer in the consumer and a consumer here for the same one bit).
//! - **manual**: `POST /v1/admin/train` behind the admin token (202; 409 while a run is
//!   already queued).
//!
//! At start the trainer applies the migrations and seeds the registry with the committed
//! model as version 1 and champion, if the registry is empty. `GET /v1/status` tells the
//! last run, the drift it saw and the registry's aliases.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::{Json, Router};
use clap::Parser;
use metrics::{Counter, Gauge, Histogram};
use secrecy::SecretString;
use serde::Serialize;
use sqlx::PgPool;
use tidewatch_db::registry::{Alias, Documents, NewVersion, Registry};
use tidewatch_db::DatabaseArgs;
use tidewatch_model::features::Bar;
use tidewatch_model::profile::ReferenceProfile;
use tidewatch_model::train::{train_on_bars, BarsConfig, TrainConfig};
use tidewatch_model::ModelArtifact;
use tidewatch_telemetry::server::{instrument, ops_router, serve};
use tidewatch_telemetry::{
    catalog, ComponentHealth, Criticality, Shutdown, Telemetry, TelemetryArgs,
};
use tidewatch_web::openapi::{self, AdminRefusals};
use tidewatch_web::{AdminAuth, ApiError, ErrorBody};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use utoipa_axum::{router::OpenApiRouter, routes};

pub const SERVICE: &str = "trainer";

/// What started a run (the `trigger` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Schedule,
    Drift,
    Manual,
}

impl Trigger {
    pub const ALL: [Trigger; 3] = [Trigger::Schedule, Trigger::Drift, Trigger::Manual];

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Drift => "drift",
            Trigger::Manual => "manual",
        }
    }
}

/// How a run ended (the `status` label).
const STATUSES: [&str; 3] = ["success", "insufficient_data", "failure"];

#[derive(Debug, Clone, Parser)]
#[command(
    name = "trainer",
    version,
    about = "Retrains the model on stored bars and registers each result as the challenger"
)]
pub struct Settings {
    /// Address of the HTTP server (status, admin, /metrics, /health).
    #[arg(long = "listen", env = "LISTEN_ADDR", default_value = "0.0.0.0:9107")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The committed artifact, registered as version 1 and champion if the registry is empty.
    #[arg(
        long = "model",
        env = "MODEL_PATH",
        default_value = "models/volatility-spike.json"
    )]
    pub model_path: PathBuf,
    /// The committed artifact's reference profile (registered with it).
    #[arg(
        long = "reference-profile",
        env = "REFERENCE_PROFILE_PATH",
        default_value = "models/volatility-spike.profile.json"
    )]
    pub reference_profile_path: PathBuf,
    /// Wall seconds between scheduled runs (0: no schedule). The NoRecentTraining alert
    /// expects a success at least daily.
    #[arg(long, env = "TRAIN_EVERY_SECONDS", default_value_t = 6 * 3600)]
    pub train_every_seconds: u64,
    /// Event minutes of stored bars a run trains on, counted back from the newest bar.
    #[arg(long, env = "TRAIN_WINDOW_MINUTES", default_value_t = 1440, value_parser = clap::value_parser!(u32).range(30..))]
    pub train_window_minutes: u32,
    /// Training examples a run needs (fewer: the run ends as insufficient_data).
    #[arg(long, env = "MIN_TRAIN_ROWS", default_value_t = 500)]
    pub min_train_rows: usize,
    /// The prediction consumer's drift report (unset: no drift-triggered runs).
    #[arg(long, env = "DRIFT_REPORT_URL")]
    pub drift_report_url: Option<String>,
    /// Seconds between reads of the drift report (and of the registry's aliases).
    #[arg(long, env = "DRIFT_POLL_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    pub drift_poll_seconds: u64,
    /// Seconds dataset drift must last, read on every poll, before a run starts.
    #[arg(long, env = "DRIFT_PERSIST_SECONDS", default_value_t = 300)]
    pub drift_persist_seconds: u64,
    /// Bearer token for the admin endpoint; without one it answers 403.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
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
            "database": self.database,
            "model_path": self.model_path,
            "reference_profile_path": self.reference_profile_path,
            "train_every_seconds": self.train_every_seconds,
            "train_window_minutes": self.train_window_minutes,
            "min_train_rows": self.min_train_rows,
            "drift_report_url": self.drift_report_url,
            "drift_poll_seconds": self.drift_poll_seconds,
            "drift_persist_seconds": self.drift_persist_seconds,
            "admin_token_set": self.admin_token.is_some(),
            "telemetry": self.telemetry,
        })
    }
}

/// Decides, from successive reads of the drift verdict, when drift has persisted long
/// enough to retrain: once per drift episode (the verdict must clear before another).
#[derive(Debug, Clone)]
pub struct DriftWatch {
    persist: Duration,
    since: Option<Instant>,
    fired: bool,
}

impl DriftWatch {
    pub fn new(persist: Duration) -> Self {
        Self {
            persist,
            since: None,
            fired: false,
        }
    }

    /// Records one read of the verdict at `now`; true when a run should start.
    pub fn observe(&mut self, drifted: bool, now: Instant) -> bool {
        if !drifted {
            self.since = None;
            self.fired = false;
            return false;
        }
        let since = *self.since.get_or_insert(now);
        if !self.fired && now.duration_since(since) >= self.persist {
            self.fired = true;
            return true;
        }
        false
    }

    /// How long the current drift has lasted, if there is one.
    pub fn drifting_for(&self, now: Instant) -> Option<Duration> {
        self.since.map(|s| now.duration_since(s))
    }
}

/// One run as `GET /v1/status` tells it.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub trigger: Trigger,
    pub status: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    pub duration_seconds: f64,
    /// The registered version (success only).
    pub version: Option<i32>,
    pub bars: usize,
    pub train_rows: u64,
    pub test_rows: u64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub data_start: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub data_end: Option<OffsetDateTime>,
    pub heldout: Option<tidewatch_model::artifact::HeldOut>,
    /// Why it did not succeed.
    pub error: Option<String>,
}

#[derive(Debug, Default, Serialize)]
struct StatusState {
    running: Option<Trigger>,
    queued: Option<Trigger>,
    runs: u64,
    last_run: Option<RunReport>,
    last_success: Option<RunReport>,
    drift: Option<DriftSeen>,
    champion: Option<i32>,
    challenger: Option<i32>,
}

#[derive(Debug, Clone, Serialize)]
struct DriftSeen {
    dataset_drift: bool,
    model_version: Option<String>,
    /// Wall seconds the verdict has said drift without a break.
    drifting_for_seconds: Option<f64>,
    error: Option<String>,
}

struct TrainingMetrics {
    runs: Vec<((Trigger, &'static str), Counter)>,
    duration: Vec<(Trigger, Histogram)>,
    samples: [Gauge; 2],
    champion: Gauge,
    challenger: Gauge,
}

impl TrainingMetrics {
    fn new() -> Self {
        let mut runs = Vec::new();
        for t in Trigger::ALL {
            for s in STATUSES {
                let c = catalog::TRAINING_RUNS.counter(&[("trigger", t.as_str()), ("status", s)]);
                c.absolute(0);
                runs.push(((t, s), c));
            }
        }
        Self {
            runs,
            duration: Trigger::ALL
                .map(|t| {
                    (
                        t,
                        catalog::TRAINING_DURATION.histogram(&[("trigger", t.as_str())]),
                    )
                })
                .to_vec(),
            samples: ["train", "test"].map(|s| catalog::TRAINING_SAMPLES.gauge(&[("set", s)])),
            champion: catalog::REGISTRY_ALIAS_VERSION.gauge(&[("alias", "champion")]),
            challenger: catalog::REGISTRY_ALIAS_VERSION.gauge(&[("alias", "challenger")]),
        }
    }

    fn record(&self, report: &RunReport) {
        if let Some((_, c)) = self
            .runs
            .iter()
            .find(|((t, s), _)| *t == report.trigger && *s == report.status)
        {
            c.increment(1);
        }
        if let Some((_, h)) = self.duration.iter().find(|(t, _)| *t == report.trigger) {
            h.record(report.duration_seconds);
        }
        if report.status == "success" {
            self.samples[0].set(report.train_rows as f64);
            self.samples[1].set(report.test_rows as f64);
            // Created by the first success: before one, the series is absent, not 0.
            catalog::TRAINING_LAST_SUCCESS.gauge(&[]).set(unix_now());
            if let Some(h) = &report.heldout {
                for (variant, s) in [("ml", h.ml), ("baseline", h.baseline)] {
                    for (metric, v) in [
                        ("accuracy", s.accuracy),
                        ("precision", s.precision),
                        ("recall", s.recall),
                        ("f1", s.f1),
                        ("auc", s.auc),
                    ] {
                        catalog::TRAINING_HELDOUT_SCORE
                            .gauge(&[("variant", variant), ("metric", metric)])
                            .set(v);
                    }
                }
            }
        }
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Reads the committed artifact and profile and registers them as version 1 and champion
/// if the registry is empty; returns whether it did.
pub async fn seed_registry(
    registry: &Registry,
    model_path: &std::path::Path,
    profile_path: &std::path::Path,
) -> anyhow::Result<bool> {
    let artifact_text = std::fs::read_to_string(model_path)
        .with_context(|| format!("cannot read model {}", model_path.display()))?;
    let artifact = ModelArtifact::from_json(&artifact_text)
        .map_err(|e| anyhow::anyhow!("model {} is invalid: {e}", model_path.display()))?;
    let profile_text = std::fs::read_to_string(profile_path)
        .with_context(|| format!("cannot read reference profile {}", profile_path.display()))?;
    ReferenceProfile::from_json(&profile_text).map_err(|e| {
        anyhow::anyhow!(
            "reference profile {} is invalid: {e}",
            profile_path.display()
        )
    })?;
    let documents = Documents {
        artifact: artifact_text,
        heldout: serde_json::to_string(&artifact.heldout)?,
        reference_profile: profile_text,
    };
    let reason = format!("the committed {}", model_path.display());
    registry
        .seed(
            &NewVersion {
                name: &artifact.name,
                training_command: &artifact.training.command,
                data_window: None,
                created_by: "seed",
            },
            &documents,
            &reason,
        )
        .await
}

/// symbol, start (Unix ms), open, high, low, close, volume, trades.
type BarRow = (String, i64, f64, f64, f64, f64, f64, i64);

/// Every symbol's one-minute bars of the last `window_minutes` event minutes before the
/// newest stored bar, oldest first.
pub async fn load_bars(
    pool: &PgPool,
    window_minutes: u32,
) -> anyhow::Result<Vec<(String, Vec<Bar>)>> {
    let rows: Vec<BarRow> = sqlx::query_as(
        "SELECT symbol, (extract(epoch FROM start_time) * 1000)::bigint, open, high, low, close, \
         volume, trade_count FROM bars \
         WHERE interval_seconds = 60 AND start_time >= \
           (SELECT max(start_time) FROM bars WHERE interval_seconds = 60) \
           - make_interval(mins => $1) \
         ORDER BY symbol, start_time",
    )
    .bind(i32::try_from(window_minutes).unwrap_or(i32::MAX))
    .fetch_all(pool)
    .await
    .context("reading stored bars")?;
    let mut series: Vec<(String, Vec<Bar>)> = Vec::new();
    for (symbol, start_ms, open, high, low, close, volume, trades) in rows {
        let bar = Bar {
            start_ms,
            open,
            high,
            low,
            close,
            volume,
            trades: u64::try_from(trades).unwrap_or(0),
        };
        match series.last_mut() {
            Some((s, bars)) if *s == symbol => bars.push(bar),
            _ => series.push((symbol, vec![bar])),
        }
    }
    Ok(series)
}

fn at_ms(ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

/// What a run needs, shared by the loop and the tests.
#[derive(Debug, Clone)]
pub struct RunContext {
    pub pool: PgPool,
    pub registry: Registry,
    pub window_minutes: u32,
    pub min_train_rows: usize,
}

/// One run: read the bars, train (on a blocking thread), register the result as the next
/// version and the challenger.
pub async fn train_once(ctx: &RunContext, trigger: Trigger) -> RunReport {
    let started = Instant::now();
    let mut report = RunReport {
        trigger,
        status: "failure",
        started_at: OffsetDateTime::now_utc(),
        duration_seconds: 0.0,
        version: None,
        bars: 0,
        train_rows: 0,
        test_rows: 0,
        data_start: None,
        data_end: None,
        heldout: None,
        error: None,
    };
    let result = async {
        let series = load_bars(&ctx.pool, ctx.window_minutes).await?;
        report.bars = series.iter().map(|(_, b)| b.len()).sum();
        let first = series
            .iter()
            .filter_map(|(_, b)| b.first())
            .map(|b| b.start_ms)
            .min();
        let last = series
            .iter()
            .filter_map(|(_, b)| b.last())
            .map(|b| b.start_ms)
            .max();
        let window = first
            .zip(last)
            .and_then(|(a, b)| Some((at_ms(a)?, at_ms(b + 60_000)?)));
        report.data_start = window.map(|w| w.0);
        report.data_end = window.map(|w| w.1);
        let command = match window {
            Some((a, b)) => format!(
                "trainer ({}): stored 60 s bars from {} to {}, {} symbols",
                trigger.as_str(),
                a.format(&time::format_description::well_known::Rfc3339)?,
                b.format(&time::format_description::well_known::Rfc3339)?,
                series.len()
            ),
            None => format!("trainer ({}): no stored bars", trigger.as_str()),
        };
        let mut config = BarsConfig::like(&TrainConfig::default(), String::new(), command);
        config.min_train_rows = ctx.min_train_rows;
        let trained = tokio::task::spawn_blocking({
            let config = config.clone();
            move || train_on_bars(&series, &config)
        })
        .await
        .context("training thread")?;
        let (artifact, profile) = match trained {
            Ok(t) => t,
            Err(why) => return Ok(Err(why)),
        };
        report.train_rows = artifact.training.train_rows;
        report.test_rows = artifact.training.test_rows;
        report.heldout = Some(artifact.heldout);
        let reason = format!(
            "trained on {} stored bars ({} trigger): held-out F1 {:.4}, AUC {:.4}",
            report.bars,
            trigger.as_str(),
            artifact.heldout.ml.f1,
            artifact.heldout.ml.auc
        );
        let version = ctx
            .registry
            .register_next(
                &NewVersion {
                    name: &config.name,
                    training_command: &config.command,
                    data_window: window,
                    created_by: SERVICE,
                },
                |n| {
                    // The registry number is the version the artifact and profile name.
                    let label = format!("{n}.0.0");
                    let mut artifact = artifact.clone();
                    artifact.version = label.clone();
                    let mut profile = profile.clone();
                    profile.model_version = label;
                    Ok(Documents {
                        artifact: artifact.to_json(),
                        heldout: serde_json::to_string(&artifact.heldout)?,
                        reference_profile: profile.to_json(),
                    })
                },
                Some(&reason),
            )
            .await?;
        anyhow::Ok(Ok(version))
    }
    .await;
    match result {
        Ok(Ok(version)) => {
            report.status = "success";
            report.version = Some(version);
        }
        Ok(Err(why)) => {
            report.status = "insufficient_data";
            report.error = Some(why);
        }
        Err(e) => report.error = Some(format!("{e:#}")),
    }
    report.duration_seconds = started.elapsed().as_secs_f64();
    report
}

/// A built trainer: listener bound, database migrated, registry seeded.
pub struct Trainer {
    listener: TcpListener,
    telemetry: Telemetry,
    ctx: RunContext,
    settings: Settings,
    client: reqwest::Client,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer").finish_non_exhaustive()
    }
}

impl Trainer {
    pub async fn build(settings: &Settings, telemetry: Telemetry) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let pool = tidewatch_db::connect_and_migrate(&settings.database).await?;
        let registry = Registry::new(pool.clone());
        if seed_registry(
            &registry,
            &settings.model_path,
            &settings.reference_profile_path,
        )
        .await?
        {
            tracing::info!(model = %settings.model_path.display(), "registry seeded: version 1 is champion");
        }
        let probe = pool.clone();
        telemetry
            .health
            .register("database", Criticality::Critical, move || {
                let pool = probe.clone();
                async move {
                    let ping = tokio::time::timeout(
                        Duration::from_secs(1),
                        sqlx::query("SELECT 1").execute(&pool),
                    )
                    .await;
                    match ping {
                        Ok(Ok(_)) => ComponentHealth::healthy("reachable"),
                        Ok(Err(e)) => ComponentHealth::unhealthy(format!("unreachable: {e}")),
                        Err(_) => ComponentHealth::unhealthy("no answer within 1 s"),
                    }
                }
            });
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            listener,
            telemetry,
            ctx: RunContext {
                pool,
                registry,
                window_minutes: settings.train_window_minutes,
                min_train_rows: settings.min_train_rows,
            },
            settings: settings.clone(),
            client,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Trains when asked until `shutdown`; a run in progress finishes first.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let Self {
            listener,
            telemetry,
            ctx,
            settings,
            client,
        } = self;
        let metrics = TrainingMetrics::new();
        // The last success survives restarts in the registry.
        match ctx.registry.last_registered_by(SERVICE).await {
            Ok(Some(at)) => catalog::TRAINING_LAST_SUCCESS
                .gauge(&[])
                .set(at.unix_timestamp_nanos() as f64 / 1e9),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot read the last training time")
            }
        }
        let status = Arc::new(Mutex::new(StatusState::default()));
        let (queue, mut requests) = mpsc::channel::<Trigger>(1);
        let state = AppState {
            status: status.clone(),
            queue,
            admin: Arc::new(AdminAuth::new(
                settings.admin_token.clone().map(SecretString::from),
            )),
            settings: Arc::new(tidewatch_telemetry::runner::ServiceSettings::public_view(
                &settings,
            )),
        };
        let app = instrument(router(state).merge(ops_router(telemetry.clone())));
        tracing::info!(addr = %listener.local_addr()?, "listening");
        let server = tokio::spawn({
            let (telemetry, stop) = (telemetry.clone(), shutdown.clone());
            async move { serve(listener, app, &telemetry, stop, Duration::from_secs(5)).await }
        });
        let poll = Duration::from_secs(settings.drift_poll_seconds.max(1));
        let mut ticks = tokio::time::interval(poll);
        let every = Duration::from_secs(settings.train_every_seconds);
        let mut next_scheduled = (!every.is_zero()).then(|| tokio::time::Instant::now() + every);
        let mut watch = DriftWatch::new(Duration::from_secs(settings.drift_persist_seconds));
        loop {
            let scheduled = async {
                match next_scheduled {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let trigger = tokio::select! {
                () = shutdown.cancelled() => break,
                Some(t) = requests.recv() => {
                    lock(&status).queued = None;
                    Some(t)
                }
                () = scheduled => {
                    next_scheduled = next_scheduled.map(|at| at + every);
                    Some(Trigger::Schedule)
                }
                _ = ticks.tick() => {
                    refresh_aliases(&ctx.registry, &status, &metrics).await;
                    match &settings.drift_report_url {
                        Some(url) => {
                            let seen = read_drift(&client, url).await;
                            let now = Instant::now();
                            let start = watch.observe(seen.dataset_drift, now);
                            lock(&status).drift = Some(DriftSeen {
                                drifting_for_seconds: watch.drifting_for(now).map(|d| d.as_secs_f64()),
                                ..seen
                            });
                            start.then_some(Trigger::Drift)
                        }
                        None => None,
                    }
                }
            };
            let Some(trigger) = trigger else { continue };
            lock(&status).running = Some(trigger);
            tracing::info!(trigger = trigger.as_str(), "training run started");
            let report = train_once(&ctx, trigger).await;
            metrics.record(&report);
            match report.status {
                "success" => tracing::info!(
                    trigger = trigger.as_str(),
                    version = report.version,
                    train_rows = report.train_rows,
                    heldout_f1 = report.heldout.map(|h| h.ml.f1),
                    seconds = report.duration_seconds,
                    "trained and registered as challenger"
                ),
                status => tracing::warn!(
                    trigger = trigger.as_str(),
                    status,
                    error = report.error.as_deref(),
                    "training run did not register a version"
                ),
            }
            {
                let mut s = lock(&status);
                s.running = None;
                s.runs += 1;
                if report.status == "success" {
                    s.last_success = Some(report.clone());
                }
                s.last_run = Some(report);
            }
            refresh_aliases(&ctx.registry, &status, &metrics).await;
        }
        server
            .await
            .context("HTTP server task")?
            .context("HTTP server")
    }
}

fn lock(status: &Mutex<StatusState>) -> std::sync::MutexGuard<'_, StatusState> {
    status.lock().unwrap_or_else(|e| e.into_inner())
}

async fn refresh_aliases(
    registry: &Registry,
    status: &Mutex<StatusState>,
    metrics: &TrainingMetrics,
) {
    let read = async {
        let champion = registry.alias(Alias::Champion).await?.map(|v| v.version);
        let challenger = registry.alias(Alias::Challenger).await?.map(|v| v.version);
        anyhow::Ok((champion, challenger))
    };
    match read.await {
        Ok((champion, challenger)) => {
            metrics.champion.set(f64::from(champion.unwrap_or(0)));
            metrics.challenger.set(f64::from(challenger.unwrap_or(0)));
            let mut s = lock(status);
            s.champion = champion;
            s.challenger = challenger;
        }
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot read the registry's aliases"),
    }
}

/// The consumer's drift verdict; an unreadable report counts as no drift (and says why).
async fn read_drift(client: &reqwest::Client, url: &str) -> DriftSeen {
    let read = async {
        let response = client.get(url).send().await?.error_for_status()?;
        let body: serde_json::Value = response.json().await?;
        anyhow::Ok(body)
    };
    match read.await {
        Ok(body) => DriftSeen {
            dataset_drift: body["dataset_drift"].as_bool().unwrap_or(false),
            model_version: body["model_version"].as_str().map(str::to_owned),
            drifting_for_seconds: None,
            error: None,
        },
        Err(e) => DriftSeen {
            dataset_drift: false,
            model_version: None,
            drifting_for_seconds: None,
            error: Some(format!("{e:#}")),
        },
    }
}

#[derive(Clone, Debug)]
struct AppState {
    status: Arc<Mutex<StatusState>>,
    queue: mpsc::Sender<Trigger>,
    admin: Arc<AdminAuth>,
    settings: Arc<serde_json::Value>,
}

/// The routes, documented at `/openapi.json`, with JSON 404/405.
fn router(state: AppState) -> Router {
    let (api, doc) = OpenApiRouter::with_openapi(openapi::document(
        "Tidewatch trainer",
        "Retrains the model on stored bars: status, and a manual run behind the admin token.",
    ))
    .routes(routes!(status))
    .routes(routes!(train))
    .with_state(state)
    .split_for_parts();
    openapi::finish(api, &doc)
}

#[derive(Serialize, utoipa::ToSchema)]
struct Status {
    /// The settings the trainer runs with (no secrets).
    #[schema(value_type = Object)]
    settings: serde_json::Value,
    /// The last runs, the queued one and what drift the trainer saw.
    #[schema(value_type = Object)]
    training: serde_json::Value,
}

#[utoipa::path(get, path = "/v1/status", tag = "trainer",
    responses((status = 200, description = "Settings and training state", body = Status)))]
async fn status(State(state): State<AppState>) -> Json<Status> {
    let training = serde_json::to_value(&*lock(&state.status)).unwrap_or_default();
    Json(Status {
        settings: (*state.settings).clone(),
        training,
    })
}

#[derive(Serialize, utoipa::ToSchema)]
struct Queued {
    /// What queued the run: `manual`.
    queued: &'static str,
}

/// Queues a manual training run, unless one is queued already.
#[utoipa::path(post, path = "/v1/admin/train", tag = "admin", security(("bearer" = [])),
    responses((status = 202, description = "Queued", body = Queued),
        (status = 409, description = "A run is already queued", body = ErrorBody),
        AdminRefusals))]
async fn train(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Queued>), ApiError> {
    state.admin.authorize(&headers)?;
    match state.queue.try_send(Trigger::Manual) {
        Ok(()) => {
            lock(&state.status).queued = Some(Trigger::Manual);
            Ok((StatusCode::ACCEPTED, Json(Queued { queued: "manual" })))
        }
        Err(_) => Err(ApiError::client(
            StatusCode::CONFLICT,
            "training_queued",
            None,
            "a training run is already queued; GET /v1/status tells when it ran",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_must_persist_and_clear_before_it_triggers_again() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut w = DriftWatch::new(Duration::from_secs(60));
        assert!(!w.observe(true, s(0)));
        assert!(!w.observe(true, s(59)));
        assert!(w.observe(true, s(60)), "persisted a minute");
        assert!(!w.observe(true, s(600)), "once per episode");
        assert!(!w.observe(false, s(601)));
        assert!(!w.observe(true, s(602)));
        assert!(!w.observe(false, s(630)), "a break restarts the clock");
        assert!(!w.observe(true, s(640)));
        assert!(w.observe(true, s(700)));
    }
}
