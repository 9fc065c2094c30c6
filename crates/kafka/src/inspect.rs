//! Reading a topic from the beginning with a throwaway consumer group: for tests and
//! operators checking what a stage wrote (including dead letters and their headers).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Headers as _;
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
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("tidewatch-inspect-{}-{nanos}", std::process::id()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
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
            let message = ReadMessage {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            };
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
