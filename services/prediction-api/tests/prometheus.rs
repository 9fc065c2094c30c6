//! End to end through a real Prometheus: started by `scripts/test`, which passes its URL and
//! its file-based service discovery directory in the environment.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{eventually, predict_body, start_binary};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run this test through scripts/test, which starts Prometheus")
    })
}

/// The single value of an instant query, or `None` when the result is empty.
async fn query(client: &reqwest::Client, prometheus: &str, promql: &str) -> Option<f64> {
    let body: Value = client
        .get(format!("{prometheus}/api/v1/query"))
        .query(&[("query", promql)])
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    assert_eq!(body["status"], "success", "{promql}: {body}");
    body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[tokio::test]
async fn prometheus_scrapes_the_service_and_counts_exactly_the_requests_sent() {
    let prometheus = env("TIDEWATCH_PROMETHEUS_URL");
    let targets = std::path::PathBuf::from(env("TIDEWATCH_PROMETHEUS_TARGETS"));
    let service = start_binary(&[]);
    let instance = service.addr.to_string();
    let client = reqwest::Client::new();
    // Written to a temporary name and renamed, so Prometheus never reads half a file.
    let list =
        serde_json::json!([{ "targets": [instance], "labels": { "service": "prediction-api" } }]);
    let tmp = targets.join(".prediction-api.json.tmp");
    std::fs::write(&tmp, list.to_string()).expect("write target list");
    std::fs::rename(&tmp, targets.join("prediction-api.json")).expect("publish target list");

    let up = format!("up{{job=\"prediction-api\",instance=\"{instance}\"}}");
    eventually(Duration::from_secs(60), "the target to be up", || async {
        query(&client, &prometheus, &up).await.filter(|v| *v == 1.0)
    })
    .await;
    let counter = format!(
        "sum(http_server_requests_total{{instance=\"{instance}\",http_route=\"/v1/predict\"}})"
    );
    let before = query(&client, &prometheus, &counter).await.unwrap_or(0.0);

    const SENT: u32 = 37;
    for _ in 0..SENT {
        let res = client
            .post(format!("http://{instance}/v1/predict"))
            .json(&predict_body())
            .send()
            .await
            .expect("predict");
        assert_eq!(res.status().as_u16(), 200);
    }
    let want = before + f64::from(SENT);
    eventually(
        Duration::from_secs(30),
        "Prometheus to see the requests",
        || async {
            query(&client, &prometheus, &counter)
                .await
                .filter(|v| *v >= want)
        },
    )
    .await;
    // Several more scrapes: the count must stay exact, not drift upwards.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = query(&client, &prometheus, &counter).await;

    assert_eq!(after, Some(want), "request counter in Prometheus");
    let text = client
        .get(format!("http://{instance}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed by scripts/test");
    std::io::Write::write_all(&mut promtool.stdin.take().expect("stdin"), text.as_bytes())
        .expect("pipe");
    let lint = promtool.wait_with_output().expect("promtool runs");
    assert!(
        lint.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    let _ = std::fs::remove_file(targets.join("prediction-api.json"));
}
