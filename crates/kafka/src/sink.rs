//! The at-least-once batch sink loop: consume from several topics, decode, write a batch to
//! an external store in one go, and only then store the offsets.
//!
//! The stage loop ([`crate::stage`]) produces to Kafka message by message; a sink (the
//! projection into PostgreSQL) gains most from writing many rows per transaction. Messages
//! are gathered until the batch is full or the first of them has waited `linger`; bad ones
//! are dead-lettered as they arrive. The batch is then written; if the write fails the loop
//! stops consuming and retries the same batch with exponential backoff until it succeeds
//! (or shutdown), with the sink's health unhealthy meanwhile. Offsets are stored only after
//! the write succeeded and every dead letter of the batch was acknowledged, so a crash or a
//! failed write replays messages, never loses them: the sink's writes must be idempotent,
//! and must keep a key's newest message whatever order its messages are written in.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::TraceContextExt as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::{Message as _, Offset};
use tidewatch_telemetry::{catalog, ComponentHealth, HealthHandle, Shutdown};
use tidewatch_web::Faults;
use tracing::Instrument as _;

use crate::context::{starting_over, AssignmentChange, StageContext};
use crate::dlq::{dead_letter, Code, DLQ_TOPIC};
use crate::positions::{rewind, Positions, Verdict};
use crate::producer::Producer;
use crate::stage::{
    commit_final, count_dead_letter, count_error, register_error_series, subscribe, Input,
};
use crate::trace;

/// Why a message cannot become an item: a bounded code (a metric label and the dead
/// letter's code) and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub code: Code,
    pub reason: String,
}

/// A store written in batches. Writes must be idempotent (after a crash or a failed write
/// the same items are written again) and must not let an older message of a key replace a
/// newer one: a member whose partitions were reassigned during a rebalance may still finish
/// writing its batch after the partitions' new owner wrote later messages.
pub trait Sink: Send {
    type Item: Send + Sync;

    /// Decodes one message; a rejection sends it to the dead-letter topic.
    fn decode(&self, input: &Input<'_>) -> Result<Self::Item, Rejected>;

    /// Writes a batch atomically: all of it or, on error, none of it.
    fn write(&mut self, items: &[Self::Item]) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// The rejection codes [`Sink::decode`] can return, so their series start at zero.
    fn error_codes(&self) -> &'static [Code] {
        &[]
    }
}

#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Stage name, the `stage` label of its metrics.
    pub stage: &'static str,
    pub brokers: String,
    pub group_id: String,
    pub input_topics: Vec<String>,
    /// Messages per batch, at most.
    pub max_batch: usize,
    /// How long the first message of a batch waits for more.
    pub linger: Duration,
    /// Longest pause between two attempts of a failing write.
    pub max_backoff: Duration,
    pub session_timeout_ms: u32,
    /// Extra librdkafka properties, applied last.
    pub options: Vec<(String, String)>,
    /// Fault switches; the loop honours the processing slowdown.
    pub faults: Faults,
}

/// A message in the batch being gathered: where it came from and what it became.
struct Gathered<T> {
    topic: String,
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    bytes: usize,
    item: Option<T>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Notes the consumer's assignment changes in `positions`; a partition found past its end
/// (the broker lost its data) is consumed again from the beginning. Returns the partitions
/// it sought there.
fn apply_changes(
    consumer: &StreamConsumer<StageContext>,
    positions: &mut Positions,
) -> Vec<(String, i32)> {
    let mut sought = Vec::new();
    for change in consumer.context().take_changes() {
        match change {
            AssignmentChange::Assigned {
                topic,
                partition,
                committed,
            } => positions.starts_at(&topic, partition, committed),
            AssignmentChange::Revoked { topic, partition } => positions.revoked(&topic, partition),
            AssignmentChange::PastTheEnd {
                topic,
                partition,
                position,
                high_watermark,
            } => {
                starting_over(&topic, partition, position, high_watermark);
                positions.starts_at(&topic, partition, None);
                if let Err(e) = consumer.seek(
                    &topic,
                    partition,
                    Offset::Beginning,
                    Duration::from_secs(10),
                ) {
                    tracing::warn!(topic, partition, error = %e, "seeking to the beginning failed");
                }
                sought.push((topic, partition));
            }
        }
    }
    sought
}

/// Runs the sink until `shutdown`; the batch in hand is written (retrying while the store
/// is away, until shutdown) and its offsets committed before returning. `store_health`
/// turns unhealthy while a write is failing, which makes the service unready.
pub async fn run<S: Sink>(
    config: &SinkConfig,
    producer: &Producer,
    sink: &mut S,
    shutdown: &Shutdown,
    broker_health: &HealthHandle,
    store_health: &HealthHandle,
) -> anyhow::Result<()> {
    let topics: Vec<&str> = config.input_topics.iter().map(String::as_str).collect();
    let consumer = subscribe(
        config.stage,
        &config.brokers,
        &config.group_id,
        config.session_timeout_ms,
        &config.options,
        &topics,
        broker_health,
    )?;

    let metrics = SinkMetrics::new(config.stage, sink.error_codes());
    let stop = shutdown.cancelled();
    tokio::pin!(stop);
    let max_batch = config.max_batch.max(1);
    let mut batch: Vec<Gathered<S::Item>> = Vec::with_capacity(max_batch);
    let mut dead_letters = Vec::new();
    // The contexts the batch's messages carry, for its span to link to (traced only).
    let mut links = Vec::new();
    let mut outcome = Ok(());
    // Changes also come while no message does (a partition found past its end).
    let mut changes_tick = tokio::time::interval(Duration::from_secs(1));
    let mut positions = Positions::default();
    loop {
        // Gather: until full, lingered long enough, or stopping.
        let deadline = tokio::time::Instant::now() + config.linger;
        let stopping = loop {
            if batch.len() >= max_batch {
                break false;
            }
            let received = tokio::select! {
                biased;
                () = &mut stop => break true,
                () = tokio::time::sleep_until(deadline), if !batch.is_empty() => break false,
                _ = changes_tick.tick() => {
                    apply_changes(&consumer, &mut positions);
                    continue;
                }
                received = consumer.recv() => received,
            };
            let sought = apply_changes(&consumer, &mut positions);
            let message = match received {
                Ok(m) => m,
                Err(e) => {
                    metrics.error("consume_failed");
                    tracing::warn!(error = %e, "consume failed");
                    continue;
                }
            };
            let (topic, partition) = (message.topic(), message.partition());
            if sought.iter().any(|(t, p)| t == topic && *p == partition) {
                continue;
            }
            match positions.judge(topic, partition, message.offset()) {
                Verdict::Process => {}
                Verdict::Drop => continue,
                Verdict::Rewind { from } => {
                    rewind(&consumer, topic, partition, from);
                    continue;
                }
            }
            let input = Input::from_message(&message);
            metrics.received(input.payload.len());
            config.faults.slow_down().await;
            let traced = tidewatch_telemetry::trace::enabled();
            let item = match sink.decode(&input) {
                Ok(item) => {
                    if traced && links.len() < trace::MAX_LINKS {
                        if let Some(cx) = trace::remote_context(&input.headers) {
                            links.push(cx.span().span_context().clone());
                        }
                    }
                    Some(item)
                }
                Err(Rejected { code, reason }) => {
                    if traced {
                        // The rejected message's own span, failed with the reason; the
                        // dead letter keeps the context the message arrived with.
                        let span = trace::process_span(config.stage, &config.group_id, &input);
                        trace::fail(&span, code.name, &reason);
                    }
                    metrics.dead_lettered(code);
                    tracing::debug!(
                        topic = input.topic,
                        partition = input.partition,
                        offset = input.offset,
                        code = code.name,
                        "message dead-lettered"
                    );
                    dead_letters.push(producer.send(&dead_letter(
                        config.stage,
                        &input,
                        code,
                        &reason,
                    )));
                    None
                }
            };
            batch.push(Gathered {
                topic: input.topic.to_owned(),
                partition: input.partition,
                offset: input.offset,
                timestamp_ms: input.timestamp_ms,
                bytes: if item.is_some() {
                    input.payload.len()
                } else {
                    0
                },
                item,
            });
        };
        if !batch.is_empty() {
            let span = tidewatch_telemetry::trace::enabled().then(|| {
                let mut topics: Vec<&str> = batch.iter().map(|g| g.topic.as_str()).collect();
                topics.sort_unstable();
                topics.dedup();
                trace::batch_span(
                    config.stage,
                    &config.group_id,
                    &topics.join(","),
                    batch.len(),
                    &links,
                )
            });
            links.clear();
            let flushed = flush(
                sink,
                &mut batch,
                &mut dead_letters,
                &consumer,
                &metrics,
                config.max_backoff,
                shutdown,
                store_health,
            )
            .instrument(span.unwrap_or_else(tracing::Span::none))
            .await;
            match flushed {
                Ok(Flushed::Written) => {}
                // Stopping during an outage: nothing stored, so nothing is lost.
                Ok(Flushed::LeftForRestart) => break,
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        if stopping {
            break;
        }
    }
    commit_final(&consumer);
    producer.flush(Duration::from_secs(10))?;
    tracing::info!(stage = config.stage, "sink stopped, offsets committed");
    outcome
}

/// What became of a batch.
enum Flushed {
    /// Written, dead letters delivered, offsets stored.
    Written,
    /// Shutdown came while the store was away: nothing stored, read again after restart.
    LeftForRestart,
}

/// Writes the batch (retrying until it succeeds or shutdown), waits for its dead letters,
/// then stores the offsets. On shutdown during an outage the batch is left unstored: it is
/// read again after restart.
#[allow(clippy::too_many_arguments)]
async fn flush<S: Sink>(
    sink: &mut S,
    batch: &mut Vec<Gathered<S::Item>>,
    dead_letters: &mut Vec<
        impl Future<Output = Result<usize, crate::producer::ProduceError>> + Send,
    >,
    consumer: &StreamConsumer<StageContext>,
    metrics: &SinkMetrics,
    max_backoff: Duration,
    shutdown: &Shutdown,
    store_health: &HealthHandle,
) -> anyhow::Result<Flushed> {
    let start = Instant::now();
    // The items move out for the write; the batch keeps the positions to store.
    let owned: Vec<S::Item> = batch.iter_mut().filter_map(|g| g.item.take()).collect();
    let mut backoff = Duration::from_millis(100);
    let mut attempt = 0u32;
    while !owned.is_empty() {
        match sink.write(&owned).await {
            Ok(()) => {
                if attempt > 0 {
                    tracing::info!(
                        attempts = attempt + 1,
                        "store reachable again, batch written"
                    );
                }
                store_health.set(ComponentHealth::healthy("writing"));
                break;
            }
            Err(e) => {
                attempt += 1;
                metrics.error("write_failed");
                store_health.set(ComponentHealth::unhealthy(format!(
                    "writes failing, retrying: {e:#}"
                )));
                tracing::warn!(error = format!("{e:#}"), attempt, retry_in = ?backoff, "batch write failed; not consuming until it succeeds");
                tokio::select! {
                    () = shutdown.cancelled() => {
                        tracing::warn!(messages = batch.len(), "stopping while the store is unreachable; the batch is read again after restart");
                        return Ok(Flushed::LeftForRestart);
                    }
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(max_backoff);
            }
        }
    }
    for delivery in dead_letters.drain(..) {
        delivery.await.map_err(|e| {
            metrics.error("produce_failed");
            anyhow::Error::new(e)
                .context("a dead letter was not delivered; stopping without storing its offset")
        })?;
    }
    // The next offset of every partition in the batch.
    let mut next: HashMap<(&str, i32), i64> = HashMap::new();
    let mut newest_ts = None;
    for g in batch.iter() {
        let e = next.entry((&g.topic, g.partition)).or_insert(g.offset + 1);
        *e = (*e).max(g.offset + 1);
        newest_ts = newest_ts.max(g.timestamp_ms);
    }
    for ((topic, partition), offset) in next {
        // After a rebalance the partition may belong to another member, which writes the
        // same rows again, maybe before this batch landed: the sink's writes make both
        // harmless (see `Sink`).
        if let Err(e) = consumer.store_offset(topic, partition, offset - 1) {
            tracing::debug!(error = %e, partition, "offset not stored");
        }
    }
    let bytes = batch.iter().map(|g| g.bytes).sum();
    metrics.written(batch.len(), owned.len(), bytes, start.elapsed(), newest_ts);
    batch.clear();
    Ok(Flushed::Written)
}

struct SinkMetrics {
    stage: &'static str,
    received: metrics::Counter,
    received_bytes: metrics::Counter,
    sent: metrics::Counter,
    sent_bytes: metrics::Counter,
    processing: metrics::Histogram,
    batch: metrics::Histogram,
    freshness: metrics::Gauge,
}

impl SinkMetrics {
    fn new(stage: &'static str, codes: &[Code]) -> Self {
        let s = [("stage", stage)];
        register_error_series(
            stage,
            &["consume_failed", "produce_failed", "write_failed"],
            codes,
        );
        // A sink produces only dead letters, maybe never: their series exist from the start.
        for outcome in ["acked", "failed"] {
            catalog::KAFKA_PRODUCED
                .counter(&[("topic", DLQ_TOPIC), ("outcome", outcome)])
                .increment(0);
        }
        drop(catalog::KAFKA_PRODUCE_DURATION.histogram(&[("topic", DLQ_TOPIC)]));
        Self {
            stage,
            received: catalog::COMPONENT_RECEIVED_EVENTS.counter(&s),
            received_bytes: catalog::COMPONENT_RECEIVED_BYTES.counter(&s),
            sent: catalog::COMPONENT_SENT_EVENTS
                .counter(&[("stage", stage), ("topic", "postgresql")]),
            sent_bytes: catalog::COMPONENT_SENT_BYTES
                .counter(&[("stage", stage), ("topic", "postgresql")]),
            processing: catalog::COMPONENT_PROCESSING_DURATION.histogram(&s),
            batch: catalog::COMPONENT_BATCH_SIZE.histogram(&s),
            freshness: catalog::KAFKA_FRESHNESS_LAG.gauge(&s),
        }
    }

    fn received(&self, bytes: usize) {
        self.received.increment(1);
        self.received_bytes.increment(bytes as u64);
    }

    fn error(&self, error_type: &'static str) {
        count_error(self.stage, error_type);
    }

    fn dead_lettered(&self, code: Code) {
        count_error(self.stage, code.name);
        count_dead_letter(self.stage, code);
    }

    fn written(
        &self,
        messages: usize,
        items: usize,
        bytes: usize,
        took: Duration,
        newest_ts: Option<i64>,
    ) {
        self.sent.increment(items as u64);
        self.sent_bytes.increment(bytes as u64);
        self.batch.record(messages as f64);
        self.processing.record(took.as_secs_f64());
        if let Some(ts) = newest_ts {
            self.freshness.set((now_ms() - ts).max(0) as f64 / 1e3);
        }
    }
}
