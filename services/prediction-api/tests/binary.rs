//! The built binary: SIGTERM drains in-flight requests and exits 0.

mod support;

use std::io::{Read as _, Write as _};
use std::time::Duration;

use support::{predict_body, start_binary};

#[test]
fn sigterm_lets_the_request_in_flight_complete_and_exits_zero() {
    let mut service = start_binary(&[]);
    let body = predict_body().to_string();
    let (head, tail) = body.split_at(body.len() / 2);
    let mut stream = std::net::TcpStream::connect(service.addr).expect("connect");
    write!(
        stream,
        "POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{head}",
        body.len()
    )
    .expect("write head");
    std::thread::sleep(Duration::from_millis(300));

    let killed = std::process::Command::new("kill")
        .args(["-TERM", &service.child.id().to_string()])
        .status()
        .expect("kill runs");
    std::thread::sleep(Duration::from_millis(300));
    stream.write_all(tail.as_bytes()).expect("write tail");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let status = service.child.wait().expect("exits");

    assert!(killed.success());
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"symbol\":\"ETH-USD\""), "{response}");
    assert_eq!(status.code(), Some(0), "clean exit after draining");
}

#[test]
fn help_lists_every_setting_with_its_environment_variable() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_prediction-api"))
        .arg("--help")
        .output()
        .expect("runs");
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, env) in [
        ("--listen", "LISTEN_ADDR"),
        ("--model", "MODEL_PATH"),
        ("--variant", "MODEL_VARIANT"),
        ("--admin-token", "ADMIN_TOKEN"),
        ("--max-body-bytes", "MAX_BODY_BYTES"),
        ("--shutdown-grace-seconds", "SHUTDOWN_GRACE_SECONDS"),
        ("--log-format", "LOG_FORMAT"),
        ("--log-level", "LOG_LEVEL"),
    ] {
        assert!(
            help.contains(flag) && help.contains(&format!("env: {env}")),
            "{flag} / {env} missing:\n{help}"
        );
    }
}

#[test]
fn a_malformed_model_artifact_stops_the_binary_with_a_clear_message() {
    let dir = std::env::temp_dir().join(format!("tidewatch-bad-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("model.json");
    std::fs::write(&path, "{\"schema_version\": 1, \"name\": ").expect("write");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_prediction-api"))
        .env("MODEL_PATH", &path)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("LOG_FORMAT", "json")
        .output()
        .expect("runs");

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("model artifact") && stderr.contains(&path.display().to_string()),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
