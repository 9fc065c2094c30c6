//! Everything a streaming stage binary does besides its own logic: topics at start, the ops
//! HTTP server (`/metrics`, `/health*`), broker health, the stage loop, and shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tidewatch_telemetry::server::{instrument, ops_router, serve};
use tidewatch_telemetry::{ComponentHealth, Criticality, Shutdown, Telemetry};
use tokio::net::TcpListener;

use crate::dlq::DLQ_TOPIC;
use crate::stage::{self, Processor, StageConfig};
use crate::{ensure_topics, KafkaArgs, Producer};

/// Settings every stage binary shares (flattened into its clap arguments).
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct StageArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Consumer group; instances with the same group share the input's partitions.
    #[arg(long, env = "KAFKA_GROUP_ID")]
    pub group_id: Option<String>,
    /// Static group membership (KIP-345): a stable id per instance, e.g. `aggregate-0`. A
    /// restarted instance takes its partitions back at once instead of waiting out the
    /// session timeout and rebalancing the group.
    #[arg(long, env = "KAFKA_GROUP_INSTANCE_ID")]
    pub group_instance_id: Option<String>,
    /// Messages processed ahead of their acknowledgements, at most.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 1000)]
    pub max_in_flight: usize,
    /// How long the group waits for a member that stopped answering (a crashed instance)
    /// before its partitions go to the others.
    #[arg(long, env = "KAFKA_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    pub session_timeout_ms: u32,
    /// Extra librdkafka consumer properties, `key=value`, comma-separated.
    #[arg(long = "consumer-option", env = "KAFKA_CONSUMER_OPTIONS", value_delimiter = ',', value_parser = key_value)]
    pub consumer_options: Vec<(String, String)>,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

/// A stage with its ops listener bound (port 0 works; [`StageService::local_addr`] tells).
#[derive(Debug)]
pub struct StageService {
    listener: TcpListener,
    telemetry: Telemetry,
    config: StageConfig,
    producer: Producer,
}

impl StageService {
    /// Creates missing topics, connects the producer and binds the ops listener.
    pub async fn build(
        stage: &'static str,
        listen: SocketAddr,
        args: &StageArgs,
        input_topic: &str,
        output_topics: &[&str],
        telemetry: Telemetry,
    ) -> anyhow::Result<Self> {
        let mut topics = vec![input_topic, DLQ_TOPIC];
        topics.extend_from_slice(output_topics);
        ensure_topics(&args.kafka.brokers, &topics, args.kafka.topic_partitions)
            .await
            .with_context(|| {
                format!(
                    "broker {} unreachable or refusing topics",
                    args.kafka.brokers
                )
            })?;
        let producer = Producer::new(&args.kafka.brokers, stage)?;
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let config = StageConfig {
            stage,
            brokers: args.kafka.brokers.clone(),
            group_id: args.group_id.clone().unwrap_or_else(|| stage.to_owned()),
            input_topic: input_topic.to_owned(),
            max_in_flight: args.max_in_flight.max(1),
            session_timeout_ms: args.session_timeout_ms,
            options: args
                .group_instance_id
                .iter()
                .map(|id| ("group.instance.id".to_owned(), id.clone()))
                .chain(args.consumer_options.iter().cloned())
                .collect(),
        };
        Ok(Self {
            listener,
            telemetry,
            config,
            producer,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Runs the stage and its ops server until `shutdown`; returns the stage's outcome once
    /// in-flight messages were finished and offsets committed.
    pub async fn run<P: Processor>(
        self,
        mut processor: P,
        shutdown: Shutdown,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            telemetry,
            config,
            producer,
        } = self;
        telemetry.metrics.spawn_upkeep(shutdown.token());
        let broker = telemetry.health.handle(
            "broker",
            Criticality::Critical,
            ComponentHealth::degraded("connecting"),
        );
        tracing::info!(addr = %listener.local_addr()?, "listening");
        // The ops server keeps answering while the stage drains, and stops with it.
        let server_stop = Shutdown::new();
        let app = instrument(ops_router(telemetry.clone()));
        let server = tokio::spawn({
            let (telemetry, stop) = (telemetry.clone(), server_stop.clone());
            async move { serve(listener, app, &telemetry, stop, Duration::from_secs(5)).await }
        });
        let outcome = stage::run(&config, &producer, &mut processor, &shutdown, &broker).await;
        if let Err(e) = &outcome {
            tracing::error!(error = format!("{e:#}"), "stage stopped on an error");
        }
        server_stop.trigger();
        server
            .await
            .context("ops server task")?
            .context("ops server")?;
        outcome
    }
}
