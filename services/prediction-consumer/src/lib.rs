//! `prediction-consumer`: model features (`features.1m`) become predictions (`predictions`),
//! and each prediction is judged when the market has shown what happened over its horizon:
//! the features of the bar `horizon` minutes later carry the realised volatility the model
//! was trained to foresee (`vol_5m` over the five returns after the predicted bar). From the
//! judgements: confusion matrices and rolling scores per variant, drift detectors over the
//! error stream and an input feature, and an online model that learns from every outcome.
//! Every feature vector and the published probability also go into a sliding window
//! compared with the model's reference profile per feature ([`api`] serves the report).

pub mod arena;
pub mod online;
pub mod registry_sync;
pub mod scores;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{Html, IntoResponse, Response};
use tidewatch_model::feature_drift::{DriftReport, FeatureDriftTracker};
use tidewatch_model::profile::ReferenceProfile;
use tidewatch_web::error::{ApiError, ErrorBody};
use utoipa_axum::{router::OpenApiRouter, routes};

use clap::Parser;
use metrics::{Counter, Gauge, Histogram};
use tidewatch_kafka::dlq::ENCODE_FAILED;
use tidewatch_kafka::service::StageArgs;
use tidewatch_kafka::stage::{Input, Outcome, Processor};
use tidewatch_kafka::trace::SpanContext;
use tidewatch_kafka::{Code, Record};
use tidewatch_model::monitor::DriftMonitor;
use tidewatch_model::{Model, Variant};
use tidewatch_schema::{
    FeatureRecord, OutcomeRecord, PredictionRecord, TOPIC_FEATURES, TOPIC_OUTCOMES,
    TOPIC_PREDICTIONS,
};
use tidewatch_telemetry::{catalog, TelemetryArgs};

use crate::arena::{Arena, Contender, Decision, Gate};
use crate::online::OnlineModel;
use crate::registry_sync::Lineup;
use crate::scores::RollingScore;
use tokio::sync::{mpsc, watch};

pub const SERVICE: &str = "prediction-consumer";

/// aggregate emitted features this stage cannot read or use: lost by the pipeline.
const MALFORMED_FEATURES: Code = Code::pipeline("malformed_features");
const INVALID_FEATURES: Code = Code::pipeline("invalid_features");

#[derive(Debug, Clone, Parser)]
#[command(
    name = "prediction-consumer",
    version,
    about = "Predicts volatility spikes from streamed features and learns from the outcomes"
)]
pub struct Settings {
    /// Address of the ops server (/metrics, /health).
    #[arg(long = "listen", env = "LISTEN_ADDR", default_value = "0.0.0.0:8001")]
    pub listen: SocketAddr,
    #[arg(long, env = "INPUT_TOPIC", default_value = TOPIC_FEATURES)]
    pub input_topic: String,
    #[arg(long, env = "OUTPUT_TOPIC", default_value = TOPIC_PREDICTIONS)]
    pub output_topic: String,
    /// Where each prediction's observed outcome is published once its horizon has passed.
    #[arg(long, env = "OUTCOMES_TOPIC", default_value = TOPIC_OUTCOMES)]
    pub outcomes_topic: String,
    #[arg(
        long = "model",
        env = "MODEL_PATH",
        default_value = "models/volatility-spike.json"
    )]
    pub model_path: PathBuf,
    /// The static model's variant whose predictions are published and watched for drift.
    #[arg(long, env = "MODEL_VARIANT", default_value = "ml", value_parser = parse_variant)]
    pub variant: Variant,
    /// Predictions held while waiting for their outcome, at most (oldest dropped beyond).
    #[arg(long, env = "MAX_PENDING", default_value_t = 10_000)]
    pub max_pending: usize,
    /// Step size of the online model's gradient updates.
    #[arg(long, env = "ONLINE_LEARNING_RATE", default_value_t = 0.01)]
    pub online_learning_rate: f64,
    /// The model's training data binned per feature (written by the trainer beside the
    /// artifact), which live features are compared with.
    #[arg(
        long = "reference-profile",
        env = "REFERENCE_PROFILE_PATH",
        default_value = "models/volatility-spike.profile.json"
    )]
    pub reference_profile_path: PathBuf,
    /// Live feature vectors (all symbols together) in the per-feature drift window. Measured
    /// on the simulated market (regimes switching as in training, 5 seeds x 50 hours): with
    /// 1,000 vectors PSI reached 0.73 with nothing changed, with 3,000 at most 0.21.
    #[arg(long, env = "FEATURE_DRIFT_WINDOW", default_value_t = 3_000)]
    pub feature_drift_window: usize,
    /// Vectors the window must hold before drift statistics are computed (a smaller window
    /// is noisier; see above).
    #[arg(long, env = "FEATURE_DRIFT_MIN_SAMPLES", default_value_t = 3_000)]
    pub feature_drift_min_samples: usize,
    /// PostgreSQL of the model registry. Set, the consumer serves the registry's champion
    /// (seeding an empty registry with `--model`), judges the challenger beside it, and
    /// promotes, rejects and rolls back; unset, it serves `--model` alone.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<secrecy::SecretString>,
    /// The registry database's password, when it is not in the URL.
    #[arg(long, env = "DATABASE_PASSWORD", hide_env_values = true)]
    pub database_password: Option<secrecy::SecretString>,
    /// Seconds between reads of the registry (how stale the served champion can be).
    #[arg(long, env = "REGISTRY_POLL_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub registry_poll_seconds: u64,
    /// Judged outcomes a challenger (and a champion against the previous one) needs before
    /// a decision; scores are compared over the last this many.
    #[arg(long, env = "PROMOTION_MIN_JUDGEMENTS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..))]
    pub promotion_min_judgements: u64,
    /// F1 a challenger must gain over the champion to be promoted, and the champion may
    /// lose to the previous champion before it is rolled back.
    #[arg(long, env = "PROMOTION_MARGIN", default_value_t = 0.02, value_parser = tidewatch_telemetry::runner::fraction)]
    pub promotion_margin: f64,
    #[command(flatten)]
    pub stage: StageArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

fn parse_variant(s: &str) -> Result<Variant, String> {
    s.parse()
}

impl tidewatch_telemetry::runner::ServiceSettings for Settings {
    fn telemetry(&self) -> &TelemetryArgs {
        &self.telemetry
    }
    fn public_view(&self) -> serde_json::Value {
        Settings::public_view(self)
    }
}

impl Settings {
    pub fn public_view(&self) -> serde_json::Value {
        serde_json::json!({
            "listen": self.listen.to_string(),
            "input_topic": self.input_topic,
            "output_topic": self.output_topic,
            "outcomes_topic": self.outcomes_topic,
            "model_path": self.model_path,
            "variant": self.variant.as_str(),
            "max_pending": self.max_pending,
            "online_learning_rate": self.online_learning_rate,
            "reference_profile_path": self.reference_profile_path,
            "feature_drift_window": self.feature_drift_window,
            "feature_drift_min_samples": self.feature_drift_min_samples,
            "registry": self.database_url.is_some(),
            "registry_poll_seconds": self.registry_poll_seconds,
            "promotion_min_judgements": self.promotion_min_judgements,
            "promotion_margin": self.promotion_margin,
            "stage": self.stage,
            "telemetry": self.telemetry,
        })
    }
}

/// A prediction waiting for its outcome.
#[derive(Debug, Clone)]
struct Pending {
    bar_start_ms: i64,
    /// Spike predicted by ml, baseline and the online model.
    predicted: [bool; 3],
    inputs: [f64; 6],
    /// Champion, challenger and previous champion: version and spike predicted.
    contenders: [Option<(i32, bool)>; 3],
    /// The span of the features the prediction was made from, for the outcome that judges
    /// it to link to (when traces are exported).
    span: Option<SpanContext>,
}

const VARIANTS: [&str; 3] = ["ml", "baseline", "online"];

/// The stage's logic.
pub struct PredictionConsumer {
    output_topic: String,
    outcomes_topic: String,
    model: Model,
    variant: Variant,
    horizon_minutes: u64,
    spike_threshold: f64,
    online: OnlineModel,
    pending: HashMap<String, VecDeque<Pending>>,
    pending_total: usize,
    max_pending: usize,
    scores: [RollingScore; 3],
    drift: DriftMonitor,
    /// Shared with the report endpoint, which builds its report under the lock (the stage
    /// takes it once per vector, uncontended but for a report request).
    features: Arc<Mutex<FeatureDriftTracker>>,
    feature_drift_window: (usize, usize),
    metrics: ConsumerMetrics,
    /// With the registry: the line-up judged on outcomes, its updates and where decisions go.
    arena: Option<RegistryLink>,
}

/// The stage's end of the registry task.
struct RegistryLink {
    arena: Arena,
    lineup: watch::Receiver<Lineup>,
    decisions: mpsc::UnboundedSender<Decision>,
}

struct ConsumerMetrics {
    served: [(Counter, Counter); 2],
    probability: [Histogram; 2],
    pending: Gauge,
    dropped_full: Counter,
    dropped_gap: Counter,
    updates: Counter,
    last_update: Gauge,
}

impl std::fmt::Debug for PredictionConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PredictionConsumer")
            .field("variant", &self.variant)
            .field("pending", &self.pending_total)
            .finish_non_exhaustive()
    }
}

/// Reads a reference profile and checks it describes `model`.
pub fn load_profile(path: &std::path::Path, model: &Model) -> anyhow::Result<ReferenceProfile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read reference profile {}", path.display()))?;
    let profile = ReferenceProfile::from_json(&text)
        .map_err(|e| anyhow::anyhow!("reference profile {} is invalid: {e}", path.display()))?;
    anyhow::ensure!(
        profile.model_version == model.artifact().version,
        "reference profile {} describes model {}, not the served {}",
        path.display(),
        profile.model_version,
        model.artifact().version
    );
    Ok(profile)
}

/// How `GET /v1/drift/report` answers: `json` (the default) or `html`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReportQuery {
    /// `json`, or `html` for a page with the histograms; without it, a browser's
    /// `Accept: text/html` gets the page.
    #[param(inline, value_type = Option<ReportFormat>)]
    format: Option<String>,
}

/// The formats of `GET /v1/drift/report`.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // documents the values `format` accepts
enum ReportFormat {
    Json,
    Html,
}

/// `GET /v1/drift/report`: per-feature drift against the training data, as JSON or (with
/// `?format=html`, or a browser's `Accept: text/html`) as a page with the histograms.
pub fn api(tracker: Arc<Mutex<FeatureDriftTracker>>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(drift_report_route))
        .with_state(tracker)
}

/// Per-feature drift of the recent window against the training data.
#[utoipa::path(get, path = "/v1/drift/report", tag = "drift", params(ReportQuery),
    responses(
        (status = 200, description = "The report",
            content((DriftReport = "application/json"), (String = "text/html"))),
        (status = 400, description = "The query string cannot be read", body = ErrorBody),
        (status = 422, description = "`format` is neither json nor html", body = ErrorBody),
    ))]
async fn drift_report_route(
    State(tracker): State<Arc<Mutex<FeatureDriftTracker>>>,
    query: Result<Query<ReportQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    drift_report(&tracker, query, &headers)
}

fn lock(tracker: &Mutex<FeatureDriftTracker>) -> std::sync::MutexGuard<'_, FeatureDriftTracker> {
    tracker.lock().unwrap_or_else(|e| e.into_inner())
}

fn drift_report(
    tracker: &Mutex<FeatureDriftTracker>,
    query: Result<Query<ReportQuery>, axum::extract::rejection::QueryRejection>,
    headers: &HeaderMap,
) -> Response {
    let format = match query {
        Ok(Query(q)) => q.format,
        Err(e) => {
            return ApiError::client(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid_query",
                Some("query"),
                format!(
                    "the query string cannot be read (this endpoint takes format): {}",
                    e.body_text()
                ),
            )
            .into_response()
        }
    };
    let html = match format.as_deref() {
        Some("html") => true,
        Some("json") => false,
        Some(other) => {
            return ApiError::invalid(
                "format",
                "invalid_format",
                format!("format must be json or html, not {other:?}"),
            )
            .into_response()
        }
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.split(',').any(|t| t.trim().starts_with("text/html"))),
    };
    let report = lock(tracker).report();
    if html {
        Html(report.html()).into_response()
    } else {
        axum::Json(report).into_response()
    }
}

impl PredictionConsumer {
    pub fn new(
        settings: &Settings,
        model: Model,
        profile: ReferenceProfile,
    ) -> anyhow::Result<Self> {
        let training = &model.artifact().training;
        // The outcome is read from the judging bar's vol_5m: five returns after the bar.
        anyhow::ensure!(
            training.horizon_minutes == 5,
            "the model's horizon is {} minutes; outcomes can only be judged for 5",
            training.horizon_minutes
        );
        let served = served_counters(&model.artifact().version, settings.variant);
        let probability = [settings.variant.as_str(), "online"]
            .map(|v| catalog::PREDICTION_PROBABILITY.histogram(&[("variant", v)]));
        let metrics = ConsumerMetrics {
            served,
            probability,
            pending: catalog::PENDING_PREDICTIONS.gauge(&[]),
            dropped_full: catalog::PENDING_DROPPED.counter(&[("reason", "full")]),
            dropped_gap: catalog::PENDING_DROPPED.counter(&[("reason", "gap")]),
            updates: catalog::ONLINE_UPDATES.counter(&[]),
            last_update: catalog::ONLINE_LAST_UPDATE.gauge(&[]),
        };
        for c in [
            &metrics.dropped_full,
            &metrics.dropped_gap,
            &metrics.updates,
        ] {
            c.absolute(0);
        }
        Ok(Self {
            output_topic: settings.output_topic.clone(),
            outcomes_topic: settings.outcomes_topic.clone(),
            horizon_minutes: training.horizon_minutes,
            spike_threshold: training.spike_threshold,
            online: OnlineModel::from_static(&model, settings.online_learning_rate),
            model,
            variant: settings.variant,
            pending: HashMap::new(),
            pending_total: 0,
            max_pending: settings.max_pending.max(1),
            scores: VARIANTS.map(RollingScore::new),
            drift: DriftMonitor::default(),
            features: Arc::new(Mutex::new(FeatureDriftTracker::new(
                profile,
                settings.feature_drift_window,
                settings.feature_drift_min_samples,
            ))),
            feature_drift_window: (
                settings.feature_drift_window,
                settings.feature_drift_min_samples,
            ),
            metrics,
            arena: None,
        })
    }

    /// Serves the registry's line-up from now on: `lineup`'s champion replaces the model
    /// given to [`PredictionConsumer::new`], every later change is picked up between two
    /// messages, and decisions go to `decisions`.
    pub fn with_registry(
        mut self,
        settings: &Settings,
        lineup: watch::Receiver<Lineup>,
        decisions: mpsc::UnboundedSender<Decision>,
    ) -> Self {
        let gate = Gate {
            min_judgements: settings.promotion_min_judgements as usize,
            margin: settings.promotion_margin,
        };
        let current = lineup.borrow().clone();
        let (v, model, profile) = current.champion.clone();
        let arena = Arena::new(
            gate,
            self.feature_drift_window,
            Contender::new(v, model, profile, self.feature_drift_window),
        );
        self.arena = Some(RegistryLink {
            arena,
            lineup,
            decisions,
        });
        self.apply_lineup(current);
        self
    }

    /// Takes a new line-up: a new champion serves (and its profile is what live features
    /// are compared with) from the next message on.
    fn apply_lineup(&mut self, lineup: Lineup) {
        let Some(link) = self.arena.as_mut() else {
            return;
        };
        let (version, model, profile) = lineup.champion.clone();
        if model.artifact().version != self.model.artifact().version {
            tracing::info!(
                registry_version = version,
                model_version = model.artifact().version,
                "serving a new champion"
            );
            self.metrics.served = served_counters(&model.artifact().version, self.variant);
            let (window, min) = self.feature_drift_window;
            *lock(&self.features) = FeatureDriftTracker::new(profile, window, min);
            self.model = model;
        }
        link.arena
            .replace(lineup.champion, lineup.challenger, lineup.previous);
    }

    /// Per-feature drift now (what [`api`] serves).
    pub fn feature_drift(&self) -> DriftReport {
        lock(&self.features).report()
    }

    /// The tracker [`api`] reports from.
    pub fn drift_tracker(&self) -> Arc<Mutex<FeatureDriftTracker>> {
        self.features.clone()
    }

    pub fn scores(&self, variant: &str) -> Option<scores::Scores> {
        VARIANTS
            .iter()
            .position(|v| *v == variant)
            .map(|i| self.scores[i].scores())
    }

    pub fn drift(&self) -> &DriftMonitor {
        &self.drift
    }

    pub fn online_updates(&self) -> u64 {
        self.online.updates()
    }

    /// Judges this symbol's pending prediction that `f` (a later bar) decides, if any,
    /// and returns the outcome to publish.
    /// The outcome of the prediction `f` judges, with the span of the features it was made
    /// from.
    fn judge(&mut self, f: &FeatureRecord) -> Option<(OutcomeRecord, Option<SpanContext>)> {
        let interval_ms = i64::from(f.interval_seconds) * 1000;
        let target = f.bar_start_ms - self.horizon_minutes as i64 * interval_ms;
        let actual = f.features.vol_5m > self.spike_threshold;
        let queue = self.pending.get_mut(&f.symbol)?;
        let mut judged = None;
        while let Some(front) = queue.front() {
            if front.bar_start_ms > target {
                break;
            }
            let p = queue.pop_front().expect("front exists");
            self.pending_total -= 1;
            if p.bar_start_ms == target {
                judged = Some(p);
            } else {
                // Its judging bar never came (a gap in the symbol's bars).
                self.metrics.dropped_gap.increment(1);
            }
        }
        let p = judged?;
        for (score, predicted) in self.scores.iter_mut().zip(p.predicted) {
            score.record(predicted, actual);
        }
        if let Some(link) = self.arena.as_mut() {
            if let Some(decision) = link.arena.judge(p.contenders, actual) {
                tracing::info!(decision = decision.label(), ?decision, "model decision");
                let _ = link.decisions.send(decision);
            }
        }
        let published = usize::from(self.variant == Variant::Baseline);
        self.drift.error(p.predicted[published] != actual);
        self.online.learn(&p.inputs, actual);
        self.metrics.updates.increment(1);
        self.metrics.last_update.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        let outcome = OutcomeRecord {
            symbol: f.symbol.clone(),
            bar_start_ms: p.bar_start_ms,
            horizon_minutes: self.horizon_minutes,
            judged_by_bar_start_ms: f.bar_start_ms,
            realised_volatility: f.features.vol_5m,
            spike_threshold: self.spike_threshold,
            spike: actual,
        };
        Some((outcome, p.span))
    }

    fn hold(&mut self, symbol: &str, pending: Pending) {
        if self.pending_total >= self.max_pending {
            // Drop the oldest prediction of all symbols.
            let oldest = self
                .pending
                .iter()
                .filter_map(|(s, q)| q.front().map(|p| (p.bar_start_ms, s.clone())))
                .min();
            if let Some((_, s)) = oldest {
                if let Some(q) = self.pending.get_mut(&s) {
                    q.pop_front();
                    self.pending_total -= 1;
                    self.metrics.dropped_full.increment(1);
                }
            }
        }
        self.pending
            .entry(symbol.to_owned())
            .or_default()
            .push_back(pending);
        self.pending_total += 1;
    }
}

impl Processor for PredictionConsumer {
    fn error_codes(&self) -> &'static [Code] {
        &[MALFORMED_FEATURES, INVALID_FEATURES, ENCODE_FAILED]
    }

    async fn process(&mut self, input: &Input<'_>) -> Outcome {
        let f: FeatureRecord = match serde_json::from_slice(input.payload) {
            Ok(f) => f,
            Err(e) => {
                return Outcome::DeadLetter {
                    code: MALFORMED_FEATURES,
                    reason: format!("not a feature record: {e}"),
                }
            }
        };
        if f.features.to_array().iter().any(|v| !v.is_finite()) {
            return Outcome::DeadLetter {
                code: INVALID_FEATURES,
                reason: "a feature is not a finite number".to_owned(),
            };
        }
        let changed = self.arena.as_mut().and_then(|l| {
            l.lineup
                .has_changed()
                .ok()
                .filter(|c| *c)
                .map(|_| l.lineup.borrow_and_update().clone())
        });
        if let Some(lineup) = changed {
            self.apply_lineup(lineup);
        }
        let outcome = self.judge(&f);
        self.drift
            .input((f.features.vol_5m / (4.0 * self.spike_threshold)).min(1.0));
        let ml = self.model.predict(Variant::Ml, &f.features);
        let baseline = self.model.predict(Variant::Baseline, &f.features);
        let inputs = self.model.inputs(&f.features);
        let (online_p, online_spike) = self.online.predict(&inputs);
        let published = if self.variant == Variant::Ml {
            ml
        } else {
            baseline
        };
        lock(&self.features).push(f.bar_start_ms, &f.features, published.probability);
        for (i, (p, spike)) in [
            (published.probability, published.spike),
            (online_p, online_spike),
        ]
        .into_iter()
        .enumerate()
        {
            let (yes, no) = &self.metrics.served[i];
            if spike { yes } else { no }.increment(1);
            self.metrics.probability[i].record(p);
        }
        let contenders = self
            .arena
            .as_mut()
            .map_or([None; 3], |l| l.arena.predict(f.bar_start_ms, &f.features));
        self.hold(
            &f.symbol,
            Pending {
                bar_start_ms: f.bar_start_ms,
                predicted: [ml.spike, baseline.spike, online_spike],
                inputs,
                contenders,
                span: input.span.clone(),
            },
        );
        self.metrics.pending.set(self.pending_total as f64);
        let record = PredictionRecord {
            symbol: f.symbol.clone(),
            bar_start_ms: f.bar_start_ms,
            bar_end_ms: f.bar_end_ms,
            horizon_minutes: self.horizon_minutes,
            model_version: self.model.artifact().version.clone(),
            variant: self.variant.as_str().to_owned(),
            probability: published.probability,
            spike: published.spike,
            online_probability: online_p,
            online_spike,
        };
        let mut records = Vec::with_capacity(2);
        // The prediction's send span is a child of the features' process span, and links
        // to it too, so it is found from the features whatever a viewer follows.
        match Record::json(&self.output_topic, &f.symbol, &record) {
            Ok(r) => records.push(r.linked(input.span.clone())),
            Err(e) => return Outcome::encode_failed(&e),
        }
        if let Some((outcome, predicted_from)) = outcome {
            match Record::json(&self.outcomes_topic, &f.symbol, &outcome) {
                Ok(r) => records.push(r.linked(predicted_from)),
                Err(e) => return Outcome::encode_failed(&e),
            }
        }
        Outcome::Emit(records)
    }
}

/// The served-predictions counters of one model version.
fn served_counters(version: &str, variant: Variant) -> [(Counter, Counter); 2] {
    [variant.as_str(), "online"].map(|v| {
        let c = |o| {
            let c =
                catalog::PREDICTIONS.counter(&[("model", version), ("variant", v), ("outcome", o)]);
            c.absolute(0);
            c
        };
        (c("spike"), c("no_spike"))
    })
}
