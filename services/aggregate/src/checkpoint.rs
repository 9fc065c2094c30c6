//! Where aggregate's checkpoints live: PostgreSQL (`stage_checkpoints`), one row per
//! consumer group and input partition. Kafka's offset-commit metadata would be the natural
//! place, but not every Kafka-protocol broker keeps it (tansu returns it empty), and a
//! checkpoint that silently vanishes would make a restart emit wrong bars.
//!
//! Acknowledged checkpoints are collected as the stage runs and written about once a
//! second. The committed Kafka offset may run ahead of the saved checkpoint; on assignment
//! the stage seeks back to the checkpoint, which is always safe: an older checkpoint only
//! means a longer replay.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use sqlx::PgPool;
use tidewatch_telemetry::Shutdown;

use crate::window::Checkpoint;

#[derive(Debug, Clone)]
pub struct CheckpointStore {
    pool: PgPool,
    group: String,
    topic: String,
    unsaved: Arc<Mutex<HashMap<i32, Checkpoint>>>,
}

impl CheckpointStore {
    pub fn new(pool: PgPool, group: String, topic: String) -> Self {
        Self {
            pool,
            group,
            topic,
            unsaved: Arc::default(),
        }
    }

    /// Notes a checkpoint whose outputs were all delivered; saved by the next [`Self::save`].
    pub fn acknowledged(&self, partition: i32, checkpoint: Checkpoint) {
        self.unsaved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(partition, checkpoint);
    }

    /// Forgets what was not saved for a partition this instance no longer owns.
    pub fn forget(&self, partition: i32) {
        self.unsaved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&partition);
    }

    pub async fn load(&self, partition: i32) -> anyhow::Result<Option<Checkpoint>> {
        let row: Option<(i64, i64, i64)> = sqlx::query_as(
            "SELECT resume_offset, watermark_ms, acknowledged_through FROM stage_checkpoints \
             WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
        )
        .bind(&self.group)
        .bind(&self.topic)
        .bind(partition)
        .fetch_optional(&self.pool)
        .await
        .context("reading the checkpoint")?;
        Ok(row.map(
            |(resume_offset, watermark, acknowledged_through)| Checkpoint {
                resume_offset,
                watermark,
                acknowledged_through,
            },
        ))
    }

    /// Writes the checkpoints noted since the last save. On failure they are kept for the
    /// next attempt (unless newer ones replaced them).
    pub async fn save(&self) -> anyhow::Result<usize> {
        let batch: Vec<(i32, Checkpoint)> = self
            .unsaved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        if batch.is_empty() {
            return Ok(0);
        }
        let partitions: Vec<i32> = batch.iter().map(|(p, _)| *p).collect();
        let resume: Vec<i64> = batch.iter().map(|(_, c)| c.resume_offset).collect();
        let watermark: Vec<i64> = batch.iter().map(|(_, c)| c.watermark).collect();
        let through: Vec<i64> = batch.iter().map(|(_, c)| c.acknowledged_through).collect();
        let written = sqlx::query(
            "INSERT INTO stage_checkpoints \
               (consumer_group, topic, partition, resume_offset, watermark_ms, acknowledged_through) \
             SELECT $1, $2, * FROM UNNEST($3::int[], $4::bigint[], $5::bigint[], $6::bigint[]) \
             ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET \
               resume_offset = EXCLUDED.resume_offset, watermark_ms = EXCLUDED.watermark_ms, \
               acknowledged_through = EXCLUDED.acknowledged_through, updated_at = now()",
        )
        .bind(&self.group)
        .bind(&self.topic)
        .bind(&partitions)
        .bind(&resume)
        .bind(&watermark)
        .bind(&through)
        .execute(&self.pool)
        .await;
        if let Err(e) = written {
            let mut unsaved = self.unsaved.lock().unwrap_or_else(|e| e.into_inner());
            for (p, c) in batch {
                unsaved.entry(p).or_insert(c);
            }
            return Err(e).context("saving checkpoints");
        }
        Ok(partitions.len())
    }

    /// Saves once a second until `shutdown`.
    pub fn spawn_saver(&self, shutdown: Shutdown) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = shutdown.cancelled() => return,
                }
                if let Err(e) = store.save().await {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "checkpoints not saved; will retry"
                    );
                }
            }
        })
    }
}
