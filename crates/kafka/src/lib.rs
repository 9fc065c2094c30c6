//! Kafka plumbing shared by every streaming stage.
//!
//! - [`KafkaArgs`] and [`ensure_topics`]: broker address and topic creation at start, so a
//!   fresh broker works; [`spawn_topic_guard`] recreates them if the broker loses them.
//! - [`producer`]: the idempotent producer, with delivery outcome and latency metrics.
//! - [`stage`]: the at-least-once consume-process-produce loop. An input offset is stored
//!   only after every output of that message (including a dead letter) was acknowledged,
//!   in consumption order, so a crash replays rather than loses.
//! - [`context`]: librdkafka statistics turned into lag gauges (never logged), rebalances
//!   and commits counted.
//! - [`dlq`]: the one dead-letter topic and its headers; [`inspect`] reads a topic back.
//! - [`headers`]: a consumed message's headers, read so that a name rdkafka cannot read
//!   is left out and counted instead of panicking the stage.
//! - [`sink`]: the at-least-once batch loop of a stage that writes to a store (the
//!   projection into PostgreSQL): decode, write a batch atomically, retry while the store
//!   is away, and only then store the offsets.
//! - [`service`]: topics, ops server, health and shutdown around a stage: a stage binary is
//!   its settings, its [`Processor`] (or [`sink::Sink`]) and a call to
//!   [`service::StageService`].

pub mod context;
pub mod dlq;
pub mod headers;
pub mod inspect;
mod positions;
pub mod producer;
pub mod service;
pub mod sink;
pub mod stage;
pub mod trace;

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

pub use dlq::{Cause, Code};
pub use producer::{Producer, Record};
pub use stage::{Input, Outcome, Processor, StageConfig};

/// Broker settings every Kafka service shares (flattened into its clap arguments).
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated.
    #[arg(
        long = "brokers",
        env = "KAFKA_BROKERS",
        default_value = "localhost:9092"
    )]
    pub brokers: String,
    /// Partitions for topics this service creates when they are missing.
    #[arg(long, env = "KAFKA_TOPIC_PARTITIONS", default_value_t = 3)]
    pub topic_partitions: i32,
}

/// Creates the topics that do not exist yet; existing ones are left as they are. Returns
/// the topics it created.
pub async fn ensure_topics(
    brokers: &str,
    topics: &[&str],
    partitions: i32,
) -> anyhow::Result<Vec<String>> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("creating the Kafka admin client")?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new, &options)
        .await
        .context("creating topics")?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(topic) => {
                tracing::info!(topic, partitions, "topic created");
                created.push(topic);
            }
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic, "topic exists")
            }
            Err((topic, code)) => anyhow::bail!("cannot create topic {topic}: {code}"),
        }
    }
    Ok(created)
}

/// How often [`spawn_topic_guard`] makes sure the topics exist.
const TOPIC_GUARD_INTERVAL: Duration = Duration::from_secs(10);

/// Makes sure `topics` exist every few seconds until `shutdown`, and recreates (with a
/// warning) any the broker lost: a broker restarted without its data (a wiped volume, an
/// in-memory broker) otherwise leaves producers failing and consumers idle until someone
/// restarts every service. A broker that is away is just tried again.
pub fn spawn_topic_guard(
    brokers: String,
    topics: Vec<String>,
    partitions: i32,
    shutdown: tidewatch_telemetry::Shutdown,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        loop {
            tokio::select! {
                () = tokio::time::sleep(TOPIC_GUARD_INTERVAL) => {}
                () = shutdown.cancelled() => return,
            }
            match ensure_topics(&brokers, &topics, partitions).await {
                Ok(created) if !created.is_empty() => tracing::warn!(
                    topics = ?created,
                    "topics were missing (the broker lost its data?) and were created again"
                ),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = format!("{e:#}"), "could not check the topics"),
            }
        }
    })
}
