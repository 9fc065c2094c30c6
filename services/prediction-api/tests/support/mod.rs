//! Helpers for tests that run the built `prediction-api` binary as a user would.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The running binary, killed on drop if the test did not stop it.
#[derive(Debug)]
pub struct Service {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary from the repository root (so the default model path is exercised)
/// on an ephemeral port, and reads the bound address from its JSON "listening" log line.
pub fn start_binary(envs: &[(&str, &str)]) -> Service {
    let mut child = Command::new(env!("CARGO_BIN_EXE_prediction-api"))
        .current_dir(workspace_root())
        .env("LOG_FORMAT", "json")
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let parsed: Option<serde_json::Value> = serde_json::from_str(&line).ok();
            if let Some(addr) = parsed
                .as_ref()
                .filter(|v| v["message"] == "listening")
                .and_then(|v| v["addr"].as_str())
            {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the binary logs its listening address")
        .parse()
        .expect("a socket address");
    Service { child, addr }
}

pub fn predict_body() -> serde_json::Value {
    serde_json::json!({
        "symbol": "ETH-USD",
        "features": {"ret_1m": -0.002, "ret_5m": 0.001, "vol_5m": 0.002, "vol_15m": 0.0015, "volume_z": 0.5, "trade_rate": 3.0}
    })
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
