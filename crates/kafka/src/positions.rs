//! Where each assigned partition's next message should be, and what a consumer loop does
//! when the broker answers with a later one.
//!
//! Kafka answers a fetch that starts inside a record batch with that whole batch, and the
//! client drops the records before the position it asked for. tansu 0.6 (the broker the
//! tests and the native stack run) answers with the batches *after* it instead, so a
//! consumer starting inside a batch (a committed offset, a checkpoint, a partition taken
//! over after a rebalance) would silently skip the rest of that batch. The loop sees it as
//! a message past the offset it expected, counts the gap
//! (`tidewatch_kafka_skipped_offsets_total`), seeks back to an offset no producer batch
//! can straddle, drops what comes before the expected offset and goes on from there.
//! Kafka leaves no gap outside compacted and transactional topics, which Tidewatch does
//! not use, so with Kafka none of this ever runs.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::Offset;
use tidewatch_telemetry::catalog;

use crate::context::StageContext;

/// How far before a skipped offset the first rewind goes: librdkafka's largest batch
/// (`batch.num.messages`, 10,000 by default), so a batch boundary lies in between.
pub(crate) const REWIND: i64 = 10_000;

/// Rewinds tried for one offset before it is given up as lost (the third goes to the
/// partition's beginning; an offset still missing then is below the log's start).
const MAX_REWINDS: u32 = 3;

/// What the loop does with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Process,
    /// Before the offset the loop waits for (re-read after a rewind).
    Drop,
    /// The broker skipped offsets: seek the partition to `from` and drop this message.
    Rewind {
        from: i64,
    },
}

#[derive(Debug, Default)]
struct Partition {
    /// The offset the next message should have.
    expected: Option<i64>,
    /// After a seek: the one offset to take next, and how many rewinds it took so far.
    awaiting: Option<(i64, u32)>,
}

/// Positions of every assigned partition, by topic.
#[derive(Debug, Default)]
pub(crate) struct Positions {
    topics: HashMap<String, HashMap<i32, Partition>>,
}

impl Positions {
    fn partition(&mut self, topic: &str, partition: i32) -> &mut Partition {
        if !self.topics.contains_key(topic) {
            self.topics.insert(topic.to_owned(), HashMap::new());
        }
        self.topics
            .get_mut(topic)
            .map(|t| t.entry(partition).or_default())
            .unwrap_or_else(|| unreachable!("inserted above"))
    }

    /// The consumer starts `partition` at `offset` itself (its committed offset), or
    /// wherever `auto.offset.reset` says (None: nothing to judge the first message by).
    pub(crate) fn starts_at(&mut self, topic: &str, partition: i32, offset: Option<i64>) {
        *self.partition(topic, partition) = Partition {
            expected: offset,
            awaiting: None,
        };
    }

    /// The loop sought `partition` to `offset`: messages fetched before the seek are
    /// dropped until the one at `offset` arrives.
    pub(crate) fn sought(&mut self, topic: &str, partition: i32, offset: i64) {
        *self.partition(topic, partition) = Partition {
            expected: Some(offset),
            awaiting: Some((offset, 0)),
        };
    }

    pub(crate) fn revoked(&mut self, topic: &str, partition: i32) {
        if let Some(t) = self.topics.get_mut(topic) {
            t.remove(&partition);
        }
    }

    /// Judges the message at `offset`.
    pub(crate) fn judge(&mut self, topic: &str, partition: i32, offset: i64) -> Verdict {
        let p = self.partition(topic, partition);
        if let Some((want, rewinds)) = p.awaiting {
            if offset < want {
                return Verdict::Drop;
            }
            if offset > want {
                if rewinds < MAX_REWINDS {
                    p.awaiting = Some((want, rewinds + 1));
                    return Verdict::Rewind {
                        from: rewind_target(want, rewinds + 1),
                    };
                }
                tracing::warn!(
                    topic,
                    partition,
                    lost_from = want,
                    offset,
                    "offsets still missing after rewinding to the partition's beginning: going on without them"
                );
            }
            p.awaiting = None;
        } else if let Some(next) = p.expected.filter(|next| offset > *next) {
            tracing::warn!(
                topic,
                partition,
                expected = next,
                received = offset,
                "the broker skipped offsets: reading them again from an earlier offset"
            );
            catalog::KAFKA_SKIPPED_OFFSETS
                .counter(&[])
                .increment((offset - next) as u64);
            p.awaiting = Some((next, 1));
            return Verdict::Rewind {
                from: rewind_target(next, 1),
            };
        }
        p.expected = Some(offset + 1);
        Verdict::Process
    }
}

/// Seeks `partition` back to `from` after the broker skipped offsets ([`Verdict::Rewind`]).
pub(crate) fn rewind(
    consumer: &StreamConsumer<StageContext>,
    topic: &str,
    partition: i32,
    from: i64,
) {
    if let Err(e) = consumer.seek(
        topic,
        partition,
        Offset::Offset(from),
        Duration::from_secs(10),
    ) {
        tracing::warn!(topic, partition, from, error = %e, "seeking back over skipped offsets failed");
    }
}

/// Where the `attempt`th rewind for a missing `offset` seeks to.
fn rewind_target(offset: i64, attempt: u32) -> i64 {
    match attempt {
        1 => offset - REWIND,
        2 => offset - 10 * REWIND,
        _ => 0,
    }
    .max(0)
}

#[cfg(test)]
mod tests {
    use super::{Positions, Verdict, REWIND};

    #[test]
    fn offsets_skipped_by_the_broker_are_read_again_from_before_them() {
        let mut p = Positions::default();
        // Committed 20,010; the broker answers from 20,013 (it skipped the rest of the
        // batch holding 20,010 to 20,012).
        p.starts_at("t", 0, Some(20_010));
        assert_eq!(
            p.judge("t", 0, 20_013),
            Verdict::Rewind {
                from: 20_010 - REWIND
            }
        );
        // The rewind's batches before the wanted offset are dropped, then in order.
        assert_eq!(p.judge("t", 0, 10_010), Verdict::Drop);
        assert_eq!(p.judge("t", 0, 20_009), Verdict::Drop);
        assert_eq!(p.judge("t", 0, 20_010), Verdict::Process);
        assert_eq!(p.judge("t", 0, 20_011), Verdict::Process);
        // Another topic's partition 0 and a partition with no known start are not judged.
        assert_eq!(p.judge("u", 0, 7), Verdict::Process);
        assert_eq!(p.judge("t", 1, 500), Verdict::Process);
        assert_eq!(p.judge("t", 1, 501), Verdict::Process);
    }

    #[test]
    fn after_a_seek_the_loop_waits_for_that_offset_and_rewinds_further_if_it_is_skipped() {
        let mut p = Positions::default();
        p.sought("t", 2, 40);
        assert_eq!(p.judge("t", 2, 30), Verdict::Drop);
        assert_eq!(p.judge("t", 2, 40), Verdict::Process);
        p.sought("t", 2, 150_000);
        assert_eq!(
            p.judge("t", 2, 150_004),
            Verdict::Rewind {
                from: 150_000 - REWIND
            }
        );
        assert_eq!(
            p.judge("t", 2, 150_004),
            Verdict::Rewind {
                from: 150_000 - 10 * REWIND
            }
        );
        assert_eq!(p.judge("t", 2, 150_004), Verdict::Rewind { from: 0 });
        // Still missing from the beginning: below the log's start; given up.
        assert_eq!(p.judge("t", 2, 150_004), Verdict::Process);
        assert_eq!(p.judge("t", 2, 150_005), Verdict::Process);
        p.revoked("t", 2);
        assert_eq!(p.judge("t", 2, 9), Verdict::Process);
    }
}
