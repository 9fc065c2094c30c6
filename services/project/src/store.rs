//! Writing the projection: one transaction per batch, one statement per table, rows passed
//! as arrays and expanded by `UNNEST` (a round trip per table, however many rows).
//!
//! Every row keeps the [`Version`] of the message it came from (the message's Kafka
//! timestamp, then its offset), and an upsert changes a row only with a newer version. The
//! tables therefore hold the newest message of every key whatever order the messages arrive
//! in: a replay, a key a stage published twice (its input read again after a crash or a
//! rebalance), or a batch written late by an instance that lost its partitions in a
//! rebalance while it was writing, changes nothing. A batch is first reduced to one row per
//! key, the newest (one `INSERT ... ON CONFLICT DO UPDATE` may not touch a row twice).
//! `updated_at` moves, and a row counts as written, only when a value changed.
//! `symbol_latest` holds each symbol's newest bar and prediction: by bar start, then version.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use metrics::{Counter, Histogram};
use sqlx::PgPool;
use tidewatch_schema::{BarRecord, OutcomeRecord, PredictionRecord};
use tidewatch_telemetry::{catalog, Shutdown};
use tidewatch_web::Faults;
use time::OffsetDateTime;

/// Which of the messages of one key is newer: the later Kafka timestamp (set by the producer
/// when it sent the message), then the later offset. Every message of a key is in one
/// partition (records are keyed by symbol), so the offset breaks ties in that partition's
/// order; a stage publishing a key again publishes it later. Field order is the ordering.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    /// The message's Kafka timestamp in Unix milliseconds (0 if the broker gave none).
    pub produced_ms: i64,
    pub offset: i64,
}

/// One decoded message of the projection's input topics, and its version.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub version: Version,
    pub row: Row,
}

/// What a message holds, by topic.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    Bar(BarRecord),
    Prediction(PredictionRecord),
    Outcome(OutcomeRecord),
}

/// Unix milliseconds as a timestamp; the decoder has checked the range.
pub fn timestamp(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

// In every upsert: the version columns always move to the newer version, `updated_at` only
// when a value differs, and `RETURNING updated_at = now()` (the transaction's start, which
// an insert also takes) is true exactly for the rows whose values this statement changed.
const UPSERT_BARS: &str = r#"
WITH input AS (
    SELECT * FROM UNNEST($1::text[], $2::int4[], $3::timestamptz[], $4::timestamptz[],
        $5::float8[], $6::float8[], $7::float8[], $8::float8[], $9::float8[], $10::float8[], $11::int8[],
        $12::timestamptz[], $13::int8[])
        AS t(symbol, interval_seconds, start_time, end_time, open, high, low, close, volume, vwap, trade_count,
             produced_at, source_offset)
), stored AS (
    INSERT INTO bars AS b (symbol, interval_seconds, start_time, end_time, open, high, low, close, volume, vwap, trade_count,
                           produced_at, source_offset)
    SELECT * FROM input
    ON CONFLICT (symbol, interval_seconds, start_time) DO UPDATE SET
        end_time = EXCLUDED.end_time, open = EXCLUDED.open, high = EXCLUDED.high,
        low = EXCLUDED.low, close = EXCLUDED.close, volume = EXCLUDED.volume,
        vwap = EXCLUDED.vwap, trade_count = EXCLUDED.trade_count,
        produced_at = EXCLUDED.produced_at, source_offset = EXCLUDED.source_offset,
        updated_at = CASE
            WHEN (b.end_time, b.open, b.high, b.low, b.close, b.volume, b.vwap, b.trade_count)
                IS DISTINCT FROM (EXCLUDED.end_time, EXCLUDED.open, EXCLUDED.high, EXCLUDED.low,
                                  EXCLUDED.close, EXCLUDED.volume, EXCLUDED.vwap, EXCLUDED.trade_count)
            THEN now() ELSE b.updated_at END
    WHERE (EXCLUDED.produced_at, EXCLUDED.source_offset) > (b.produced_at, b.source_offset)
    RETURNING b.updated_at = now() AS changed
), latest AS (
    INSERT INTO symbol_latest AS l (symbol, bar_interval_seconds, bar_start, bar_end, open, high, low, close, volume, vwap, trade_count,
                                    bar_produced_at, bar_source_offset)
    SELECT DISTINCT ON (symbol) symbol, interval_seconds, start_time, end_time, open, high, low, close, volume, vwap, trade_count,
                                produced_at, source_offset
    FROM input ORDER BY symbol, start_time DESC, produced_at DESC, source_offset DESC
    ON CONFLICT (symbol) DO UPDATE SET
        bar_interval_seconds = EXCLUDED.bar_interval_seconds, bar_start = EXCLUDED.bar_start,
        bar_end = EXCLUDED.bar_end, open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low,
        close = EXCLUDED.close, volume = EXCLUDED.volume, vwap = EXCLUDED.vwap,
        trade_count = EXCLUDED.trade_count,
        bar_produced_at = EXCLUDED.bar_produced_at, bar_source_offset = EXCLUDED.bar_source_offset,
        updated_at = CASE
            WHEN (l.bar_interval_seconds, l.bar_start, l.bar_end, l.open, l.high, l.low, l.close, l.volume, l.vwap, l.trade_count)
                IS DISTINCT FROM (EXCLUDED.bar_interval_seconds, EXCLUDED.bar_start, EXCLUDED.bar_end, EXCLUDED.open,
                                  EXCLUDED.high, EXCLUDED.low, EXCLUDED.close, EXCLUDED.volume, EXCLUDED.vwap,
                                  EXCLUDED.trade_count)
            THEN now() ELSE l.updated_at END
    WHERE l.bar_start IS NULL
        OR (EXCLUDED.bar_start, EXCLUDED.bar_produced_at, EXCLUDED.bar_source_offset)
            > (l.bar_start, l.bar_produced_at, l.bar_source_offset)
    RETURNING l.updated_at = now() AS changed
)
SELECT (SELECT count(*) FROM stored WHERE changed), (SELECT count(*) FROM latest WHERE changed)
"#;

const UPSERT_PREDICTIONS: &str = r#"
WITH input AS (
    SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::timestamptz[], $4::int4[], $5::text[],
        $6::text[], $7::float8[], $8::bool[], $9::float8[], $10::bool[], $11::timestamptz[], $12::int8[])
        AS t(symbol, bar_start, bar_end, horizon_minutes, model_version, variant, probability, spike, online_probability, online_spike,
             produced_at, source_offset)
), stored AS (
    INSERT INTO predictions AS p (symbol, bar_start, bar_end, horizon_minutes, model_version, variant, probability, spike, online_probability, online_spike,
                                  produced_at, source_offset)
    SELECT * FROM input
    ON CONFLICT (symbol, bar_start) DO UPDATE SET
        bar_end = EXCLUDED.bar_end, horizon_minutes = EXCLUDED.horizon_minutes,
        model_version = EXCLUDED.model_version, variant = EXCLUDED.variant,
        probability = EXCLUDED.probability, spike = EXCLUDED.spike,
        online_probability = EXCLUDED.online_probability, online_spike = EXCLUDED.online_spike,
        produced_at = EXCLUDED.produced_at, source_offset = EXCLUDED.source_offset,
        updated_at = CASE
            WHEN (p.bar_end, p.horizon_minutes, p.model_version, p.variant, p.probability, p.spike, p.online_probability, p.online_spike)
                IS DISTINCT FROM (EXCLUDED.bar_end, EXCLUDED.horizon_minutes, EXCLUDED.model_version, EXCLUDED.variant,
                                  EXCLUDED.probability, EXCLUDED.spike, EXCLUDED.online_probability, EXCLUDED.online_spike)
            THEN now() ELSE p.updated_at END
    WHERE (EXCLUDED.produced_at, EXCLUDED.source_offset) > (p.produced_at, p.source_offset)
    RETURNING p.updated_at = now() AS changed
), latest AS (
    INSERT INTO symbol_latest AS l (symbol, prediction_bar_start, prediction_variant, prediction_model_version, prediction_probability, prediction_spike,
                                    prediction_produced_at, prediction_source_offset)
    SELECT DISTINCT ON (symbol) symbol, bar_start, variant, model_version, probability, spike, produced_at, source_offset
    FROM input ORDER BY symbol, bar_start DESC, produced_at DESC, source_offset DESC
    ON CONFLICT (symbol) DO UPDATE SET
        prediction_bar_start = EXCLUDED.prediction_bar_start, prediction_variant = EXCLUDED.prediction_variant,
        prediction_model_version = EXCLUDED.prediction_model_version,
        prediction_probability = EXCLUDED.prediction_probability, prediction_spike = EXCLUDED.prediction_spike,
        prediction_produced_at = EXCLUDED.prediction_produced_at,
        prediction_source_offset = EXCLUDED.prediction_source_offset,
        updated_at = CASE
            WHEN (l.prediction_bar_start, l.prediction_variant, l.prediction_model_version, l.prediction_probability, l.prediction_spike)
                IS DISTINCT FROM (EXCLUDED.prediction_bar_start, EXCLUDED.prediction_variant, EXCLUDED.prediction_model_version,
                                  EXCLUDED.prediction_probability, EXCLUDED.prediction_spike)
            THEN now() ELSE l.updated_at END
    WHERE l.prediction_bar_start IS NULL
        OR (EXCLUDED.prediction_bar_start, EXCLUDED.prediction_produced_at, EXCLUDED.prediction_source_offset)
            > (l.prediction_bar_start, l.prediction_produced_at, l.prediction_source_offset)
    RETURNING l.updated_at = now() AS changed
)
SELECT (SELECT count(*) FROM stored WHERE changed), (SELECT count(*) FROM latest WHERE changed)
"#;

const UPSERT_OUTCOMES: &str = r#"
WITH stored AS (
    INSERT INTO prediction_outcomes AS o (symbol, bar_start, horizon_minutes, judged_by_bar_start, realised_volatility, spike_threshold, spike,
                                          produced_at, source_offset)
    SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::int4[], $4::timestamptz[], $5::float8[], $6::float8[], $7::bool[],
                         $8::timestamptz[], $9::int8[])
    ON CONFLICT (symbol, bar_start) DO UPDATE SET
        horizon_minutes = EXCLUDED.horizon_minutes, judged_by_bar_start = EXCLUDED.judged_by_bar_start,
        realised_volatility = EXCLUDED.realised_volatility, spike_threshold = EXCLUDED.spike_threshold,
        spike = EXCLUDED.spike, produced_at = EXCLUDED.produced_at, source_offset = EXCLUDED.source_offset,
        updated_at = CASE
            WHEN (o.horizon_minutes, o.judged_by_bar_start, o.realised_volatility, o.spike_threshold, o.spike)
                IS DISTINCT FROM (EXCLUDED.horizon_minutes, EXCLUDED.judged_by_bar_start, EXCLUDED.realised_volatility,
                                  EXCLUDED.spike_threshold, EXCLUDED.spike)
            THEN now() ELSE o.updated_at END
    WHERE (EXCLUDED.produced_at, EXCLUDED.source_offset) > (o.produced_at, o.source_offset)
    RETURNING o.updated_at = now() AS changed
)
SELECT count(*) FROM stored WHERE changed
"#;

/// Statement timers and row counters, registered once.
#[derive(Debug, Clone)]
pub struct DbMetrics {
    timers: HashMap<&'static str, Histogram>,
    rows: HashMap<&'static str, Counter>,
    errors_connection: Counter,
    errors_database: Counter,
    retries: Counter,
}

/// Every statement name the `statement` label can take.
pub const STATEMENTS: [&str; 9] = [
    "begin",
    "upsert_bars",
    "upsert_predictions",
    "upsert_outcomes",
    "commit",
    "select_symbols",
    "select_latest",
    "select_bars",
    "select_predictions",
];
const TABLES: [&str; 4] = [
    "bars",
    "predictions",
    "prediction_outcomes",
    "symbol_latest",
];

impl Default for DbMetrics {
    fn default() -> Self {
        let rows: HashMap<_, _> = TABLES
            .iter()
            .map(|t| {
                let c = catalog::DB_ROWS_WRITTEN.counter(&[("table", t)]);
                c.absolute(0);
                (*t, c)
            })
            .collect();
        let error = |kind| {
            let c = catalog::DB_TRANSACTION_ERRORS.counter(&[("error_type", kind)]);
            c.absolute(0);
            c
        };
        let retries = catalog::DB_TRANSACTION_RETRIES.counter(&[]);
        retries.absolute(0);
        Self {
            timers: STATEMENTS
                .iter()
                .map(|s| {
                    (
                        *s,
                        catalog::DB_QUERY_DURATION.histogram(&[("statement", s)]),
                    )
                })
                .collect(),
            rows,
            errors_connection: error("connection"),
            errors_database: error("database"),
            retries,
        }
    }
}

impl DbMetrics {
    /// Runs `f`, recording its time under `statement` (one of [`STATEMENTS`]).
    pub async fn timed<T>(
        &self,
        statement: &'static str,
        f: impl std::future::Future<Output = T>,
    ) -> T {
        let start = Instant::now();
        let out = f.await;
        if let Some(h) = self.timers.get(statement) {
            h.record(start.elapsed().as_secs_f64());
        }
        out
    }

    fn rows(&self, table: &'static str, n: i64) {
        if let Some(c) = self.rows.get(table) {
            c.increment(n.max(0) as u64);
        }
    }
}

/// Whether an error means the database could not be reached (worth retrying as is).
pub fn is_connection_error(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed
    ) || matches!(e, sqlx::Error::Database(d) if d.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")))
}

/// Rows written by one batch, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    pub bars: i64,
    pub predictions: i64,
    pub outcomes: i64,
    pub latest: i64,
}

/// The projection's writer: a pool and its metrics.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
    metrics: DbMetrics,
    /// Whether the previous write failed: the next one is a retry.
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// `database_unreachable` makes every query fail as a refused connection would.
    faults: Option<Faults>,
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            metrics: DbMetrics::default(),
            failing: Default::default(),
            faults: None,
        }
    }

    /// Honours the `database_unreachable` switch of `faults`.
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = Some(faults);
        self
    }

    /// Fails like a refused connection while the `database_unreachable` fault is on.
    pub fn reachable(&self) -> Result<(), sqlx::Error> {
        if self
            .faults
            .as_ref()
            .is_some_and(Faults::database_unreachable)
        {
            return Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "database unreachable (fault injected)",
            )));
        }
        Ok(())
    }

    /// A `SELECT 1` within `timeout`: the database health probe.
    pub async fn ping(&self, timeout: Duration) -> anyhow::Result<()> {
        self.reachable()?;
        tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(&self.pool))
            .await
            .context("no answer")?
            .context("query failed")?;
        Ok(())
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn metrics(&self) -> &DbMetrics {
        &self.metrics
    }

    /// Writes a batch in one transaction; counts the failure and classifies it if not.
    pub async fn write(&self, items: &[Item]) -> anyhow::Result<Written> {
        use std::sync::atomic::Ordering;
        if self.failing.load(Ordering::Relaxed) {
            self.metrics.retries.increment(1);
        }
        match self.try_write(items).await {
            Ok(written) => {
                self.failing.store(false, Ordering::Relaxed);
                self.metrics.rows("bars", written.bars);
                self.metrics.rows("predictions", written.predictions);
                self.metrics.rows("prediction_outcomes", written.outcomes);
                self.metrics.rows("symbol_latest", written.latest);
                Ok(written)
            }
            Err(e) => {
                self.failing.store(true, Ordering::Relaxed);
                if is_connection_error(&e) {
                    self.metrics.errors_connection.increment(1);
                } else {
                    self.metrics.errors_database.increment(1);
                }
                Err(anyhow::Error::new(e).context("writing the batch to PostgreSQL"))
            }
        }
    }

    async fn try_write(&self, items: &[Item]) -> Result<Written, sqlx::Error> {
        self.reachable()?;
        let batch = Batch::newest(items);
        let m = &self.metrics;
        let mut tx = m.timed("begin", self.pool.begin()).await?;
        let mut written = Written::default();
        if !batch.bars.is_empty() {
            let b = &batch.bars;
            let (stored, latest): (i64, i64) = m
                .timed(
                    "upsert_bars",
                    sqlx::query_as(UPSERT_BARS)
                        .bind(b.iter().map(|(_, r)| r.symbol.clone()).collect::<Vec<_>>())
                        .bind(
                            b.iter()
                                .map(|(_, r)| r.interval_seconds as i32)
                                .collect::<Vec<_>>(),
                        )
                        .bind(
                            b.iter()
                                .map(|(_, r)| timestamp(r.start_ms))
                                .collect::<Vec<_>>(),
                        )
                        .bind(
                            b.iter()
                                .map(|(_, r)| timestamp(r.end_ms))
                                .collect::<Vec<_>>(),
                        )
                        .bind(b.iter().map(|(_, r)| r.open).collect::<Vec<_>>())
                        .bind(b.iter().map(|(_, r)| r.high).collect::<Vec<_>>())
                        .bind(b.iter().map(|(_, r)| r.low).collect::<Vec<_>>())
                        .bind(b.iter().map(|(_, r)| r.close).collect::<Vec<_>>())
                        .bind(b.iter().map(|(_, r)| r.volume).collect::<Vec<_>>())
                        .bind(b.iter().map(|(_, r)| r.vwap).collect::<Vec<_>>())
                        .bind(
                            b.iter()
                                .map(|(_, r)| r.trade_count as i64)
                                .collect::<Vec<_>>(),
                        )
                        .bind(produced_at(b))
                        .bind(offsets(b))
                        .fetch_one(&mut *tx),
                )
                .await?;
            written.bars = stored;
            written.latest += latest;
        }
        if !batch.predictions.is_empty() {
            let p = &batch.predictions;
            let (stored, latest): (i64, i64) = m
                .timed(
                    "upsert_predictions",
                    sqlx::query_as(UPSERT_PREDICTIONS)
                        .bind(p.iter().map(|(_, r)| r.symbol.clone()).collect::<Vec<_>>())
                        .bind(
                            p.iter()
                                .map(|(_, r)| timestamp(r.bar_start_ms))
                                .collect::<Vec<_>>(),
                        )
                        .bind(
                            p.iter()
                                .map(|(_, r)| timestamp(r.bar_end_ms))
                                .collect::<Vec<_>>(),
                        )
                        .bind(
                            p.iter()
                                .map(|(_, r)| r.horizon_minutes as i32)
                                .collect::<Vec<_>>(),
                        )
                        .bind(
                            p.iter()
                                .map(|(_, r)| r.model_version.clone())
                                .collect::<Vec<_>>(),
                        )
                        .bind(p.iter().map(|(_, r)| r.variant.clone()).collect::<Vec<_>>())
                        .bind(p.iter().map(|(_, r)| r.probability).collect::<Vec<_>>())
                        .bind(p.iter().map(|(_, r)| r.spike).collect::<Vec<_>>())
                        .bind(
                            p.iter()
                                .map(|(_, r)| r.online_probability)
                                .collect::<Vec<_>>(),
                        )
                        .bind(p.iter().map(|(_, r)| r.online_spike).collect::<Vec<_>>())
                        .bind(produced_at(p))
                        .bind(offsets(p))
                        .fetch_one(&mut *tx),
                )
                .await?;
            written.predictions = stored;
            written.latest += latest;
        }
        if !batch.outcomes.is_empty() {
            let o = &batch.outcomes;
            let (stored,): (i64,) = m
                .timed(
                    "upsert_outcomes",
                    sqlx::query_as(UPSERT_OUTCOMES)
                        .bind(o.iter().map(|(_, r)| r.symbol.clone()).collect::<Vec<_>>())
                        .bind(
                            o.iter()
                                .map(|(_, r)| timestamp(r.bar_start_ms))
                                .collect::<Vec<_>>(),
                        )
                        .bind(
                            o.iter()
                                .map(|(_, r)| r.horizon_minutes as i32)
                                .collect::<Vec<_>>(),
                        )
                        .bind(
                            o.iter()
                                .map(|(_, r)| timestamp(r.judged_by_bar_start_ms))
                                .collect::<Vec<_>>(),
                        )
                        .bind(
                            o.iter()
                                .map(|(_, r)| r.realised_volatility)
                                .collect::<Vec<_>>(),
                        )
                        .bind(o.iter().map(|(_, r)| r.spike_threshold).collect::<Vec<_>>())
                        .bind(o.iter().map(|(_, r)| r.spike).collect::<Vec<_>>())
                        .bind(produced_at(o))
                        .bind(offsets(o))
                        .fetch_one(&mut *tx),
                )
                .await?;
            written.outcomes = stored;
        }
        m.timed("commit", tx.commit()).await?;
        Ok(written)
    }
}

/// The `produced_at` column of a batch's rows.
fn produced_at<T>(rows: &[(Version, &T)]) -> Vec<OffsetDateTime> {
    rows.iter().map(|(v, _)| timestamp(v.produced_ms)).collect()
}

/// The `source_offset` column of a batch's rows.
fn offsets<T>(rows: &[(Version, &T)]) -> Vec<i64> {
    rows.iter().map(|(v, _)| v.offset).collect()
}

/// A batch with one row per key: the newest version of it (of equal versions, the later in
/// the batch).
#[derive(Debug, Default)]
struct Batch<'a> {
    bars: Vec<(Version, &'a BarRecord)>,
    predictions: Vec<(Version, &'a PredictionRecord)>,
    outcomes: Vec<(Version, &'a OutcomeRecord)>,
}

impl<'a> Batch<'a> {
    fn newest(items: &'a [Item]) -> Self {
        fn keep<'a, K: std::hash::Hash + Eq, T>(
            rows: &mut Vec<(Version, &'a T)>,
            index: &mut HashMap<K, usize>,
            key: K,
            version: Version,
            row: &'a T,
        ) {
            match index.get(&key) {
                Some(&i) => {
                    if version >= rows[i].0 {
                        rows[i] = (version, row);
                    }
                }
                None => {
                    index.insert(key, rows.len());
                    rows.push((version, row));
                }
            }
        }
        let mut batch = Batch::default();
        let (mut bars, mut predictions, mut outcomes) =
            (HashMap::new(), HashMap::new(), HashMap::new());
        for Item { version, row } in items {
            match row {
                Row::Bar(b) => keep(
                    &mut batch.bars,
                    &mut bars,
                    (b.symbol.as_str(), b.interval_seconds, b.start_ms),
                    *version,
                    b,
                ),
                Row::Prediction(p) => keep(
                    &mut batch.predictions,
                    &mut predictions,
                    (p.symbol.as_str(), p.bar_start_ms),
                    *version,
                    p,
                ),
                Row::Outcome(o) => keep(
                    &mut batch.outcomes,
                    &mut outcomes,
                    (o.symbol.as_str(), o.bar_start_ms),
                    *version,
                    o,
                ),
            }
        }
        batch
    }
}

/// Samples the pool's connections into gauges every second until shutdown.
pub fn spawn_pool_sampler(pool: PgPool, max: u32, shutdown: Shutdown) {
    catalog::DB_POOL_MAX_CONNECTIONS
        .gauge(&[])
        .set(f64::from(max));
    let idle = catalog::DB_POOL_CONNECTIONS.gauge(&[("state", "idle")]);
    let in_use = catalog::DB_POOL_CONNECTIONS.gauge(&[("state", "in_use")]);
    tokio::spawn(async move {
        let stop = shutdown.cancelled();
        tokio::pin!(stop);
        loop {
            let size = pool.size();
            let free = pool.num_idle() as u32;
            idle.set(f64::from(free));
            in_use.set(f64::from(size.saturating_sub(free)));
            tokio::select! {
                () = &mut stop => break,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(symbol: &str, start_ms: i64, close: f64, produced_ms: i64, offset: i64) -> Item {
        Item {
            version: Version {
                produced_ms,
                offset,
            },
            row: Row::Bar(BarRecord {
                symbol: symbol.to_owned(),
                interval_seconds: 60,
                start_ms,
                end_ms: start_ms + 60_000,
                open: 1.0,
                high: 2.0,
                low: 0.5,
                close,
                volume: 3.0,
                vwap: 1.5,
                trade_count: 4,
            }),
        }
    }

    #[test]
    fn a_batch_keeps_the_newest_version_of_each_key_in_any_order() {
        let rows = |items: &[Item]| -> Vec<(String, i64, f64)> {
            Batch::newest(items)
                .bars
                .iter()
                .map(|(_, b)| (b.symbol.clone(), b.start_ms, b.close))
                .collect()
        };
        let items = [
            bar("A", 0, 1.0, 100, 7),
            bar("B", 0, 1.0, 100, 8),
            bar("A", 0, 1.2, 200, 9),
            bar("A", 60_000, 1.1, 200, 10),
            // Sent earlier than the version above, read later (another producer's).
            bar("A", 0, 1.3, 150, 11),
            // The same timestamp: the later offset is the newer.
            bar("B", 0, 0.9, 100, 12),
        ];
        let want = [
            ("A".to_owned(), 0, 1.2),
            ("B".to_owned(), 0, 0.9),
            ("A".to_owned(), 60_000, 1.1),
        ];
        assert_eq!(rows(&items), want);
        let mut reversed = items.clone();
        reversed.reverse();
        let mut got = rows(&reversed);
        got.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
        let mut want = want.to_vec();
        want.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
        assert_eq!(got, want, "the same rows, whatever the order");
    }
}
