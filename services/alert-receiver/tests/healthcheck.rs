//! `alert-receiver healthcheck`, the probe container healthchecks run (every service binary
//! has it, from the telemetry crate): exit 0 while the service is ready, 1 when it is not;
//! and SIGTERM stops the service with exit status 0.

use std::process::Command;
use std::time::{Duration, Instant};

fn healthcheck(listen: &str) -> bool {
    Command::new(env!("CARGO_BIN_EXE_alert-receiver"))
        .arg("healthcheck")
        .env("LISTEN_ADDR", listen)
        .status()
        .expect("runs")
        .success()
}

#[test]
fn the_healthcheck_subcommand_follows_readiness_and_sigterm_exits_0() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    assert!(!healthcheck(&listen), "nothing listens yet");
    let mut service = Command::new(env!("CARGO_BIN_EXE_alert-receiver"))
        .env("LISTEN_ADDR", &listen)
        .env("LOG_FORMAT", "json")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !healthcheck(&listen) {
        assert!(Instant::now() < deadline, "never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let term = Command::new("kill")
        .args(["-TERM", &service.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(term.success(), "SIGTERM sent");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = service.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "did not stop within 30 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "SIGTERM exits 0, got {status}");
    assert!(!healthcheck(&listen), "a stopped service is not ready");
}
