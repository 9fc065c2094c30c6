//! Structured logs with `tracing`: JSON lines in containers, readable text on a terminal.

use std::io::IsTerminal as _;

use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stdout is not a terminal (containers, files), pretty text otherwise.
    Auto,
    /// One JSON object per line; the request span's fields (`request_id`) are included.
    Json,
    /// Human-readable text.
    Pretty,
}

impl LogFormat {
    fn resolve(self) -> LogFormat {
        match self {
            LogFormat::Auto if std::io::stdout().is_terminal() => LogFormat::Pretty,
            LogFormat::Auto => LogFormat::Json,
            other => other,
        }
    }
}

/// Installs the global subscriber. `filter` uses `RUST_LOG` syntax (`info,tower_http=debug`).
/// A second call in the same process (tests) leaves the first subscriber in place.
pub fn init(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("invalid log filter {filter:?}: {e}"))?;
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format.resolve() {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_target(true),
            )
            .try_init(),
        _ => registry.with(fmt::layer().with_target(false)).try_init(),
    };
    // Only "already initialised" can fail here, which is expected in tests.
    drop(result);
    Ok(())
}
