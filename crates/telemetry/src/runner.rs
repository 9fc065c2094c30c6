//! The start and end every service binary shares, so a `main.rs` is only what differs: the
//! service's name, its settings type and what it runs; and the value parsers their
//! settings share.

use std::future::Future;

use crate::{healthcheck, BuildInfo, Shutdown, Telemetry, TelemetryArgs};

/// A service's command-line settings, as the runner needs them.
pub trait ServiceSettings: clap::Parser {
    fn telemetry(&self) -> &TelemetryArgs;
    /// The settings as logged at start: nothing secret.
    fn public_view(&self) -> serde_json::Value;
}

/// Runs a service binary: answers `<service> healthcheck` (the container probe, against
/// `default_listen` unless LISTEN_ADDR says otherwise), parses the settings, starts logging
/// and telemetry, logs the settings, makes SIGTERM and ctrl-c trigger the shutdown, then
/// runs `work` on a multi-threaded runtime, logs how it ended and exports the traces still
/// queued.
pub fn run<S, F, Fut>(
    service: &'static str,
    version: &'static str,
    default_listen: &str,
    work: F,
) -> anyhow::Result<()>
where
    S: ServiceSettings,
    F: FnOnce(S, Telemetry, Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    healthcheck::exit_if_requested(default_listen);
    let settings = S::parse();
    settings.telemetry().init_logging(service, version)?;
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let build = BuildInfo::new(service, version);
            tracing::info!(
                version = build.version,
                git_commit = build.git_commit,
                settings = %settings.public_view(),
                "starting"
            );
            let telemetry = Telemetry::new(build)?;
            let shutdown = Shutdown::new();
            shutdown.trigger_on_signal();
            match work(settings, telemetry, shutdown).await {
                Ok(()) => {
                    tracing::info!("stopped");
                    Ok(())
                }
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "stopped on an error");
                    Err(e)
                }
            }
        });
    crate::trace::shutdown();
    result
}

/// A clap value parser for a share: a number from 0 to 1.
pub fn fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not a fraction between 0 and 1"))
    }
}
