//! Reading a topic with a throwaway consumer: from the beginning, for tests and operators
//! checking what a stage wrote (including dead letters and their headers), or its newest
//! messages, for a producer that continues where it left off.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, Message as _};

/// One message as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadMessage {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

impl From<&rdkafka::message::BorrowedMessage<'_>> for ReadMessage {
    fn from(m: &rdkafka::message::BorrowedMessage<'_>) -> Self {
        Self {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().unwrap_or_default().to_vec(),
            headers: crate::headers::read(m.headers())
                .0
                .into_iter()
                .map(|(k, v)| (k.to_owned(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
        }
    }
}

fn throwaway_consumer(brokers: &str) -> anyhow::Result<BaseConsumer> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("tidewatch-inspect-{}-{nanos}", std::process::id()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?)
}

/// Reads the last `per_partition` messages of every partition of `topic` (fewer where a
/// partition holds fewer), or what arrived of them within `timeout`. An absent or empty
/// topic gives none. Blocking: call it off the runtime.
pub fn read_tail(
    brokers: &str,
    topic: &str,
    per_partition: i64,
    timeout: Duration,
) -> anyhow::Result<Vec<ReadMessage>> {
    let consumer = throwaway_consumer(brokers)?;
    let deadline = Instant::now() + timeout;
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut assignment = TopicPartitionList::new();
    // partition -> the offset of its last message
    let mut last: HashMap<i32, i64> = HashMap::new();
    for p in metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions())
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), left)?;
        if high > low {
            assignment.add_partition_offset(
                topic,
                p.id(),
                Offset::Offset((high - per_partition).max(low)),
            )?;
            last.insert(p.id(), high - 1);
        }
    }
    let mut out = Vec::new();
    if last.is_empty() {
        return Ok(out);
    }
    consumer.assign(&assignment)?;
    while !last.is_empty() && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            if last
                .get(&m.partition())
                .is_some_and(|&end| m.offset() >= end)
            {
                last.remove(&m.partition());
            }
            out.push(ReadMessage::from(&m));
        }
    }
    Ok(out)
}

/// Reads `topic` from the beginning, keeping the messages `keep` accepts, until `want` of
/// them arrived or `timeout` passed, and then for `settle` longer so that duplicates
/// arriving after the expected count are caught too. Blocking: call it off the runtime.
pub fn read_topic(
    brokers: &str,
    topic: &str,
    want: usize,
    timeout: Duration,
    settle: Duration,
    keep: impl Fn(&ReadMessage) -> bool,
) -> anyhow::Result<Vec<ReadMessage>> {
    let consumer = throwaway_consumer(brokers)?;
    consumer.subscribe(&[topic])?;
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut settle_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if settle_until.is_some_and(|t| now >= t) || (settle_until.is_none() && now >= deadline) {
            break;
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let message = ReadMessage::from(&m);
            if keep(&message) {
                out.push(message);
            }
        }
        if settle_until.is_none() && out.len() >= want {
            settle_until = Some(Instant::now() + settle);
        }
    }
    Ok(out)
}

/// [`read_topic`] on a blocking thread, for async tests and tools.
pub async fn read_topic_async(
    brokers: String,
    topic: String,
    want: usize,
    timeout: Duration,
    keep: impl Fn(&ReadMessage) -> bool + Send + 'static,
) -> anyhow::Result<Vec<ReadMessage>> {
    // Two seconds past the expected count catches duplicates that arrive late.
    tokio::task::spawn_blocking(move || {
        read_topic(
            &brokers,
            &topic,
            want,
            timeout,
            Duration::from_secs(2),
            keep,
        )
    })
    .await?
}
