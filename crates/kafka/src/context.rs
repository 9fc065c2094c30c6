//! The client context of every Tidewatch consumer: librdkafka statistics become lag gauges
//! and the broker's health (the statistics themselves are never logged); rebalances are
//! logged, counted and handed to the stage loop with the committed positions; what was
//! acknowledged is committed before a revoke.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use metrics::{Counter, Gauge};
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tidewatch_telemetry::{catalog, ComponentHealth, HealthHandle};

/// Messages of a partition the stage has not yet taken: the high watermark minus the
/// position the stage has consumed to (librdkafka's `app_offset`, the last message handed
/// to the application plus one), or minus the committed offset before it has taken any.
/// Not the committed lag: a stateful stage (aggregate) commits the first message of its
/// oldest open window, so its committed lag stays large while it keeps up. None while the
/// watermark is unknown or nothing is consumed or committed (librdkafka reports -1 or
/// -1001 for unset offsets).
fn backlog(high_watermark: i64, consumed_to: i64, committed: i64) -> Option<i64> {
    if high_watermark < 0 {
        return None;
    }
    let position = if consumed_to >= 0 {
        consumed_to
    } else if committed >= 0 {
        committed
    } else {
        return None;
    };
    Some((high_watermark - position).max(0))
}

/// Statistics reports (5 s apart) in a row that must find a partition's next offset above
/// its high watermark before the consumer starts it over.
const PAST_THE_END_REPORTS: u32 = 3;

/// Whether a partition is being fetched from beyond its end. A real Kafka answers such a
/// fetch with OFFSET_OUT_OF_RANGE and librdkafka resets the position (`auto.offset.reset`);
/// tansu answers with no records, and the consumer would wait until the recreated
/// partition grew past its old position (minutes, with every record before it skipped).
fn past_the_end(fetch_state: &str, next_offset: i64, high_watermark: i64) -> bool {
    fetch_state == "active" && high_watermark >= 0 && next_offset > high_watermark
}

/// Logs and counts a partition found past its end, before its consumer starts it over.
pub(crate) fn starting_over(topic: &str, partition: i32, position: i64, high_watermark: i64) {
    tracing::warn!(
        topic,
        partition,
        position,
        high_watermark,
        "the partition ends before the position consumed from (the broker lost its data?): consuming it again from the beginning"
    );
    catalog::KAFKA_POSITION_RESETS.counter(&[]).increment(1);
}

/// A change of assignment, for the stage loop to hand to its processor.
#[derive(Debug, Clone, PartialEq)]
pub enum AssignmentChange {
    /// A partition now consumed by this member, with its committed position if any.
    Assigned {
        topic: String,
        partition: i32,
        committed: Option<i64>,
    },
    Revoked {
        topic: String,
        partition: i32,
    },
    /// An assigned partition whose end is below the position the consumer fetches from,
    /// report after report: the broker lost the partition's data and created it again. It
    /// must be consumed again from the beginning.
    PastTheEnd {
        topic: String,
        partition: i32,
        position: i64,
        high_watermark: i64,
    },
}

pub struct StageContext {
    lag: Mutex<HashMap<(String, i32), Gauge>>,
    commits: CommitCounters,
    health: HealthHandle,
    /// Whether this member holds an assignment (possibly empty: more members than
    /// partitions is a valid, ready state).
    assigned: AtomicBool,
    changes: Mutex<Vec<AssignmentChange>>,
    /// Reports in a row that found each partition past its end.
    past_end: Mutex<HashMap<(String, i32), u32>>,
}

impl StageContext {
    pub fn new(health: HealthHandle) -> Self {
        health.set(ComponentHealth::unhealthy(
            "waiting for a partition assignment",
        ));
        catalog::KAFKA_POSITION_RESETS.counter(&[]).increment(0);
        catalog::KAFKA_SKIPPED_OFFSETS.counter(&[]).increment(0);
        catalog::KAFKA_UNREADABLE_HEADERS.counter(&[]).increment(0);
        Self {
            lag: Mutex::default(),
            commits: CommitCounters::default(),
            health,
            assigned: AtomicBool::new(false),
            changes: Mutex::default(),
            past_end: Mutex::default(),
        }
    }

    /// Assignment changes since the last call, oldest first.
    pub fn take_changes(&self) -> Vec<AssignmentChange> {
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn push_change(&self, change: AssignmentChange) {
        self.changes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(change);
    }
}

struct CommitCounters {
    ok: Counter,
    failed: Counter,
}

impl Default for CommitCounters {
    fn default() -> Self {
        Self {
            ok: catalog::KAFKA_COMMITS.counter(&[("outcome", "ok")]),
            failed: catalog::KAFKA_COMMITS.counter(&[("outcome", "failed")]),
        }
    }
}

impl std::fmt::Debug for StageContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageContext").finish_non_exhaustive()
    }
}

impl ClientContext for StageContext {
    fn stats(&self, statistics: Statistics) {
        // Bootstrap entries have node id -1; a broker learnt from metadata that is UP means
        // the cluster is reachable.
        let up = statistics
            .brokers
            .values()
            .any(|b| b.nodeid >= 0 && b.state == "UP");
        self.health
            .set(match (up, self.assigned.load(Ordering::Acquire)) {
                (false, _) => ComponentHealth::unhealthy("no connection to any broker"),
                (true, false) => ComponentHealth::unhealthy("waiting for a partition assignment"),
                (true, true) => ComponentHealth::healthy("broker reachable, partitions assigned"),
            });
        let mut gauges = self.lag.lock().unwrap_or_else(|e| e.into_inner());
        let mut past_end = self.past_end.lock().unwrap_or_else(|e| e.into_inner());
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // -1 is librdkafka's internal "unassigned" partition.
                if *partition < 0 {
                    continue;
                }
                let key = (topic.clone(), *partition);
                if past_the_end(&p.fetch_state, p.next_offset, p.hi_offset) {
                    let seen = past_end.entry(key).or_insert(0);
                    *seen += 1;
                    if seen.is_multiple_of(PAST_THE_END_REPORTS) {
                        self.push_change(AssignmentChange::PastTheEnd {
                            topic: topic.clone(),
                            partition: *partition,
                            position: p.next_offset,
                            high_watermark: p.hi_offset,
                        });
                    }
                } else {
                    past_end.remove(&key);
                }
                let Some(backlog) = backlog(p.hi_offset, p.app_offset, p.committed_offset) else {
                    continue;
                };
                let gauge = gauges
                    .entry((topic.clone(), *partition))
                    .or_insert_with(|| {
                        let partition = partition.to_string();
                        catalog::KAFKA_CONSUMER_LAG
                            .gauge(&[("topic", topic), ("partition", &partition)])
                    });
                gauge.set(backlog as f64);
            }
        }
    }
}

impl ConsumerContext for StageContext {
    /// Before partitions are taken away, commits what was stored: the offsets of messages
    /// whose outputs were all acknowledged. The next owner then starts right after them; a
    /// message still in flight here is not stored, so it is handed back and processed again
    /// there (its late acknowledgement here can no longer store an offset for a partition
    /// this member does not hold). Asynchronously: a member must not wait inside the
    /// rebalance callback on a coordinator that is itself in the middle of the rebalance.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            if tpl.count() == 0 {
                return;
            }
            match consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Async) {
                Ok(())
                | Err(rdkafka::error::KafkaError::ConsumerCommit(
                    rdkafka::types::RDKafkaErrorCode::NoOffset,
                )) => {}
                Err(e) => tracing::warn!(error = %e, "committing before the revoke failed"),
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let kind = match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = %describe(tpl), "partitions assigned");
                // The committed offsets, for processors that keep state.
                let committed = consumer
                    .committed_offsets((*tpl).clone(), Duration::from_secs(10))
                    .map_err(|e| tracing::warn!(error = %e, "reading committed offsets failed"))
                    .ok();
                for element in tpl.elements() {
                    let position = committed.as_ref().and_then(|c| {
                        let e = c.find_partition(element.topic(), element.partition())?;
                        match e.offset() {
                            Offset::Offset(offset) => Some(offset),
                            _ => None,
                        }
                    });
                    tracing::debug!(partition = element.partition(), committed = ?position, "committed offset");
                    self.push_change(AssignmentChange::Assigned {
                        topic: element.topic().to_owned(),
                        partition: element.partition(),
                        committed: position,
                    });
                }
                self.assigned.store(true, Ordering::Release);
                self.health.set(ComponentHealth::healthy(
                    "broker reachable, partitions assigned",
                ));
                "assign"
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = %describe(tpl), "partitions revoked");
                for element in tpl.elements() {
                    self.push_change(AssignmentChange::Revoked {
                        topic: element.topic().to_owned(),
                        partition: element.partition(),
                    });
                }
                self.assigned.store(false, Ordering::Release);
                "revoke"
            }
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "rebalance failed");
                "error"
            }
        };
        catalog::KAFKA_REBALANCES
            .counter(&[("kind", kind)])
            .increment(1);
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                self.commits.ok.increment(1);
                tracing::debug!(offsets = %describe_offsets(offsets), "offsets committed");
            }
            // Nothing to commit is not a failure.
            Err(rdkafka::error::KafkaError::ConsumerCommit(
                rdkafka::types::RDKafkaErrorCode::NoOffset,
            )) => {}
            Err(e) => {
                self.commits.failed.increment(1);
                tracing::warn!(error = %e, "offset commit failed");
            }
        }
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|e| format!("{}[{}]", e.topic(), e.partition()))
        .collect::<Vec<_>>()
        .join(",")
}

fn describe_offsets(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|e| format!("{}[{}]={:?}", e.topic(), e.partition(), e.offset()))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::{backlog, past_the_end};

    #[test]
    fn a_partition_is_past_its_end_only_while_fetched_from_beyond_its_high_watermark() {
        // The broker lost the partition and created it again: 230 records, position 14,001.
        assert!(past_the_end("active", 14_001, 230));
        // Caught up: the next offset is the high watermark.
        assert!(!past_the_end("active", 230, 230));
        assert!(!past_the_end("active", 100, 230));
        // Watermark not known yet, or the partition not being fetched.
        assert!(!past_the_end("active", 14_001, -1));
        assert!(!past_the_end("offset-query", 14_001, 230));
    }

    #[test]
    fn backlog_counts_from_the_consumed_position_not_the_committed_one() {
        // aggregate: committed far behind (its oldest open window), consumed near the end.
        assert_eq!(backlog(50_000, 49_990, 3_000), Some(10));
        // Before the first message is taken, the committed offset is where it resumes.
        assert_eq!(backlog(50_000, -1001, 3_000), Some(47_000));
        // A watermark fetched before the last message arrived never gives a negative lag.
        assert_eq!(backlog(100, 105, 90), Some(0));
        assert_eq!(backlog(-1, 10, 5), None);
        assert_eq!(backlog(100, -1001, -1001), None);
    }
}
