//! `generator`: publishes the seeded synthetic market to `trades.raw` in two venue formats,
//! with bad records, late trades, unknown symbols and labelled anomalies planted at set
//! rates (headers `tidewatch.sim.*` say which is which), paced by a rate and optionally
//! by accelerated event time. Admin endpoints change the rate and the market's regime and
//! pause or resume publishing.

pub mod control;
pub mod routes;
pub mod stream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use futures::stream::{FuturesUnordered, StreamExt as _};
use metrics::{Counter, Gauge};
use secrecy::SecretString;
use tidewatch_kafka::{ensure_topics, trace, KafkaArgs, Producer, Record};
use tidewatch_market_sim::{AnomalySeverity, MarketConfig, Regime, SymbolSpec, DEFAULT_SYMBOLS};
use tidewatch_schema::{HEADER_SIM_ANOMALY, HEADER_SIM_KIND, TOPIC_TRADES_RAW};
use tidewatch_telemetry::server::{instrument, ops_router, serve};
use tidewatch_telemetry::{
    catalog, ComponentHealth, Criticality, Shutdown, Telemetry, TelemetryArgs,
};
use tidewatch_web::faults::{self, Fault, Faults};
use tidewatch_web::openapi;
use tokio::net::TcpListener;
use utoipa_axum::router::OpenApiRouter;

use crate::control::{Control, Pacer};
use crate::stream::{anomaly_str, Kind, Mix, RecordStream};

pub const SERVICE: &str = "generator";
/// Deliveries awaited at once; beyond this the generator waits for the broker.
const MAX_IN_FLIGHT: usize = 20_000;
/// Records waiting or failing with none acknowledged for this long make readiness fail...
const DELIVERY_STALL_UNREADY: Duration = Duration::from_secs(10);
/// ...and, while the broker answers, for this long the producer is renewed: a broker
/// restarted without its state has forgotten the producer id, and librdkafka then either
/// calls the producer fatal, fails every send, or holds the records until its message
/// timeout (60 s), depending on timing.
const DELIVERY_STALL_RENEW: Duration = Duration::from_secs(20);

/// Whether records still reach the broker: records in flight, failures since the last
/// acknowledgement, and since when nothing was delivered while there was something to
/// deliver. Shared by the publishing loop (which renews a stalled producer) and the
/// readiness check.
#[derive(Debug)]
struct DeliveryWatch {
    start: Instant,
    in_flight: AtomicU64,
    failed_since_ack: AtomicU64,
    /// The last acknowledgement, or the first send after an idle spell without failures.
    progress_ms: AtomicU64,
}

/// Why records are not being delivered: failed sends and time without progress.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stall {
    in_flight: u64,
    failed: u64,
    for_: Duration,
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "none of the records was acknowledged for {} s ({} in flight, {} failed)",
            self.for_.as_secs(),
            self.in_flight,
            self.failed
        )
    }
}

impl DeliveryWatch {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            in_flight: AtomicU64::new(0),
            failed_since_ack: AtomicU64::new(0),
            progress_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn sent(&self) {
        let idle = self.in_flight.fetch_add(1, Ordering::Relaxed) == 0;
        if idle && self.failed_since_ack.load(Ordering::Relaxed) == 0 {
            self.progress_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    fn answered(&self, ok: bool) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if ok {
            self.restart();
        } else {
            self.failed_since_ack.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Starts the watch over, as after an acknowledgement (or with a new producer).
    fn restart(&self) {
        self.progress_ms.store(self.now_ms(), Ordering::Relaxed);
        self.failed_since_ack.store(0, Ordering::Relaxed);
    }

    /// `None` while every record sent was acknowledged or is young enough to be.
    fn stall(&self, at_least: Duration) -> Option<Stall> {
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let failed = self.failed_since_ack.load(Ordering::Relaxed);
        let for_ = Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.progress_ms.load(Ordering::Relaxed)),
        );
        (in_flight + failed > 0 && for_ >= at_least).then_some(Stall {
            in_flight,
            failed,
            for_,
        })
    }
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "generator",
    version,
    about = "Publishes a seeded synthetic market's raw trades to Kafka"
)]
pub struct Settings {
    /// Address of the HTTP server (status, admin, /metrics, /health).
    #[arg(long = "listen", env = "LISTEN_ADDR", default_value = "0.0.0.0:9100")]
    pub listen: SocketAddr,
    #[arg(long, env = "OUTPUT_TOPIC", default_value = TOPIC_TRADES_RAW)]
    pub output_topic: String,
    /// Seed of the market and of what is planted: the same seed gives the same records.
    #[arg(long, env = "SEED", default_value_t = 42)]
    pub seed: u64,
    /// Symbols to simulate, comma-separated (default: all of the simulator's).
    #[arg(long, env = "SYMBOLS", value_delimiter = ',')]
    pub symbols: Vec<String>,
    /// Records per second; 0 publishes as fast as the broker takes them.
    #[arg(long, env = "RATE", default_value_t = 300)]
    pub rate: u64,
    /// Event seconds per wall second (60: one-minute bars close every second); 0 lets the
    /// rate alone set the pace.
    #[arg(long, env = "TIME_SCALE", default_value_t = 0.0, value_parser = non_negative)]
    pub time_scale: f64,
    /// Share of records planted as bad: malformed, missing price, negative price or
    /// unknown symbol, in equal parts.
    #[arg(long, env = "BAD_FRACTION", default_value_t = 0.01, value_parser = tidewatch_telemetry::runner::fraction)]
    pub bad_fraction: f64,
    /// Share of trades held back and published minutes late.
    #[arg(long, env = "LATE_FRACTION", default_value_t = 0.002, value_parser = tidewatch_telemetry::runner::fraction)]
    pub late_fraction: f64,
    /// Share of trades turned into labelled anomalies (price jumps, outsized sizes).
    #[arg(long, env = "ANOMALY_RATE", default_value_t = 0.002, value_parser = tidewatch_telemetry::runner::fraction)]
    pub anomaly_rate: f64,
    /// How far planted anomalies stray: `mild` (inside enrich's warning band) or `severe`
    /// (past its critical thresholds). `PUT /v1/admin/anomalies` changes both at run time.
    #[arg(long, env = "ANOMALY_SEVERITY", default_value = "mild", value_parser = anomaly_severity)]
    pub anomaly_severity: AnomalySeverity,
    /// Event time of the first simulated minute: RFC 3339, or `now`. Default: the
    /// simulator's fixed epoch, so runs are reproducible.
    #[arg(long, env = "START_TIME")]
    pub start_time: Option<String>,
    /// Continue the market found in the output topic: event time from the minute after its
    /// newest trade (or START_TIME, if later) and each symbol's last price, so a restarted
    /// generator does not publish trades the pipeline has already passed. An empty topic
    /// starts as without this flag.
    #[arg(long, env = "RESUME_FROM_TOPIC", default_value_t = false)]
    pub resume_from_topic: bool,
    /// A directory where the generator keeps where its market is (written every second and
    /// at exit), so `--resume-from-topic` continues it even when the broker lost the topic.
    #[arg(long, env = "STATE_DIR")]
    pub state_dir: Option<std::path::PathBuf>,
    /// Stop after publishing this many records (0: run until stopped).
    #[arg(long, env = "MAX_RECORDS", default_value_t = 0)]
    pub max_records: u64,
    /// Bearer token for the admin endpoints; without one they answer 403.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 16 * 1024)]
    pub max_body_bytes: usize,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

fn non_negative(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{v} must be a finite number >= 0"))
    }
}

fn anomaly_severity(s: &str) -> Result<AnomalySeverity, String> {
    AnomalySeverity::parse(s).ok_or_else(|| format!("{s:?} is not mild or severe"))
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
    /// The market configuration these settings describe, or why they describe none.
    pub fn market(&self) -> anyhow::Result<MarketConfig> {
        anyhow::ensure!(
            self.bad_fraction + self.late_fraction <= 1.0,
            "bad_fraction + late_fraction must not exceed 1"
        );
        let mut config = MarketConfig::new(self.seed);
        config.anomaly_rate = self.anomaly_rate;
        config.anomaly_severity = self.anomaly_severity;
        if !self.symbols.is_empty() {
            config.symbols = self
                .symbols
                .iter()
                .map(|s| {
                    DEFAULT_SYMBOLS
                        .iter()
                        .find(|spec| spec.symbol == s.trim())
                        .copied()
                        .with_context(|| {
                            format!(
                                "unknown symbol {s:?}; known: {}",
                                DEFAULT_SYMBOLS
                                    .iter()
                                    .map(|s| s.symbol)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        })
                })
                .collect::<anyhow::Result<Vec<SymbolSpec>>>()?;
        }
        if let Some(start) = &self.start_time {
            let ms = if start == "now" {
                time::OffsetDateTime::now_utc().unix_timestamp() * 1000
            } else {
                let t = time::OffsetDateTime::parse(
                    start,
                    &time::format_description::well_known::Rfc3339,
                )
                .with_context(|| format!("start time {start:?} is not RFC 3339 or `now`"))?;
                (t.unix_timestamp_nanos() / 1_000_000) as i64
            };
            // Minutes start on the minute, as bars do.
            config.start_ms = ms - ms.rem_euclid(60_000);
        }
        Ok(config)
    }

    pub fn mix(&self) -> Mix {
        Mix {
            bad_fraction: self.bad_fraction,
            late_fraction: self.late_fraction,
        }
    }

    /// The settings as logged and shown by `/v1/status`: no secrets.
    pub fn public_view(&self) -> serde_json::Value {
        serde_json::json!({
            "listen": self.listen.to_string(),
            "output_topic": self.output_topic,
            "seed": self.seed,
            "symbols": self.symbols,
            "rate": self.rate,
            "time_scale": self.time_scale,
            "bad_fraction": self.bad_fraction,
            "late_fraction": self.late_fraction,
            "anomaly_rate": self.anomaly_rate,
            "anomaly_severity": self.anomaly_severity.as_str(),
            "start_time": self.start_time,
            "resume_from_topic": self.resume_from_topic,
            "state_dir": self.state_dir,
            "max_records": self.max_records,
            "admin_token_set": self.admin_token.is_some(),
            "kafka": self.kafka,
            "telemetry": self.telemetry,
        })
    }
}

/// What `/v1/status` reports, kept current by the publishing loop.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Progress {
    pub published: HashMap<&'static str, u64>,
    pub failed: u64,
    pub event_time_ms: Option<i64>,
    pub regimes: HashMap<&'static str, &'static str>,
    pub finished: bool,
    /// Where the market continued from (`--resume-from-topic`), if it did.
    pub resumed_from: Option<Resume>,
}

/// Where a market continues: the minute after the newest trade already published, and
/// each symbol's price at its newest trade.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Resume {
    pub start_ms: i64,
    pub prices: Vec<(String, f64)>,
}

/// The file in `--state-dir` that holds the market's [`Resume`] point.
const STATE_FILE: &str = "market.json";

/// The resume point a previous run saved in `dir`, if any; a file that cannot be read is
/// reported and ignored (the topic still tells where to go on).
fn load_state(dir: &std::path::Path) -> Option<Resume> {
    let path = dir.join(STATE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .inspect_err(|e| tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable state file"))
            .ok(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable state file");
            None
        }
    }
}

/// Saves `resume` in `dir` atomically (a whole old file or a whole new one, never half).
fn save_state(dir: &std::path::Path, resume: &Resume) -> std::io::Result<()> {
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    std::fs::write(
        &tmp,
        serde_json::to_vec(resume).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, dir.join(STATE_FILE))
}

/// How many of each partition's newest messages are read to find where to continue: enough
/// to hold every symbol's last trade at the generator's rates.
const RESUME_TAIL: i64 = 500;

/// Where to continue after the raw records `tail` (a topic's newest messages): `None` when
/// none of them is a valid trade. Late and bad records do not move it: the newest event
/// time among valid trades decides.
pub fn resume_point(tail: &[tidewatch_kafka::inspect::ReadMessage]) -> Option<Resume> {
    let mut newest: HashMap<String, (i64, f64)> = HashMap::new();
    for m in tail {
        let Ok(trade) = tidewatch_schema::decode_raw(&m.payload, 0) else {
            continue;
        };
        let entry = newest
            .entry(trade.symbol)
            .or_insert((trade.event_time_ms, trade.price));
        if trade.event_time_ms >= entry.0 {
            *entry = (trade.event_time_ms, trade.price);
        }
    }
    let last_ms = newest.values().map(|(t, _)| *t).max()?;
    let mut prices: Vec<(String, f64)> = newest.into_iter().map(|(s, (_, p))| (s, p)).collect();
    prices.sort_by(|a, b| a.0.cmp(&b.0));
    Some(Resume {
        start_ms: last_ms - last_ms.rem_euclid(60_000) + 60_000,
        prices,
    })
}

struct GeneratorMetrics {
    records: HashMap<Kind, Counter>,
    target_rate: Gauge,
    rate: Gauge,
    pacing_wait: Gauge,
    paused: Gauge,
    event_time: Gauge,
    regimes: Vec<(&'static str, [Gauge; 3])>,
}

impl GeneratorMetrics {
    fn new(symbols: &[SymbolSpec]) -> Self {
        let records = Kind::ALL
            .into_iter()
            .map(|k| {
                let c = catalog::GENERATOR_RECORDS.counter(&[("kind", k.as_str())]);
                c.absolute(0);
                (k, c)
            })
            .collect();
        let regimes = symbols
            .iter()
            .map(|s| {
                (
                    s.symbol,
                    Regime::ALL.map(|r| {
                        catalog::MARKET_REGIME
                            .gauge(&[("symbol", s.symbol), ("regime", r.as_str())])
                    }),
                )
            })
            .collect();
        Self {
            records,
            target_rate: catalog::GENERATOR_TARGET_RATE.gauge(&[]),
            rate: catalog::GENERATOR_RATE.gauge(&[]),
            pacing_wait: catalog::GENERATOR_PACING_WAIT.gauge(&[]),
            paused: catalog::GENERATOR_PAUSED.gauge(&[]),
            event_time: catalog::GENERATOR_EVENT_TIME.gauge(&[]),
            regimes,
        }
    }
}

/// Shared between the publishing loop and the HTTP handlers.
#[derive(Debug)]
pub struct Shared {
    pub control: Control,
    pub progress: Mutex<Progress>,
    pub settings: serde_json::Value,
}

impl Shared {
    /// Publishes the loop's progress to `/v1/status`.
    fn report(
        &self,
        published: &HashMap<&'static str, u64>,
        failed: u64,
        event_time_ms: Option<i64>,
        regimes: &HashMap<&'static str, &'static str>,
        finished: bool,
    ) {
        let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        p.published.clone_from(published);
        p.failed = failed;
        p.event_time_ms = event_time_ms;
        p.regimes.clone_from(regimes);
        p.finished = finished;
    }
}

/// A built generator: topic present, producer connected, listener bound.
pub struct Generator {
    listener: TcpListener,
    telemetry: Telemetry,
    producer: Producer,
    shared: Arc<Shared>,
    admin: tidewatch_web::AdminAuth,
    stream: RecordStream,
    symbols: Vec<SymbolSpec>,
    topic: String,
    time_scale: f64,
    max_records: u64,
    max_body_bytes: usize,
    state_dir: Option<std::path::PathBuf>,
    kafka: KafkaArgs,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Generator {
    pub async fn build(settings: &Settings, telemetry: Telemetry) -> anyhow::Result<Self> {
        let mut market = settings.market()?;
        ensure_topics(
            &settings.kafka.brokers,
            &[&settings.output_topic],
            settings.kafka.topic_partitions,
        )
        .await
        .with_context(|| {
            format!(
                "broker {} unreachable or refusing topics",
                settings.kafka.brokers
            )
        })?;
        let mut resumed_from = None;
        if settings.resume_from_topic {
            let (brokers, topic) = (
                settings.kafka.brokers.clone(),
                settings.output_topic.clone(),
            );
            let tail = tokio::task::spawn_blocking(move || {
                tidewatch_kafka::inspect::read_tail(
                    &brokers,
                    &topic,
                    RESUME_TAIL,
                    Duration::from_secs(20),
                )
            })
            .await
            .context("reading the output topic's newest records")?
            .context("reading the output topic's newest records")?;
            let from_topic = resume_point(&tail);
            let from_file = settings.state_dir.as_deref().and_then(load_state);
            tracing::info!(
                records_read = tail.len(),
                topic_start_ms = from_topic.as_ref().map(|r| r.start_ms),
                state_file_start_ms = from_file.as_ref().map(|r| r.start_ms),
                "looking for a market to continue"
            );
            // The later of the two: the topic may be gone (a broker that lost its data), the
            // file may be missing or a second behind.
            let resume = [from_topic, from_file]
                .into_iter()
                .flatten()
                .max_by_key(|r| r.start_ms);
            match resume {
                Some(resume) if resume.start_ms > market.start_ms => {
                    tracing::info!(start_ms = resume.start_ms, "continuing the market");
                    market.start_ms = resume.start_ms;
                    market.start_prices.clone_from(&resume.prices);
                    // New random draws for the new stretch, not a replay of the first minutes'.
                    market.seed = market.seed.wrapping_add((resume.start_ms / 60_000) as u64);
                    resumed_from = Some(resume);
                }
                Some(_) => tracing::info!(
                    "the market to continue ends before the start time; starting there"
                ),
                None => tracing::info!("no market to continue; starting afresh"),
            }
        }
        let producer = Producer::new(&settings.kafka.brokers, SERVICE)?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        Ok(Self {
            listener,
            telemetry,
            producer,
            shared: Arc::new(Shared {
                control: Control::new(
                    settings.rate,
                    settings.bad_fraction,
                    (settings.anomaly_rate, settings.anomaly_severity),
                ),
                progress: Mutex::new(Progress {
                    resumed_from,
                    ..Progress::default()
                }),
                settings: settings.public_view(),
            }),
            admin: tidewatch_web::AdminAuth::new(
                settings.admin_token.clone().map(SecretString::from),
            ),
            stream: RecordStream::new(&market, settings.mix()),
            symbols: market.symbols.clone(),
            topic: settings.output_topic.clone(),
            time_scale: settings.time_scale,
            max_records: settings.max_records,
            max_body_bytes: settings.max_body_bytes,
            state_dir: settings.state_dir.clone(),
            kafka: settings.kafka.clone(),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Publishes until `shutdown` (or `max_records`), then waits for every delivery.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let Self {
            listener,
            telemetry,
            producer,
            shared,
            admin,
            stream,
            symbols,
            topic,
            time_scale,
            max_records,
            max_body_bytes,
            state_dir,
            kafka,
        } = self;
        tidewatch_kafka::spawn_topic_guard(
            kafka.brokers,
            vec![topic.clone()],
            kafka.topic_partitions,
            shutdown.clone(),
        );
        let watch = Arc::new(DeliveryWatch::new());
        telemetry
            .health
            .register("delivery", Criticality::Critical, {
                let watch = watch.clone();
                move || {
                    let stall = watch.stall(DELIVERY_STALL_UNREADY);
                    async move {
                        match stall {
                            Some(stall) => ComponentHealth::unhealthy(stall.to_string()),
                            None => ComponentHealth::healthy("records are acknowledged"),
                        }
                    }
                }
            });
        let probe = producer.clone();
        telemetry
            .health
            .register("broker", Criticality::Critical, move || {
                let probe = probe.clone();
                async move {
                    match probe_broker(&probe).await {
                        Ok(()) => ComponentHealth::healthy("broker reachable"),
                        Err(e) => ComponentHealth::unhealthy(format!("broker unreachable: {e:#}")),
                    }
                }
            });
        tracing::info!(addr = %listener.local_addr()?, topic, "listening");
        let admin = Arc::new(admin);
        // A slowdown makes every record cost more: the generator falls short of its rate
        // (LowGenerationRate) as it would without enough CPU.
        let faults = Faults::new(&[Fault::SlowdownMs]);
        faults.register_health(&telemetry.health);
        let (api, doc) = OpenApiRouter::with_openapi(openapi::document(
            "Tidewatch generator",
            "The seeded market: its status, and run-time control behind the admin token.",
        ))
        .merge(routes::router(routes::AppState::new(
            shared.clone(),
            admin.clone(),
            max_body_bytes,
        )))
        .merge(faults::router(faults.clone(), admin, max_body_bytes))
        .split_for_parts();
        let app = instrument(openapi::finish(
            api.merge(ops_router(telemetry.clone())),
            &doc,
        ));
        let server_stop = Shutdown::new();
        let server = tokio::spawn({
            let (telemetry, stop) = (telemetry.clone(), server_stop.clone());
            async move { serve(listener, app, &telemetry, stop, Duration::from_secs(5)).await }
        });
        let outcome = publish(
            &producer,
            &watch,
            &shared,
            stream,
            &symbols,
            &topic,
            time_scale,
            max_records,
            state_dir.as_deref(),
            &faults,
            &shutdown,
        )
        .await;
        server_stop.trigger();
        server
            .await
            .context("HTTP server task")?
            .context("HTTP server")?;
        outcome
    }
}

/// Asks the broker for its metadata (within 1.5 s), on a blocking thread: readiness, and
/// whether renewing a stalled producer can help.
async fn probe_broker(producer: &Producer) -> anyhow::Result<()> {
    let probe = producer.clone();
    tokio::task::spawn_blocking(move || probe.probe(Duration::from_millis(1500)))
        .await
        .context("the probe's thread")?
}

#[allow(clippy::too_many_arguments)]
async fn publish(
    producer: &Producer,
    watch: &DeliveryWatch,
    shared: &Shared,
    mut stream: RecordStream,
    symbols: &[SymbolSpec],
    topic: &str,
    time_scale: f64,
    max_records: u64,
    state_dir: Option<&std::path::Path>,
    faults: &Faults,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let save = |stream: &RecordStream| {
        if let Some(dir) = state_dir {
            if let Err(e) = save_state(dir, &stream.continuation()) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not save where the market is");
            }
        }
    };
    let metrics = GeneratorMetrics::new(symbols);
    let control = &shared.control;
    let mut rate = control.rate();
    metrics.target_rate.set(rate as f64);
    let mut pacer = Pacer::new(rate, time_scale);
    let mut deliveries = FuturesUnordered::new();
    let mut queued: u64 = 0;
    let (mut second_start, mut second_count) = (Instant::now(), 0u64);
    // Time spent waiting for the pace in the current second.
    let mut waited = Duration::ZERO;
    let mut acked: HashMap<&'static str, u64> = HashMap::new();
    let mut failed = 0u64;
    let mut last_event = None;
    let update_regimes = |stream: &RecordStream| {
        let mut regimes = HashMap::new();
        for (symbol, gauges) in &metrics.regimes {
            let current = stream.regime(symbol);
            for (r, g) in Regime::ALL.iter().zip(gauges) {
                g.set(if current == Some(*r) { 1.0 } else { 0.0 });
            }
            if let Some(r) = current {
                regimes.insert(*symbol, r.as_str());
            }
        }
        regimes
    };
    let mut regimes = update_regimes(&stream);
    tracing::info!(rate, time_scale, max_records, "publishing");
    let record_outcome =
        |kind: Kind, ok: bool, acked: &mut HashMap<&'static str, u64>, failed: &mut u64| {
            watch.answered(ok);
            if ok {
                metrics.records[&kind].increment(1);
                *acked.entry(kind.as_str()).or_default() += 1;
            } else {
                *failed += 1;
            }
        };
    while max_records == 0 || queued < max_records {
        if shutdown.is_triggered() {
            break;
        }
        if control.paused() {
            metrics.paused.set(1.0);
            metrics.rate.set(0.0);
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = control.changed() => {}
                Some((kind, ok)) = deliveries.next(), if !deliveries.is_empty() => record_outcome(kind, ok, &mut acked, &mut failed),
            }
            if !control.paused() {
                metrics.paused.set(0.0);
                pacer.rebase(rate);
            }
            continue;
        }
        let wanted = control.rate();
        if wanted != rate {
            rate = wanted;
            metrics.target_rate.set(rate as f64);
            pacer.rebase(rate);
        }
        stream.set_bad_fraction(control.bad_fraction());
        if let Some((rate, severity)) = control.take_anomaly_change() {
            stream.set_anomalies(rate, severity);
            tracing::info!(
                rate,
                severity = severity.as_str(),
                "planted anomalies changed"
            );
        }
        if let Some(hold) = control.take_regime_change() {
            stream.hold_regime(hold);
            match hold {
                Some(regime) => tracing::info!(regime = regime.as_str(), "regime held"),
                None => tracing::info!("regime released"),
            }
        }
        let g = stream.next_record();
        let on_time = g.kind != Kind::Late;
        if let Some(wait) = pacer.delay(on_time.then_some(g.event_time_ms)) {
            waited += wait;
            let sleep = tokio::time::sleep(wait);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    () = shutdown.cancelled() => break,
                    // A new rate or a pause applies now, not after this wait.
                    () = control.changed() => break,
                    Some((kind, ok)) = deliveries.next(), if !deliveries.is_empty() => record_outcome(kind, ok, &mut acked, &mut failed),
                }
            }
            if shutdown.is_triggered() {
                break;
            }
        }
        // Every record costs this much more; the pacer never makes up for it in a burst.
        faults.slow_down().await;
        let mut record = Record::new(topic, Some(g.symbol.into_bytes()), g.payload)
            .header(HEADER_SIM_KIND, g.kind.as_str());
        if let Some(a) = g.anomaly {
            record = record.header(HEADER_SIM_ANOMALY, anomaly_str(a));
        }
        let kind = g.kind;
        // Each record starts a trace (kept at the sampler's ratio): its send span's context
        // travels in the record's headers through every stage.
        let send = tidewatch_telemetry::trace::enabled().then(|| {
            let span = trace::send_span(None, &record);
            trace::inject(&span, &mut record.headers);
            span
        });
        let delivery = producer.send(&record);
        watch.sent();
        deliveries.push(async move {
            let result = delivery.await;
            if let (Some(span), Err(e)) = (&send, &result) {
                trace::fail(span, "produce_failed", &e.to_string());
            }
            (kind, result.is_ok())
        });
        queued += 1;
        second_count += 1;
        if on_time {
            last_event = Some(g.event_time_ms);
        }
        while deliveries.len() >= MAX_IN_FLIGHT {
            if let Some((kind, ok)) = deliveries.next().await {
                record_outcome(kind, ok, &mut acked, &mut failed);
            }
        }
        if second_start.elapsed() >= Duration::from_secs(1) {
            // The old producer will not deliver again: a new one (a new producer id) does.
            // A broker that is away is waited for: a new producer would not help.
            let renew = match (producer.fatal_error(), watch.stall(DELIVERY_STALL_RENEW)) {
                (Some(fatal), _) => Some(("fatal", fatal)),
                (None, Some(stall)) if probe_broker(producer).await.is_ok() => {
                    Some(("stalled", stall.to_string()))
                }
                _ => None,
            };
            if let Some((reason, error)) = renew {
                tracing::warn!(reason, error, "renewing the Kafka producer");
                producer.renew(reason)?;
                watch.restart();
            }
            let elapsed = second_start.elapsed().as_secs_f64();
            metrics.rate.set(second_count as f64 / elapsed);
            metrics
                .pacing_wait
                .set((waited.as_secs_f64() / elapsed).min(1.0));
            (second_start, second_count, waited) = (Instant::now(), 0, Duration::ZERO);
            if let Some(ev) = last_event {
                metrics.event_time.set(ev as f64 / 1e3);
            }
            regimes = update_regimes(&stream);
            shared.report(&acked, failed, last_event, &regimes, false);
            save(&stream);
        }
    }
    save(&stream);
    while let Some((kind, ok)) = deliveries.next().await {
        record_outcome(kind, ok, &mut acked, &mut failed);
    }
    producer.flush(Duration::from_secs(30))?;
    if let Some(ev) = last_event {
        metrics.event_time.set(ev as f64 / 1e3);
    }
    metrics.rate.set(0.0);
    let total: u64 = acked.values().sum();
    shared.report(&acked, failed, last_event, &regimes, true);
    tracing::info!(published = total, failed, "publishing finished");
    anyhow::ensure!(failed == 0, "{failed} records were not delivered");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidewatch_kafka::inspect::ReadMessage;

    fn message(payload: Vec<u8>) -> ReadMessage {
        ReadMessage {
            partition: 0,
            offset: 0,
            key: None,
            payload,
            headers: HashMap::new(),
        }
    }

    #[test]
    fn delivery_stalls_while_records_wait_or_fail_and_not_once_one_is_acknowledged() {
        let watch = DeliveryWatch::new();
        assert_eq!(watch.stall(Duration::ZERO), None, "nothing sent");
        watch.sent();
        let waiting = watch.stall(Duration::ZERO).expect("one record waits");
        assert_eq!((waiting.in_flight, waiting.failed), (1, 0));
        assert_eq!(
            watch.stall(Duration::from_secs(3600)),
            None,
            "not for an hour yet"
        );
        watch.answered(true);
        assert_eq!(watch.stall(Duration::ZERO), None, "acknowledged");
        watch.sent();
        watch.answered(false);
        let failing = watch
            .stall(Duration::ZERO)
            .expect("a failure since the last ack");
        assert_eq!((failing.in_flight, failing.failed), (0, 1));
        assert!(failing.to_string().contains("1 failed"), "{failing}");
        watch.restart();
        assert_eq!(
            watch.stall(Duration::ZERO),
            None,
            "a new producer starts over"
        );
    }

    #[test]
    fn a_market_resumes_after_the_newest_valid_trade_at_each_symbols_last_price() {
        let mut config = MarketConfig::new(3);
        config.anomaly_rate = 0.01;
        let mix = Mix {
            bad_fraction: 0.05,
            late_fraction: 0.05,
        };
        let mut stream = RecordStream::new(&config, mix);
        let records: Vec<_> = (0..3_000).map(|_| stream.next_record()).collect();
        let tail: Vec<_> = records.iter().map(|g| message(g.payload.clone())).collect();

        let resume = resume_point(&tail).expect("valid trades in the tail");

        let newest = records
            .iter()
            .filter(|g| matches!(g.kind, Kind::Valid | Kind::Anomaly))
            .map(|g| g.event_time_ms)
            .max()
            .expect("valid records");
        assert!(resume.start_ms > newest && resume.start_ms - newest <= 60_000);
        assert_eq!(resume.start_ms % 60_000, 0, "minutes start on the minute");
        let btc_last = records
            .iter()
            .filter(|g| g.symbol == "BTC-USD" && matches!(g.kind, Kind::Valid | Kind::Anomaly))
            .filter_map(|g| tidewatch_schema::decode_raw(&g.payload, 0).ok())
            .max_by_key(|t| t.event_time_ms)
            .expect("BTC trades");
        assert!(resume
            .prices
            .contains(&("BTC-USD".to_owned(), btc_last.price)));
    }

    #[test]
    fn the_saved_state_continues_after_everything_the_stream_produced() {
        let dir = std::env::temp_dir().join(format!("tidewatch-generator-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let mix = Mix {
            bad_fraction: 0.0,
            late_fraction: 0.0,
        };
        let mut stream = RecordStream::new(&MarketConfig::new(3), mix);
        let newest = (0..2_000)
            .map(|_| stream.next_record().event_time_ms)
            .max()
            .expect("records");

        save_state(&dir, &stream.continuation()).expect("saved");
        let loaded = load_state(&dir);

        std::fs::remove_dir_all(&dir).expect("cleaned up");
        let loaded = loaded.expect("the saved state reads back");
        assert_eq!(loaded, stream.continuation());
        assert!(loaded.start_ms > newest, "{} <= {newest}", loaded.start_ms);
        assert_eq!(loaded.prices.len(), MarketConfig::new(3).symbols.len());
    }

    #[test]
    fn an_empty_or_all_bad_tail_gives_nothing_to_resume() {
        assert_eq!(resume_point(&[]), None);
        assert_eq!(resume_point(&[message(b"{not json".to_vec())]), None);
    }
}
