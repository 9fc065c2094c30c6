//! `project`: the pipeline's results in PostgreSQL, and a read API over them.
//!
//! - [`Projection`] is the batch sink ([`tidewatch_kafka::sink`]): closed bars (`bars.1m`),
//!   predictions (`predictions`) and their outcomes (`outcomes`) are decoded and validated
//!   (bad messages go to the dead-letter topic), then written a batch per transaction.
//!   Offsets are stored only after the transaction committed; while PostgreSQL is away the
//!   service stops consuming, retries with backoff and is not ready, and catches up by
//!   itself when the database is back.
//! - [`store`]: the batched upserts (the newest version of a key wins, whatever order
//!   messages arrive in) and the database metrics.
//! - [`api`]: `GET /v1/symbols`, `/v1/symbols/{symbol}/latest`, `/v1/bars`,
//!   `/v1/predictions`, with their OpenAPI document at `/openapi.json`.

pub mod api;
pub mod store;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tidewatch_db::DatabaseArgs;
use tidewatch_kafka::service::{BatchArgs, StageArgs, StageService};
use tidewatch_kafka::sink::{Rejected, Sink};
use tidewatch_kafka::stage::Input;
use tidewatch_kafka::Code;
use tidewatch_schema::{
    BarRecord, OutcomeRecord, PredictionRecord, TOPIC_BARS, TOPIC_OUTCOMES, TOPIC_PREDICTIONS,
};
use tidewatch_telemetry::{ComponentHealth, Criticality, Shutdown, Telemetry, TelemetryArgs};
use tidewatch_web::{Fault, Faults};

use crate::store::{Item, Row, Store, Version};

pub const SERVICE: &str = "project";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "project",
    version,
    about = "Projects bars, predictions and outcomes into PostgreSQL and serves them over HTTP"
)]
pub struct Settings {
    /// Address of the read API and the ops endpoints (/metrics, /health).
    #[arg(long = "listen", env = "LISTEN_ADDR", default_value = "0.0.0.0:9104")]
    pub listen: SocketAddr,
    #[arg(long, env = "BARS_TOPIC", default_value = TOPIC_BARS)]
    pub bars_topic: String,
    #[arg(long, env = "PREDICTIONS_TOPIC", default_value = TOPIC_PREDICTIONS)]
    pub predictions_topic: String,
    #[arg(long, env = "OUTCOMES_TOPIC", default_value = TOPIC_OUTCOMES)]
    pub outcomes_topic: String,
    /// Read API requests served at once, at most; more get a fast 503 `overloaded` with
    /// Retry-After instead of queueing for a database connection (0: no limit).
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 64)]
    pub max_concurrent_requests: usize,
    #[command(flatten)]
    pub batch: BatchArgs,
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
            "bars_topic": self.bars_topic,
            "predictions_topic": self.predictions_topic,
            "outcomes_topic": self.outcomes_topic,
            "max_concurrent_requests": self.max_concurrent_requests,
            "batch": self.batch,
            "database": self.database,
            "stage": self.stage,
            "telemetry": self.telemetry,
        })
    }
}

/// The service, built: database migrated, topics created, listener bound.
#[derive(Debug)]
pub struct Project {
    service: StageService,
    projection: Projection,
    batch: BatchArgs,
    max_connections: u32,
}

impl Project {
    pub async fn build(settings: &Settings, telemetry: Telemetry) -> anyhow::Result<Self> {
        let pool = tidewatch_db::connect_and_migrate(&settings.database).await?;
        let faults = Faults::new(&[
            Fault::ErrorRate,
            Fault::LatencyMs,
            Fault::SlowdownMs,
            Fault::DatabaseUnreachable,
        ]);
        let store = Store::new(pool).with_faults(faults.clone());
        let probe = store.clone();
        telemetry
            .health
            .register("database", Criticality::Critical, move || {
                let store = probe.clone();
                async move {
                    match store.ping(Duration::from_secs(1)).await {
                        Ok(()) => ComponentHealth::healthy("reachable"),
                        Err(e) => ComponentHealth::unhealthy(format!("unreachable: {e:#}")),
                    }
                }
            });
        let service = StageService::build_multi(
            SERVICE,
            settings.listen,
            &settings.stage,
            &[
                &settings.bars_topic,
                &settings.predictions_topic,
                &settings.outcomes_topic,
            ],
            &[],
            telemetry,
        )
        .await?
        .with_faults(faults.clone())
        .with_api(
            {
                let (routes, mut doc) = api::documented(store.clone());
                if settings.max_concurrent_requests > 0 {
                    tidewatch_web::shed::document(&mut doc);
                }
                (routes, doc)
            },
            settings.max_concurrent_requests,
        );
        Ok(Self {
            service,
            projection: Projection::new(settings, store),
            batch: settings.batch.clone(),
            max_connections: settings.database.database_max_connections,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.service.local_addr()
    }

    /// Projects and serves until `shutdown`; the batch in hand is written and its offsets
    /// committed before returning.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        store::spawn_pool_sampler(
            self.projection.store.pool().clone(),
            self.max_connections,
            shutdown.clone(),
        );
        self.service
            .run_sink(self.projection, "writes", &self.batch, shutdown)
            .await
    }
}

/// Event times outside [2000-01-01, 2100-01-01) are treated as corrupt.
const MIN_TIME_MS: i64 = 946_684_800_000;
const MAX_TIME_MS: i64 = 4_102_444_800_000;

/// Rejection codes of [`Projection::decode`].
// Everything project reads was written by Tidewatch's own stages: a record it must refuse
// is data the pipeline lost.
const MALFORMED_BAR: Code = Code::pipeline("malformed_bar");
const MALFORMED_PREDICTION: Code = Code::pipeline("malformed_prediction");
const MALFORMED_OUTCOME: Code = Code::pipeline("malformed_outcome");
const INVALID_RECORD: Code = Code::pipeline("invalid_record");
const UNEXPECTED_TOPIC: Code = Code::pipeline("unexpected_topic");
const CODES: &[Code] = &[
    MALFORMED_BAR,
    MALFORMED_PREDICTION,
    MALFORMED_OUTCOME,
    INVALID_RECORD,
    UNEXPECTED_TOPIC,
];

/// The sink: which topic holds what, and where it is written.
#[derive(Debug)]
pub struct Projection {
    bars_topic: String,
    predictions_topic: String,
    outcomes_topic: String,
    store: Store,
}

impl Projection {
    pub fn new(settings: &Settings, store: Store) -> Self {
        Self {
            bars_topic: settings.bars_topic.clone(),
            predictions_topic: settings.predictions_topic.clone(),
            outcomes_topic: settings.outcomes_topic.clone(),
            store,
        }
    }
}

fn invalid(reason: impl Into<String>) -> Rejected {
    Rejected {
        code: INVALID_RECORD,
        reason: reason.into(),
    }
}

pub fn valid_symbol(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
}

fn check_time(name: &str, ms: i64) -> Result<(), Rejected> {
    if (MIN_TIME_MS..MAX_TIME_MS).contains(&ms) {
        Ok(())
    } else {
        Err(invalid(format!("{name} {ms} is not a plausible time")))
    }
}

fn check_symbol(symbol: &str) -> Result<(), Rejected> {
    if valid_symbol(symbol) {
        Ok(())
    } else {
        Err(invalid(format!("symbol {symbol:?} is not BASE-QUOTE")))
    }
}

fn check_finite(values: &[(&str, f64)]) -> Result<(), Rejected> {
    match values.iter().find(|(_, v)| !v.is_finite()) {
        Some((name, _)) => Err(invalid(format!("{name} is not a finite number"))),
        None => Ok(()),
    }
}

/// Checks a bar before it can reach a table (whose constraints would otherwise fail the
/// whole batch, and with it every good row, again and again).
pub fn validate_bar(b: &BarRecord) -> Result<(), Rejected> {
    check_symbol(&b.symbol)?;
    check_time("start_ms", b.start_ms)?;
    check_time("end_ms", b.end_ms)?;
    check_finite(&[
        ("open", b.open),
        ("high", b.high),
        ("low", b.low),
        ("close", b.close),
        ("volume", b.volume),
        ("vwap", b.vwap),
    ])?;
    if b.interval_seconds == 0 || b.end_ms <= b.start_ms {
        return Err(invalid("the bar's interval is empty"));
    }
    if b.low > b.high || b.volume < 0.0 || b.trade_count == 0 || b.trade_count > i64::MAX as u64 {
        return Err(invalid("low above high, negative volume or no trades"));
    }
    Ok(())
}

pub fn validate_prediction(p: &PredictionRecord) -> Result<(), Rejected> {
    check_symbol(&p.symbol)?;
    check_time("bar_start_ms", p.bar_start_ms)?;
    check_time("bar_end_ms", p.bar_end_ms)?;
    if !(0.0..=1.0).contains(&p.probability) || !(0.0..=1.0).contains(&p.online_probability) {
        return Err(invalid("a probability is outside [0, 1]"));
    }
    if p.horizon_minutes == 0 || p.horizon_minutes > i32::MAX as u64 {
        return Err(invalid("horizon_minutes is out of range"));
    }
    Ok(())
}

pub fn validate_outcome(o: &OutcomeRecord) -> Result<(), Rejected> {
    check_symbol(&o.symbol)?;
    check_time("bar_start_ms", o.bar_start_ms)?;
    check_time("judged_by_bar_start_ms", o.judged_by_bar_start_ms)?;
    check_finite(&[
        ("realised_volatility", o.realised_volatility),
        ("spike_threshold", o.spike_threshold),
    ])?;
    if o.horizon_minutes == 0 || o.horizon_minutes > i32::MAX as u64 {
        return Err(invalid("horizon_minutes is out of range"));
    }
    Ok(())
}

fn decode<T: serde::de::DeserializeOwned>(
    payload: &[u8],
    code: Code,
    what: &str,
) -> Result<T, Rejected> {
    serde_json::from_slice(payload).map_err(|e| Rejected {
        code,
        reason: format!("not a {what}: {e}"),
    })
}

impl Sink for Projection {
    type Item = Item;

    fn decode(&self, input: &Input<'_>) -> Result<Item, Rejected> {
        let row = if input.topic == self.bars_topic {
            let b: BarRecord = decode(input.payload, MALFORMED_BAR, "bar record")?;
            validate_bar(&b)?;
            Row::Bar(b)
        } else if input.topic == self.predictions_topic {
            let p: PredictionRecord =
                decode(input.payload, MALFORMED_PREDICTION, "prediction record")?;
            validate_prediction(&p)?;
            Row::Prediction(p)
        } else if input.topic == self.outcomes_topic {
            let o: OutcomeRecord = decode(input.payload, MALFORMED_OUTCOME, "outcome record")?;
            validate_outcome(&o)?;
            Row::Outcome(o)
        } else {
            return Err(Rejected {
                code: UNEXPECTED_TOPIC,
                reason: format!("project does not read {}", input.topic),
            });
        };
        Ok(Item {
            version: Version {
                produced_ms: input.timestamp_ms.unwrap_or(0),
                offset: input.offset,
            },
            row,
        })
    }

    async fn write(&mut self, items: &[Item]) -> anyhow::Result<()> {
        self.store.write(items).await.map(drop)
    }

    fn error_codes(&self) -> &'static [Code] {
        CODES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::try_parse_from(["project", "--database-url", "postgres://localhost/x"])
            .expect("settings")
    }

    fn input<'a>(topic: &'a str, payload: &'a [u8]) -> Input<'a> {
        Input {
            topic,
            payload,
            ..Input::default()
        }
    }

    #[tokio::test]
    async fn bad_messages_are_rejected_with_a_code_and_a_reason() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://localhost/unused")
            .expect("lazy pool");
        let p = Projection::new(&settings(), Store::new(pool));
        let good = serde_json::json!({
            "symbol": "BTC-USD", "interval_seconds": 60, "start_ms": 1_767_225_600_000i64,
            "end_ms": 1_767_225_660_000i64, "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5,
            "volume": 3.0, "vwap": 1.2, "trade_count": 7
        });
        let bytes = serde_json::to_vec(&good).expect("json");
        assert!(matches!(
            p.decode(&input("bars.1m", &bytes)),
            Ok(Item {
                row: Row::Bar(_),
                ..
            })
        ));
        let cases = [
            ("bars.1m", b"{not json".to_vec(), "malformed_bar"),
            ("predictions", b"[]".to_vec(), "malformed_prediction"),
            ("outcomes", b"{}".to_vec(), "malformed_outcome"),
            ("elsewhere", bytes.clone(), "unexpected_topic"),
        ];
        for (topic, payload, code) in cases {
            let err = p.decode(&input(topic, &payload)).expect_err("rejected");
            assert_eq!(err.code.name, code, "{topic}");
            assert!(!err.reason.is_empty());
        }
        for (field, value) in [
            ("symbol", serde_json::json!("btc usd")),
            ("high", serde_json::json!(0.1)),
            ("start_ms", serde_json::json!(5)),
            ("trade_count", serde_json::json!(0)),
            ("volume", serde_json::json!(-1.0)),
        ] {
            let mut bad = good.clone();
            bad[field] = value;
            let bytes = serde_json::to_vec(&bad).expect("json");
            let err = p.decode(&input("bars.1m", &bytes)).expect_err(field);
            assert_eq!(err.code, INVALID_RECORD, "{field}");
        }
    }
}
