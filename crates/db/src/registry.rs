//! The model registry in PostgreSQL (`migrations/20261202000001_model_registry.sql`):
//! versions numbered from 1 with their artifact, its SHA-256, the training command and data
//! window, held-out scores and reference profile; the aliases `champion` and `challenger`;
//! and an audit row for every alias move. JSON documents go in and come out as text, so
//! this crate does not depend on the model's types (the model crate validates them).
//!
//! Every write is one transaction. Version numbers are taken under a transaction-scoped
//! advisory lock, so concurrent registrations get consecutive numbers instead of a conflict.

use sqlx::{PgPool, Postgres, Transaction};
use time::OffsetDateTime;

/// Key of the advisory lock that serialises registrations and alias moves.
const LOCK: i64 = 0x7469_6465_7761_7463; // "tidewatc"

/// An alias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alias {
    /// The version that serves.
    Champion,
    /// The version judged beside it, promoted if it wins.
    Challenger,
}

impl Alias {
    pub fn as_str(self) -> &'static str {
        match self {
            Alias::Champion => "champion",
            Alias::Challenger => "challenger",
        }
    }
}

/// What registering a version takes besides its documents.
#[derive(Debug, Clone)]
pub struct NewVersion<'a> {
    pub name: &'a str,
    pub training_command: &'a str,
    /// Event time of the first and last bar trained on (None: not trained on stored bars).
    pub data_window: Option<(OffsetDateTime, OffsetDateTime)>,
    /// Who or what registered it (`trainer`, `seed`, a person).
    pub created_by: &'a str,
}

/// A version's JSON documents, stored as given.
#[derive(Debug, Clone, PartialEq)]
pub struct Documents {
    /// The artifact (hashed as given).
    pub artifact: String,
    /// Held-out scores.
    pub heldout: String,
    /// Reference profile.
    pub reference_profile: String,
}

/// A registered version.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ModelVersion {
    pub version: i32,
    pub name: String,
    pub artifact: String,
    pub artifact_sha256: String,
    pub training_command: String,
    pub data_start: Option<OffsetDateTime>,
    pub data_end: Option<OffsetDateTime>,
    pub heldout: String,
    pub reference_profile: String,
    pub created_by: String,
    pub created_at: OffsetDateTime,
}

/// One move of an alias.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AliasMove {
    pub alias: String,
    pub from_version: Option<i32>,
    pub to_version: Option<i32>,
    pub actor: String,
    pub reason: String,
    pub moved_at: OffsetDateTime,
}

const VERSION_COLUMNS: &str = "version, name, artifact::text AS artifact, artifact_sha256, \
     training_command, data_start, data_end, heldout::text AS heldout, \
     reference_profile::text AS reference_profile, created_by, created_at";

/// The registry over a pool.
#[derive(Debug, Clone)]
pub struct Registry {
    pool: PgPool,
}

impl Registry {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    async fn locked(&self) -> anyhow::Result<Transaction<'static, Postgres>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(LOCK)
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    /// Registers `v` as the next version and returns its number.
    pub async fn register(&self, v: &NewVersion<'_>, documents: &Documents) -> anyhow::Result<i32> {
        self.register_next(v, |_| Ok(documents.clone()), None).await
    }

    /// Registers the next version with documents that name its number (`documents` gets
    /// it, under the lock) and, with `challenger` (the reason), makes it the challenger in
    /// the same transaction. Returns its number.
    pub async fn register_next(
        &self,
        v: &NewVersion<'_>,
        documents: impl FnOnce(i32) -> anyhow::Result<Documents>,
        challenger: Option<&str>,
    ) -> anyhow::Result<i32> {
        let mut tx = self.locked().await?;
        let next: i32 =
            sqlx::query_scalar("SELECT coalesce(max(version), 0) + 1 FROM model_versions")
                .fetch_one(&mut *tx)
                .await?;
        let version = insert(&mut tx, next, v, &documents(next)?).await?;
        if let Some(reason) = challenger {
            move_alias(
                &mut tx,
                Alias::Challenger,
                Some(version),
                v.created_by,
                reason,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(version)
    }

    /// Registers `v` as version 1 and makes it champion, if the registry is empty; returns
    /// whether it did. Every service may call this at start: only the first one seeds.
    pub async fn seed(
        &self,
        v: &NewVersion<'_>,
        documents: &Documents,
        reason: &str,
    ) -> anyhow::Result<bool> {
        let mut tx = self.locked().await?;
        let any: Option<i32> = sqlx::query_scalar("SELECT version FROM model_versions LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
        if any.is_some() {
            return Ok(false);
        }
        let version = insert(&mut tx, 1, v, documents).await?;
        move_alias(
            &mut tx,
            Alias::Champion,
            Some(version),
            v.created_by,
            reason,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Points `alias` at `to` (None: clears it), with an audit row. Moving an alias to the
    /// version it already points at changes nothing and returns None.
    pub async fn move_alias(
        &self,
        alias: Alias,
        to: Option<i32>,
        actor: &str,
        reason: &str,
    ) -> anyhow::Result<Option<AliasMove>> {
        let mut tx = self.locked().await?;
        let moved = move_alias(&mut tx, alias, to, actor, reason).await?;
        tx.commit().await?;
        Ok(moved)
    }

    /// The challenger becomes champion and the challenger alias is cleared, in one
    /// transaction (two audit rows). Returns the new champion, or None without a challenger.
    pub async fn promote_challenger(
        &self,
        actor: &str,
        reason: &str,
    ) -> anyhow::Result<Option<i32>> {
        let mut tx = self.locked().await?;
        let Some(challenger) = current(&mut tx, Alias::Challenger).await? else {
            return Ok(None);
        };
        move_alias(&mut tx, Alias::Champion, Some(challenger), actor, reason).await?;
        move_alias(&mut tx, Alias::Challenger, None, actor, reason).await?;
        tx.commit().await?;
        Ok(Some(challenger))
    }

    /// The version an alias points at.
    pub async fn alias(&self, alias: Alias) -> anyhow::Result<Option<ModelVersion>> {
        Ok(sqlx::query_as::<_, ModelVersion>(&format!(
            "SELECT {VERSION_COLUMNS} FROM model_versions \
             WHERE version = (SELECT version FROM model_aliases WHERE alias = $1)"
        ))
        .bind(alias.as_str())
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn version(&self, version: i32) -> anyhow::Result<Option<ModelVersion>> {
        Ok(sqlx::query_as::<_, ModelVersion>(&format!(
            "SELECT {VERSION_COLUMNS} FROM model_versions WHERE version = $1"
        ))
        .bind(version)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The champion the newest promotion replaced (what a rollback returns to), if any and
    /// if it is not the champion again. Rollbacks do not count as promotions, so a version
    /// rolled back from is never rolled back to.
    pub async fn previous_champion(&self) -> anyhow::Result<Option<i32>> {
        Ok(sqlx::query_scalar(
            "SELECT from_version FROM (SELECT from_version FROM model_alias_moves \
               WHERE alias = 'champion' AND reason NOT LIKE 'rollback: %' \
               ORDER BY id DESC LIMIT 1) newest \
             WHERE from_version IS DISTINCT FROM \
               (SELECT version FROM model_aliases WHERE alias = 'champion')",
        )
        .fetch_optional(&self.pool)
        .await?
        .flatten())
    }

    /// Puts `to` back as champion (a rollback: its reason is recorded as `rollback: ...`).
    pub async fn roll_back(
        &self,
        to: i32,
        actor: &str,
        reason: &str,
    ) -> anyhow::Result<Option<AliasMove>> {
        self.move_alias(
            Alias::Champion,
            Some(to),
            actor,
            &format!("rollback: {reason}"),
        )
        .await
    }

    /// When `actor` last registered a version, if ever.
    pub async fn last_registered_by(&self, actor: &str) -> anyhow::Result<Option<OffsetDateTime>> {
        Ok(
            sqlx::query_scalar("SELECT max(created_at) FROM model_versions WHERE created_by = $1")
                .bind(actor)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Every move of every alias, oldest first.
    pub async fn moves(&self) -> anyhow::Result<Vec<AliasMove>> {
        Ok(sqlx::query_as::<_, AliasMove>(
            "SELECT alias, from_version, to_version, actor, reason, moved_at \
             FROM model_alias_moves ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}

/// Inserts version `number` (the caller holds the lock and took the next number).
async fn insert(
    tx: &mut Transaction<'static, Postgres>,
    number: i32,
    v: &NewVersion<'_>,
    d: &Documents,
) -> anyhow::Result<i32> {
    let (start, end) = v.data_window.unzip();
    Ok(sqlx::query_scalar(
        "INSERT INTO model_versions (version, name, artifact, artifact_sha256, training_command, \
         data_start, data_end, heldout, reference_profile, created_by) \
         VALUES ($9, $1, $2::jsonb, encode(sha256(convert_to($2, 'UTF8')), 'hex'), $3, $4, $5, \
         $6::jsonb, $7::jsonb, $8) RETURNING version",
    )
    .bind(v.name)
    .bind(&d.artifact)
    .bind(v.training_command)
    .bind(start)
    .bind(end)
    .bind(&d.heldout)
    .bind(&d.reference_profile)
    .bind(v.created_by)
    .bind(number)
    .fetch_one(&mut **tx)
    .await?)
}

async fn current(
    tx: &mut Transaction<'static, Postgres>,
    alias: Alias,
) -> anyhow::Result<Option<i32>> {
    Ok(
        sqlx::query_scalar("SELECT version FROM model_aliases WHERE alias = $1")
            .bind(alias.as_str())
            .fetch_optional(&mut **tx)
            .await?,
    )
}

async fn move_alias(
    tx: &mut Transaction<'static, Postgres>,
    alias: Alias,
    to: Option<i32>,
    actor: &str,
    reason: &str,
) -> anyhow::Result<Option<AliasMove>> {
    let from = current(tx, alias).await?;
    if from == to {
        return Ok(None);
    }
    match to {
        Some(version) => {
            sqlx::query(
                "INSERT INTO model_aliases (alias, version) VALUES ($1, $2) \
                 ON CONFLICT (alias) DO UPDATE SET version = EXCLUDED.version, moved_at = now()",
            )
            .bind(alias.as_str())
            .bind(version)
            .execute(&mut **tx)
            .await?;
        }
        None => {
            sqlx::query("DELETE FROM model_aliases WHERE alias = $1")
                .bind(alias.as_str())
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(Some(
        sqlx::query_as::<_, AliasMove>(
            "INSERT INTO model_alias_moves (alias, from_version, to_version, actor, reason) \
             VALUES ($1, $2, $3, $4, $5) \
             RETURNING alias, from_version, to_version, actor, reason, moved_at",
        )
        .bind(alias.as_str())
        .bind(from)
        .bind(to)
        .bind(actor)
        .bind(reason)
        .fetch_one(&mut **tx)
        .await?,
    ))
}
