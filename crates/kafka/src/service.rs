//! Everything a streaming stage binary does besides its own logic: topics at start, the ops
//! HTTP server (`/metrics`, `/health*`, and the service's own API if it has one), broker
//! health, the stage loop or the batch sink loop, and shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use secrecy::SecretString;
use tidewatch_telemetry::http::HttpMetricsLayer;
use tidewatch_telemetry::server::{ops_router, serve};
use tidewatch_telemetry::{ComponentHealth, Criticality, HealthHandle, Shutdown, Telemetry};
use tidewatch_web::faults::{self, Fault, Faults};
use tidewatch_web::{openapi, AdminAuth};
use tokio::net::TcpListener;
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::dlq::DLQ_TOPIC;
use crate::sink::{self, Sink, SinkConfig};
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
    /// Bearer token for the admin endpoints (fault injection); unset, they answer 403.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true, value_parser = secret)]
    #[serde(skip)]
    pub admin_token: Option<SecretString>,
}

fn secret(s: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(s.to_owned()))
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

/// How a batch sink gathers and retries (see [`crate::sink`]).
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct BatchArgs {
    /// Messages written per transaction, at most.
    #[arg(long, env = "BATCH_MAX_MESSAGES", default_value_t = 1000)]
    pub batch_max_messages: usize,
    /// How long the first message of a batch waits for more, in milliseconds.
    #[arg(long, env = "BATCH_LINGER_MS", default_value_t = 200)]
    pub batch_linger_ms: u64,
    /// Longest pause between retries of a failing write, in milliseconds.
    #[arg(long, env = "RETRY_MAX_BACKOFF_MS", default_value_t = 5000)]
    pub retry_max_backoff_ms: u64,
}

/// An API a stage serves: routes without fallbacks, and their OpenAPI document.
pub struct Documented(pub (axum::Router, OpenApi));

impl std::fmt::Debug for Documented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Documented")
            .field("title", &self.0 .1.info.title)
            .finish_non_exhaustive()
    }
}

impl From<(axum::Router, OpenApi)> for Documented {
    fn from(parts: (axum::Router, OpenApi)) -> Self {
        Self(parts)
    }
}

impl From<OpenApiRouter> for Documented {
    fn from(router: OpenApiRouter) -> Self {
        Self(router.split_for_parts())
    }
}

/// A stage with its ops listener bound (port 0 works; [`StageService::local_addr`] tells).
#[derive(Debug)]
pub struct StageService {
    listener: TcpListener,
    telemetry: Telemetry,
    stage: &'static str,
    args: StageArgs,
    inputs: Vec<String>,
    /// Every topic the stage reads or writes, kept in existence by the topic guard.
    topics: Vec<String>,
    producer: Producer,
    api: Option<Documented>,
    /// The API's limit on requests in flight (0 for none).
    max_concurrent: usize,
    faults: Faults,
}

/// Largest admin request body (a fault switch is a few bytes).
const ADMIN_BODY_LIMIT: usize = 16 * 1024;

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
        Self::build_multi(
            stage,
            listen,
            args,
            &[input_topic],
            output_topics,
            telemetry,
        )
        .await
    }

    /// [`StageService::build`] for a service that reads several topics (a sink).
    pub async fn build_multi(
        stage: &'static str,
        listen: SocketAddr,
        args: &StageArgs,
        input_topics: &[&str],
        output_topics: &[&str],
        telemetry: Telemetry,
    ) -> anyhow::Result<Self> {
        let mut topics = input_topics.to_vec();
        topics.push(DLQ_TOPIC);
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
        Ok(Self {
            listener,
            telemetry,
            stage,
            args: args.clone(),
            inputs: input_topics.iter().map(|t| (*t).to_owned()).collect(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            producer,
            api: None,
            max_concurrent: 0,
            faults: Faults::new(&Fault::STAGE),
        })
    }

    /// Serves `api` (routes without fallbacks, and their document) beside the ops endpoints,
    /// on the same port; its operations join the fault switches' in `/openapi.json`. The
    /// API's routes, and only they, answer to the service's fault switches and to a limit of
    /// `max_concurrent` requests in flight (0 for none; [`tidewatch_web::shed`]).
    pub fn with_api(mut self, api: impl Into<Documented>, max_concurrent: usize) -> Self {
        self.api = Some(api.into());
        self.max_concurrent = max_concurrent;
        self
    }

    /// Replaces the default fault switches (processing slowdown and readiness) with
    /// `faults`, for a service with more (an API's, a store's). Call before [`Self::run`].
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// The service's fault switches (`/v1/admin/faults`).
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    fn group_id(&self) -> String {
        self.args
            .group_id
            .clone()
            .unwrap_or_else(|| self.stage.to_owned())
    }

    fn consumer_options(&self) -> Vec<(String, String)> {
        self.args
            .group_instance_id
            .iter()
            .map(|id| ("group.instance.id".to_owned(), id.clone()))
            .chain(self.args.consumer_options.iter().cloned())
            .collect()
    }

    /// Runs the stage and its ops server until `shutdown`; returns the stage's outcome once
    /// in-flight messages were finished and offsets committed.
    pub async fn run<P: Processor>(
        self,
        mut processor: P,
        shutdown: Shutdown,
    ) -> anyhow::Result<()> {
        let config = StageConfig {
            stage: self.stage,
            brokers: self.args.kafka.brokers.clone(),
            group_id: self.group_id(),
            input_topic: self.inputs[0].clone(),
            max_in_flight: self.args.max_in_flight.max(1),
            session_timeout_ms: self.args.session_timeout_ms,
            options: self.consumer_options(),
            faults: self.faults.clone(),
        };
        self.serve_around(shutdown.clone(), |producer, broker| async move {
            stage::run(&config, &producer, &mut processor, &shutdown, &broker).await
        })
        .await
    }

    /// Runs a batch sink (see [`crate::sink`]) and the server until `shutdown`. The store's
    /// health (component `store_name`, critical) follows the sink's writes.
    pub async fn run_sink<S: Sink>(
        self,
        mut sink: S,
        store_name: &'static str,
        batch: &BatchArgs,
        shutdown: Shutdown,
    ) -> anyhow::Result<()> {
        let config = SinkConfig {
            stage: self.stage,
            brokers: self.args.kafka.brokers.clone(),
            group_id: self.group_id(),
            input_topics: self.inputs.clone(),
            max_batch: batch.batch_max_messages,
            linger: Duration::from_millis(batch.batch_linger_ms),
            max_backoff: Duration::from_millis(batch.retry_max_backoff_ms.max(1)),
            session_timeout_ms: self.args.session_timeout_ms,
            options: self.consumer_options(),
            faults: self.faults.clone(),
        };
        let store = self.telemetry.health.handle(
            store_name,
            Criticality::Critical,
            ComponentHealth::healthy("no write attempted yet"),
        );
        self.serve_around(shutdown.clone(), |producer, broker| async move {
            sink::run(&config, &producer, &mut sink, &shutdown, &broker, &store).await
        })
        .await
    }

    /// Starts the server, runs `work` with the producer and the broker's health handle, and
    /// stops the server once the work returned (it keeps answering while the work drains).
    async fn serve_around<F, Fut>(self, shutdown: Shutdown, work: F) -> anyhow::Result<()>
    where
        F: FnOnce(Producer, HealthHandle) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>>,
    {
        let Self {
            listener,
            telemetry,
            producer,
            api,
            max_concurrent,
            faults,
            args,
            topics,
            ..
        } = self;
        crate::spawn_topic_guard(
            args.kafka.brokers.clone(),
            topics,
            args.kafka.topic_partitions,
            shutdown.clone(),
        );
        let broker = telemetry.health.handle(
            "broker",
            Criticality::Critical,
            ComponentHealth::degraded("connecting"),
        );
        tracing::info!(addr = %listener.local_addr()?, "listening");
        let server_stop = Shutdown::new();
        faults.register_health(&telemetry.health);
        let admin = Arc::new(AdminAuth::new(args.admin_token.clone()));
        let mut doc = openapi::document(
            &format!("Tidewatch {}", telemetry.build.service),
            "A pipeline stage: its fault switches and what it shows of its state.",
        );
        let (routes, api_doc) = match api {
            Some(Documented((routes, api_doc))) => {
                if !api_doc.info.title.is_empty() {
                    doc.info = api_doc.info.clone();
                }
                doc.merge(api_doc.clone());
                (routes, api_doc)
            }
            None => (axum::Router::new(), utoipa::openapi::OpenApi::default()),
        };
        let (fault_routes, doc) = OpenApiRouter::with_openapi(doc)
            .merge(faults::router(faults.clone(), admin, ADMIN_BODY_LIMIT))
            .split_for_parts();
        let app = tidewatch_web::assemble(
            routes,
            &api_doc,
            fault_routes.merge(ops_router(telemetry.clone())),
            &doc,
            &faults,
            max_concurrent,
            Some(HttpMetricsLayer::new()),
        );
        let server = tokio::spawn({
            let (telemetry, stop) = (telemetry.clone(), server_stop.clone());
            async move { serve(listener, app, &telemetry, stop, Duration::from_secs(5)).await }
        });
        let outcome = work(producer, broker).await;
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
