//! Grafana dashboards as code: each dashboard is a list of panels written here and rendered
//! to `monitoring/grafana/dashboards/<uid>.json` by `cargo run -p tidewatch-monitoring --
//! generate` (a test fails when the files are stale). Every panel has a unit; thresholds
//! repeat the alert rules' limits; every dashboard has `service` and `instance` variables and
//! refreshes every 15 s. Queries use `$service`, `$instance` and `$__rate_interval`, which
//! [`substitute`] resolves so a test can evaluate them against a live Prometheus.

use serde_json::{json, Value};

/// The datasource uid provisioned in monitoring/grafana/provisioning/datasources.
pub const DATASOURCE_UID: &str = "prometheus";
/// Where the generated dashboards go, relative to the workspace root.
pub const DIR: &str = "monitoring/grafana/dashboards";

/// The scraped-series selector every panel filters by.
const SEL: &str = r#"service=~"$service",instance=~"$instance""#;

#[derive(Debug, Clone)]
pub struct Panel {
    pub title: &'static str,
    /// `timeseries` or `stat`.
    pub kind: &'static str,
    /// A Grafana unit id: `s`, `percentunit`, `reqps`, `ops`, `bytes`, `short`, `none`.
    pub unit: &'static str,
    pub queries: Vec<(String, &'static str)>,
    /// Values at which the panel turns amber and red, from the alert rules.
    pub thresholds: Vec<(f64, &'static str)>,
    pub description: &'static str,
}

#[derive(Debug, Clone)]
pub struct Dashboard {
    pub uid: &'static str,
    pub title: &'static str,
    pub description: &'static str,
    pub panels: Vec<Panel>,
}

fn q(expr: &str) -> String {
    expr.replace("SEL", SEL)
}

fn panel(
    title: &'static str,
    unit: &'static str,
    description: &'static str,
    queries: &[(&str, &'static str)],
) -> Panel {
    Panel {
        title,
        kind: "timeseries",
        unit,
        queries: queries.iter().map(|(e, l)| (q(e), *l)).collect(),
        thresholds: Vec::new(),
        description,
    }
}

impl Panel {
    fn red_above(mut self, value: f64) -> Self {
        self.thresholds = vec![(value, "red")];
        self
    }

    fn stat(mut self) -> Self {
        self.kind = "stat";
        self
    }
}

/// Every dashboard.
pub fn all() -> Vec<Dashboard> {
    vec![
        overview(),
        slos(),
        pipeline(),
        model(),
        data_quality(),
        database_runtime(),
    ]
}

fn overview() -> Dashboard {
    Dashboard {
        uid: "tidewatch-overview",
        title: "Tidewatch / Overview",
        description: "RED per service, health, targets and firing alerts.",
        panels: vec![
            panel("Targets up", "short", "Scrape targets answering, and down.", &[
                ("sum(up{SEL})", "up"),
                ("count(up{SEL} == 0) or vector(0)", "down"),
            ]).stat(),
            panel("Firing alerts", "short", "Alerts firing now, by name.", &[(
                r#"count by (alertname) (ALERTS{alertstate="firing"}) or vector(0)"#,
                "{{alertname}}",
            )]).stat().red_above(1.0),
            panel("Injected faults", "short", "Fault switches turned on through PUT /v1/admin/faults (error rate, milliseconds, or 1); anything but 0 means a failure on this dashboard is injected, not real.", &[(
                "max by (service, fault) (tidewatch_fault_injected{SEL} != 0) or vector(0)",
                "{{service}} {{fault}}",
            )]).stat().red_above(0.000001),
            panel("Request rate", "reqps", "HTTP requests per second by service.", &[(
                "sum by (service) (rate(http_server_requests_total{SEL}[$__rate_interval]))",
                "{{service}}",
            )]),
            panel("Error ratio (5xx)", "percentunit", "Share of HTTP requests answered 5xx; HighErrorRate fires above 5%.", &[(
                r#"(sum by (service) (rate(http_server_requests_total{SEL,http_response_status_code=~"5.."}[$__rate_interval])) or sum by (service) (rate(http_server_requests_total{SEL}[$__rate_interval])) * 0) / sum by (service) (rate(http_server_requests_total{SEL}[$__rate_interval]))"#,
                "{{service}}",
            )]).red_above(0.05),
            panel("p99 request duration", "s", "99th percentile of HTTP request duration; HighLatency fires above 500 ms.", &[(
                "histogram_quantile(0.99, sum by (service, le) (rate(http_server_request_duration_seconds_bucket{SEL}[$__rate_interval])))",
                "{{service}}",
            )]).red_above(0.5),
            panel("In-flight requests", "short", "HTTP requests being served now.", &[(
                "sum by (service) (http_server_active_requests{SEL})",
                "{{service}}",
            )]),
            panel("Healthy components", "short", "Health components reporting healthy, by service and component (1 healthy, 0 not).", &[(
                r#"sum by (service, component) (tidewatch_health_status{SEL,status="healthy"})"#,
                "{{service}} {{component}}",
            )]),
            panel("Events received per stage", "ops", "Messages each streaming stage consumes per second.", &[(
                "sum by (stage) (rate(tidewatch_component_received_events_total{SEL}[$__rate_interval]))",
                "{{stage}}",
            )]),
            panel("Load driver: requests by outcome", "reqps", "Requests per second the load driver (loadgen) sends to the prediction API, by endpoint and outcome, against the rate it is set to; skipped means too many awaited answers.", &[
                ("sum by (endpoint, outcome) (rate(tidewatch_loadgen_requests_total{SEL}[$__rate_interval]))", "{{endpoint}} {{outcome}}"),
                ("sum(tidewatch_loadgen_target_rate{SEL})", "set rate"),
                ("sum(tidewatch_loadgen_in_flight_requests{SEL})", "awaiting answers"),
            ]),
            panel("Load driver: p99 as the client sees it", "s", "99th percentile of the time from sending to the end of the answer, by endpoint: the API's latency plus the network, as a client measures it.", &[(
                "histogram_quantile(0.99, sum by (endpoint, le) (rate(tidewatch_loadgen_request_duration_seconds_bucket{SEL}[$__rate_interval])))",
                "{{endpoint}}",
            )]).red_above(0.5),
        ],
    }
}

fn slos() -> Dashboard {
    Dashboard {
        uid: "tidewatch-slos",
        title: "Tidewatch / SLOs",
        description: "Error budgets and burn rates of every SLO in monitoring/slo/slos.yml.",
        panels: vec![
            panel(
                "Error budget remaining (30d)",
                "percentunit",
                "Share of the 30-day error budget left; below 0 the SLO is missed.",
                &[("slo:error_budget_remaining:ratio", "{{slo}}")],
            )
            .stat(),
            panel(
                "Objective",
                "percentunit",
                "Each SLO's target.",
                &[("slo:objective:ratio", "{{slo}}")],
            )
            .stat(),
            panel(
                "Burn rate, 1h (page at 14.4x)",
                "short",
                "Error ratio over the last hour divided by the budget.",
                &[("slo:burn_rate:1h", "{{slo}}")],
            )
            .red_above(14.4),
            panel(
                "Burn rate, 6h (page at 6x)",
                "short",
                "Error ratio over six hours divided by the budget.",
                &[("slo:burn_rate:6h", "{{slo}}")],
            )
            .red_above(6.0),
            panel(
                "Burn rate, 1d (ticket at 3x)",
                "short",
                "Error ratio over a day divided by the budget.",
                &[("slo:burn_rate:1d", "{{slo}}")],
            )
            .red_above(3.0),
            panel(
                "Burn rate, 3d (ticket at 1x)",
                "short",
                "Error ratio over three days divided by the budget.",
                &[("slo:burn_rate:3d", "{{slo}}")],
            )
            .red_above(1.0),
            panel(
                "SLI error ratio, 5m",
                "percentunit",
                "Bad events (or bad time) over the last five minutes.",
                &[("slo:sli_error:ratio_rate5m", "{{slo}}")],
            ),
        ],
    }
}

fn pipeline() -> Dashboard {
    Dashboard {
        uid: "tidewatch-pipeline",
        title: "Tidewatch / Pipeline",
        description: "Throughput per stage, lag, freshness, dead letters, batches, processing latency.",
        panels: vec![
            panel("Generator rate", "ops", "Records per second the generator publishes, and its target.", &[
                ("tidewatch_generator_rate{SEL}", "actual"),
                ("tidewatch_generator_target_rate{SEL}", "target"),
                ("tidewatch_generator_paused{SEL}", "paused"),
            ]),
            panel("Generated records by kind", "ops", "What the generator planted, per second.", &[(
                "sum by (kind) (rate(tidewatch_generator_records_total{SEL}[$__rate_interval]))",
                "{{kind}}",
            )]),
            panel("Received per stage", "ops", "Messages consumed per second.", &[(
                "sum by (stage) (rate(tidewatch_component_received_events_total{SEL}[$__rate_interval]))",
                "{{stage}}",
            )]),
            panel("Sent per stage and topic", "ops", "Messages written per second (postgresql: rows the projection committed).", &[(
                "sum by (stage, topic) (rate(tidewatch_component_sent_events_total{SEL}[$__rate_interval]))",
                "{{stage}} -> {{topic}}",
            )]),
            panel("Bytes in and out", "Bps", "Payload bytes consumed and written per second.", &[
                ("sum by (stage) (rate(tidewatch_component_received_event_bytes_total{SEL}[$__rate_interval]))", "{{stage}} in"),
                ("sum by (stage) (rate(tidewatch_component_sent_event_bytes_total{SEL}[$__rate_interval]))", "{{stage}} out"),
            ]),
            panel("Consumer lag", "short", "Messages behind the input's high watermark; ConsumerLagHigh fires above 10,000.", &[(
                "sum by (service) (tidewatch_kafka_consumer_lag_messages{SEL})",
                "{{service}}",
            )]).red_above(10_000.0),
            panel("Freshness lag", "s", "Age of the newest message each stage finished; FreshnessLagHigh fires above 60 s.", &[(
                "max by (stage) (tidewatch_kafka_freshness_lag_seconds{SEL})",
                "{{stage}}",
            )]).red_above(60.0),
            panel("Dead letters by reason", "ops", "Messages sent to the dead-letter topic per second, by stage and code.", &[(
                "sum by (stage, error_code) (rate(tidewatch_dlq_messages_total{SEL}[$__rate_interval]))",
                "{{stage}} {{error_code}}",
            )]),
            panel("Errors and discards", "ops", "Stage errors by type, and intentional discards.", &[
                ("sum by (stage, error_type) (rate(tidewatch_component_errors_total{SEL}[$__rate_interval]))", "{{stage}} {{error_type}}"),
                ("sum by (stage) (rate(tidewatch_component_discarded_events_total{SEL}[$__rate_interval]))", "{{stage}} discarded"),
            ]),
            panel("Batch size, median", "short", "Messages in flight (stages) or per transaction (project) when one finishes.", &[(
                "histogram_quantile(0.5, sum by (stage, le) (rate(tidewatch_component_batch_size_events_bucket{SEL}[$__rate_interval])))",
                "{{stage}}",
            )]),
            panel("Processing latency, p99", "s", "Time to turn one input into its outputs (project: one batch write).", &[(
                "histogram_quantile(0.99, sum by (stage, le) (rate(tidewatch_component_processing_duration_seconds_bucket{SEL}[$__rate_interval])))",
                "{{stage}}",
            )]),
            panel("Produce latency, p99, and outcomes", "s", "Time until the broker acknowledged a record, by topic.", &[
                ("histogram_quantile(0.99, sum by (topic, le) (rate(tidewatch_kafka_produce_duration_seconds_bucket{SEL}[$__rate_interval])))", "{{topic}}"),
            ]),
            panel("Produced by outcome", "ops", "Records acknowledged or failed per second, by topic.", &[(
                "sum by (topic, outcome) (rate(tidewatch_kafka_produced_total{SEL}[$__rate_interval]))",
                "{{topic}} {{outcome}}",
            )]),
            panel("Commits and rebalances", "ops", "Offset commits by outcome and rebalances by kind.", &[
                ("sum by (service, outcome) (rate(tidewatch_kafka_commits_total{SEL}[$__rate_interval]))", "{{service}} commit {{outcome}}"),
                ("sum by (service, kind) (rate(tidewatch_kafka_rebalances_total{SEL}[$__rate_interval]))", "{{service}} {{kind}}"),
            ]),
            panel("Windows", "short", "Open windows, bars closed and features emitted per second, trades late, duplicated or replayed, and checkpoints the topic no longer held (broker data lost).", &[
                ("sum(tidewatch_open_windows{SEL})", "open windows"),
                ("sum(rate(tidewatch_bars_closed_total{SEL}[$__rate_interval]))", "bars/s"),
                ("sum(rate(tidewatch_features_emitted_total{SEL}[$__rate_interval]))", "features/s"),
                ("sum(rate(tidewatch_late_trades_total{SEL}[$__rate_interval]))", "late/s"),
                ("sum(rate(tidewatch_duplicate_trades_total{SEL}[$__rate_interval]))", "duplicates/s"),
                ("sum(rate(tidewatch_replayed_messages_total{SEL}[$__rate_interval]))", "replayed/s"),
                ("sum(increase(tidewatch_checkpoint_resets_total{SEL}[$__rate_interval]))", "checkpoint resets"),
            ]),
            panel("Event time", "dateTimeAsIso", "The generator's event time and each partition's watermark in aggregate.", &[
                ("max(tidewatch_generator_event_time_seconds{SEL}) * 1000", "generator"),
                ("max by (partition) (tidewatch_watermark_seconds{SEL}) * 1000", "watermark, partition {{partition}}"),
            ]),
        ],
    }
}

fn model() -> Dashboard {
    Dashboard {
        uid: "tidewatch-model",
        title: "Tidewatch / Model",
        description: "Predictions, their judged quality, drift, and the static against the online model.",
        panels: vec![
            panel("Predictions by variant and outcome", "ops", "Predictions per second (API and consumer).", &[(
                "sum by (service, variant, outcome) (rate(tidewatch_predictions_total{SEL}[$__rate_interval]))",
                "{{service}} {{variant}} {{outcome}}",
            )]),
            panel("Probability distribution", "short", "Predicted probabilities per second, by bucket upper bound.", &[(
                "sum by (le) (rate(tidewatch_prediction_probability_bucket{SEL}[$__rate_interval]))",
                "<= {{le}}",
            )]),
            panel("Accuracy: static against online", "percentunit", "Rolling accuracy over 500 judged predictions; ModelAccuracyLow fires below 70%.", &[(
                r#"tidewatch_prediction_rolling_score{SEL,metric="accuracy"}"#,
                "{{variant}}",
            )]).red_above(0.7),
            panel("Precision, recall, F1", "percentunit", "Rolling over 500 judged predictions; ModelF1Low fires below 0.3.", &[(
                r#"tidewatch_prediction_rolling_score{SEL,metric=~"precision|recall|f1"}"#,
                "{{variant}} {{metric}}",
            )]).red_above(0.3),
            panel("Confusion matrix, last hour", "short", "Judged predictions by outcome and variant.", &[(
                "sum by (variant, outcome) (increase(tidewatch_prediction_outcomes_total{SEL}[1h]))",
                "{{variant}} {{outcome}}",
            )]),
            panel("Drift state", "short", "0 stable, 1 warning, 2 drift, per detector.", &[(
                "max by (service, detector) (tidewatch_drift_state{SEL})",
                "{{service}} {{detector}}",
            )]).red_above(2.0),
            panel("Drift signals", "short", "Warnings and drifts signalled in the last 15 minutes; DriftDetected fires on any drift.", &[(
                "sum by (service, detector, level) (increase(tidewatch_drift_events_total{SEL}[15m]))",
                "{{service}} {{detector}} {{level}}",
            )]),
            panel("Drift statistics", "short", "Detector internals: DDM error rate and best, Page-Hinkley cumulative, ADWIN width and mean.", &[(
                "tidewatch_drift_statistic{SEL}",
                "{{service}} {{detector}} {{statistic}}",
            )]),
            panel("Online learning", "short", "Online model updates per second, seconds since its last update, pending and dropped predictions.", &[
                ("sum(rate(tidewatch_online_model_updates_total{SEL}[$__rate_interval]))", "updates/s"),
                ("time() - max(tidewatch_online_model_last_update_timestamp_seconds{SEL})", "seconds since last update"),
                ("sum(tidewatch_pending_predictions{SEL})", "pending"),
                ("sum by (reason) (increase(tidewatch_pending_predictions_dropped_total{SEL}[1h]))", "dropped ({{reason}}), last hour"),
            ]),
            panel("Served model", "short", "Model version, active variant (1), held-out scores.", &[
                ("tidewatch_model_info{SEL}", "{{model}} {{version}}"),
                ("tidewatch_model_variant_active{SEL}", "active {{variant}}"),
                ("tidewatch_model_heldout_score{SEL}", "held-out {{variant}} {{metric}}"),
            ]).stat(),
            panel("Inference and validation", "s", "p99 inference time by variant; rejected inputs per second by field.", &[
                ("histogram_quantile(0.99, sum by (variant, le) (rate(tidewatch_prediction_inference_duration_seconds_bucket{SEL}[$__rate_interval])))", "p99 {{variant}}"),
                ("sum by (field) (rate(tidewatch_prediction_validation_errors_total{SEL}[$__rate_interval]))", "rejected {{field}}/s"),
            ]),
        ],
    }
}

fn data_quality() -> Dashboard {
    Dashboard {
        uid: "tidewatch-data-quality",
        title: "Tidewatch / Data quality",
        description: "Raw record validity, anomalies against the generator's labels, reference data.",
        panels: vec![
            panel("Quality score", "percent", "Valid share of the last 1,000 raw records; DataQualityLow fires below 90.", &[(
                "min by (stage) (tidewatch_data_quality_score{SEL})",
                "{{stage}}",
            )]).stat().red_above(90.0),
            panel("Issues by field", "ops", "Missing, malformed and out-of-range fields per second.", &[(
                "sum by (field, issue) (rate(tidewatch_data_quality_issues_total{SEL}[$__rate_interval]))",
                "{{field}} {{issue}}",
            )]),
            panel("Schema violations", "ops", "Records that are not a venue's format, per second.", &[(
                "sum by (kind) (rate(tidewatch_schema_violations_total{SEL}[$__rate_interval]))",
                "{{kind}}",
            )]),
            panel("Anomalies", "ops", "Trades flagged per second, by type and severity; AnomalyRateHigh fires above 2% of trades.", &[(
                "sum by (type, severity) (rate(tidewatch_anomalies_total{SEL}[$__rate_interval]))",
                "{{type}} {{severity}}",
            )]),
            panel("Anomaly confusion matrix, last hour", "short", "Detections against the generator's planted labels.", &[(
                "sum by (outcome) (increase(tidewatch_anomaly_detection_outcomes_total{SEL}[1h]))",
                "{{outcome}}",
            )]),
            panel("Anomaly detection scores", "percentunit", "Precision, recall and F1 against the planted labels.", &[(
                "tidewatch_anomaly_detection_score{SEL}",
                "{{metric}}",
            )]),
            panel("Market regime", "short", "1 for each symbol's current regime.", &[(
                "max by (symbol, regime) (tidewatch_market_regime{SEL}) == 1",
                "{{symbol}} {{regime}}",
            )]),
            panel("Reference cache hit ratio", "percentunit", "Lookups served from cache; CacheHitRatioLow fires below 80%.", &[(
                r#"sum(rate(tidewatch_reference_cache_requests_total{SEL,result="hit"}[$__rate_interval])) / sum(rate(tidewatch_reference_cache_requests_total{SEL}[$__rate_interval]))"#,
                "hit ratio",
            )]).red_above(0.8),
            panel("Reference data", "short", "Cache entries, evictions and database lookups.", &[
                ("sum(tidewatch_reference_cache_entries{SEL})", "entries"),
                ("sum(increase(tidewatch_reference_cache_evictions_total{SEL}[1h]))", "evictions, last hour"),
                ("sum by (outcome) (increase(tidewatch_reference_lookups_total{SEL}[1h]))", "lookups {{outcome}}, last hour"),
                ("histogram_quantile(0.99, sum by (le) (rate(tidewatch_reference_lookup_duration_seconds_bucket{SEL}[1h])))", "lookup p99 (s)"),
            ]),
        ],
    }
}

fn database_runtime() -> Dashboard {
    Dashboard {
        uid: "tidewatch-database-runtime",
        title: "Tidewatch / Database and runtime",
        description: "The projection's PostgreSQL pool and statements; every process's CPU, memory and more.",
        panels: vec![
            panel("Pool connections", "short", "Connections idle and in use, and the pool's size.", &[
                ("sum by (service, state) (tidewatch_db_pool_connections{SEL})", "{{service}} {{state}}"),
                ("sum by (service) (tidewatch_db_pool_max_connections{SEL})", "{{service}} max"),
            ]),
            panel("Pool saturation", "percentunit", "In use over the pool's size; DatabasePoolSaturated fires at 90%.", &[(
                r#"tidewatch_db_pool_connections{SEL,state="in_use"} / ignoring(state) tidewatch_db_pool_max_connections{SEL}"#,
                "{{service}}",
            )]).red_above(0.9),
            panel("Query duration, p99", "s", "By statement.", &[(
                "histogram_quantile(0.99, sum by (statement, le) (rate(tidewatch_db_query_duration_seconds_bucket{SEL}[$__rate_interval])))",
                "{{statement}}",
            )]),
            panel("Rows written", "ops", "Rows inserted or changed per second by table.", &[(
                "sum by (table) (rate(tidewatch_db_rows_written_total{SEL}[$__rate_interval]))",
                "{{table}}",
            )]),
            panel("Transaction errors and retries", "ops", "Failed write transactions by type, and retries; DatabaseErrors fires on any.", &[
                ("sum by (error_type) (rate(tidewatch_db_transaction_errors_total{SEL}[$__rate_interval]))", "{{error_type}}"),
                ("sum(rate(tidewatch_db_transaction_retries_total{SEL}[$__rate_interval]))", "retries"),
            ]).red_above(0.0),
            panel("CPU", "percentunit", "Share of one core; HighCpu fires above 90%.", &[(
                "sum by (service) (rate(process_cpu_seconds_total{SEL}[$__rate_interval]))",
                "{{service}}",
            )]).red_above(0.9),
            panel("Resident memory", "bytes", "HighMemory fires above 512 MiB.", &[(
                "sum by (service) (process_resident_memory_bytes{SEL})",
                "{{service}}",
            )]).red_above(536_870_912.0),
            panel("Virtual memory", "bytes", "Virtual memory and its limit.", &[
                ("sum by (service) (process_virtual_memory_bytes{SEL})", "{{service}}"),
                ("min by (service) (process_virtual_memory_max_bytes{SEL})", "{{service}} max"),
            ]),
            panel("File descriptors and threads", "short", "Open descriptors over the limit, and threads.", &[
                ("sum by (service) (process_open_fds{SEL}) / sum by (service) (process_max_fds{SEL})", "{{service}} fds used"),
                ("sum by (service) (process_threads{SEL})", "{{service}} threads"),
            ]),
            panel("Uptime", "s", "Seconds since each process started.", &[
                ("max by (service) (tidewatch_uptime_seconds{SEL})", "{{service}}"),
                ("time() - max by (service) (process_start_time_seconds{SEL})", "{{service}} (process)"),
            ]).stat(),
            panel("Build", "short", "Version and commit of each service.", &[(
                "max by (service, version, git_commit) (tidewatch_build_info{SEL})",
                "{{service}} {{version}} {{git_commit}}",
            )]).stat(),
            panel("HTTP body sizes, p99", "bytes", "Request and response bodies.", &[
                ("histogram_quantile(0.99, sum by (service, le) (rate(http_server_request_body_size_bytes_bucket{SEL}[$__rate_interval])))", "{{service}} request"),
                ("histogram_quantile(0.99, sum by (service, le) (rate(http_server_response_body_size_bytes_bucket{SEL}[$__rate_interval])))", "{{service}} response"),
            ]),
            panel("Admin", "short", "Admin actions and refused admin requests, last hour; AdminAuthFailures fires above 5 in 5 minutes.", &[
                ("sum by (service, action) (increase(tidewatch_admin_actions_total{SEL}[1h]))", "{{service}} {{action}}"),
                ("sum by (service, reason) (increase(tidewatch_admin_auth_failures_total{SEL}[1h]))", "{{service}} refused ({{reason}})"),
            ]),
            panel("Alert notifications", "short", "Notifications the alert receiver got in the last hour, by receiver and status.", &[
                ("sum by (receiver, status) (increase(tidewatch_alert_notifications_total{SEL}[1h]))", "{{receiver}} {{status}}"),
                ("sum by (receiver, severity) (increase(tidewatch_alerts_received_total{SEL}[1h]))", "{{receiver}} {{severity}} alerts"),
            ]),
        ],
    }
}

fn variable(name: &str, query: &str) -> Value {
    json!({
        "name": name,
        "label": name,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": DATASOURCE_UID},
        "definition": query,
        "query": {"query": query, "refId": name},
        "refresh": 2,
        "includeAll": true,
        "multi": true,
        "allValue": ".*",
        "current": {"selected": true, "text": ["All"], "value": ["$__all"]},
        "sort": 1
    })
}

/// The Grafana JSON model of `d`.
pub fn render(d: &Dashboard) -> Value {
    let ds = json!({"type": "prometheus", "uid": DATASOURCE_UID});
    let panels: Vec<Value> = d
        .panels
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut steps = vec![json!({"color": "green", "value": null})];
            steps.extend(
                p.thresholds
                    .iter()
                    .map(|(v, c)| json!({"color": c, "value": v})),
            );
            let targets: Vec<Value> = p
                .queries
                .iter()
                .enumerate()
                .map(|(j, (expr, legend))| {
                    json!({
                        "refId": char::from(b'A' + j as u8).to_string(),
                        "datasource": ds,
                        "expr": expr,
                        "legendFormat": legend,
                        "range": true
                    })
                })
                .collect();
            let mut panel = json!({
                "id": i + 1,
                "type": p.kind,
                "title": p.title,
                "description": p.description,
                "datasource": ds,
                "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i / 2) * 8},
                "targets": targets,
                "fieldConfig": {
                    "defaults": {
                        "unit": p.unit,
                        "thresholds": {"mode": "absolute", "steps": steps},
                        "color": {"mode": if p.kind == "stat" { "thresholds" } else { "palette-classic" }}
                    },
                    "overrides": []
                },
                "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": true}}
            });
            if p.kind == "timeseries" && !p.thresholds.is_empty() {
                panel["fieldConfig"]["defaults"]["custom"] =
                    json!({"thresholdsStyle": {"mode": "line"}});
            }
            panel
        })
        .collect();
    json!({
        "uid": d.uid,
        "title": d.title,
        "description": d.description,
        "tags": ["tidewatch"],
        "timezone": "utc",
        "editable": false,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "15s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [
            variable("service", "label_values(up, service)"),
            variable("instance", r#"label_values(up{service=~"$service"}, instance)"#)
        ]},
        "panels": panels
    })
}

/// `expr` as Prometheus would run it with every variable at "All" and a rate interval of
/// `rate_interval`.
pub fn substitute(expr: &str, rate_interval: &str) -> String {
    expr.replace("$__rate_interval", rate_interval)
        .replace("$service", ".*")
        .replace("$instance", ".*")
}

/// A file's name for dashboard `d`.
pub fn file_name(d: &Dashboard) -> String {
    format!("{}.json", d.uid)
}

/// The file's text: pretty JSON with a trailing newline.
pub fn file_text(d: &Dashboard) -> String {
    let mut s = serde_json::to_string_pretty(&render(d)).unwrap_or_default();
    s.push('\n');
    s
}
