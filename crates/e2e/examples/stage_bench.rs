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
//! Then each stage runs as 1, 2 and 3 instances in one consumer group (one process: the
//! instances share the machine's cores), printing events per second side by side and the
//! messages processed twice; and as 3 instances of which one is dropped after a third of
//! the messages, printing how long the others take to process its partitions.
//!
//! Needs TIDEWATCH_KAFKA_BROKERS and DATABASE_URL (scripts/bench-pipeline sets both).
//!   cargo run --release -p tidewatch-e2e --example stage_bench -- [messages] [rounds]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
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

/// What the instances of one consumer group share: how many distinct messages they
/// processed together, when the group formed (every instance holds a partition) and how many were
/// processed by then, when the `target`-th was processed, which (partition, offset) pairs
/// were seen (a second sighting is a redelivery), and the instance that was stopped.
struct Group {
    target: usize,
    seen: AtomicUsize,
    created: Instant,
    assignments: Vec<Arc<Mutex<BTreeSet<i32>>>>,
    /// When, how many processed by then, and this process's CPU seconds then.
    formed: OnceLock<(Instant, usize, f64)>,
    finished: OnceLock<(Instant, f64)>,
    sightings: Mutex<HashSet<(i32, i64)>>,
    redelivered: AtomicUsize,
    stopped: Mutex<Option<Stopped>>,
}

/// The instance stopped mid-stream: when, what it held, and when another instance first
/// processed each of those partitions afterwards.
struct Stopped {
    at: Instant,
    instance: usize,
    partitions: BTreeSet<i32>,
    resumed: BTreeMap<i32, Instant>,
}

impl Group {
    fn new(target: usize, assignments: Vec<Arc<Mutex<BTreeSet<i32>>>>) -> Self {
        Self {
            target,
            seen: AtomicUsize::new(0),
            created: Instant::now(),
            assignments,
            formed: OnceLock::new(),
            finished: OnceLock::new(),
            sightings: Mutex::new(HashSet::new()),
            redelivered: AtomicUsize::new(0),
            stopped: Mutex::new(None),
        }
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One instance's processor: counts for its group and stops the group at its target.
struct Counting<P> {
    inner: P,
    instance: usize,
    group: Arc<Group>,
    /// The partitions this instance holds now (read when it is stopped).
    assignment: Arc<Mutex<BTreeSet<i32>>>,
    shutdown: Shutdown,
}

impl<P: Processor> Processor for Counting<P> {
    async fn process(&mut self, input: &Input<'_>) -> Outcome {
        if self.group.formed.get().is_none() {
            if self
                .group
                .assignments
                .iter()
                .all(|a| !Group::lock(a).is_empty())
            {
                let seen = self.group.seen.load(Ordering::Relaxed);
                self.group
                    .formed
                    .get_or_init(|| (Instant::now(), seen, cpu_seconds()));
            } else {
                // Until every instance holds a partition, the first one to get them all
                // creeps: the measurement is of the formed group, not of one instance.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let now = Instant::now();
        let outcome = self.inner.process(input).await;
        if let Some(stopped) = Group::lock(&self.group.stopped).as_mut() {
            if stopped.instance != self.instance && stopped.partitions.contains(&input.partition) {
                stopped.resumed.entry(input.partition).or_insert(now);
            }
        }
        // A redelivery is work, not progress: the group is done when every message has
        // been processed at least once.
        if !Group::lock(&self.group.sightings).insert((input.partition, input.offset)) {
            self.group.redelivered.fetch_add(1, Ordering::Relaxed);
        } else if self.group.seen.fetch_add(1, Ordering::Relaxed) + 1 == self.group.target {
            self.group
                .finished
                .get_or_init(|| (Instant::now(), cpu_seconds()));
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
        Group::lock(&self.assignment).insert(partition);
        self.inner.assigned(partition, committed, watermarks).await
    }
    fn revoked(&mut self, partition: i32) {
        Group::lock(&self.assignment).remove(&partition);
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

/// This process's user and system CPU seconds so far (`/proc/self/stat`, in the kernel's
/// 100 Hz clock ticks); 0 where that cannot be read.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // After the command name's closing parenthesis: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Longest a group run may take (100,000 messages take seconds).
const GROUP_DEADLINE: Duration = Duration::from_secs(300);

/// What one run of a stage's consumer group measured.
struct Run {
    /// From the instances' start until each held a partition.
    formed_after: Duration,
    /// Over the messages processed once the group had formed.
    events_per_second: f64,
    /// CPU seconds this process spent per wall second over the same stretch: below 1 on a
    /// single instance means the stage waits (on the broker, on PostgreSQL), not computes.
    cores_busy: f64,
    redelivered: usize,
    /// With an instance stopped mid-stream: how many partitions it held, and the time from
    /// its stop until the others had processed a message of each (none: some partition
    /// had nothing left to process).
    rebalance: Option<(usize, Option<Duration>)>,
}

/// Runs `instances` instances of a stage (the real loop, each with its own producer) in one
/// consumer group until together they processed `n` messages; with `stop_one`, the last
/// instance is dropped once a third of them are through and it holds a partition: its
/// consumer closes and leaves the group, the others take its partitions over.
async fn group<P: Processor>(
    brokers: &str,
    name: &'static str,
    input: &str,
    processors: Vec<P>,
    n: usize,
    stop_one: bool,
    health: &tidewatch_telemetry::Health,
) -> anyhow::Result<Run> {
    let instances = processors.len();
    let assignments: Vec<_> = (0..instances)
        .map(|_| Arc::new(Mutex::new(BTreeSet::new())))
        .collect();
    let group = Arc::new(Group::new(n, assignments.clone()));
    let group_id = unique("bench-stage");
    let shutdown = Shutdown::new();
    let mut stops = Vec::new();
    let mut runs: Vec<Pin<Box<dyn Future<Output = anyhow::Result<()>>>>> = Vec::new();
    for (instance, processor) in processors.into_iter().enumerate() {
        let config = StageConfig {
            stage: name,
            brokers: brokers.to_owned(),
            group_id: group_id.clone(),
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
        let assignment = assignments[instance].clone();
        let stop = Shutdown::new();
        stops.push(stop.clone());
        let mut counting = Counting {
            inner: processor,
            instance,
            group: group.clone(),
            assignment,
            shutdown: shutdown.clone(),
        };
        let (producer, shutdown) = (Producer::new(brokers, name)?, shutdown.clone());
        runs.push(Box::pin(async move {
            tokio::select! {
                r = tidewatch_kafka::stage::run(&config, &producer, &mut counting, &shutdown, &handle) => r,
                // Dropped mid-flight: nothing more is acknowledged or stored by it.
                () = stop.cancelled() => Ok(()),
            }
        }));
    }
    if stop_one {
        let (group, assignment, stop) = (
            group.clone(),
            assignments[instances - 1].clone(),
            stops[instances - 1].clone(),
        );
        runs.push(Box::pin(async move {
            // After a third of the messages, once it holds a partition (the group may
            // still be forming then).
            while group.seen.load(Ordering::Relaxed) < group.target / 3
                || Group::lock(&assignment).is_empty()
            {
                if group.finished.get().is_some() {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            *Group::lock(&group.stopped) = Some(Stopped {
                at: Instant::now(),
                instance: instances - 1,
                partitions: Group::lock(&assignment).clone(),
                resumed: BTreeMap::new(),
            });
            stop.trigger();
            Ok(())
        }));
    }
    // A group that stops making progress is a finding, not a hang.
    let Ok(results) = tokio::time::timeout(GROUP_DEADLINE, futures::future::join_all(runs)).await
    else {
        anyhow::bail!(
            "the group of {instances} processed {} of {n} distinct messages in {GROUP_DEADLINE:?}",
            group.seen.load(Ordering::Relaxed)
        );
    };
    for r in results {
        r?;
    }
    let seen = group.seen.load(Ordering::Relaxed);
    anyhow::ensure!(seen >= n, "the group processed {seen} of {n}");
    let (Some(&(formed, before, cpu_formed)), Some(&(finished, cpu_finished))) =
        (group.formed.get(), group.finished.get())
    else {
        anyhow::bail!(
            "the group of {instances} never formed before its {n} messages were processed"
        );
    };
    anyhow::ensure!(
        n - before >= n / 2,
        "the group of {instances} formed after {before} of {n} messages: too late to measure"
    );
    let rebalance = Group::lock(&group.stopped).as_ref().map(|s| {
        let last = s.resumed.values().max();
        let took = last
            .filter(|_| s.resumed.len() == s.partitions.len())
            .map(|l| l.duration_since(s.at));
        (s.partitions.len(), took)
    });
    let measured = finished.duration_since(formed).as_secs_f64();
    Ok(Run {
        formed_after: formed.duration_since(group.created),
        events_per_second: (n - before) as f64 / measured,
        cores_busy: (cpu_finished - cpu_formed) / measured,
        redelivered: group.redelivered.load(Ordering::Relaxed),
        rebalance,
    })
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

/// One run of `name`'s consumer group with `instances` instances over `topic`.
async fn run_stage(
    brokers: &str,
    name: &'static str,
    topic: &str,
    n: usize,
    instances: usize,
    stop_one: bool,
    telemetry: &Telemetry,
) -> anyhow::Result<Run> {
    let out = format!("{topic}-out");
    let health = &telemetry.health;
    match name {
        "normalize" => {
            let processors = (0..instances)
                .map(|_| normalize::Normalize::new(out.clone()))
                .collect();
            group(brokers, name, topic, processors, n, stop_one, health).await
        }
        "enrich" => {
            let settings = enrich::Settings::try_parse_from(["enrich", "--output-topic", &out])?;
            let mut processors = Vec::new();
            for _ in 0..instances {
                processors.push(enrich::build(&settings, telemetry, Shutdown::new()).await?);
            }
            group(brokers, name, topic, processors, n, stop_one, health).await
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
            // One checkpoint namespace for the group: a partition that moves resumes from
            // the checkpoint its previous owner wrote.
            let checkpoints = unique("bench");
            let processors = (0..instances)
                .map(|_| {
                    let store = aggregate::checkpoint::CheckpointStore::new(
                        pool.clone(),
                        checkpoints.clone(),
                        topic.to_owned(),
                    );
                    aggregate::Aggregate::new(&settings, store)
                })
                .collect();
            group(brokers, name, topic, processors, n, stop_one, health).await
        }
    }
}

/// Fills `topic` with one record per record batch.
async fn fill_unbatched(brokers: &str, topic: &str, records: &[Keyed]) -> anyhow::Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("batch.num.messages", "1")
        .set("linger.ms", "0")
        .create()?;
    let mut pending = FuturesUnordered::new();
    for (key, payload) in records {
        let record = FutureRecord::to(topic)
            .key(key.as_bytes())
            .payload(payload.as_slice());
        match producer.send_result(record) {
            Ok(d) => pending.push(d),
            Err((e, _)) => anyhow::bail!("produce failed: {e}"),
        }
        while pending.len() > 5000 {
            if let Some(d) = pending.next().await {
                d?.map_err(|(e, _)| e)?;
            }
        }
    }
    while let Some(d) = pending.next().await {
        d?.map_err(|(e, _)| e)?;
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
    if std::env::var_os("STAGE_BENCH_LOG").is_some() {
        tidewatch_telemetry::logging::init(tidewatch_telemetry::LogFormat::Pretty, "info")?;
    }

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
        let (mut s, mut p) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            p.push(passthrough(&brokers, topic, &format!("{topic}-out"), n).await?);
            s.push(
                run_stage(&brokers, name, topic, n, 1, false, &telemetry)
                    .await?
                    .events_per_second,
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (sm, pm) = (median(s.clone()), median(p.clone()));
        println!(
            "{name:<10} {sm:>16.0} {pm:>16.0} {:>7.1}%   (stage {s:.0?}, passthrough {p:.0?})",
            100.0 * sm / pm
        );
    }

    // Several instances of a stage in one consumer group over the topic's 3 partitions (one
    // process, so they share this machine's cores): how throughput grows, what is
    // processed twice, and how long the others take to resume the partitions of an
    // instance that stops.
    println!(
        "\ninstances per stage, one consumer group over 3 partitions; events/s once every instance \
         holds a partition, median of {rounds}"
    );
    println!(
        "{:<10} {:>12} {:>12} {:>12} {:>6} {:>6} {:>16} {:>12}",
        "stage",
        "1 instance",
        "2 instances",
        "3 instances",
        "2/1",
        "3/1",
        "3 formed after",
        "redelivered"
    );
    let mut rebalances = Vec::new();
    for (name, batched, records) in &topics {
        // The same records, one to a record batch: tansu 0.6 answers a fetch from inside a
        // batch with nothing, so a partition that moves to another instance with its
        // committed offset inside a batch would stall there (Kafka itself resumes).
        let topic = &format!("{batched}-single");
        let (out, features) = (format!("{topic}-out"), format!("{topic}-out-f"));
        ensure_topics(&brokers, &[topic, &out, &features], 3).await?;
        fill_unbatched(&brokers, topic, records).await?;
        let (mut medians, mut formed, mut cores) = (Vec::new(), Vec::new(), Vec::new());
        let mut redelivered = 0;
        for instances in 1..=3 {
            let (mut rates, mut busy) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                let run = run_stage(&brokers, name, topic, n, instances, false, &telemetry).await?;
                rates.push(run.events_per_second);
                busy.push(run.cores_busy);
                formed.push(run.formed_after.as_secs_f64());
                redelivered = redelivered.max(run.redelivered);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            medians.push(median(rates));
            cores.push(median(busy));
        }
        let formed3 = median(formed.split_off(formed.len() - rounds));
        println!(
            "{name:<10} {:>12.0} {:>12.0} {:>12.0} {:>6.2} {:>6.2} {:>14.1} s {:>12}",
            medians[0],
            medians[1],
            medians[2],
            medians[1] / medians[0],
            medians[2] / medians[0],
            formed3,
            redelivered
        );
        println!(
            "{:<10} {:>12.2} {:>12.2} {:>12.2}   CPU cores busy (of {}), same runs",
            "",
            cores[0],
            cores[1],
            cores[2],
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        for _ in 0..rounds {
            let run = run_stage(&brokers, name, topic, n, 3, true, &telemetry).await?;
            rebalances.push((*name, run));
        }
    }
    println!("\none of 3 instances stops after a third of the messages (its consumer closes and leaves the group):");
    for (name, run) in rebalances {
        let what = match run.rebalance {
            Some((partitions, Some(took))) => format!(
                "its {partitions} partition(s) resumed by the others after {:.2} s",
                took.as_secs_f64()
            ),
            Some((partitions, None)) => {
                format!("its {partitions} partition(s) had nothing left when it stopped")
            }
            None => "it got no partition before the others finished".to_owned(),
        };
        println!(
            "{name:<10} {what}; {:.0} ev/s overall, {} redelivered",
            run.events_per_second, run.redelivered
        );
    }
    Ok(())
}
