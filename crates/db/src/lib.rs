//! PostgreSQL for every Tidewatch service: one set of migrations (all services share one
//! database, and sqlx tracks applied migrations per database), connection settings, and a
//! pool that starts even while the database is still coming up. [`registry`]: the model
//! registry (versions, champion and challenger aliases, their audit trail).

pub mod registry;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use secrecy::{ExposeSecret as _, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

/// Every migration, embedded at compile time from `crates/db/migrations`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Database settings every PostgreSQL-using service shares.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL, e.g. postgres://tidewatch@localhost:5432/tidewatch.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: SecretString,
    /// The password, when it is not in the URL: taken as it is, so it needs no
    /// percent-encoding (compose passes POSTGRES_PASSWORD here). Set, it replaces a password
    /// the URL holds.
    #[arg(long, env = "DATABASE_PASSWORD", hide_env_values = true)]
    pub database_password: Option<SecretString>,
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 5)]
    pub database_max_connections: u32,
    /// How long start-up waits for the database to accept connections.
    #[arg(long, env = "DATABASE_START_TIMEOUT_SECONDS", default_value_t = 30)]
    pub database_start_timeout_seconds: u64,
}

impl serde::Serialize for DatabaseArgs {
    /// Logged settings show where the database is, never its password.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut st = s.serialize_struct("DatabaseArgs", 3)?;
        st.serialize_field("database", &redacted(self.database_url.expose_secret()))?;
        let password = self.database_password.as_ref().map(|_| "set (masked)");
        st.serialize_field("password", &password)?;
        st.serialize_field("max_connections", &self.database_max_connections)?;
        st.end()
    }
}

impl DatabaseArgs {
    /// The URL's connection options, with `DATABASE_PASSWORD` in place of its password.
    pub fn connect_options(&self) -> anyhow::Result<PgConnectOptions> {
        let options: PgConnectOptions = self
            .database_url
            .expose_secret()
            .parse()
            .context("DATABASE_URL is not a valid PostgreSQL URL")?;
        Ok(match &self.database_password {
            Some(password) => options.password(password.expose_secret()),
            None => options,
        })
    }
}

/// `postgres://user:secret@host/db` as `postgres://user@host/db`.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}{}", &url[..scheme + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// A pool whose connections are opened on demand (a database that goes away and comes
/// back is reconnected to without a restart), after migrations were applied. Waits up to
/// the start timeout for the database.
pub async fn connect_and_migrate(args: &DatabaseArgs) -> anyhow::Result<PgPool> {
    let options = args.connect_options()?;
    let pool = PgPoolOptions::new()
        .max_connections(args.database_max_connections.max(1))
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy_with(options);
    let deadline = Instant::now() + Duration::from_secs(args.database_start_timeout_seconds);
    loop {
        match MIGRATOR.run(&pool).await {
            Ok(()) => return Ok(pool),
            Err(e) if unreachable(&e) && Instant::now() < deadline => {
                tracing::warn!(error = %e, "database not reachable yet, retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e).context("applying migrations"),
        }
    }
}

/// Whether a migration failed because the database could not be reached (worth waiting
/// for) rather than because of what it holds (worth stopping for).
fn unreachable(e: &sqlx::migrate::MigrateError) -> bool {
    matches!(
        e,
        sqlx::migrate::MigrateError::Execute(
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_)
        )
    ) || matches!(e, sqlx::migrate::MigrateError::Execute(sqlx::Error::Database(d)) if d.code().as_deref() == Some("57P03"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_never_reach_the_log() {
        assert_eq!(
            super::redacted("postgres://u:pw@h:5432/db"),
            "postgres://u@h:5432/db"
        );
        assert_eq!(super::redacted("postgres://h/db"), "postgres://h/db");
    }
}
