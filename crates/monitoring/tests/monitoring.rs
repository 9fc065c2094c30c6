//! The monitoring files agree with the code: the generated SLO rules are current, every
//! metric a rule reads is in the catalogue (or produced by a rule, or by Prometheus itself),
//! every alert carries the labels and annotations the runbook and routing rely on, and the
//! Kubernetes base is current with compose and probes paths every service serves.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use tidewatch_monitoring::{
    dashboards, generate, kubernetes, metric_names, rule_expressions, Spec, GENERATED_RULES, SPEC,
};
use tidewatch_telemetry::server::{ops_router, serve};
use tidewatch_telemetry::{catalog, BuildInfo, Shutdown, Telemetry};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

const RULE_FILES: [&str; 2] = [
    "monitoring/prometheus/rules/alerts.yml",
    "monitoring/prometheus/rules/slo.generated.yml",
];

/// Series Prometheus makes itself, not exported by any Tidewatch service.
const PROMETHEUS_SERIES: [&str; 1] = ["up"];

/// Prefixes of the off-the-shelf exporters' metrics (node-exporter, postgres_exporter): not
/// in Tidewatch's catalogue; the live dashboard check proves the ones used exist.
const EXPORTER_PREFIXES: [&str; 2] = ["node_", "pg_"];

fn exported_elsewhere(name: &str) -> bool {
    PROMETHEUS_SERIES.contains(&name) || EXPORTER_PREFIXES.iter().any(|p| name.starts_with(p))
}

#[test]
fn the_generated_slo_rules_are_current_with_the_spec() {
    let spec = Spec::parse(&read(SPEC)).expect("the spec parses");
    assert_eq!(spec.slos.len(), 4);
    assert!(
        read(GENERATED_RULES) == generate(&spec),
        "{GENERATED_RULES} is out of date: run `cargo run -p tidewatch-monitoring -- generate`"
    );
}

#[test]
fn every_metric_a_rule_reads_is_catalogued_or_recorded() {
    let mut recorded = BTreeSet::new();
    let mut read_names = BTreeSet::new();
    for file in RULE_FILES {
        let rules = rule_expressions(&read(file)).expect(file);
        recorded.extend(rules.records);
        for expr in &rules.expressions {
            read_names.extend(metric_names(expr).unwrap_or_else(|e| panic!("{file}: {e}")));
        }
    }
    let unknown: Vec<&String> = read_names
        .iter()
        .filter(|n| {
            catalog::lookup(n).is_none() && !recorded.contains(*n) && !exported_elsewhere(n)
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "rules read metrics no service exports: {unknown:?}"
    );
    assert!(read_names.len() > 20, "the rules read {read_names:?}");
}

#[derive(Debug, serde::Deserialize)]
struct File {
    groups: Vec<Group>,
}

#[derive(Debug, serde::Deserialize)]
struct Group {
    rules: Vec<Rule>,
}

#[derive(Debug, serde::Deserialize)]
struct Rule {
    alert: Option<String>,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

#[test]
fn every_alert_has_severity_service_component_and_a_runbook_section() {
    let runbook = read("monitoring/RUNBOOK.md");
    let sections: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_lowercase())
        .collect();
    let mut alerts = BTreeSet::new();
    for file in RULE_FILES {
        let parsed: File = serde_yaml_ng::from_str(&read(file)).expect(file);
        for rule in parsed.groups.into_iter().flat_map(|g| g.rules) {
            let Some(name) = rule.alert else { continue };
            alerts.insert(name.clone());
            let severity = rule.labels.get("severity").map(String::as_str);
            assert!(
                matches!(severity, Some("critical" | "warning" | "info")),
                "{name}: severity {severity:?}"
            );
            assert!(
                rule.labels.contains_key("component"),
                "{name} has no component label"
            );
            // `service` is set by the rule or kept from the series by `by (service)`.
            for key in ["summary", "description", "runbook_url"] {
                assert!(
                    rule.annotations.get(key).is_some_and(|v| !v.is_empty()),
                    "{name} has no {key}"
                );
            }
            let anchor = rule.annotations["runbook_url"]
                .rsplit_once('#')
                .map(|(_, a)| a.to_owned())
                .unwrap_or_default();
            assert!(
                sections.contains(&anchor),
                "{name}: runbook_url points at #{anchor}, which RUNBOOK.md does not have"
            );
        }
    }
    assert!(alerts.len() >= 20, "{alerts:?}");
    // Every alert is exercised by the promtool unit tests.
    let tests = read("monitoring/prometheus/tests/alerts.test.yml")
        + &read("monitoring/prometheus/tests/slo.test.yml");
    for alert in &alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "{alert} has no promtool test"
        );
    }
}

/// Catalogued metrics that no dashboard or rule reads, each with the reason.
const DELIBERATELY_UNUSED: &[(&str, &str)] = &[];

fn dashboard_metric_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for d in dashboards::all() {
        for p in d.panels() {
            for (expr, _) in &p.queries {
                let expr = dashboards::substitute(expr, "1m");
                names.extend(
                    metric_names(&expr)
                        .unwrap_or_else(|e| panic!("{} / {}: {e}", d.title, p.title)),
                );
            }
        }
    }
    names
}

#[test]
fn the_committed_dashboards_are_current_and_use_the_provisioned_datasource() {
    let provisioned = read("monitoring/grafana/provisioning/datasources/prometheus.yml");
    assert!(
        provisioned.contains(&format!("uid: {}", dashboards::DATASOURCE_UID)),
        "the provisioned datasource uid is not {}",
        dashboards::DATASOURCE_UID
    );
    let titles: Vec<&str> = dashboards::all().iter().map(|d| d.title).collect();
    assert_eq!(titles.len(), 8, "{titles:?}");
    for d in dashboards::all() {
        let path = format!("{}/{}", dashboards::DIR, dashboards::file_name(&d));
        assert!(
            read(&path) == dashboards::file_text(&d),
            "{path} is out of date: run `cargo run -p tidewatch-monitoring -- generate`"
        );
        let json: serde_json::Value = serde_json::from_str(&read(&path)).expect("json");
        assert_eq!(json["refresh"], "15s");
        let vars: Vec<&str> = json["templating"]["list"]
            .as_array()
            .expect("variables")
            .iter()
            .map(|v| v["name"].as_str().expect("name"))
            .collect();
        assert_eq!(vars, ["service", "instance"], "{}", d.title);
        let panels = json["panels"].as_array().expect("panels");
        assert!(
            panels.iter().any(|p| p["type"] == "row"),
            "{} groups no panels in rows",
            d.title
        );
        for p in panels.iter().filter(|p| p["type"] != "row") {
            assert_eq!(p["datasource"]["uid"], dashboards::DATASOURCE_UID);
            assert!(
                p["fieldConfig"]["defaults"]["unit"]
                    .as_str()
                    .is_some_and(|u| !u.is_empty()),
                "{} / {} has no unit",
                d.title,
                p["title"]
            );
        }
        // Firing alerts are drawn on every panel, and every dashboard links to the others.
        let annotations = json["annotations"]["list"].as_array().expect("annotations");
        assert!(
            annotations
                .iter()
                .any(|a| a["expr"] == dashboards::ALERT_ANNOTATION_EXPR && a["enable"] == true),
            "{} has no alert annotation",
            d.title
        );
        let links = json["links"].as_array().expect("links");
        assert!(
            links
                .iter()
                .any(|l| l["type"] == "dashboards" && l["tags"] == serde_json::json!(["tidewatch"])),
            "{} does not link to the other dashboards",
            d.title
        );
        assert_eq!(json["tags"], serde_json::json!(["tidewatch"]));
    }
}

#[test]
fn the_dashboards_draw_what_each_kind_of_data_needs() {
    let kinds = |uid: &str| -> Vec<(&'static str, &'static str)> {
        dashboards::all()
            .into_iter()
            .find(|d| d.uid == uid)
            .expect(uid)
            .panels()
            .map(|p| (p.kind, p.title))
            .collect()
    };
    let has = |uid: &str, kind: &str, title: &str| {
        assert!(
            kinds(uid)
                .iter()
                .any(|(k, t)| *k == kind && t.contains(title)),
            "{uid} has no {kind} panel {title:?}"
        );
    };
    // Histogram buckets as heatmaps, shares as pies, levels as gauges, lists as tables.
    has("tidewatch-model", "heatmap", "Predicted probability");
    has("tidewatch-data-quality", "heatmap", "Anomaly score");
    has("tidewatch-data-quality", "piechart", "Anomaly types");
    has("tidewatch-data-quality", "piechart", "Anomaly severities");
    has("tidewatch-model", "piechart", "Spike or normal");
    has("tidewatch-data-quality", "gauge", "Quality score");
    has("tidewatch-slos", "gauge", "Error budget remaining");
    has("tidewatch-data-quality", "table", "Issues by field");
    has("tidewatch-slos", "table", "SLO status");
    has(
        "tidewatch-overview",
        "timeseries",
        "Requests by status code",
    );
    has("tidewatch-overview", "timeseries", "p99 by route");
    // Latency as p50, p95 and p99, not p99 alone.
    let overview = dashboards::all()
        .into_iter()
        .find(|d| d.uid == "tidewatch-overview")
        .expect("overview");
    let latency = overview
        .panels()
        .find(|p| p.title.starts_with("Latency p50"))
        .expect("latency panel");
    let legends: Vec<&str> = latency.queries.iter().map(|(_, l)| *l).collect();
    assert_eq!(legends, ["p50", "p95", "p99"]);
    // The overview leads to the detail of a service, with its variable.
    assert!(overview.panels().any(|p| p
        .links
        .iter()
        .any(|(_, url)| url.contains("var-service=${__field.labels.service}"))));
    // No panel mixes seconds with counts: a unit per panel, and queries of one kind.
    let model = dashboards::all()
        .into_iter()
        .find(|d| d.uid == "tidewatch-model")
        .expect("model");
    for p in model.panels() {
        let seconds_since = p.queries.iter().any(|(e, _)| e.starts_with("time() -"));
        assert!(
            !seconds_since || (p.unit == "s" && p.queries.len() == 1),
            "{} mixes units",
            p.title
        );
    }
    // The SLO status table shows the state as words.
    let slos = dashboards::all()
        .into_iter()
        .find(|d| d.uid == "tidewatch-slos")
        .expect("slos");
    let status = slos
        .panels()
        .find(|p| p.title == "SLO status")
        .expect("status table");
    let words: Vec<&str> = status.mappings.iter().map(|(_, w, _)| *w).collect();
    assert_eq!(words, ["met", "at risk", "violated"]);
}

#[test]
fn every_catalogued_metric_is_on_a_dashboard_or_in_a_rule_and_every_named_metric_exists() {
    let mut used = dashboard_metric_names();
    let mut recorded = BTreeSet::new();
    for file in RULE_FILES {
        let rules = rule_expressions(&read(file)).expect(file);
        recorded.extend(rules.records);
        for expr in &rules.expressions {
            used.extend(metric_names(expr).expect("PromQL"));
        }
    }
    let unknown: Vec<&String> = used
        .iter()
        .filter(|n| {
            catalog::lookup(n).is_none()
                && !recorded.contains(*n)
                && !exported_elsewhere(n)
                && n.as_str() != "ALERTS"
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "dashboards or rules name uncatalogued metrics: {unknown:?}"
    );
    let used_defs: BTreeSet<&str> = used
        .iter()
        .filter_map(|n| catalog::lookup(n))
        .map(|m| m.name)
        .collect();
    let unused: Vec<&str> = catalog::ALL
        .iter()
        .map(|m| m.name)
        .filter(|n| !used_defs.contains(n) && !DELIBERATELY_UNUSED.iter().any(|(u, _)| u == n))
        .collect();
    assert!(
        unused.is_empty(),
        "catalogued but on no dashboard, in no rule, and not listed as deliberately unused: {unused:?}"
    );
}

/// The committed Kubernetes base is what compose and the rule files generate today.
#[test]
fn the_committed_kubernetes_manifests_are_current_with_compose_and_the_rules() {
    for (path, text) in kubernetes::manifests(&root()).expect("the manifests generate") {
        let on_disk = read(path.to_str().expect("a UTF-8 path"));
        assert!(
            on_disk == text,
            "{} is out of date: run `cargo run -p tidewatch-monitoring -- generate`",
            path.display()
        );
    }
}

/// The manifests' probes and scrape path are routes every service serves (each merges
/// `ops_router`): a route renamed in the code cannot leave a cluster probing a 404.
#[tokio::test]
async fn the_kubernetes_probe_and_scrape_paths_are_served_by_every_service() {
    let telemetry = Telemetry::new(BuildInfo::new("probe-paths", "0.0.0")).expect("telemetry");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let address = listener.local_addr().expect("its address");
    let shutdown = Shutdown::new();
    let server = {
        let (telemetry, shutdown) = (telemetry.clone(), shutdown.clone());
        tokio::spawn(async move {
            serve(
                listener,
                ops_router(telemetry.clone()),
                &telemetry,
                shutdown,
                Duration::from_secs(1),
            )
            .await
        })
    };
    for path in [kubernetes::LIVE, kubernetes::READY, kubernetes::METRICS] {
        let status = reqwest::get(format!("http://{address}{path}"))
            .await
            .expect("an answer")
            .status();
        assert!(status.is_success(), "{path} answered {status}");
    }
    shutdown.trigger();
    server.await.expect("the server task").expect("the server");
}
