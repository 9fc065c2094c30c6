//! Instrument reference data: read from PostgreSQL, held in a bounded in-process cache.
//!
//! Entries live for a time to live; an expired entry is refreshed from the database, and
//! when the database cannot answer the expired entry is served anyway (counted as `stale`):
//! reference data changes rarely, and a stage that stops for a database blip would turn an
//! outage of the database into an outage of the pipeline. Unknown symbols are cached too
//! (as known-unknown), so a flood of them does not become a flood of queries.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram};
use sqlx::PgPool;
use tidewatch_telemetry::catalog;

/// One row of `instruments`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Instrument {
    pub symbol: String,
    pub asset_class: String,
    pub base: String,
    pub quote: String,
    pub tick_size: f64,
    pub lot_size: f64,
    pub price_band_low: f64,
    pub price_band_high: f64,
    pub typical_size: f64,
}

/// Where instruments come from: PostgreSQL in the service, a map in unit tests.
pub trait InstrumentSource: Send + Sync {
    /// `Ok(None)` when the symbol is not an instrument; `Err` when the source cannot say.
    fn fetch(
        &self,
        symbol: &str,
    ) -> impl Future<Output = anyhow::Result<Option<Instrument>>> + Send;
}

/// The `instruments` table.
#[derive(Debug, Clone)]
pub struct PgInstruments {
    pool: PgPool,
}

impl PgInstruments {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Every instrument, to warm the cache at start.
    pub async fn all(&self) -> anyhow::Result<Vec<Instrument>> {
        Ok(sqlx::query_as::<_, Instrument>(
            "SELECT symbol, asset_class, base, quote, tick_size, lot_size, \
             price_band_low, price_band_high, typical_size FROM instruments ORDER BY symbol",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}

impl InstrumentSource for PgInstruments {
    async fn fetch(&self, symbol: &str) -> anyhow::Result<Option<Instrument>> {
        Ok(sqlx::query_as::<_, Instrument>(
            "SELECT symbol, asset_class, base, quote, tick_size, lot_size, \
             price_band_low, price_band_high, typical_size FROM instruments WHERE symbol = $1",
        )
        .bind(symbol)
        .fetch_optional(&self.pool)
        .await?)
    }
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    Found(Arc<Instrument>),
    /// The database says there is no such instrument.
    Unknown,
    /// Not cached and the database cannot be asked.
    Unavailable(String),
}

struct Entry {
    instrument: Option<Arc<Instrument>>,
    fetched: Instant,
    used: u64,
}

struct CacheMetrics {
    hit: Counter,
    miss: Counter,
    stale: Counter,
    evictions: Counter,
    entries: Gauge,
    found: Counter,
    not_found: Counter,
    failed: Counter,
    duration: Histogram,
}

impl CacheMetrics {
    fn new() -> Self {
        let result = |r| catalog::REFERENCE_CACHE_REQUESTS.counter(&[("result", r)]);
        let outcome = |o| catalog::REFERENCE_LOOKUPS.counter(&[("outcome", o)]);
        let m = Self {
            hit: result("hit"),
            miss: result("miss"),
            stale: result("stale"),
            evictions: catalog::REFERENCE_CACHE_EVICTIONS.counter(&[]),
            entries: catalog::REFERENCE_CACHE_ENTRIES.gauge(&[]),
            found: outcome("found"),
            not_found: outcome("not_found"),
            failed: outcome("failed"),
            duration: catalog::REFERENCE_LOOKUP_DURATION.histogram(&[]),
        };
        for c in [
            &m.hit,
            &m.miss,
            &m.stale,
            &m.evictions,
            &m.found,
            &m.not_found,
            &m.failed,
        ] {
            c.absolute(0);
        }
        m
    }
}

/// The cache as `GET /v1/cache/stats` shows it, published by the stage at most a second
/// apart (the cache itself belongs to the stage loop, which takes no lock per lookup).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct CacheStats {
    pub entries: usize,
    pub capacity: usize,
    pub ttl_seconds: u64,
    pub hits: u64,
    pub misses: u64,
    /// Expired entries served because the database could not answer.
    pub stale_serves: u64,
    pub evictions: u64,
    /// Hits over lookups since start (None before the first lookup).
    pub hit_ratio: Option<f64>,
    /// Age of the entry fetched longest ago (None while empty).
    pub oldest_entry_age_seconds: Option<f64>,
}

/// Lookups since start, for [`CacheStats`].
#[derive(Debug, Default)]
struct Counts {
    hits: u64,
    misses: u64,
    stale: u64,
    evictions: u64,
}

pub struct InstrumentCache {
    entries: HashMap<String, Entry>,
    ttl: Duration,
    capacity: usize,
    clock: u64,
    metrics: CacheMetrics,
    counts: Counts,
    stats: Arc<Mutex<CacheStats>>,
    published: Option<Instant>,
}

impl std::fmt::Debug for InstrumentCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstrumentCache")
            .field("entries", &self.entries.len())
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl InstrumentCache {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            ttl,
            capacity: capacity.max(1),
            clock: 0,
            metrics: CacheMetrics::new(),
            counts: Counts::default(),
            stats: Arc::default(),
            published: None,
        }
    }

    /// The published statistics, for the HTTP API.
    pub fn stats(&self) -> Arc<Mutex<CacheStats>> {
        self.stats.clone()
    }

    /// Publishes the statistics if the last publication is a second old (or `now`).
    fn publish(&mut self, now: bool) {
        if !now
            && self
                .published
                .is_some_and(|p| p.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.published = Some(Instant::now());
        let c = &self.counts;
        let lookups = c.hits + c.misses;
        let snapshot = CacheStats {
            entries: self.entries.len(),
            capacity: self.capacity,
            ttl_seconds: self.ttl.as_secs(),
            hits: c.hits,
            misses: c.misses,
            stale_serves: c.stale,
            evictions: c.evictions,
            hit_ratio: (lookups > 0).then(|| c.hits as f64 / lookups as f64),
            oldest_entry_age_seconds: self
                .entries
                .values()
                .map(|e| e.fetched.elapsed().as_secs_f64())
                .max_by(f64::total_cmp),
        };
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = snapshot;
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Puts instruments in the cache (warming it at start).
    pub fn preload(&mut self, instruments: Vec<Instrument>) {
        for i in instruments {
            let symbol = i.symbol.clone();
            self.insert(symbol, Some(Arc::new(i)));
        }
        self.publish(true);
    }

    /// The instrument for `symbol`, from the cache if fresh, else from `source`.
    pub async fn get(&mut self, symbol: &str, source: &impl InstrumentSource) -> Lookup {
        let lookup = self.lookup(symbol, source).await;
        self.publish(false);
        lookup
    }

    async fn lookup(&mut self, symbol: &str, source: &impl InstrumentSource) -> Lookup {
        self.clock += 1;
        let clock = self.clock;
        if let Some(entry) = self.entries.get_mut(symbol) {
            entry.used = clock;
            if entry.fetched.elapsed() < self.ttl {
                self.metrics.hit.increment(1);
                self.counts.hits += 1;
                return found(entry.instrument.clone());
            }
        }
        self.metrics.miss.increment(1);
        self.counts.misses += 1;
        let start = Instant::now();
        let fetched = source.fetch(symbol).await;
        self.metrics.duration.record(start.elapsed().as_secs_f64());
        match fetched {
            Ok(instrument) => {
                if instrument.is_some() {
                    self.metrics.found.increment(1);
                } else {
                    self.metrics.not_found.increment(1);
                }
                let instrument = instrument.map(Arc::new);
                self.insert(symbol.to_owned(), instrument.clone());
                found(instrument)
            }
            Err(e) => {
                self.metrics.failed.increment(1);
                match self.entries.get(symbol) {
                    Some(entry) => {
                        self.metrics.stale.increment(1);
                        self.counts.stale += 1;
                        found(entry.instrument.clone())
                    }
                    None => Lookup::Unavailable(format!("{e:#}")),
                }
            }
        }
    }

    fn insert(&mut self, symbol: String, instrument: Option<Arc<Instrument>>) {
        self.clock += 1;
        if !self.entries.contains_key(&symbol) && self.entries.len() >= self.capacity {
            // Least recently used goes; the cache holds instruments, so this is rare.
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            {
                self.entries.remove(&oldest);
                self.metrics.evictions.increment(1);
                self.counts.evictions += 1;
            }
        }
        self.entries.insert(
            symbol,
            Entry {
                instrument,
                fetched: Instant::now(),
                used: self.clock,
            },
        );
        self.metrics.entries.set(self.entries.len() as f64);
    }
}

fn found(instrument: Option<Arc<Instrument>>) -> Lookup {
    instrument.map_or(Lookup::Unknown, Lookup::Found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// A source whose availability the test switches (the real one is exercised on
    /// PostgreSQL by the stage's integration test).
    #[derive(Default)]
    struct Switchable {
        down: AtomicBool,
        queries: AtomicUsize,
    }

    impl InstrumentSource for Switchable {
        async fn fetch(&self, symbol: &str) -> anyhow::Result<Option<Instrument>> {
            self.queries.fetch_add(1, Ordering::SeqCst);
            anyhow::ensure!(!self.down.load(Ordering::SeqCst), "connection refused");
            Ok((symbol != "NOPE").then(|| instrument(symbol)))
        }
    }

    fn instrument(symbol: &str) -> Instrument {
        Instrument {
            symbol: symbol.to_owned(),
            asset_class: "crypto".into(),
            base: "X".into(),
            quote: "USD".into(),
            tick_size: 0.01,
            lot_size: 1.0,
            price_band_low: 1.0,
            price_band_high: 2.0,
            typical_size: 1.0,
        }
    }

    #[tokio::test]
    async fn hits_misses_staleness_and_eviction() {
        let source = Switchable::default();
        let mut cache = InstrumentCache::new(Duration::from_millis(50), 2);
        assert!(matches!(cache.get("A", &source).await, Lookup::Found(_)));
        assert!(matches!(cache.get("A", &source).await, Lookup::Found(_)));
        assert_eq!(
            source.queries.load(Ordering::SeqCst),
            1,
            "second lookup is a hit"
        );
        assert_eq!(cache.get("NOPE", &source).await, Lookup::Unknown);
        assert_eq!(cache.get("NOPE", &source).await, Lookup::Unknown);
        assert_eq!(
            source.queries.load(Ordering::SeqCst),
            2,
            "unknowns are cached too"
        );
        // A third symbol evicts the least recently used (A was used before NOPE).
        assert!(matches!(cache.get("B", &source).await, Lookup::Found(_)));
        assert_eq!(cache.len(), 2);
        // Database down: expired entries are served stale, unseen symbols are unavailable.
        source.down.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(matches!(cache.get("B", &source).await, Lookup::Found(_)));
        assert!(matches!(
            cache.get("C", &source).await,
            Lookup::Unavailable(_)
        ));
        // Back up: refreshed.
        source.down.store(false, Ordering::SeqCst);
        assert!(matches!(cache.get("C", &source).await, Lookup::Found(_)));

        // What /v1/cache/stats shows, once published (at most a second apart).
        cache.publish(true);
        let stats = cache.stats().lock().expect("stats").clone();
        assert_eq!(
            (stats.entries, stats.capacity, stats.hits, stats.misses),
            (2, 2, 2, 6)
        );
        assert_eq!((stats.stale_serves, stats.evictions), (1, 2));
        assert_eq!(stats.hit_ratio, Some(0.25));
        assert!(stats.oldest_entry_age_seconds.is_some_and(|a| a >= 0.06));
    }
}
