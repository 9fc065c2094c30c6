//! `enrich`: canonical trades (`trades.normalized`) gain their instrument's reference data
//! from PostgreSQL and anomaly flags (`trades.enriched`). Unknown symbols go to the
//! dead-letter topic. If PostgreSQL goes away the stage serves from its cache and reports
//! itself degraded; a symbol it has never seen waits (and the stage with it, since it handles
//! one message at a time; nothing is lost) until the database answers again.

pub mod anomaly;
pub mod reference;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use clap::Parser;
use tidewatch_db::DatabaseArgs;
use tidewatch_kafka::dlq::ENCODE_FAILED;
use tidewatch_kafka::service::StageArgs;
use tidewatch_kafka::stage::{Input, Outcome, Processor};
use tidewatch_kafka::{Code, Record};
use tidewatch_schema::{
    EnrichedTrade, Trade, HEADER_SIM_ANOMALY, HEADER_SIM_KIND, SIM_HEADER_PREFIX,
    TOPIC_TRADES_ENRICHED, TOPIC_TRADES_NORMALIZED,
};
use tidewatch_telemetry::{
    ComponentHealth, Criticality, HealthHandle, Shutdown, Telemetry, TelemetryArgs,
};

use utoipa_axum::{router::OpenApiRouter, routes};

use crate::anomaly::{Detector, Scorecard};
use crate::reference::{
    CacheStats, Instrument, InstrumentCache, InstrumentSource, Lookup, PgInstruments,
};

/// Shutdown came while waiting for the database.
#[derive(Debug)]
struct Stopping;

pub const SERVICE: &str = "enrich";

/// normalize emitted something enrich cannot read: lost by the pipeline.
const MALFORMED_TRADE: Code = Code::pipeline("malformed_trade");
/// A well-formed trade for a symbol the reference data does not list: the venue's.
const UNKNOWN_SYMBOL: Code = Code::input("unknown_symbol");
/// Longest wait between attempts to reach the database for an uncached symbol.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Parser)]
#[command(
    name = "enrich",
    version,
    about = "Adds instrument reference data and anomaly flags to canonical trades"
)]
pub struct Settings {
    /// Address of the ops server (/metrics, /health).
    #[arg(long = "listen", env = "LISTEN_ADDR", default_value = "0.0.0.0:9102")]
    pub listen: SocketAddr,
    #[arg(long, env = "INPUT_TOPIC", default_value = TOPIC_TRADES_NORMALIZED)]
    pub input_topic: String,
    #[arg(long, env = "OUTPUT_TOPIC", default_value = TOPIC_TRADES_ENRICHED)]
    pub output_topic: String,
    /// How long a cached instrument is trusted before it is read again.
    #[arg(long, env = "CACHE_TTL_SECONDS", default_value_t = 300)]
    pub cache_ttl_seconds: u64,
    /// Most instruments (and unknown symbols) cached.
    #[arg(long, env = "CACHE_CAPACITY", default_value_t = 10_000)]
    pub cache_capacity: usize,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub stage: StageArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
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
            "cache_ttl_seconds": self.cache_ttl_seconds,
            "cache_capacity": self.cache_capacity,
            "database": self.database,
            "stage": self.stage,
            "telemetry": self.telemetry,
        })
    }
}

/// The stage's logic.
pub struct Enrich<S> {
    output_topic: String,
    source: S,
    cache: InstrumentCache,
    detector: Detector,
    scorecard: Scorecard,
    database: HealthHandle,
    shutdown: Shutdown,
}

impl<S> std::fmt::Debug for Enrich<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrich")
            .field("output_topic", &self.output_topic)
            .field("cache", &self.cache)
            .field("scorecard", &self.scorecard)
            .finish_non_exhaustive()
    }
}

/// `GET /v1/cache/stats`: the reference cache's size, capacity, hit ratio, evictions, stale
/// serves and oldest entry age (published by the stage at most a second apart).
pub fn api(stats: Arc<Mutex<CacheStats>>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(cache_stats))
        .with_state(stats)
}

/// The reference cache as the stage last published it.
#[utoipa::path(get, path = "/v1/cache/stats", tag = "enrich",
    responses((status = 200, description = "The reference cache", body = CacheStats)))]
async fn cache_stats(State(stats): State<Arc<Mutex<CacheStats>>>) -> axum::Json<CacheStats> {
    axum::Json(stats.lock().unwrap_or_else(|e| e.into_inner()).clone())
}

impl<S: InstrumentSource> Enrich<S> {
    /// The cache statistics [`api`] serves.
    pub fn cache_stats(&self) -> Arc<Mutex<CacheStats>> {
        self.cache.stats()
    }

    pub fn new(
        output_topic: String,
        source: S,
        cache: InstrumentCache,
        database: HealthHandle,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            output_topic,
            source,
            cache,
            detector: Detector::new(),
            scorecard: Scorecard::new(),
            database,
            shutdown,
        }
    }

    pub fn scorecard(&self) -> &Scorecard {
        &self.scorecard
    }

    /// The instrument (`None`: no such instrument), waiting with backoff while the
    /// database is away; `Err` when shutdown comes first.
    async fn instrument(&mut self, symbol: &str) -> Result<Option<Arc<Instrument>>, Stopping> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.cache.get(symbol, &self.source).await {
                Lookup::Unavailable(reason) => {
                    self.database.set(ComponentHealth::degraded(format!(
                        "database unreachable, serving from cache; {symbol} waits: {reason}"
                    )));
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.shutdown.cancelled() => return Err(Stopping),
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Lookup::Found(instrument) => return Ok(Some(instrument)),
                Lookup::Unknown => return Ok(None),
            }
        }
    }
}

impl<S: InstrumentSource> Processor for Enrich<S> {
    fn error_codes(&self) -> &'static [Code] {
        &[MALFORMED_TRADE, UNKNOWN_SYMBOL, ENCODE_FAILED]
    }

    async fn process(&mut self, input: &Input<'_>) -> Outcome {
        let trade: Trade = match serde_json::from_slice(input.payload) {
            Ok(t) => t,
            Err(e) => {
                return Outcome::DeadLetter {
                    code: MALFORMED_TRADE,
                    reason: format!("not a canonical trade: {e}"),
                }
            }
        };
        let instrument = match self.instrument(&trade.symbol).await {
            Err(Stopping) => return Outcome::Abandon,
            Ok(Some(i)) => i,
            Ok(None) => {
                return Outcome::DeadLetter {
                    code: UNKNOWN_SYMBOL,
                    reason: format!("no instrument {:?} in reference data", trade.symbol),
                }
            }
        };
        let anomalies = self.detector.inspect(&instrument, trade.price, trade.size);
        if input.header(HEADER_SIM_KIND).is_some() {
            let labelled = input.header(HEADER_SIM_ANOMALY).is_some();
            self.scorecard.record(labelled, !anomalies.is_empty());
        }
        let enriched = EnrichedTrade {
            trade,
            asset_class: instrument.asset_class.clone(),
            base: instrument.base.clone(),
            quote: instrument.quote.clone(),
            tick_size: instrument.tick_size,
            lot_size: instrument.lot_size,
            anomalies,
        };
        let mut record = match Record::json(&self.output_topic, &enriched.trade.symbol, &enriched) {
            Ok(r) => r,
            Err(e) => return Outcome::encode_failed(&e),
        };
        record.headers = input.headers_with_prefix(SIM_HEADER_PREFIX);
        Outcome::Emit(vec![record])
    }
}

/// Connects to PostgreSQL (migrations applied), warms the cache with every instrument and
/// registers the database's health: degraded, not unhealthy, when it is away, since the
/// stage goes on from its cache.
pub async fn build(
    settings: &Settings,
    telemetry: &Telemetry,
    shutdown: Shutdown,
) -> anyhow::Result<Enrich<PgInstruments>> {
    let pool = tidewatch_db::connect_and_migrate(&settings.database).await?;
    let source = PgInstruments::new(pool.clone());
    let mut cache = InstrumentCache::new(
        Duration::from_secs(settings.cache_ttl_seconds),
        settings.cache_capacity,
    );
    let instruments = source.all().await?;
    tracing::info!(instruments = instruments.len(), "reference data loaded");
    cache.preload(instruments);
    let database = telemetry.health.handle(
        "database",
        Criticality::NonCritical,
        ComponentHealth::healthy("reference data loaded"),
    );
    let probe = database.clone();
    tokio::spawn({
        let stop = shutdown.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.cancelled() => return,
                }
                probe.set(match sqlx::query("SELECT 1").execute(&pool).await {
                    Ok(_) => ComponentHealth::healthy("database reachable"),
                    Err(e) => ComponentHealth::degraded(format!(
                        "database unreachable, serving from cache: {e}"
                    )),
                });
            }
        }
    });
    Ok(Enrich::new(
        settings.output_topic.clone(),
        source,
        cache,
        database,
        shutdown,
    ))
}
