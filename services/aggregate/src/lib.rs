//! `aggregate`: enriched trades (`trades.enriched`) become per-symbol event-time OHLC bars
//! (`bars.1m`) and, as each bar closes, that symbol's model features (`features.1m`). Late
//! trades go to the dead-letter topic with their reason; duplicates from upstream replays
//! are dropped. Offsets are committed only up to the oldest trade still needed (see
//! [`window`]), with a checkpoint that makes a restart emit exactly what an uninterrupted
//! run would have.

pub mod checkpoint;
pub mod window;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use metrics::{Counter, Gauge};
use tidewatch_db::DatabaseArgs;
use tidewatch_kafka::dlq::ENCODE_FAILED;
use tidewatch_kafka::service::StageArgs;
use tidewatch_kafka::stage::{Input, Outcome, Position, Processor};
use tidewatch_kafka::trace::SpanContext;
use tidewatch_kafka::trace::MAX_LINKS;
use tidewatch_kafka::{Code, Record};
use tidewatch_schema::{EnrichedTrade, TOPIC_BARS, TOPIC_FEATURES, TOPIC_TRADES_ENRICHED};
use tidewatch_telemetry::{catalog, TelemetryArgs};

use crate::checkpoint::CheckpointStore;
use crate::window::{Admission, Checkpoint, PartitionWindows};

pub const SERVICE: &str = "aggregate";

/// enrich emitted something aggregate cannot read: lost by the pipeline.
const MALFORMED_TRADE: Code = Code::pipeline("malformed_trade");
/// The trade's window had closed when it arrived: the venue sent it too late.
const LATE_TRADE: Code = Code::input("late_trade");

#[derive(Debug, Clone, Parser)]
#[command(
    name = "aggregate",
    version,
    about = "Builds event-time OHLC bars and model features from enriched trades"
)]
pub struct Settings {
    /// Address of the ops server (/metrics, /health).
    #[arg(long = "listen", env = "LISTEN_ADDR", default_value = "0.0.0.0:9103")]
    pub listen: SocketAddr,
    #[arg(long, env = "INPUT_TOPIC", default_value = TOPIC_TRADES_ENRICHED)]
    pub input_topic: String,
    #[arg(long, env = "BARS_TOPIC", default_value = TOPIC_BARS)]
    pub bars_topic: String,
    #[arg(long, env = "FEATURES_TOPIC", default_value = TOPIC_FEATURES)]
    pub features_topic: String,
    /// Window length. Features are defined on one-minute bars; other lengths give bars only
    /// meaningful to the model if it was trained on them.
    #[arg(long, env = "WINDOW_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub window_seconds: u32,
    /// How far behind the newest event time of a partition a trade may be and still count.
    #[arg(long, env = "ALLOWED_LATENESS_SECONDS", default_value_t = 10)]
    pub allowed_lateness_seconds: u32,
    #[command(flatten)]
    pub database: DatabaseArgs,
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
        Settings::public_view(self)
    }
}

impl Settings {
    pub fn public_view(&self) -> serde_json::Value {
        serde_json::json!({
            "listen": self.listen.to_string(),
            "input_topic": self.input_topic,
            "bars_topic": self.bars_topic,
            "features_topic": self.features_topic,
            "window_seconds": self.window_seconds,
            "allowed_lateness_seconds": self.allowed_lateness_seconds,
            "database": self.database,
            "stage": self.stage,
            "telemetry": self.telemetry,
        })
    }
}

struct WindowMetrics {
    bars: Counter,
    features: Counter,
    late: Counter,
    duplicates: Counter,
    /// Duplicates are discarded on purpose: counted as such in the component metrics too.
    discarded: Counter,
    replayed: Counter,
    checkpoint_resets: Counter,
    open: Gauge,
    watermarks: HashMap<i32, Gauge>,
}

/// The stage's logic: windows per assigned partition.
pub struct Aggregate {
    bars_topic: String,
    features_topic: String,
    size_ms: i64,
    lateness_ms: i64,
    partitions: HashMap<i32, PartitionWindows>,
    /// Per partition, the spans of the trades in each open window (symbol, start), for the
    /// bar's span to link to: at most `tidewatch_kafka::trace::MAX_LINKS` each, and only
    /// while traces are exported. Windows restored from a checkpoint have none.
    links: HashMap<i32, HashMap<(String, i64), Vec<SpanContext>>>,
    checkpoints: CheckpointStore,
    metrics: WindowMetrics,
}

impl std::fmt::Debug for Aggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregate")
            .field("size_ms", &self.size_ms)
            .field("lateness_ms", &self.lateness_ms)
            .field("partitions", &self.partitions.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Aggregate {
    pub fn new(settings: &Settings, checkpoints: CheckpointStore) -> Self {
        let metrics = WindowMetrics {
            bars: catalog::BARS_CLOSED.counter(&[]),
            features: catalog::FEATURES_EMITTED.counter(&[]),
            late: catalog::LATE_TRADES.counter(&[]),
            duplicates: catalog::DUPLICATE_TRADES.counter(&[]),
            discarded: catalog::COMPONENT_DISCARDED_EVENTS
                .counter(&[("stage", SERVICE), ("intentional", "true")]),
            replayed: catalog::REPLAYED_MESSAGES.counter(&[]),
            checkpoint_resets: {
                let c = catalog::CHECKPOINT_RESETS.counter(&[]);
                c.absolute(0);
                c
            },
            open: catalog::OPEN_WINDOWS.gauge(&[]),
            watermarks: HashMap::new(),
        };
        for c in [
            &metrics.bars,
            &metrics.features,
            &metrics.late,
            &metrics.duplicates,
            &metrics.replayed,
        ] {
            c.absolute(0);
        }
        Self {
            bars_topic: settings.bars_topic.clone(),
            features_topic: settings.features_topic.clone(),
            size_ms: i64::from(settings.window_seconds) * 1000,
            lateness_ms: i64::from(settings.allowed_lateness_seconds) * 1000,
            partitions: HashMap::new(),
            links: HashMap::new(),
            checkpoints,
            metrics,
        }
    }

    fn windows(&mut self, partition: i32) -> &mut PartitionWindows {
        let (size, lateness) = (self.size_ms, self.lateness_ms);
        self.partitions
            .entry(partition)
            .or_insert_with(|| PartitionWindows::new(size, lateness))
    }

    fn update_gauges(&mut self, partition: i32) {
        let open: usize = self
            .partitions
            .values()
            .map(PartitionWindows::open_windows)
            .sum();
        self.metrics.open.set(open as f64);
        if let Some(wm) = self
            .partitions
            .get(&partition)
            .and_then(PartitionWindows::watermark)
        {
            self.metrics
                .watermarks
                .entry(partition)
                .or_insert_with(|| {
                    catalog::WATERMARK.gauge(&[("partition", &partition.to_string())])
                })
                .set(wm as f64 / 1e3);
        }
    }
}

/// Whether a partition whose next offset is `high` has lost the messages `checkpoint` was
/// acknowledged through: offsets only grow, so a topic that still holds them has `high`
/// beyond the last acknowledged offset.
fn topic_lost(checkpoint: &Checkpoint, high: i64) -> bool {
    checkpoint.acknowledged_through >= high
}

impl Processor for Aggregate {
    fn error_codes(&self) -> &'static [Code] {
        &[MALFORMED_TRADE, LATE_TRADE, ENCODE_FAILED]
    }

    async fn process(&mut self, input: &Input<'_>) -> Outcome {
        let decoded: Result<EnrichedTrade, _> = serde_json::from_slice(input.payload);
        let windows = self.windows(input.partition);
        let replay = windows.is_replay(input.offset);
        let trade = match decoded {
            Ok(t) => t.trade,
            // Dead-lettered the first time round.
            Err(_) if replay => return Outcome::Emit(Vec::new()),
            Err(e) => {
                return Outcome::DeadLetter {
                    code: MALFORMED_TRADE,
                    reason: format!("not an enriched trade: {e}"),
                }
            }
        };
        let admission = windows.admit(
            input.offset,
            &trade.symbol,
            &trade.trade_id,
            trade.event_time_ms,
            trade.price,
            trade.size,
        );
        let closing = windows.advance(trade.event_time_ms);
        self.update_gauges(input.partition);
        if replay {
            self.metrics.replayed.increment(1);
            return Outcome::Emit(Vec::new());
        }
        if let Admission::Late { reason } = admission {
            self.metrics.late.increment(1);
            // Nothing closes on a late trade: it cannot move the watermark.
            return Outcome::DeadLetter {
                code: LATE_TRADE,
                reason,
            };
        }
        if admission == Admission::Duplicate {
            self.metrics.duplicates.increment(1);
            self.metrics.discarded.increment(1);
        }
        self.metrics.bars.increment(closing.bars.len() as u64);
        self.metrics
            .features
            .increment(closing.features.len() as u64);
        // A bar's span and its features' link to the trades that made the bar; with traces
        // off the links are never looked at. (A trade that was not sampled still closes
        // windows, so this asks whether traces are on, not whether the trade has a span.)
        let mut made_of: HashMap<(&str, i64), Vec<SpanContext>> = HashMap::new();
        if tidewatch_telemetry::trace::enabled() {
            let links = self.links.entry(input.partition).or_default();
            if let (Admission::Accepted, Some(span)) = (&admission, &input.span) {
                let start = trade.event_time_ms - trade.event_time_ms.rem_euclid(self.size_ms);
                let window = links.entry((trade.symbol.clone(), start)).or_default();
                if window.len() < MAX_LINKS {
                    window.push(span.clone());
                }
            }
            for b in &closing.bars {
                if let Some(trades) = links.remove(&(b.symbol.clone(), b.start_ms)) {
                    made_of.insert((b.symbol.as_str(), b.start_ms), trades);
                }
            }
        }
        let trades = |symbol: &str, start: i64| -> Vec<SpanContext> {
            made_of.get(&(symbol, start)).cloned().unwrap_or_default()
        };
        let records: Result<Vec<Record>, _> = closing
            .bars
            .iter()
            .map(|b| {
                Record::json(&self.bars_topic, &b.symbol, b)
                    .map(|r| r.linked(trades(&b.symbol, b.start_ms)))
            })
            .chain(closing.features.iter().map(|f| {
                Record::json(&self.features_topic, &f.symbol, f)
                    .map(|r| r.linked(trades(&f.symbol, f.bar_start_ms)))
            }))
            .collect();
        match records {
            Ok(records) => Outcome::Emit(records),
            Err(e) => Outcome::encode_failed(&e),
        }
    }

    fn resume_position(&self, partition: i32, offset: i64) -> Position {
        match self.partitions.get(&partition) {
            Some(windows) => {
                let checkpoint = windows.checkpoint(offset);
                Position {
                    offset: checkpoint.resume_offset,
                    metadata: Some(checkpoint.encode()),
                }
            }
            None => Position {
                offset: offset + 1,
                metadata: None,
            },
        }
    }

    fn acknowledged(&mut self, partition: i32, position: &Position) {
        if let Some(c) = position
            .metadata
            .as_deref()
            .and_then(|m| Checkpoint::decode(position.offset, m))
        {
            self.checkpoints.acknowledged(partition, c);
        }
    }

    async fn assigned(
        &mut self,
        partition: i32,
        committed: Option<i64>,
        watermarks: Option<(i64, i64)>,
    ) -> anyhow::Result<Option<i64>> {
        // A partition's state must come from its checkpoint: wait for the database a while.
        let mut attempt = 0;
        let checkpoint = loop {
            match self.checkpoints.load(partition).await {
                Ok(c) => break c,
                Err(e) if attempt < 30 => {
                    attempt += 1;
                    tracing::warn!(
                        partition,
                        error = format!("{e:#}"),
                        "checkpoint unavailable, retrying"
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        };
        // The topic must still hold the message the checkpoint was acknowledged through.
        // A broker that lost its data (recreated topics, database kept) holds fewer: the
        // checkpoint describes messages that no longer exist, and honouring it would hold
        // back every output until new offsets passed the old ones. Start over instead.
        let checkpoint = match (checkpoint, watermarks) {
            (Some(c), Some((low, high))) if topic_lost(&c, high) => {
                tracing::warn!(
                    partition,
                    resume = c.resume_offset,
                    through = c.acknowledged_through,
                    low,
                    high,
                    "the topic no longer holds this checkpoint's messages (broker data lost); starting over from what it holds"
                );
                self.metrics.checkpoint_resets.increment(1);
                self.partitions.insert(
                    partition,
                    PartitionWindows::new(self.size_ms, self.lateness_ms),
                );
                return Ok(Some(low));
            }
            (c, _) => c,
        };
        let (windows, start) = match checkpoint {
            Some(c) => {
                tracing::info!(
                    partition,
                    resume = c.resume_offset,
                    through = c.acknowledged_through,
                    ?committed,
                    "restoring windows from checkpoint"
                );
                (
                    PartitionWindows::restore(self.size_ms, self.lateness_ms, &c),
                    Some(c.resume_offset),
                )
            }
            None => {
                if committed.is_some() {
                    tracing::warn!(partition, ?committed, "no checkpoint for a partition with a committed offset; starting with empty windows");
                }
                (PartitionWindows::new(self.size_ms, self.lateness_ms), None)
            }
        };
        self.partitions.insert(partition, windows);
        Ok(start)
    }

    fn revoked(&mut self, partition: i32) {
        self.partitions.remove(&partition);
        self.links.remove(&partition);
        self.checkpoints.forget(partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_beyond_the_topics_end_means_the_topic_was_lost() {
        let checkpoint = Checkpoint {
            resume_offset: 900,
            watermark: 0,
            acknowledged_through: 1_000,
        };
        assert!(
            !topic_lost(&checkpoint, 1_001),
            "the acknowledged message is still there"
        );
        assert!(!topic_lost(&checkpoint, 5_000));
        assert!(
            topic_lost(&checkpoint, 1_000),
            "the acknowledged message is gone"
        );
        assert!(topic_lost(&checkpoint, 0), "an empty, recreated topic");
    }
}
