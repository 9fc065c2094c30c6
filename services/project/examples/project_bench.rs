//! The projection's benchmark, printed side by side in one run (scripts/bench-project):
//!
//! 1. Write throughput: the same bar rows written by the projection (`Store::write`,
//!    batches of `BATCH` rows: dedup, UNNEST upsert with the no-change guard, the
//!    `symbol_latest` upsert, one transaction each) and by a plain `COPY ... FROM STDIN`
//!    into an empty table of the same shape (`LIKE bars INCLUDING ALL`, so the same
//!    primary-key index). Both build their input from the same records inside the timing.
//! 2. Read latency: `GET /v1/bars` for one symbol's day of one-minute bars (1,440 rows, one
//!    page), sequential requests over loopback to the real router; p50 and p99.
//!
//! Usage: project_bench [rows] [rounds] [requests]; needs DATABASE_URL.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use project::api;
use project::store::{timestamp, Item, Row, Store, Version};
use tidewatch_schema::BarRecord;

const BATCH: usize = 1000;
const SYMBOLS: usize = 50;
/// 2026-01-01T00:00:00Z
const T0: i64 = 1_767_225_600_000;

fn bars(rows: usize, round: usize) -> Vec<BarRecord> {
    (0..rows)
        .map(|i| {
            let minute = (i / SYMBOLS) as i64 + (round * rows) as i64;
            let price = 100.0 + (i % 97) as f64 * 0.37;
            BarRecord {
                symbol: format!("S{}-USD", i % SYMBOLS),
                interval_seconds: 60,
                start_ms: T0 + minute * 60_000,
                end_ms: T0 + (minute + 1) * 60_000,
                open: price,
                high: price + 1.0,
                low: price - 1.0,
                close: price + 0.5,
                volume: 12.5 + (i % 13) as f64,
                vwap: price + 0.25,
                trade_count: 40 + (i % 17) as u64,
            }
        })
        .collect()
}

async fn copy(pool: &sqlx::PgPool, rows: &[BarRecord]) -> anyhow::Result<Duration> {
    sqlx::query("DROP TABLE IF EXISTS bars_copy")
        .execute(pool)
        .await?;
    sqlx::query("CREATE TABLE bars_copy (LIKE bars INCLUDING ALL)")
        .execute(pool)
        .await?;
    let start = Instant::now();
    let mut conn = pool.acquire().await?;
    let mut copy = conn
        .copy_in_raw(
            "COPY bars_copy (symbol, interval_seconds, start_time, end_time, open, high, low, close, volume, vwap, trade_count) FROM STDIN (FORMAT csv)",
        )
        .await?;
    let mut buf = String::with_capacity(1 << 20);
    for chunk in rows.chunks(BATCH) {
        buf.clear();
        for b in chunk {
            let _ = writeln!(
                buf,
                "{},{},{},{},{},{},{},{},{},{},{}",
                b.symbol,
                b.interval_seconds,
                rfc3339(b.start_ms),
                rfc3339(b.end_ms),
                b.open,
                b.high,
                b.low,
                b.close,
                b.volume,
                b.vwap,
                b.trade_count
            );
        }
        copy.send(buf.as_bytes()).await?;
    }
    let n = copy.finish().await?;
    anyhow::ensure!(n as usize == rows.len(), "COPY wrote {n} rows");
    Ok(start.elapsed())
}

async fn upsert(store: &Store, rows: &[BarRecord], batch: usize) -> anyhow::Result<Duration> {
    sqlx::query("TRUNCATE bars, symbol_latest")
        .execute(store.pool())
        .await?;
    let start = Instant::now();
    let written = upsert_rows(store, rows, batch).await?;
    anyhow::ensure!(
        written as usize == rows.len(),
        "upsert wrote {written} rows"
    );
    Ok(start.elapsed())
}

fn rfc3339(ms: i64) -> String {
    timestamp(ms)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rows: usize = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let rounds: usize = args.next().map_or(Ok(5), |a| a.parse())?;
    let requests: usize = args.next().map_or(Ok(2_000), |a| a.parse())?;
    let url =
        std::env::var("DATABASE_URL").map_err(|_| anyhow::anyhow!("DATABASE_URL is not set"))?;
    let pool = tidewatch_db::connect_and_migrate(&tidewatch_db::DatabaseArgs {
        database_url: url.into(),
        database_password: None,
        database_max_connections: 4,
        database_start_timeout_seconds: 30,
    })
    .await?;
    let store = Store::new(pool.clone());

    let sizes = [BATCH, 5 * BATCH];
    println!(
        "write: {rows} bar rows per round, {rounds} rounds; upsert batches of {sizes:?} (the service's default is {BATCH})"
    );
    let mut copy_rates = Vec::new();
    let mut upsert_rates = vec![Vec::new(); sizes.len()];
    for round in 0..rounds {
        let data = bars(rows, round);
        // Alternate the order so neither always runs on a warmer cache.
        let copy_first = round % 2 == 0;
        let mut c = if copy_first {
            Some(copy(&pool, &data).await?)
        } else {
            None
        };
        let mut line = String::new();
        for (i, size) in sizes.iter().enumerate() {
            let u = rows as f64 / upsert(&store, &data, *size).await?.as_secs_f64();
            let _ = write!(line, "   upsert/{size} {u:>8.0} rows/s");
            upsert_rates[i].push(u);
        }
        if c.is_none() {
            c = Some(copy(&pool, &data).await?);
        }
        let c = rows as f64 / c.unwrap_or_default().as_secs_f64();
        println!("  round {round}: COPY {c:>8.0} rows/s{line}");
        copy_rates.push(c);
    }
    let c = median(copy_rates);
    println!("  median: COPY into an empty table {c:.0} rows/s");
    for (size, rates) in sizes.iter().zip(upsert_rates) {
        let u = median(rates);
        println!(
            "  median: projection upsert, batches of {size}: {u:.0} rows/s = {:.1}% of COPY (target >= 40%)",
            100.0 * u / c
        );
    }

    // A day of one-minute bars of one symbol, read as one page.
    sqlx::query("TRUNCATE bars, symbol_latest")
        .execute(&pool)
        .await?;
    let day: Vec<Item> = (0..1440)
        .map(|m| Item {
            version: Version {
                produced_ms: T0 + (m + 1) * 60_000,
                offset: m,
            },
            row: Row::Bar(BarRecord {
                symbol: "BTC-USD".into(),
                interval_seconds: 60,
                start_ms: T0 + m * 60_000,
                end_ms: T0 + (m + 1) * 60_000,
                open: 100.0,
                high: 101.0,
                low: 99.0,
                close: 100.5,
                volume: 3.0,
                vwap: 100.2,
                trade_count: 12,
            }),
        })
        .collect();
    for chunk in day.chunks(BATCH) {
        store.write(chunk).await?;
    }
    // Some other history, so the index is not just this day.
    for round in 0..3 {
        upsert_rows(&store, &bars(rows.min(50_000), round + 10), BATCH).await?;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, api::router(store)).await });
    let client = reqwest::Client::new();
    let url = format!(
        "http://{addr}/v1/bars?symbol=BTC-USD&interval=1m&from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z&limit=1440"
    );
    for _ in 0..50 {
        client.get(&url).send().await?.bytes().await?;
    }
    let mut took = Vec::with_capacity(requests);
    for _ in 0..requests {
        let start = Instant::now();
        let res = client.get(&url).send().await?;
        anyhow::ensure!(res.status().is_success(), "status {}", res.status());
        let body = res.bytes().await?;
        took.push(start.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(
            body.len() > 100_000,
            "a day of bars is {} bytes",
            body.len()
        );
    }
    took.sort_by(f64::total_cmp);
    let pct = |p: f64| took[((took.len() as f64 * p) as usize).min(took.len() - 1)];
    println!(
        "read: GET /v1/bars, one symbol's day (1,440 bars, one page), {requests} sequential requests: p50 {:.2} ms, p99 {:.2} ms (target p99 <= 20 ms)",
        pct(0.50),
        pct(0.99)
    );
    Ok(())
}

/// Writes `rows` through the projection a batch at a time; the bar rows written.
async fn upsert_rows(store: &Store, rows: &[BarRecord], batch: usize) -> anyhow::Result<i64> {
    let mut written = 0;
    for chunk in rows.chunks(batch) {
        let items: Vec<Item> = chunk
            .iter()
            .map(|b| Item {
                // Sent when the bar closed: every row a new key, so the version only orders.
                version: Version {
                    produced_ms: b.end_ms,
                    offset: 0,
                },
                row: Row::Bar(b.clone()),
            })
            .collect();
        written += store.write(&items).await?.bars;
    }
    Ok(written)
}
