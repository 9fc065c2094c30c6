//! The at-least-once stage loop: consume, process, produce, and only then store the offset.
//!
//! Auto-commit is on and the automatic offset store off, as in rust-rdkafka's at-least-once
//! example: an input offset is stored only once every output of that message (a dead letter
//! included) was acknowledged by the broker, and offsets are stored in consumption order,
//! so a crash at any point replays messages instead of losing them. Up to `max_in_flight`
//! messages are processed ahead of their acknowledgements, which keeps throughput up.
//!
//! A processor that keeps state across messages (aggregate's open windows) says where to
//! resume instead ([`Processor::resume_position`]), learns when that position is safe
//! ([`Processor::acknowledged`]) so it can checkpoint its state, and when a partition is
//! assigned may move the start back to its checkpoint ([`Processor::assigned`]).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use futures::stream::{FuturesOrdered, StreamExt as _};
use metrics::{Counter, Gauge, Histogram};
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use tidewatch_telemetry::{catalog, HealthHandle, Shutdown};
use tidewatch_web::Faults;
use tracing::Instrument as _;

use crate::context::{starting_over, AssignmentChange, StageContext};
use crate::dlq::{dead_letter, Code, ENCODE_FAILED};
use crate::positions::{rewind, Positions, Verdict};
use crate::producer::{ProduceError, Producer, Record};
use crate::trace;

/// One consumed message, as a processor sees it.
#[derive(Debug, Clone, Default)]
pub struct Input<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    /// The message's Kafka timestamp (when it was produced), in Unix milliseconds.
    pub timestamp_ms: Option<i64>,
    pub headers: Vec<(&'a str, &'a [u8])>,
    /// The `process` span of this message, when traces are exported and it is sampled: what
    /// a record made from many messages links to (see [`crate::trace`]).
    pub span: Option<opentelemetry::trace::SpanContext>,
}

impl<'a> Input<'a> {
    /// The processor's view of a consumed message.
    pub fn from_message(message: &'a rdkafka::message::BorrowedMessage<'a>) -> Self {
        let (headers, unreadable) = crate::headers::read(message.headers());
        if unreadable > 0 {
            tracing::warn!(
                topic = message.topic(),
                partition = message.partition(),
                offset = message.offset(),
                unreadable,
                "message headers whose names are not UTF-8 were left out"
            );
        }
        Input {
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key(),
            payload: message.payload().unwrap_or_default(),
            timestamp_ms: message.timestamp().to_millis(),
            headers,
            span: None,
        }
    }

    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
    }

    /// The headers whose names start with `prefix`, owned, to forward on an output.
    pub fn headers_with_prefix(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        self.headers
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
            .collect()
    }
}

/// Where a partition resumes: the next offset to read, and what the processor needs to
/// rebuild its state from there (handed back by [`Processor::acknowledged`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub offset: i64,
    pub metadata: Option<String>,
}

/// What a processor decided for one input message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Write these records (possibly none) to their topics.
    Emit(Vec<Record>),
    /// Send the input unchanged to the dead-letter topic, with a bounded code (a label)
    /// and a reason for people.
    DeadLetter { code: Code, reason: String },
    /// The message cannot be handled now and the stage is stopping (a dependency stayed
    /// away until shutdown): its offset is not stored, so it is processed after restart.
    Abandon,
}

impl Outcome {
    /// The dead letter for an output that could not be serialised.
    pub fn encode_failed(e: &serde_json::Error) -> Self {
        Outcome::DeadLetter {
            code: ENCODE_FAILED,
            reason: format!("output could not be encoded: {e}"),
        }
    }
}

/// A stage's logic: it decides what each input becomes; the loop does the Kafka I/O.
pub trait Processor: Send {
    /// Handles one message. May wait (enrich looks up reference data it has not cached),
    /// which holds back every later message of the stage (one is handled at a time),
    /// never reorders them.
    fn process(&mut self, input: &Input<'_>) -> impl Future<Output = Outcome> + Send;

    /// The dead-letter codes this processor can return, so their series exist (at zero)
    /// from the start: an alert on a rate needs the series before the first event.
    fn error_codes(&self) -> &'static [Code] {
        &[]
    }

    /// Where `partition` resumes if the stage stops right after the message at `offset`
    /// and its outputs were acknowledged. Stateless stages resume at the next message.
    fn resume_position(&self, _partition: i32, offset: i64) -> Position {
        Position {
            offset: offset + 1,
            metadata: None,
        }
    }

    /// Every output up to the message that produced `position` was acknowledged and the
    /// offset stored: a stateful processor can checkpoint `position` now.
    fn acknowledged(&mut self, _partition: i32, _position: &Position) {}

    /// `partition` was assigned; `committed` is the group's committed offset, if any, and
    /// `watermarks` the partition's (first offset held, offset the next message gets), if
    /// the broker answered. A processor that must rebuild state returns the offset to start
    /// from instead; one whose checkpoint the topic no longer holds (a broker that lost its
    /// data while the checkpoint store kept it) must start over from what the topic holds.
    fn assigned(
        &mut self,
        _partition: i32,
        _committed: Option<i64>,
        _watermarks: Option<(i64, i64)>,
    ) -> impl Future<Output = anyhow::Result<Option<i64>>> + Send {
        std::future::ready(Ok(None))
    }

    /// `partition` was taken away; state kept for it is stale from now on.
    fn revoked(&mut self, _partition: i32) {}
}

#[derive(Debug, Clone)]
pub struct StageConfig {
    /// Stage name, the `stage` label of its metrics.
    pub stage: &'static str,
    pub brokers: String,
    pub group_id: String,
    pub input_topic: String,
    /// Messages processed but not yet acknowledged, at most.
    pub max_in_flight: usize,
    pub session_timeout_ms: u32,
    /// Extra librdkafka properties, applied last.
    pub options: Vec<(String, String)>,
    /// Fault switches; the loop honours the processing slowdown.
    pub faults: Faults,
}

type Pending = Pin<Box<dyn Future<Output = Done> + Send>>;

/// A message whose outputs have all been answered by the broker.
struct Done {
    topic: String,
    partition: i32,
    offset: i64,
    resume: Position,
    timestamp_ms: Option<i64>,
    result: Result<Vec<(String, usize)>, ProduceError>,
}

struct StageMetrics {
    stage: &'static str,
    received: Counter,
    received_bytes: Counter,
    processing: Histogram,
    batch: Histogram,
    freshness: Gauge,
    sent: HashMap<String, (Counter, Counter)>,
}

impl StageMetrics {
    fn new(stage: &'static str) -> Self {
        let s = [("stage", stage)];
        Self {
            stage,
            received: catalog::COMPONENT_RECEIVED_EVENTS.counter(&s),
            received_bytes: catalog::COMPONENT_RECEIVED_BYTES.counter(&s),
            processing: catalog::COMPONENT_PROCESSING_DURATION.histogram(&s),
            batch: catalog::COMPONENT_BATCH_SIZE.histogram(&s),
            freshness: catalog::KAFKA_FRESHNESS_LAG.gauge(&s),
            sent: HashMap::new(),
        }
    }

    fn sent(&mut self, topic: &str, bytes: usize) {
        let stage = self.stage;
        let (events, total) = self.sent.entry(topic.to_owned()).or_insert_with(|| {
            let labels = [("stage", stage), ("topic", topic)];
            (
                catalog::COMPONENT_SENT_EVENTS.counter(&labels),
                catalog::COMPONENT_SENT_BYTES.counter(&labels),
            )
        });
        events.increment(1);
        total.increment(bytes as u64);
    }

    fn register(&self, codes: &[Code]) {
        register_error_series(self.stage, &["consume_failed", "produce_failed"], codes);
    }

    fn error(&self, error_type: &'static str) {
        count_error(self.stage, error_type);
    }

    fn dead_lettered(&self, code: Code) {
        count_dead_letter(self.stage, code);
    }
}

/// Creates a stage's error, dead-letter and discard series at zero: an alert on a rate
/// needs the series before the first event. Shared by the stage and sink loops.
pub(crate) fn register_error_series(
    stage: &'static str,
    error_types: &[&'static str],
    codes: &[Code],
) {
    for error_type in error_types.iter().chain(codes.iter().map(|c| &c.name)) {
        catalog::COMPONENT_ERRORS
            .counter(&[("stage", stage), ("error_type", error_type)])
            .absolute(0);
    }
    for code in codes {
        dlq_counter(stage, *code).absolute(0);
    }
    catalog::COMPONENT_DISCARDED_EVENTS
        .counter(&[("stage", stage), ("intentional", "true")])
        .absolute(0);
}

pub(crate) fn count_error(stage: &'static str, error_type: &'static str) {
    catalog::COMPONENT_ERRORS
        .counter(&[("stage", stage), ("error_type", error_type)])
        .increment(1);
}

fn dlq_counter(stage: &'static str, code: Code) -> metrics::Counter {
    catalog::DLQ_MESSAGES.counter(&[
        ("stage", stage),
        ("error_code", code.name),
        ("cause", code.cause.as_str()),
    ])
}

/// A message sent to the dead-letter topic: counted by code and as an intentional discard.
pub(crate) fn count_dead_letter(stage: &'static str, code: Code) {
    dlq_counter(stage, code).increment(1);
    catalog::COMPONENT_DISCARDED_EVENTS
        .counter(&[("stage", stage), ("intentional", "true")])
        .increment(1);
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Runs the stage until `shutdown`, then finishes what is in flight, stores and commits its
/// offsets, and returns. A delivery that fails after librdkafka's retries stops the stage
/// with an error *without* storing that offset: on restart the message is processed again.
pub async fn run<P: Processor>(
    config: &StageConfig,
    producer: &Producer,
    processor: &mut P,
    shutdown: &Shutdown,
    health: &HealthHandle,
) -> anyhow::Result<()> {
    let consumer = subscribe(
        config.stage,
        &config.brokers,
        &config.group_id,
        config.session_timeout_ms,
        &config.options,
        &[config.input_topic.as_str()],
        health,
    )?;

    let mut metrics = StageMetrics::new(config.stage);
    metrics.register(processor.error_codes());
    let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
    let stop = shutdown.cancelled();
    tokio::pin!(stop);
    let mut positions = Positions::default();
    // Changes also come while no message does (a partition found past its end).
    let mut changes_tick = tokio::time::interval(Duration::from_secs(1));
    let outcome = loop {
        tokio::select! {
            biased;
            () = &mut stop => break Ok(()),
            Some(done) = pending.next(), if !pending.is_empty() => {
                if let Err(e) = finish(&consumer, processor, &mut metrics, done, pending.len()) {
                    break Err(e);
                }
            }
            _ = changes_tick.tick() => {
                if let Err(e) = apply_changes(&consumer, config, processor, &mut positions).await {
                    break Err(e);
                }
            }
            received = consumer.recv(), if pending.len() < config.max_in_flight => {
                let sought = match apply_changes(&consumer, config, processor, &mut positions).await {
                    Ok(sought) => sought,
                    Err(e) => break Err(e),
                };
                let message = match received {
                    Ok(m) => m,
                    Err(e) => {
                        metrics.error("consume_failed");
                        tracing::warn!(error = %e, "consume failed");
                        continue;
                    }
                };
                // Fetched before a seek of its partition just now: librdkafka drops the
                // rest of such messages, but not the one already in hand.
                if sought.contains(&message.partition()) {
                    continue;
                }
                match positions.judge(&config.input_topic, message.partition(), message.offset()) {
                    Verdict::Process => {}
                    Verdict::Drop => continue,
                    Verdict::Rewind { from } => {
                        rewind(&consumer, &config.input_topic, message.partition(), from);
                        continue;
                    }
                }
                let mut input = Input::from_message(&message);
                metrics.received.increment(1);
                metrics.received_bytes.increment(input.payload.len() as u64);
                let span = tidewatch_telemetry::trace::enabled()
                    .then(|| trace::process_span(config.stage, &config.group_id, &input));
                if let Some(span) = &span {
                    input.span = trace::link_to(span);
                }
                let start = Instant::now();
                config.faults.slow_down().await;
                let processed = match &span {
                    Some(span) => processor.process(&input).instrument(span.clone()).await,
                    None => processor.process(&input).await,
                };
                let (records, dead_letter_output) = match processed {
                    Outcome::Emit(records) => (records, false),
                    Outcome::Abandon => {
                        tracing::info!(partition = input.partition, offset = input.offset, "message left for after restart");
                        break Ok(());
                    }
                    Outcome::DeadLetter { code, reason } => {
                        metrics.error(code.name);
                        metrics.dead_lettered(code);
                        if let Some(span) = &span {
                            trace::fail(span, code.name, &reason);
                        }
                        (vec![dead_letter(config.stage, &input, code, &reason)], true)
                    }
                };
                metrics.processing.record(start.elapsed().as_secs_f64());
                let resume = processor.resume_position(input.partition, input.offset);
                let deliveries: Vec<_> = records
                    .into_iter()
                    .map(|mut r| {
                        let send = span.as_ref().map(|parent| {
                            let send = trace::send_span(Some(parent), &r);
                            // A dead letter is the input unchanged: it keeps the context
                            // it arrived with.
                            if !dead_letter_output {
                                trace::inject(&send, &mut r.headers);
                            }
                            send
                        });
                        let delivery = producer.send(&r);
                        // Only the topic waits for the acknowledgement, not the payload.
                        let topic = r.topic;
                        async move {
                            let result = delivery.await;
                            if let (Some(send), Err(e)) = (&send, &result) {
                                trace::fail(send, "produce_failed", &e.to_string());
                            }
                            result.map(|bytes| (topic, bytes))
                        }
                    })
                    .collect();
                let (topic, partition, offset, timestamp_ms) =
                    (input.topic.to_owned(), input.partition, input.offset, input.timestamp_ms);
                pending.push_back(Box::pin(async move {
                    let result = futures::future::try_join_all(deliveries).await;
                    Done { topic, partition, offset, resume, timestamp_ms, result }
                }));
            }
        }
    };
    // Finish what is in flight, even on shutdown: its outputs are already queued.
    let mut outcome = outcome;
    while let Some(done) = pending.next().await {
        if outcome.is_ok() {
            outcome = finish(&consumer, processor, &mut metrics, done, pending.len());
        }
    }
    commit_final(&consumer);
    producer.flush(Duration::from_secs(10))?;
    tracing::info!(stage = config.stage, "stage stopped, offsets committed");
    outcome
}

/// Hands the consumer's assignment changes to the processor, oldest first: an assigned
/// partition is restored from the processor's checkpoint, a revoked one dropped, and one
/// found past its end (the broker lost its data) is dropped and consumed again from the
/// beginning, or from where the processor's checkpoint says. Returns the partitions it
/// sought elsewhere.
async fn apply_changes<P: Processor>(
    consumer: &StreamConsumer<StageContext>,
    config: &StageConfig,
    processor: &mut P,
    positions: &mut Positions,
) -> anyhow::Result<Vec<i32>> {
    let mut sought = Vec::new();
    for change in consumer.context().take_changes() {
        let (partition, committed, from_beginning) = match change {
            AssignmentChange::Assigned {
                partition,
                committed,
                ..
            } => (partition, committed, false),
            AssignmentChange::Revoked { topic, partition } => {
                positions.revoked(&topic, partition);
                processor.revoked(partition);
                continue;
            }
            AssignmentChange::PastTheEnd {
                topic,
                partition,
                position,
                high_watermark,
            } => {
                starting_over(&topic, partition, position, high_watermark);
                processor.revoked(partition);
                (partition, None, true)
            }
        };
        let start = restore(
            consumer,
            config,
            processor,
            partition,
            committed,
            from_beginning,
        )
        .await?;
        match start {
            Some(Offset::Offset(start)) => positions.sought(&config.input_topic, partition, start),
            Some(_) => positions.starts_at(&config.input_topic, partition, None),
            None => positions.starts_at(&config.input_topic, partition, committed),
        }
        if start.is_some() {
            sought.push(partition);
        }
    }
    Ok(sought)
}

/// Asks the processor where `partition` resumes (given its committed offset and the
/// topic's watermarks) and seeks there; without a checkpoint, a partition read again
/// `from_beginning` goes to its beginning and any other stays where the consumer put it.
/// Returns where it sought, if anywhere.
async fn restore<P: Processor>(
    consumer: &StreamConsumer<StageContext>,
    config: &StageConfig,
    processor: &mut P,
    partition: i32,
    committed: Option<i64>,
    from_beginning: bool,
) -> anyhow::Result<Option<Offset>> {
    let watermarks = match consumer.fetch_watermarks(
        &config.input_topic,
        partition,
        Duration::from_secs(5),
    ) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(partition, error = %e, "watermarks unavailable; the checkpoint is not checked against the topic");
            None
        }
    };
    let start = processor
        .assigned(partition, committed, watermarks)
        .await
        .with_context(|| format!("restoring partition {partition}"))?;
    let target = match (start.filter(|s| Some(*s) != committed), from_beginning) {
        (Some(start), _) => Offset::Offset(start),
        (None, true) => Offset::Beginning,
        (None, false) => return Ok(None),
    };
    consumer
        .seek(
            &config.input_topic,
            partition,
            target,
            Duration::from_secs(10),
        )
        .with_context(|| format!("seeking partition {partition} to {target:?}"))?;
    if let Offset::Offset(start) = target {
        tracing::info!(
            partition,
            start,
            ?committed,
            "resuming from the processor's checkpoint"
        );
    }
    Ok(Some(target))
}

/// A consumer in `group`, subscribed to `topics`, configured for at-least-once: auto-commit
/// on, automatic offset store off (offsets are stored by the loop once outputs are safe).
/// Rebalances are cooperative (incremental): a member joining or leaving moves only the
/// partitions that change hands, and the others keep consuming (and aggregate keeps their
/// windows) through it. Every member of a group must share a strategy: `options` can set
/// `partition.assignment.strategy` to `range` for a group that still has members of a
/// release before this one (whose default was `range,roundrobin`).
pub(crate) fn subscribe(
    stage: &'static str,
    brokers: &str,
    group: &str,
    session_timeout_ms: u32,
    options: &[(String, String)],
    topics: &[&str],
    health: &HealthHandle,
) -> anyhow::Result<StreamConsumer<StageContext>> {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("client.id", stage)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", "5000")
        .set("session.timeout.ms", session_timeout_ms.to_string())
        .set("partition.assignment.strategy", "cooperative-sticky");
    for (key, value) in options {
        client.set(key, value);
    }
    let consumer: StreamConsumer<StageContext> = client
        .create_with_context(StageContext::new(health.clone()))
        .context("creating the Kafka consumer")?;
    consumer.subscribe(topics).context("subscribing")?;
    tracing::info!(stage, ?topics, group, "consuming");
    Ok(consumer)
}

/// Commits what was stored, synchronously, at shutdown ("nothing to commit" is fine).
pub(crate) fn commit_final(consumer: &StreamConsumer<StageContext>) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(())
        | Err(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::NoOffset,
        )) => {}
        Err(e) => tracing::warn!(error = %e, "final commit failed"),
    }
}

fn finish<P: Processor>(
    consumer: &StreamConsumer<StageContext>,
    processor: &mut P,
    metrics: &mut StageMetrics,
    done: Done,
    in_flight: usize,
) -> anyhow::Result<()> {
    match done.result {
        Ok(sent) => {
            for (topic, bytes) in sent {
                metrics.sent(&topic, bytes);
            }
            // After a rebalance the partition may belong to another member now; it will
            // process the message again, which at-least-once allows.
            match store(consumer, &done.topic, done.partition, done.resume.offset) {
                Ok(()) => processor.acknowledged(done.partition, &done.resume),
                Err(e) => {
                    tracing::debug!(error = %e, partition = done.partition, "offset not stored");
                }
            }
            metrics.batch.record((in_flight + 1) as f64);
            if let Some(ts) = done.timestamp_ms {
                metrics.freshness.set((now_ms() - ts).max(0) as f64 / 1e3);
            }
            Ok(())
        }
        Err(e) => {
            metrics.error("produce_failed");
            Err(anyhow::Error::new(e).context(format!(
                "output of {}[{}]@{} was not delivered; stopping without storing its offset",
                done.topic, done.partition, done.offset
            )))
        }
    }
}

/// Stores the offset a partition resumes from, for the next commit.
fn store(
    consumer: &StreamConsumer<StageContext>,
    topic: &str,
    partition: i32,
    offset: i64,
) -> anyhow::Result<()> {
    if offset > 0 {
        // The common case, without building a partition list: librdkafka stores `offset`
        // of the message before, plus one.
        consumer.store_offset(topic, partition, offset - 1)?;
    } else {
        let mut tpl = TopicPartitionList::with_capacity(1);
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
        consumer.store_offsets(&tpl)?;
    }
    Ok(())
}
