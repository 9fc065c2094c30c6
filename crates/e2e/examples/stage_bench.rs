//! Events per second through each streaming stage against a raw rdkafka consume-and-produce
//! passthrough, on the same broker and the same prefilled input topics, in one run.
//!
//! For each stage the input topic is filled once with that stage's kind of input (raw
//! venue records, canonical trades, enriched trades) from the seeded generator. Then, in
//! alternating rounds, a fresh consumer group reads all of it through (a) a passthrough:
//! `StreamConsumer` to `FutureProducer`, payload copied, every delivery awaited, and (b) the
//! stage's real loop and processor (`tidewatch_kafka::stage::run`), metrics recorder
//! installed. Each side's time runs from the first `recv` to the last acknowledgement.
//!
//! Needs TIDEWATCH_KAFKA_BROKERS and DATABASE_URL (scripts/bench-pipeline sets both).
//!   cargo run --release -p tidewatch-e2e --example stage_bench -- [messages] [rounds]

use std::time::{Duration, Instant};

use clap::Parser as _;
use futures::stream::{FuturesUnordered, StreamExt as _};
use generator::stream::{Kind, Mix, RecordStream};
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _};
use tidewatch_e2e::env_var;
use tidewatch_kafka::stage::{Input, Outcome, Position, Processor, StageConfig};
use tidewatch_kafka::{ensure_topics, Producer, Record};
use tidewatch_market_sim::MarketConfig;
use tidewatch_schema::{decode_raw, EnrichedTrade};
use tidewatch_telemetry::{BuildInfo, ComponentHealth, Criticality, Shutdown, Telemetry};

/// A message to prefill: key and payload.
type Keyed = (String, Vec<u8>);

/// Stops the stage once it has processed `target` messages.
struct Counting<P> {
    inner: P,
    seen: usize,
    target: usize,
    shutdown: Shutdown,
    started: Option<Instant>,
}

impl<P: Processor> Processor for Counting<P> {
    async fn process(&mut self, input: &Input<'_>) -> Outcome {
        self.started.get_or_insert_with(Instant::now);
        let outcome = self.inner.process(input).await;
        self.seen += 1;
        if self.seen == self.target {
            self.shutdown.trigger();
        }
        outcome
    }
    fn resume_position(&self, partition: i32, offset: i64) -> Position {
        self.inner.resume_position(partition, offset)
    }
    fn acknowledged(&mut self, partition: i32, position: &Position) {
        self.inner.acknowledged(partition, position);
    }
    async fn assigned(
        &mut self,
        partition: i32,
        committed: Option<i64>,
        watermarks: Option<(i64, i64)>,
    ) -> anyhow::Result<Option<i64>> {
        self.inner.assigned(partition, committed, watermarks).await
    }
    fn revoked(&mut self, partition: i32) {
        self.inner.revoked(partition);
    }
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}-{nanos}")
}

async fn passthrough(brokers: &str, input: &str, output: &str, n: usize) -> anyhow::Result<f64> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("bench-pass"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .create()?;
    consumer.subscribe(&[input])?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()?;
    let mut deliveries = FuturesUnordered::new();
    let mut start = None;
    for _ in 0..n {
        let m = consumer.recv().await?;
        start.get_or_insert_with(Instant::now);
        let mut record =
            FutureRecord::<[u8], [u8]>::to(output).payload(m.payload().unwrap_or_default());
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        match producer.send_result(record) {
            Ok(d) => deliveries.push(d),
            Err((e, _)) => anyhow::bail!("produce failed: {e}"),
        }
        while deliveries.len() > 1000 {
            deliveries.next().await;
        }
    }
    while let Some(d) = deliveries.next().await {
        d.map_err(|_| anyhow::anyhow!("cancelled"))?
            .map_err(|(e, _)| e)?;
    }
    Ok(n as f64 / start.map_or(1.0, |s| s.elapsed().as_secs_f64()))
}

async fn stage<P: Processor>(
    brokers: &str,
    name: &'static str,
    input: &str,
    processor: P,
    n: usize,
    health: &tidewatch_telemetry::Health,
) -> anyhow::Result<f64> {
    let producer = Producer::new(brokers, name)?;
    let shutdown = Shutdown::new();
    let config = StageConfig {
        stage: name,
        brokers: brokers.to_owned(),
        group_id: unique("bench-stage"),
        input_topic: input.to_owned(),
        max_in_flight: 1000,
        session_timeout_ms: 10_000,
        options: Vec::new(),
        faults: tidewatch_web::Faults::new(&[]),
    };
    let handle = health.handle(
        "broker",
        Criticality::Critical,
        ComponentHealth::healthy("bench"),
    );
    let mut counting = Counting {
        inner: processor,
        seen: 0,
        target: n,
        shutdown: shutdown.clone(),
        started: None,
    };
    tidewatch_kafka::stage::run(&config, &producer, &mut counting, &shutdown, &handle).await?;
    anyhow::ensure!(counting.seen == n, "stage saw {} of {n}", counting.seen);
    Ok(n as f64 / counting.started.map_or(1.0, |s| s.elapsed().as_secs_f64()))
}

async fn fill(brokers: &str, topic: &str, records: Vec<(String, Vec<u8>)>) -> anyhow::Result<()> {
    let producer = Producer::new(brokers, "bench-fill")?;
    let mut pending = FuturesUnordered::new();
    for (key, payload) in records {
        pending.push(producer.send(&Record::new(topic, Some(key.into_bytes()), payload)));
        while pending.len() > 5000 {
            pending.next().await.transpose()?;
        }
    }
    while let Some(r) = pending.next().await {
        r?;
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let brokers = env_var("TIDEWATCH_KAFKA_BROKERS");
    let telemetry = Telemetry::new(BuildInfo::new("stage-bench", "bench"))?;

    // Inputs of each stage, from the seeded generator (its usual mix of bad records).
    let mut stream = RecordStream::new(
        &MarketConfig::new(5),
        Mix {
            bad_fraction: 0.01,
            late_fraction: 0.0,
        },
    );
    let mut raw = Vec::with_capacity(n);
    let mut normalized = Vec::with_capacity(n);
    let mut enriched = Vec::with_capacity(n);
    while raw.len() < n {
        let g = stream.next_record();
        raw.push((g.symbol.clone(), g.payload.clone()));
        if matches!(g.kind, Kind::Valid | Kind::Anomaly) {
            let t = decode_raw(&g.payload, 0).expect("valid record");
            let spec = tidewatch_market_sim::symbol_spec(&t.symbol).expect("known symbol");
            normalized.push((t.symbol.clone(), serde_json::to_vec(&t)?));
            let (base, quote) = t.symbol.split_once('-').unwrap_or((&t.symbol, "USD"));
            let e = EnrichedTrade {
                asset_class: spec.asset_class.into(),
                base: base.into(),
                quote: quote.into(),
                tick_size: 0.01,
                lot_size: 1.0,
                anomalies: Vec::new(),
                trade: t,
            };
            enriched.push((e.trade.symbol.clone(), serde_json::to_vec(&e)?));
        }
    }
    let fill_to = |v: &mut Vec<(String, Vec<u8>)>| {
        let mut i = 0;
        while v.len() < n {
            let r = v[i].clone();
            v.push(r);
            i += 1;
        }
    };
    // Stages see the same number of messages; repeats are fine for throughput.
    fill_to(&mut normalized);
    fill_to(&mut enriched);
    let topics: Vec<(&'static str, String, Vec<Keyed>)> = vec![
        ("normalize", unique("bench-raw"), raw),
        ("enrich", unique("bench-normalized"), normalized),
        ("aggregate", unique("bench-enriched"), enriched),
    ];
    for (_, topic, records) in &topics {
        let (out, features) = (format!("{topic}-out"), format!("{topic}-out-f"));
        ensure_topics(&brokers, &[topic, &out, &features, "dlq"], 3).await?;
        fill(&brokers, topic, records.clone()).await?;
    }
    println!("{n} messages per measurement, {rounds} rounds, median shown; stage / passthrough");
    println!(
        "{:<10} {:>16} {:>16} {:>8}",
        "stage", "stage ev/s", "passthrough ev/s", "ratio"
    );
    for (name, topic, _) in &topics {
        let out = format!("{topic}-out");
        let (mut s, mut p) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            p.push(passthrough(&brokers, topic, &out, n).await?);
            let rate = match *name {
                "normalize" => {
                    stage(
                        &brokers,
                        name,
                        topic,
                        normalize::Normalize::new(out.clone()),
                        n,
                        &telemetry.health,
                    )
                    .await?
                }
                "enrich" => {
                    let settings =
                        enrich::Settings::try_parse_from(["enrich", "--output-topic", &out])?;
                    let processor = enrich::build(&settings, &telemetry, Shutdown::new()).await?;
                    stage(&brokers, name, topic, processor, n, &telemetry.health).await?
                }
                _ => {
                    let settings = aggregate::Settings::try_parse_from([
                        "aggregate",
                        "--bars-topic",
                        &out,
                        "--features-topic",
                        &format!("{out}-f"),
                    ])?;
                    let pool = tidewatch_db::connect_and_migrate(&settings.database).await?;
                    let store = aggregate::checkpoint::CheckpointStore::new(
                        pool,
                        unique("bench"),
                        topic.clone(),
                    );
                    stage(
                        &brokers,
                        name,
                        topic,
                        aggregate::Aggregate::new(&settings, store),
                        n,
                        &telemetry.health,
                    )
                    .await?
                }
            };
            s.push(rate);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (sm, pm) = (median(s.clone()), median(p.clone()));
        println!(
            "{name:<10} {sm:>16.0} {pm:>16.0} {:>7.1}%   (stage {s:.0?}, passthrough {p:.0?})",
            100.0 * sm / pm
        );
    }
    Ok(())
}
