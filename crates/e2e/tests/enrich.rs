//! enrich when PostgreSQL goes away (through a proxy the test cuts; the database itself
//! keeps running for other tests): known symbols are served from the cache, `/health` says
//! degraded, a symbol it has never seen waits instead of being dead-lettered, and everything
//! recovers by itself when the database is back.

use std::time::{Duration, Instant};

use tidewatch_e2e::{env_var, Proxy, Service};
use tidewatch_kafka::inspect::read_topic_async;
use tidewatch_kafka::{Producer, Record};
use tidewatch_schema::{EnrichedTrade, Side, Trade, Venue};

fn trade(symbol: &str, id: u64, price: f64) -> Vec<u8> {
    serde_json::to_vec(&Trade {
        trade_id: format!("alpha:{symbol}:{id}"),
        venue: Venue::Alpha,
        symbol: symbol.to_owned(),
        price,
        size: 1.0,
        side: Side::Buy,
        event_time_ms: 1_767_225_600_000 + id as i64,
        ingest_time_ms: 1_767_225_600_000 + id as i64,
    })
    .expect("encode")
}

async fn health(s: &Service) -> serde_json::Value {
    reqwest::get(s.url("/health"))
        .await
        .expect("health")
        .json()
        .await
        .expect("json")
}

async fn wait_status(s: &Service, want: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let h = health(s).await;
        if h["status"] == want {
            return h;
        }
        assert!(Instant::now() < deadline, "status never became {want}: {h}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_from_cache_while_the_database_is_away_and_recovers() {
    let brokers = env_var("TIDEWATCH_KAFKA_BROKERS");
    let database = env_var("DATABASE_URL");
    // postgres://user@host:port/db -> host:port, proxied.
    let authority = database
        .split('@')
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("host:port in DATABASE_URL");
    let target = tokio::net::lookup_host(authority)
        .await
        .expect("resolve")
        .next()
        .expect("address");
    let proxy = Proxy::start(target).await.expect("proxy");
    let proxied = database.replace(authority, &proxy.addr.to_string());

    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let (input, output) = (format!("enrich-{run}-in"), format!("enrich-{run}-out"));
    let symbol = format!("T{}-USD", run % 1_000_000_000);
    let group = format!("enrich-{run}");
    let enrich = Service::start(
        "enrich",
        &[
            "--input-topic",
            &input,
            "--output-topic",
            &output,
            "--group-id",
            &group,
            "--group-instance-id",
            "enrich-0",
        ],
        &[
            ("KAFKA_BROKERS", &brokers),
            ("DATABASE_URL", &proxied),
            ("CACHE_TTL_SECONDS", "1"),
            ("LOG_LEVEL", "info"),
        ],
    )
    .expect("enrich starts");
    enrich
        .wait_ready(Duration::from_secs(90))
        .await
        .expect("ready");
    let producer = Producer::new(&brokers, "test").expect("producer");
    let send = |payload: Vec<u8>, key: &str| {
        producer.send(&Record::new(&input, Some(key.as_bytes().to_vec()), payload))
    };

    // What enrich wrote so far: `n` records, or fewer after `secs` seconds.
    let read_out = |n: usize, secs: u64| {
        let (brokers, output) = (brokers.clone(), output.clone());
        async move {
            read_topic_async(brokers, output, n, Duration::from_secs(secs), |_| true)
                .await
                .expect("read")
        }
    };
    send(trade("BTC-USD", 1, 65_000.0), "BTC-USD")
        .await
        .expect("sent");
    let first = read_out(1, 60).await;
    assert_eq!(first.len(), 1, "enriched while the database is up");

    proxy.cut();
    let h = wait_status(&enrich, "degraded").await;
    assert_eq!(
        h["ready"], true,
        "a degraded enrich still takes traffic: {h}"
    );
    // Cached entries have expired (1 s TTL): served stale.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    send(trade("BTC-USD", 2, 65_010.0), "BTC-USD")
        .await
        .expect("sent");
    // The stale entry is served once the lookup has failed (up to the pool's acquire
    // timeout).
    let stale = read_out(2, 60).await;
    let symbols = |messages: &[tidewatch_kafka::inspect::ReadMessage]| -> Vec<String> {
        messages
            .iter()
            .map(|m| {
                serde_json::from_slice::<EnrichedTrade>(&m.payload)
                    .expect("enriched")
                    .trade
                    .symbol
            })
            .collect()
    };
    assert_eq!(
        symbols(&stale),
        ["BTC-USD", "BTC-USD"],
        "the known symbol went through from cache"
    );
    let metrics = enrich.metrics().await.expect("metrics");
    assert!(
        !metrics.contains("tidewatch_reference_cache_requests_total{result=\"stale\"} 0"),
        "stale entries were served"
    );
    // A symbol the cache has never seen, added to the database (directly) meanwhile. It is
    // sent only after the stale trade came out: the stage handles one message at a time,
    // and the two keys may land in different partitions, read in either order.
    let direct = tokio::process::Command::new("psql")
        .arg(&database)
        .arg("-qc")
        .arg(format!(
            "INSERT INTO instruments (symbol, asset_class, base, quote, tick_size, lot_size, \
             price_band_low, price_band_high, typical_size) VALUES ('{symbol}', 'crypto', 'T', 'USD', 0.01, 1, 1, 100, 1)"
        ))
        .status()
        .await
        .expect("psql");
    assert!(direct.success());
    send(trade(&symbol, 3, 10.0), &symbol).await.expect("sent");
    // It waits for the database: ten seconds on, still two records out.
    let during = read_out(3, 10).await;
    assert_eq!(
        symbols(&during),
        ["BTC-USD", "BTC-USD"],
        "the new symbol waits for the database instead of being dead-lettered"
    );

    proxy.restore();
    let after = read_out(3, 60).await;
    assert_eq!(
        after.len(),
        3,
        "the waiting trade went through once the database was back"
    );
    let waited: EnrichedTrade = serde_json::from_slice(&after[2].payload).expect("enriched");
    assert_eq!(
        (waited.trade.symbol.as_str(), waited.base.as_str()),
        (symbol.as_str(), "T")
    );
    wait_status(&enrich, "healthy").await;
    let dlq = enrich.metrics().await.expect("metrics");
    assert!(
        !dlq.lines()
            .any(|l| l.starts_with("tidewatch_dlq_messages_total") && !l.ends_with(" 0")),
        "nothing was dead-lettered"
    );
    // The cache as an operator sees it: the instruments loaded at start and the new symbol,
    // looked up while the database was away, then fetched.
    let stats: serde_json::Value = reqwest::get(enrich.url("/v1/cache/stats"))
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert!(stats["entries"].as_u64().is_some_and(|n| n >= 7), "{stats}");
    assert!(stats["misses"].as_u64().is_some_and(|n| n >= 1), "{stats}");
    assert!(
        stats["hit_ratio"]
            .as_f64()
            .is_some_and(|r| (0.0..=1.0).contains(&r)),
        "{stats}"
    );
    assert!(
        stats["oldest_entry_age_seconds"].as_f64().is_some(),
        "{stats}"
    );
    let _ = tokio::process::Command::new("psql")
        .arg(&database)
        .arg("-qc")
        .arg(format!("DELETE FROM instruments WHERE symbol = '{symbol}'"))
        .status()
        .await;
}
