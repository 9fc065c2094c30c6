//! Event-time tumbling windows over one input partition, with a watermark, allowed
//! lateness, duplicate suppression, and checkpoints that make a restart exact.
//!
//! The watermark is the partition's largest event time minus the allowed lateness (as
//! Kafka Streams keeps "stream time" per partition). A window `[start, start + size)` closes
//! when the watermark reaches its end: its bar is final, and the symbol's features are
//! computed from it. A trade whose window already closed is late.
//!
//! **Restart.** A checkpoint is the offset to resume from plus `(watermark there, last
//! offset whose outputs were acknowledged)`. The resume offset is the first message of the
//! oldest window still needed: open windows, and the last [`HISTORY_BARS`] closed bars of
//! each symbol, which the feature computation remembers. Replaying from there with the
//! saved watermark repeats every decision exactly; outputs of messages up to the
//! acknowledged offset are suppressed, so a restart emits what an uninterrupted run would
//! have, once.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use tidewatch_model::features::{Bar, FeatureBuilder, HISTORY_BARS};
use tidewatch_schema::{BarRecord, FeatureRecord};

/// A window's identity within a partition: (start, symbol), ordered by start.
type WindowKey = (i64, String);

#[derive(Debug, Clone)]
struct Window {
    bar: Bar,
    notional: f64,
    trade_ids: HashSet<String>,
    /// Where this window's first trade is, and the watermark just before it.
    first_offset: i64,
    watermark_before: i64,
}

/// A closed bar remembered for features and duplicate suppression.
#[derive(Debug, Clone)]
struct Closed {
    start_ms: i64,
    trade_ids: HashSet<String>,
    first_offset: i64,
    watermark_before: i64,
}

#[derive(Debug, Default)]
struct SymbolHistory {
    features: FeatureBuilder,
    closed: VecDeque<Closed>,
}

/// What one trade did to the windows.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    Accepted,
    /// Seen before (an upstream replay): dropped.
    Duplicate,
    /// Its window had closed: `reason` says when.
    Late {
        reason: String,
    },
}

/// Outputs of closing windows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Closing {
    pub bars: Vec<BarRecord>,
    pub features: Vec<FeatureRecord>,
}

/// Where to resume, as committed with the offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub resume_offset: i64,
    pub watermark: i64,
    pub acknowledged_through: i64,
}

impl Checkpoint {
    pub fn encode(&self) -> String {
        format!(
            "v1;wm={};through={}",
            self.watermark, self.acknowledged_through
        )
    }

    /// Reads the metadata committed with `offset`; `None` if it is not ours.
    pub fn decode(offset: i64, metadata: &str) -> Option<Self> {
        let mut parts = metadata.split(';');
        if parts.next()? != "v1" {
            return None;
        }
        let mut watermark = None;
        let mut through = None;
        for part in parts {
            match part.split_once('=')? {
                ("wm", v) => watermark = v.parse().ok(),
                ("through", v) => through = v.parse().ok(),
                _ => return None,
            }
        }
        Some(Self {
            resume_offset: offset,
            watermark: watermark?,
            acknowledged_through: through?,
        })
    }
}

/// The windows of one partition.
#[derive(Debug)]
pub struct PartitionWindows {
    size_ms: i64,
    lateness_ms: i64,
    watermark: i64,
    open: BTreeMap<WindowKey, Window>,
    history: HashMap<String, SymbolHistory>,
    /// Messages up to here are being replayed: state is rebuilt, outputs suppressed.
    replay_through: Option<i64>,
}

/// Watermark before anything was seen: no window can close.
const NO_WATERMARK: i64 = i64::MIN;

impl PartitionWindows {
    pub fn new(size_ms: i64, lateness_ms: i64) -> Self {
        Self {
            size_ms: size_ms.max(1),
            lateness_ms: lateness_ms.max(0),
            watermark: NO_WATERMARK,
            open: BTreeMap::new(),
            history: HashMap::new(),
            replay_through: None,
        }
    }

    /// State to rebuild from a checkpoint: replay from its resume offset.
    pub fn restore(size_ms: i64, lateness_ms: i64, checkpoint: &Checkpoint) -> Self {
        let mut w = Self::new(size_ms, lateness_ms);
        w.watermark = checkpoint.watermark;
        w.replay_through = Some(checkpoint.acknowledged_through);
        w
    }

    /// Whether the message at `offset` is a replay whose outputs were already delivered.
    pub fn is_replay(&mut self, offset: i64) -> bool {
        match self.replay_through {
            Some(through) if offset <= through => true,
            Some(_) => {
                self.replay_through = None;
                false
            }
            None => false,
        }
    }

    pub fn watermark(&self) -> Option<i64> {
        (self.watermark != NO_WATERMARK).then_some(self.watermark)
    }

    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    fn window_start(&self, ts: i64) -> i64 {
        ts - ts.rem_euclid(self.size_ms)
    }

    /// Puts one trade into its window (or says why not). Does not advance the watermark.
    pub fn admit(
        &mut self,
        offset: i64,
        symbol: &str,
        trade_id: &str,
        event_time_ms: i64,
        price: f64,
        size: f64,
    ) -> Admission {
        let start = self.window_start(event_time_ms);
        let key = (start, symbol.to_owned());
        if let Some(window) = self.open.get_mut(&key) {
            if !window.trade_ids.insert(trade_id.to_owned()) {
                return Admission::Duplicate;
            }
            window.bar.add(price, size);
            window.notional += price * size;
            return Admission::Accepted;
        }
        if self.watermark != NO_WATERMARK && start + self.size_ms <= self.watermark {
            let seen = self.history.get(symbol).is_some_and(|h| {
                h.closed
                    .iter()
                    .any(|c| c.start_ms == start && c.trade_ids.contains(trade_id))
            });
            if seen {
                return Admission::Duplicate;
            }
            return Admission::Late {
                reason: format!(
                    "late trade: event time {event_time_ms} is in window [{start}, {}), closed \
                     when the watermark reached {} (allowed lateness {} ms)",
                    start + self.size_ms,
                    self.watermark,
                    self.lateness_ms
                ),
            };
        }
        self.open.insert(
            key,
            Window {
                bar: Bar::open_at(start, price, size),
                notional: price * size,
                trade_ids: HashSet::from([trade_id.to_owned()]),
                first_offset: offset,
                watermark_before: self.watermark,
            },
        );
        Admission::Accepted
    }

    /// Advances the watermark past `event_time_ms` and closes every window it passed, oldest
    /// first.
    pub fn advance(&mut self, event_time_ms: i64) -> Closing {
        let candidate = event_time_ms.saturating_sub(self.lateness_ms);
        if candidate > self.watermark {
            self.watermark = candidate;
        }
        let mut out = Closing::default();
        while let Some(entry) = self.open.first_entry() {
            let (start, _) = entry.key();
            if start + self.size_ms > self.watermark {
                break;
            }
            let ((start, symbol), window) = entry.remove_entry();
            let interval_seconds = (self.size_ms / 1000) as u32;
            let bar = window.bar;
            out.bars.push(BarRecord {
                symbol: symbol.clone(),
                interval_seconds,
                start_ms: start,
                end_ms: start + self.size_ms,
                open: bar.open,
                high: bar.high,
                low: bar.low,
                close: bar.close,
                volume: bar.volume,
                vwap: if bar.volume > 0.0 {
                    window.notional / bar.volume
                } else {
                    bar.close
                },
                trade_count: bar.trades,
            });
            let history = self.history.entry(symbol.clone()).or_default();
            if let Some(features) = history.features.push(&bar) {
                out.features.push(FeatureRecord {
                    symbol,
                    interval_seconds,
                    bar_start_ms: start,
                    bar_end_ms: start + self.size_ms,
                    close: bar.close,
                    features,
                });
            }
            history.closed.push_back(Closed {
                start_ms: start,
                trade_ids: window.trade_ids,
                first_offset: window.first_offset,
                watermark_before: window.watermark_before,
            });
            if history.closed.len() > HISTORY_BARS {
                history.closed.pop_front();
            }
        }
        out
    }

    /// The checkpoint after the message at `offset` was handled.
    pub fn checkpoint(&self, offset: i64) -> Checkpoint {
        let oldest = self
            .open
            .values()
            .map(|w| (w.first_offset, w.watermark_before))
            .chain(
                self.history
                    .values()
                    .filter_map(|h| h.closed.front())
                    .map(|c| (c.first_offset, c.watermark_before)),
            )
            .min_by_key(|(o, _)| *o);
        let (resume_offset, watermark) = oldest.unwrap_or((offset + 1, self.watermark));
        Checkpoint {
            resume_offset,
            watermark,
            acknowledged_through: offset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn bars_close_at_the_watermark_and_late_trades_are_refused() {
        let mut w = PartitionWindows::new(MIN, 5_000);
        assert_eq!(w.admit(0, "A", "a1", 1_000, 10.0, 1.0), Admission::Accepted);
        assert_eq!(w.advance(1_000), Closing::default());
        assert_eq!(
            w.admit(1, "A", "a2", 30_000, 12.0, 3.0),
            Admission::Accepted
        );
        assert_eq!(
            w.admit(2, "A", "a2", 30_000, 12.0, 3.0),
            Admission::Duplicate
        );
        assert_eq!(
            w.admit(3, "A", "a3", 62_000, 11.0, 1.0),
            Admission::Accepted
        );
        // 62 s - 5 s lateness: the first window is still open, a trade in it is on time.
        assert!(w.advance(62_000).bars.is_empty());
        assert_eq!(w.admit(4, "A", "a4", 59_000, 9.0, 1.0), Admission::Accepted);
        let closing = w.advance(65_000);
        assert_eq!(closing.bars.len(), 1);
        let bar = &closing.bars[0];
        assert_eq!(
            (bar.open, bar.high, bar.low, bar.close),
            (10.0, 12.0, 9.0, 9.0)
        );
        assert_eq!((bar.volume, bar.trade_count), (5.0, 3));
        assert!((bar.vwap - (10.0 + 36.0 + 9.0) / 5.0).abs() < 1e-12);
        assert!(matches!(
            w.admit(5, "A", "a5", 10_000, 9.0, 1.0),
            Admission::Late { .. }
        ));
        assert_eq!(
            w.admit(6, "A", "a2", 30_000, 12.0, 3.0),
            Admission::Duplicate,
            "a replayed trade of a closed bar is a duplicate, not late"
        );
    }

    #[test]
    fn checkpoints_decode_and_point_at_the_oldest_needed_window() {
        let c = Checkpoint {
            resume_offset: 7,
            watermark: -3,
            acknowledged_through: 9,
        };
        assert_eq!(Checkpoint::decode(7, &c.encode()), Some(c));
        assert_eq!(Checkpoint::decode(7, "garbage"), None);
        assert_eq!(Checkpoint::decode(7, "v1;wm=x;through=1"), None);
        let mut w = PartitionWindows::new(MIN, 0);
        assert_eq!(
            w.checkpoint(4).resume_offset,
            5,
            "nothing open: the next message"
        );
        w.admit(10, "A", "a", 1_000, 1.0, 1.0);
        w.advance(1_000);
        w.admit(11, "B", "b", 2_000, 1.0, 1.0);
        w.advance(2_000);
        assert_eq!(w.checkpoint(11).resume_offset, 10);
        w.admit(12, "A", "c", 61_000, 1.0, 1.0);
        w.advance(61_000);
        // Both minute-0 windows closed but stay in the feature history.
        assert_eq!(w.checkpoint(12).resume_offset, 10);
    }

    /// The property the restart design rests on: stop anywhere, restore from the last
    /// checkpoint, replay, and the outputs after the checkpoint are exactly those of an
    /// uninterrupted run.
    #[test]
    fn a_restart_from_any_checkpoint_emits_exactly_what_an_uninterrupted_run_does() {
        // Three symbols, out-of-order within lateness, some late, some duplicates.
        let mut trades = Vec::new();
        let mut state: u64 = 7;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            state >> 33
        };
        for i in 0..4_000i64 {
            let symbol = ["A", "B", "C"][(next() % 3) as usize];
            let jitter = (next() % 8_000) as i64;
            let ts = i * 1_500 - jitter;
            let id = if next() % 50 == 0 && i > 10 {
                format!("t{}", i - 3)
            } else {
                format!("t{i}")
            };
            let ts = if next() % 100 == 0 { ts - 5 * MIN } else { ts };
            trades.push((
                symbol,
                id,
                ts,
                100.0 + (next() % 1000) as f64 / 100.0,
                1.0 + (next() % 10) as f64,
            ));
        }
        let run = |w: &mut PartitionWindows, from: usize, outputs: &mut Vec<String>| {
            for (offset, (symbol, id, ts, price, size)) in trades.iter().enumerate().skip(from) {
                let offset = offset as i64;
                let replay = w.is_replay(offset);
                let admission = w.admit(offset, symbol, id, *ts, *price, *size);
                let closing = w.advance(*ts);
                if replay {
                    continue;
                }
                if let Admission::Late { .. } = admission {
                    outputs.push(format!("late {offset}"));
                }
                for b in closing.bars {
                    outputs.push(serde_json::to_string(&b).unwrap());
                }
                for f in closing.features {
                    outputs.push(serde_json::to_string(&f).unwrap());
                }
            }
        };
        let mut reference = PartitionWindows::new(MIN, 10_000);
        let mut all = Vec::new();
        let mut by_offset = Vec::new();
        for (offset, (symbol, id, ts, price, size)) in trades.iter().enumerate() {
            let offset = offset as i64;
            let before = all.len();
            if let Admission::Late { .. } = reference.admit(offset, symbol, id, *ts, *price, *size)
            {
                all.push(format!("late {offset}"));
            }
            let closing = reference.advance(*ts);
            for b in closing.bars {
                all.push(serde_json::to_string(&b).unwrap());
            }
            for f in closing.features {
                all.push(serde_json::to_string(&f).unwrap());
            }
            by_offset.push((before, reference.checkpoint(offset)));
        }
        assert!(all.iter().any(|o| o.starts_with("late")));
        assert!(
            all.iter().any(|o| o.contains("ret_1m")),
            "features were emitted"
        );
        for stop in [0usize, 17, 500, 1_234, 2_999, 3_998] {
            let (_, checkpoint) = by_offset[stop];
            let after_stop = by_offset.get(stop + 1).map_or(all.len(), |(b, _)| *b);
            let mut restored = PartitionWindows::restore(MIN, 10_000, &checkpoint);
            let mut outputs = Vec::new();
            run(
                &mut restored,
                checkpoint.resume_offset as usize,
                &mut outputs,
            );
            assert_eq!(outputs, all[after_stop..], "restart after offset {stop}");
        }
    }
}
