//! `normalize`: raw trades of both venues (`trades.raw`) become canonical trades
//! (`trades.normalized`, keyed by symbol so each symbol stays in order on one partition).
//! Invalid records go to the dead-letter topic unchanged, with their reason; every
//! rejection is counted by field and issue, and a rolling quality score is kept.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use clap::Parser;
use metrics::{Counter, Gauge};
use tidewatch_kafka::service::StageArgs;
use tidewatch_kafka::stage::{Input, Outcome, Processor};
use tidewatch_kafka::{Code, Record};
use tidewatch_schema::{
    decode_raw, Field, Issue, SIM_HEADER_PREFIX, TOPIC_TRADES_NORMALIZED, TOPIC_TRADES_RAW,
};
use tidewatch_telemetry::{catalog, TelemetryArgs};

pub const SERVICE: &str = "normalize";
/// Records the rolling quality score is computed over.
const QUALITY_WINDOW: usize = 1_000;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "normalize",
    version,
    about = "Normalizes raw venue trades into canonical trades"
)]
pub struct Settings {
    /// Address of the ops server (/metrics, /health).
    #[arg(long = "listen", env = "LISTEN_ADDR", default_value = "0.0.0.0:9101")]
    pub listen: SocketAddr,
    #[arg(long, env = "INPUT_TOPIC", default_value = TOPIC_TRADES_RAW)]
    pub input_topic: String,
    #[arg(long, env = "OUTPUT_TOPIC", default_value = TOPIC_TRADES_NORMALIZED)]
    pub output_topic: String,
    #[command(flatten)]
    pub stage: StageArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

impl tidewatch_telemetry::runner::ServiceSettings for Settings {
    fn telemetry(&self) -> &TelemetryArgs {
        &self.telemetry
    }
    fn public_view(&self) -> serde_json::Value {
        serde_json::json!({
            "listen": self.listen.to_string(),
            "input_topic": self.input_topic,
            "output_topic": self.output_topic,
            "stage": self.stage,
            "telemetry": self.telemetry,
        })
    }
}

/// The stage's logic: decode, validate, re-key; count quality.
pub struct Normalize {
    output_topic: String,
    issues: HashMap<(Field, Issue), Counter>,
    violations: HashMap<Issue, Counter>,
    score: Gauge,
    recent: VecDeque<bool>,
    recent_valid: usize,
}

impl std::fmt::Debug for Normalize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Normalize")
            .field("output_topic", &self.output_topic)
            .finish_non_exhaustive()
    }
}

impl Normalize {
    pub fn new(output_topic: String) -> Self {
        let mut issues = HashMap::new();
        for field in Field::ALL {
            for issue in Issue::ALL {
                let c = catalog::DATA_QUALITY_ISSUES.counter(&[
                    ("stage", SERVICE),
                    ("field", field.as_str()),
                    ("issue", issue.as_str()),
                ]);
                c.absolute(0);
                issues.insert((field, issue), c);
            }
        }
        let violations = [Issue::Malformed, Issue::UnknownVenue, Issue::Invalid]
            .into_iter()
            .map(|i| {
                let c =
                    catalog::SCHEMA_VIOLATIONS.counter(&[("stage", SERVICE), ("kind", i.as_str())]);
                c.absolute(0);
                (i, c)
            })
            .collect();
        let score = catalog::DATA_QUALITY_SCORE.gauge(&[("stage", SERVICE)]);
        score.set(100.0);
        Self {
            output_topic,
            issues,
            violations,
            score,
            recent: VecDeque::with_capacity(QUALITY_WINDOW),
            recent_valid: 0,
        }
    }

    fn observe(&mut self, valid: bool) {
        self.recent.push_back(valid);
        self.recent_valid += usize::from(valid);
        if self.recent.len() > QUALITY_WINDOW && self.recent.pop_front() == Some(true) {
            self.recent_valid -= 1;
        }
        self.score
            .set(100.0 * self.recent_valid as f64 / self.recent.len() as f64);
    }
}

impl Processor for Normalize {
    async fn process(&mut self, input: &Input<'_>) -> Outcome {
        let ingest = input.timestamp_ms.unwrap_or(0);
        match decode_raw(input.payload, ingest) {
            Ok(trade) => {
                self.observe(true);
                let mut record = match Record::json(&self.output_topic, &trade.symbol, &trade) {
                    Ok(r) => r,
                    Err(e) => return Outcome::encode_failed(&e),
                };
                record.headers = input.headers_with_prefix(SIM_HEADER_PREFIX);
                Outcome::Emit(vec![record])
            }
            Err(rejection) => {
                self.observe(false);
                if let Some(c) = self.issues.get(&(rejection.field, rejection.issue)) {
                    c.increment(1);
                }
                if let Some(c) = self.violations.get(&rejection.issue) {
                    c.increment(1);
                }
                Outcome::DeadLetter {
                    // normalize is where the producer's records are validated: whatever
                    // it refuses is the input's fault.
                    code: Code::input(rejection.code()),
                    reason: rejection.to_string(),
                }
            }
        }
    }
}
