//! One graceful-shutdown signal for the whole process.
//!
//! On SIGTERM or ctrl-c the [`Shutdown`] token is cancelled: servers stop accepting
//! connections and finish the requests in flight (bounded by their grace period), and stage
//! loops stop taking new messages, finish those in flight and commit their offsets.

use std::future::Future;

use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the shutdown (also used by tests instead of a signal).
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Resolves once shutdown has started.
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + 'static {
        self.token.clone().cancelled_owned()
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Triggers shutdown on SIGTERM or ctrl-c. Call once from `main`.
    pub fn trigger_on_signal(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            let signal = wait_for_signal().await;
            tracing::info!(signal, "shutdown signal received, draining");
            this.trigger();
        });
    }
}

async fn wait_for_signal() -> &'static str {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => "SIGINT",
        _ = term => "SIGTERM",
    }
}
