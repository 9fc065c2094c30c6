//! Settings: command-line flags with environment fallbacks (`prediction-api --help`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Serialize;
use tidewatch_model::Variant;
use tidewatch_telemetry::TelemetryArgs;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "prediction-api",
    version,
    about = "Serves the volatility-spike model over HTTP"
)]
pub struct Settings {
    /// Address to listen on.
    #[arg(long = "listen", env = "LISTEN_ADDR", default_value = "0.0.0.0:8000")]
    pub listen: SocketAddr,
    /// Model artifact (JSON) to load at start.
    #[arg(
        long = "model",
        env = "MODEL_PATH",
        default_value = "models/volatility-spike.json"
    )]
    pub model_path: PathBuf,
    /// Variant serving predictions at start; switchable at run time via the admin API.
    #[arg(long, env = "MODEL_VARIANT", value_enum, default_value = "ml")]
    pub variant: Variant,
    /// Bearer token for admin endpoints. Unset or empty: admin endpoints answer 403.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub admin_token: Option<SecretString>,
    /// PostgreSQL of the model registry. Set, the API serves the registry's champion and
    /// follows it (`--model` serves until the registry has one); unset, `--model` alone.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<SecretString>,
    /// The registry database's password, when it is not in the URL.
    #[arg(long, env = "DATABASE_PASSWORD", hide_env_values = true)]
    pub database_password: Option<SecretString>,
    /// Seconds between reads of the registry's champion (how stale the served model can be).
    #[arg(long, env = "REGISTRY_POLL_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub registry_poll_seconds: u64,
    /// Largest accepted request body in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// API requests served at once, at most; more get a fast 503 `overloaded` with
    /// Retry-After instead of queueing (0: no limit). Ops endpoints are never limited.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 128)]
    pub max_concurrent_requests: usize,
    /// Seconds to let in-flight requests finish after SIGTERM.
    #[arg(long, env = "SHUTDOWN_GRACE_SECONDS", default_value_t = 30)]
    pub shutdown_grace_seconds: u64,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

fn parse_secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s.to_owned()))
}

impl Settings {
    /// The admin token, if one is configured and non-empty.
    pub fn admin_token(&self) -> Option<&SecretString> {
        self.admin_token
            .as_ref()
            .filter(|t| !t.expose_secret().is_empty())
    }

    /// The effective settings with secrets reduced to whether they are set; this is what
    /// start-up logs and `/v1/system/info` show.
    pub fn public_view(&self) -> PublicSettings {
        PublicSettings {
            listen: self.listen.to_string(),
            model_path: self.model_path.display().to_string(),
            variant: self.variant,
            admin_token: if self.admin_token().is_some() {
                "set (masked)"
            } else {
                "unset (admin disabled)"
            },
            registry: self.database_url.is_some(),
            registry_poll_seconds: self.registry_poll_seconds,
            max_body_bytes: self.max_body_bytes,
            max_concurrent_requests: self.max_concurrent_requests,
            shutdown_grace_seconds: self.shutdown_grace_seconds,
            log_format: self.telemetry.log_format,
            log_level: self.telemetry.log_level.clone(),
        }
    }
}

impl tidewatch_telemetry::runner::ServiceSettings for Settings {
    fn telemetry(&self) -> &tidewatch_telemetry::TelemetryArgs {
        &self.telemetry
    }
    fn public_view(&self) -> serde_json::Value {
        serde_json::to_value(Settings::public_view(self)).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PublicSettings {
    pub listen: String,
    pub model_path: String,
    #[schema(value_type = String)]
    pub variant: Variant,
    pub admin_token: &'static str,
    /// Whether the model follows the registry's champion.
    pub registry: bool,
    pub registry_poll_seconds: u64,
    pub max_body_bytes: usize,
    pub max_concurrent_requests: usize,
    pub shutdown_grace_seconds: u64,
    #[schema(value_type = String)]
    pub log_format: tidewatch_telemetry::LogFormat,
    pub log_level: String,
}
