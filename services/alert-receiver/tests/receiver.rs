//! The receiver as Alertmanager and a user see it: notifications accepted per configured
//! receiver, counted, listed newest first with filters; bad input refused by field.

use alert_receiver::{Application, Settings, SERVICE};
use clap::Parser as _;
use serde_json::{json, Value};
use tidewatch_telemetry::{BuildInfo, Shutdown, Telemetry};

async fn spawn() -> String {
    let settings =
        Settings::try_parse_from(["alert-receiver", "--listen", "127.0.0.1:0"]).expect("settings");
    let telemetry = Telemetry::new(BuildInfo::new(SERVICE, "test")).expect("telemetry");
    let app = Application::build(&settings, telemetry)
        .await
        .expect("builds");
    let addr = app.local_addr().expect("addr");
    tokio::spawn(app.run(Shutdown::new()));
    format!("http://{addr}")
}

fn hook(status: &str, alertname: &str, severity: &str) -> Value {
    json!({
        "version": "4", "status": status, "receiver": "page", "groupKey": "{}:{}",
        "groupLabels": {"alertname": alertname},
        "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am",
        "alerts": [{
            "status": status,
            "labels": {"alertname": alertname, "severity": severity, "service": "normalize"},
            "annotations": {"summary": "s"},
            "startsAt": "2026-11-23T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prom", "fingerprint": "abc"
        }]
    })
}

#[tokio::test]
async fn notifications_are_counted_and_listed_newest_first() {
    let base = spawn().await;
    let client = reqwest::Client::new();
    for (receiver, body) in [
        ("page", hook("firing", "ServiceDown", "critical")),
        ("ticket", hook("firing", "ConsumerLagHigh", "warning")),
        ("page", hook("resolved", "ServiceDown", "critical")),
    ] {
        let res = client
            .post(format!("{base}/v1/webhook/{receiver}"))
            .json(&body)
            .send()
            .await
            .expect("post");
        assert_eq!(res.status().as_u16(), 200);
    }
    let list: Value = client
        .get(format!("{base}/v1/notifications?receiver=page"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let statuses: Vec<&str> = list["notifications"]
        .as_array()
        .expect("list")
        .iter()
        .map(|n| n["status"].as_str().expect("status"))
        .collect();
    assert_eq!(statuses, ["resolved", "firing"], "newest first, page only");
    let by_name: Value = client
        .get(format!("{base}/v1/notifications?alertname=ConsumerLagHigh"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(by_name["notifications"][0]["receiver"], "ticket");

    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains(
        r#"tidewatch_alerts_received_total{receiver="page",status="resolved",severity="critical"} 1"#
    ), "{metrics}");
    assert!(metrics
        .contains(r#"tidewatch_alert_notifications_total{receiver="ticket",status="firing"} 1"#));
}

#[tokio::test]
async fn unknown_receivers_and_bad_bodies_are_refused_by_field() {
    let base = spawn().await;
    let client = reqwest::Client::new();
    // `%FF` was found by `scripts/fuzz`: a segment that does not decode to UTF-8 names no
    // receiver either (it got axum's plain-text 400 before).
    for receiver in ["everyone", "%FF"] {
        let res = client
            .post(format!("{base}/v1/webhook/{receiver}"))
            .json(&hook("firing", "X", "info"))
            .send()
            .await
            .expect("post");
        assert_eq!(res.status().as_u16(), 404, "{receiver}");
        let err: Value = res.json().await.expect("json");
        assert_eq!(err["error"]["code"], "unknown_receiver", "{receiver}");
        assert_eq!(err["error"]["field"], "receiver", "{receiver}");
    }

    let mut bad = hook("firing", "X", "info");
    bad["alerts"][0]["labels"] = json!("not a map");
    let res = client
        .post(format!("{base}/v1/webhook/info"))
        .json(&bad)
        .send()
        .await
        .expect("post");
    assert_eq!(res.status().as_u16(), 422);
    let err: Value = res.json().await.expect("json");
    assert_eq!(err["error"]["field"], "alerts[0].labels");

    let res = client
        .get(format!("{base}/v1/notifications?limit=0"))
        .send()
        .await
        .expect("get");
    assert_eq!(res.status().as_u16(), 422);
}
