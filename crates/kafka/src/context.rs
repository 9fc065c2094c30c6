//! The client context of every Tidewatch consumer: librdkafka statistics become lag gauges
//! (the statistics themselves are never logged), and rebalances are logged and counted.

use std::collections::HashMap;
use std::sync::Mutex;

use metrics::{Counter, Gauge};
use rdkafka::consumer::{ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};
use tidewatch_telemetry::catalog;

/// librdkafka reports lag -1 or offsets -1001 (unset) before anything is committed.
const UNSET: i64 = -1;

#[derive(Default)]
pub struct StageContext {
    lag: Mutex<HashMap<(String, i32), Gauge>>,
    commits: CommitCounters,
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
        let mut gauges = self.lag.lock().unwrap_or_else(|e| e.into_inner());
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // -1 is librdkafka's internal "unassigned" partition.
                if *partition < 0
                    || p.consumer_lag == UNSET
                    || p.committed_offset < 0 && p.hi_offset < 0
                {
                    continue;
                }
                let gauge = gauges
                    .entry((topic.clone(), *partition))
                    .or_insert_with(|| {
                        let partition = partition.to_string();
                        catalog::KAFKA_CONSUMER_LAG
                            .gauge(&[("topic", topic), ("partition", &partition)])
                    });
                gauge.set(p.consumer_lag.max(0) as f64);
            }
        }
    }
}

impl ConsumerContext for StageContext {
    fn pre_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        let kind = match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = %describe(tpl), "partitions assigned");
                "assign"
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = %describe(tpl), "partitions revoked");
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

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) => self.commits.ok.increment(1),
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
