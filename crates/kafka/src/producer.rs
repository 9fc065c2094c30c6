//! The idempotent producer every stage writes through: acks from all in-sync replicas,
//! retries without duplicates, and a delivery outcome and latency per topic.

use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use anyhow::Context as _;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tidewatch_telemetry::catalog;

/// One message to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Spans of the records this one was made from, for its `send` span to link to (only
    /// when traces are exported; see [`crate::trace`]).
    pub links: Vec<opentelemetry::trace::SpanContext>,
}

impl Record {
    pub fn new(topic: impl Into<String>, key: Option<Vec<u8>>, payload: Vec<u8>) -> Self {
        Self {
            topic: topic.into(),
            key,
            payload,
            headers: Vec::new(),
            links: Vec::new(),
        }
    }

    /// A record whose payload is `value` as JSON, keyed by `key`.
    pub fn json(
        topic: &str,
        key: &str,
        value: &impl serde::Serialize,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self::new(
            topic,
            Some(key.as_bytes().to_vec()),
            serde_json::to_vec(value)?,
        ))
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Links this record's `send` span to the spans it was made from.
    pub fn linked(
        mut self,
        links: impl IntoIterator<Item = opentelemetry::trace::SpanContext>,
    ) -> Self {
        self.links.extend(links);
        self
    }
}

/// Why a message was not delivered (after librdkafka's own retries).
#[derive(Debug, thiserror::Error)]
#[error("delivery to {topic} failed: {source}")]
pub struct ProduceError {
    pub topic: String,
    pub source: rdkafka::error::KafkaError,
}

/// Clones share one librdkafka producer, and [`Producer::renew`] replaces it for all of them.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<RwLock<FutureProducer>>,
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").finish_non_exhaustive()
    }
}

impl Producer {
    pub fn new(brokers: &str, client_id: &str) -> anyhow::Result<Self> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("client.id", client_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "60000");
        let inner = config.create().context("creating the Kafka producer")?;
        for reason in ["fatal", "stalled"] {
            catalog::KAFKA_PRODUCER_RENEWALS
                .counter(&[("reason", reason)])
                .increment(0);
        }
        Ok(Self {
            inner: Arc::new(RwLock::new(inner)),
            config: Arc::new(config),
        })
    }

    fn current(&self) -> FutureProducer {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the librdkafka producer with a new one, which gets a new producer id from
    /// the broker: the way out for an idempotent producer whose broker forgot its id (a
    /// broker restarted without its data answers every send with UnknownProducerId, and
    /// librdkafka does not always call that fatal). What the old one still held is purged
    /// and reported as failed. Counted in `tidewatch_kafka_producer_renewals_total{reason}`.
    pub fn renew(&self, reason: &'static str) -> anyhow::Result<()> {
        let fresh: FutureProducer = self
            .config
            .create()
            .context("creating a new Kafka producer")?;
        let old = std::mem::replace(
            &mut *self.inner.write().unwrap_or_else(PoisonError::into_inner),
            fresh,
        );
        catalog::KAFKA_PRODUCER_RENEWALS
            .counter(&[("reason", reason)])
            .increment(1);
        // Dropping purges the old queue and waits up to half a second for its callbacks:
        // not on the caller's (async) thread.
        std::thread::spawn(move || drop(old));
        Ok(())
    }

    /// Queues one record now (so records are written in the order `send` is called) and
    /// returns a future that resolves when the broker acknowledged it or librdkafka gave up.
    pub fn send(
        &self,
        record: &Record,
    ) -> impl Future<Output = Result<usize, ProduceError>> + Send + 'static {
        let start = Instant::now();
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (name, value) in &record.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        let mut future_record = FutureRecord::<[u8], [u8]>::to(&record.topic)
            .payload(&record.payload)
            .headers(headers);
        if let Some(key) = &record.key {
            future_record = future_record.key(key);
        }
        let queued = self
            .current()
            .send_result(future_record)
            .map_err(|(e, _)| e);
        let topic = record.topic.clone();
        let bytes = record.payload.len();
        async move {
            let outcome = match queued {
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => Ok(bytes),
                    Ok(Err((e, _))) => Err(e),
                    Err(_cancelled) => Err(rdkafka::error::KafkaError::Canceled),
                },
                Err(e) => Err(e),
            };
            let label = if outcome.is_ok() { "acked" } else { "failed" };
            catalog::KAFKA_PRODUCED
                .counter(&[("topic", &topic), ("outcome", label)])
                .increment(1);
            catalog::KAFKA_PRODUCE_DURATION
                .histogram(&[("topic", &topic)])
                .record(start.elapsed().as_secs_f64());
            outcome.map_err(|source| ProduceError { topic, source })
        }
    }

    /// Asks the cluster for its metadata: the readiness probe. Blocking.
    pub fn probe(&self, timeout: std::time::Duration) -> anyhow::Result<()> {
        use rdkafka::producer::Producer as _;
        self.current()
            .client()
            .fetch_metadata(None, timeout)
            .map(drop)
            .context("fetching cluster metadata")
    }

    /// The error that made the producer unusable, if one did: an idempotent producer whose
    /// broker forgot its producer id (a broker restarted without its data) never delivers
    /// again, so its owner should renew it, or stop and be restarted with a new one.
    pub fn fatal_error(&self) -> Option<String> {
        use rdkafka::producer::Producer as _;
        self.current()
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code}: {reason}"))
    }

    /// Waits for everything queued to be delivered, for shutdown.
    pub fn flush(&self, timeout: std::time::Duration) -> anyhow::Result<()> {
        use rdkafka::producer::Producer as _;
        self.current()
            .flush(timeout)
            .context("flushing the producer")
    }
}
