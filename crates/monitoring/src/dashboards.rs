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
    /// A Grafana panel type: `timeseries`, `stat`, `gauge`, `heatmap`, `piechart`,
    /// `barchart` or `table`.
    pub kind: &'static str,
    /// A Grafana unit id: `s`, `percentunit`, `reqps`, `ops`, `bytes`, `short`, `none`.
    pub unit: &'static str,
    pub queries: Vec<(String, &'static str)>,
    /// The colour below the first threshold.
    pub base: &'static str,
    /// Values at which the panel changes colour, from the alert rules.
    pub thresholds: Vec<(f64, &'static str)>,
    /// Value mappings: (value, text, colour), for states shown as words.
    pub mappings: Vec<(f64, &'static str, &'static str)>,
    /// A table's columns (named by their query's legend) with a unit of their own, and the
    /// one column the mappings apply to (None: every value).
    pub column_units: Vec<(&'static str, &'static str)>,
    pub mapped_column: Option<&'static str>,
    /// Data links: (title, URL) with Grafana's `${__field.labels.*}` variables.
    pub links: Vec<(&'static str, &'static str)>,
    /// Instant queries (the value now, or over the dashboard's range) instead of ranges.
    pub instant: bool,
    pub description: &'static str,
}

/// A titled group of panels.
#[derive(Debug, Clone)]
pub struct Row {
    pub title: &'static str,
    pub panels: Vec<Panel>,
}

#[derive(Debug, Clone)]
pub struct Dashboard {
    pub uid: &'static str,
    pub title: &'static str,
    pub description: &'static str,
    pub rows: Vec<Row>,
}

impl Dashboard {
    /// Every panel, row by row.
    pub fn panels(&self) -> impl Iterator<Item = &Panel> {
        self.rows.iter().flat_map(|r| &r.panels)
    }
}

fn row(title: &'static str, panels: Vec<Panel>) -> Row {
    Row { title, panels }
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
        base: "green",
        thresholds: Vec::new(),
        mappings: Vec::new(),
        column_units: Vec::new(),
        mapped_column: None,
        links: Vec::new(),
        instant: false,
        description,
    }
}

impl Panel {
    fn red_above(mut self, value: f64) -> Self {
        self.thresholds = vec![(value, "red")];
        self
    }

    /// Red below `red`, orange below `amber`, green above: for what should stay high.
    fn red_below(mut self, red: f64, amber: f64) -> Self {
        self.base = "red";
        self.thresholds = vec![(red, "orange"), (amber, "green")];
        self
    }

    fn stat(mut self) -> Self {
        self.kind = "stat";
        self.instant = true;
        self
    }

    fn gauge(mut self) -> Self {
        self.kind = "gauge";
        self.instant = true;
        self
    }

    /// Histogram buckets drawn as a heatmap (queries give per-bucket counts by `le`).
    fn heatmap(mut self) -> Self {
        self.kind = "heatmap";
        self
    }

    fn pie(mut self) -> Self {
        self.kind = "piechart";
        self.instant = true;
        self
    }

    fn bars(mut self) -> Self {
        self.kind = "barchart";
        self.instant = true;
        self
    }

    fn table(mut self) -> Self {
        self.kind = "table";
        self.instant = true;
        self
    }

    fn mapping(mut self, mappings: &[(f64, &'static str, &'static str)]) -> Self {
        self.mappings = mappings.to_vec();
        self
    }

    /// In a table: `column` has `unit`.
    fn column_unit(mut self, column: &'static str, unit: &'static str) -> Self {
        self.column_units.push((column, unit));
        self
    }

    /// In a table: the mappings apply to `column` only.
    fn map_column(mut self, column: &'static str) -> Self {
        self.mapped_column = Some(column);
        self
    }

    fn link(mut self, title: &'static str, url: &'static str) -> Self {
        self.links.push((title, url));
        self
    }

    /// Width and height on Grafana's 24-column grid.
    fn size(&self) -> (usize, usize) {
        match self.kind {
            "stat" | "gauge" => (6, 5),
            "table" => (24, 8),
            _ => (12, 8),
        }
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
        postgres(),
        host(),
    ]
}

/// A data link from a panel whose series carry `service` to that service on another dashboard.
const TO_PIPELINE: &str =
    "/d/tidewatch-pipeline?var-service=${__field.labels.service}&${__url_time_range}";
const TO_RUNTIME: &str =
    "/d/tidewatch-database-runtime?var-service=${__field.labels.service}&${__url_time_range}";

fn overview() -> Dashboard {
    Dashboard {
        uid: "tidewatch-overview",
        title: "Tidewatch / Overview",
        description: "RED per service, health, targets and firing alerts.",
        rows: vec![
            row("Now", vec![
                panel("Targets up", "short", "Scrape targets answering.", &[("sum(up{SEL})", "up")]).stat(),
                panel("Targets down", "short", "Scrape targets not answering; ServiceDown and MonitoringTargetDown fire after a minute or two.", &[
                    ("count(up{SEL} == 0) or vector(0)", "down"),
                ]).stat().red_above(1.0),
                panel("Firing alerts", "short", "Alerts firing now, by name.", &[(
                    r#"count by (alertname) (ALERTS{alertstate="firing"}) or vector(0)"#,
                    "{{alertname}}",
                )]).stat().red_above(1.0),
                panel("Injected faults", "short", "Fault switches turned on through PUT /v1/admin/faults (error rate, milliseconds, or 1); anything but 0 means a failure on this dashboard is injected, not real.", &[(
                    "max by (service, fault) (tidewatch_fault_injected{SEL} != 0) or vector(0)",
                    "{{service}} {{fault}}",
                )]).stat().red_above(0.000001),
                panel("Healthy components", "short", "Health components reporting healthy (1) or not (0), by service and component. Click a service for its processes.", &[(
                    r#"sum by (service, component) (tidewatch_health_status{SEL,status="healthy"})"#,
                    "{{service}} {{component}}",
                )]).table().red_below(0.5, 1.0).mapping(&[(0.0, "unhealthy", "red"), (1.0, "healthy", "green")]).link("Processes of ${__field.labels.service}", TO_RUNTIME),
            ]),
            row("Requests (RED)", vec![
                panel("Request rate by service", "reqps", "HTTP requests per second by service, API and ops routes alike.", &[(
                    "sum by (service) (rate(http_server_requests_total{SEL}[$__rate_interval]))",
                    "{{service}}",
                )]).link("${__field.labels.service}: processes", TO_RUNTIME),
                panel("Requests by status code", "reqps", "API requests (/v1 routes) per second by status code class and code.", &[(
                    r#"sum by (http_response_status_code) (rate(http_server_requests_total{SEL,http_route=~"/v1/.*"}[$__rate_interval]))"#,
                    "{{http_response_status_code}}",
                )]),
                panel("Error ratio (5xx)", "percentunit", "Share of API requests answered 5xx; HighErrorRate is a ticket above 1% and pages above 5%.", &[(
                    r#"(sum by (service) (rate(http_server_requests_total{SEL,http_route=~"/v1/.*",http_response_status_code=~"5.."}[$__rate_interval])) or sum by (service) (rate(http_server_requests_total{SEL,http_route=~"/v1/.*"}[$__rate_interval])) * 0) / sum by (service) (rate(http_server_requests_total{SEL,http_route=~"/v1/.*"}[$__rate_interval]))"#,
                    "{{service}}",
                )]).red_above(0.05),
                panel("Server errors by kind", "reqps", "API answers with a 5xx per second, by the error code of their body: internal (a bug or an injected fault), overloaded (shed), database_unavailable (the read API without PostgreSQL).", &[(
                    "sum by (service, error_type) (rate(tidewatch_http_server_errors_total{SEL}[$__rate_interval]))",
                    "{{service}} {{error_type}}",
                )]),
                panel("Latency p50, p95, p99", "s", "Quantiles of API request duration over every service; HighLatency is a ticket above 500 ms (p99) and pages above 2 s.", &[
                    (r#"histogram_quantile(0.5, sum by (le) (rate(http_server_request_duration_seconds_bucket{SEL,http_route=~"/v1/.*"}[$__rate_interval])))"#, "p50"),
                    (r#"histogram_quantile(0.95, sum by (le) (rate(http_server_request_duration_seconds_bucket{SEL,http_route=~"/v1/.*"}[$__rate_interval])))"#, "p95"),
                    (r#"histogram_quantile(0.99, sum by (le) (rate(http_server_request_duration_seconds_bucket{SEL,http_route=~"/v1/.*"}[$__rate_interval])))"#, "p99"),
                ]).red_above(0.5),
                panel("p99 by route", "s", "99th percentile of request duration per service and route.", &[(
                    r#"histogram_quantile(0.99, sum by (service, http_route, le) (rate(http_server_request_duration_seconds_bucket{SEL,http_route=~"/v1/.*"}[$__rate_interval])))"#,
                    "{{service}} {{http_route}}",
                )]).red_above(0.5),
                panel("Requests by route, last hour", "short", "API requests per service and route over the last hour.", &[(
                    r#"sort_desc(sum by (service, http_route) (increase(http_server_requests_total{SEL,http_route=~"/v1/.*"}[1h])))"#,
                    "{{service}} {{http_route}}",
                )]).bars(),
                panel("In flight against the limit", "percentunit", "Requests being served as a share of MAX_CONCURRENT_REQUESTS; ActiveRequestsHigh fires above 80%, beyond 100% requests are shed.", &[(
                    "sum by (service) (http_server_active_requests{SEL}) / on(service) max by (service) (tidewatch_http_max_concurrent_requests{SEL})",
                    "{{service}}",
                )]).red_above(0.8),
                panel("Shed and refused", "reqps", "Requests shed with 503 overloaded (RequestsShed), and refused with a 4xx (RefusedRequestsHigh), per second.", &[
                    ("sum by (service) (rate(tidewatch_http_requests_shed_total{SEL}[$__rate_interval]))", "{{service}} shed"),
                    // Zero rather than nothing while no request is refused.
                    (r#"sum by (service) (rate(http_server_requests_total{SEL,http_route!~"/health/.*|/metrics",http_response_status_code=~"4.."}[$__rate_interval])) or sum by (service) (rate(http_server_requests_total{SEL,http_route!~"/health/.*|/metrics"}[$__rate_interval])) * 0"#, "{{service}} refused (4xx)"),
                ]),
            ]),
            row("Pipeline and load", vec![
                panel("Events received per stage", "ops", "Messages each streaming stage consumes per second. Click a stage for the Pipeline dashboard.", &[(
                    "sum by (service) (rate(tidewatch_component_received_events_total{SEL}[$__rate_interval]))",
                    "{{service}}",
                )]).link("Pipeline: ${__field.labels.service}", TO_PIPELINE),
                panel("Load driver: requests by outcome", "reqps", "Requests per second the load driver (loadgen) sends to the prediction API, by endpoint and outcome, against the rate it is set to.", &[
                    ("sum by (endpoint, outcome) (rate(tidewatch_loadgen_requests_total{SEL}[$__rate_interval]))", "{{endpoint}} {{outcome}}"),
                    ("sum(tidewatch_loadgen_target_rate{SEL})", "set rate"),
                ]),
                panel("Load driver: awaiting answers", "short", "Requests the load driver has sent and not yet had answered.", &[(
                    "sum(tidewatch_loadgen_in_flight_requests{SEL})",
                    "awaiting answers",
                )]),
                panel("Load driver: p99 as the client sees it", "s", "99th percentile of the time from sending to the end of the answer, by endpoint: the API's latency plus the network, as a client measures it.", &[(
                    "histogram_quantile(0.99, sum by (endpoint, le) (rate(tidewatch_loadgen_request_duration_seconds_bucket{SEL}[$__rate_interval])))",
                    "{{endpoint}}",
                )]).red_above(0.5),
            ]),
        ],
    }
}

fn slos() -> Dashboard {
    Dashboard {
        uid: "tidewatch-slos",
        title: "Tidewatch / SLOs",
        description: "Error budgets and burn rates of every SLO in monitoring/slo/slos.yml; `cargo run -p tidewatch-monitoring -- slo-report` prints the same numbers.",
        rows: vec![
            row("Status", vec![
                panel("SLO status", "percentunit", "Per SLO: objective, the SLI over 30 days, budget left, burn rates (1 = spending exactly the budget), and the state: met, at risk (budget under 25% or the 6h burn above 1) or violated (budget spent).", &[
                    ("slo:objective:ratio", "objective"),
                    ("1 - slo:sli_error:ratio_rate30d", "SLI (30d)"),
                    ("slo:error_budget_remaining:ratio", "budget left"),
                    ("slo:burn_rate:1h", "burn 1h"),
                    ("slo:burn_rate:6h", "burn 6h"),
                    ("slo:burn_rate:1d", "burn 1d"),
                    ("slo:burn_rate:3d", "burn 3d"),
                    ("slo:status:code", "state"),
                ])
                .table()
                .column_unit("burn 1h", "suffix:x")
                .column_unit("burn 6h", "suffix:x")
                .column_unit("burn 1d", "suffix:x")
                .column_unit("burn 3d", "suffix:x")
                .mapping(&[(0.0, "met", "green"), (1.0, "at risk", "orange"), (2.0, "violated", "red")])
                .map_column("state"),
                panel("Error budget remaining (30d)", "percentunit", "Share of the 30-day error budget left: red when spent, orange under 25% (SLOErrorBudgetLow).", &[
                    ("slo:error_budget_remaining:ratio", "{{slo}}"),
                ]).gauge().red_below(0.0, 0.25),
                panel("State", "none", "met, at risk or violated, per SLO.", &[("slo:status:code", "{{slo}}")])
                    .stat()
                    .mapping(&[(0.0, "met", "green"), (1.0, "at risk", "orange"), (2.0, "violated", "red")]),
            ]),
            row("Burn rates", vec![
                panel("Burn rate, 1h (page at 14.4x)", "short", "Error ratio over the last hour divided by the budget.", &[("slo:burn_rate:1h", "{{slo}}")]).red_above(14.4),
                panel("Burn rate, 6h (page at 6x)", "short", "Error ratio over six hours divided by the budget.", &[("slo:burn_rate:6h", "{{slo}}")]).red_above(6.0),
                panel("Burn rate, 1d (ticket at 3x)", "short", "Error ratio over a day divided by the budget.", &[("slo:burn_rate:1d", "{{slo}}")]).red_above(3.0),
                panel("Burn rate, 3d (ticket at 1x)", "short", "Error ratio over three days divided by the budget.", &[("slo:burn_rate:3d", "{{slo}}")]).red_above(1.0),
                panel("SLI error ratio, 5m", "percentunit", "Bad events (or bad time) over the last five minutes.", &[("slo:sli_error:ratio_rate5m", "{{slo}}")]),
            ]),
        ],
    }
}

fn pipeline() -> Dashboard {
    Dashboard {
        uid: "tidewatch-pipeline",
        title: "Tidewatch / Pipeline",
        description: "Throughput per stage, lag, freshness, dead letters, batches, processing latency.",
        rows: vec![
            row("Flow", vec![
                panel("Generator rate", "ops", "Records per second the generator publishes, and its target; LowGenerationRate fires under 80% of it.", &[
                    ("tidewatch_generator_rate{SEL}", "actual"),
                    ("tidewatch_generator_target_rate{SEL}", "target"),
                ]),
                panel("Generated records by kind, last hour", "short", "What the generator planted over the last hour.", &[(
                    "sum by (kind) (increase(tidewatch_generator_records_total{SEL}[1h]))",
                    "{{kind}}",
                )]).pie(),
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
                panel("Generator paused", "none", "Whether publishing is paused (POST /v1/admin/pause).", &[
                    ("max(tidewatch_generator_paused{SEL})", "paused"),
                ]).stat().red_above(1.0).mapping(&[(0.0, "publishing", "green"), (1.0, "paused", "red")]),
            ]),
            row("Keeping up", vec![
                panel("Consumer lag", "short", "Messages of the input a stage has not yet taken (high watermark minus its consumed position); ConsumerLagHigh fires above 10,000.", &[(
                    "sum by (service) (tidewatch_kafka_consumer_lag_messages{SEL})",
                    "{{service}}",
                )]).red_above(10_000.0),
                panel("Freshness lag", "s", "Age of the newest message each stage finished; FreshnessLagHigh fires above 60 s.", &[(
                    "max by (stage) (tidewatch_kafka_freshness_lag_seconds{SEL})",
                    "{{stage}}",
                )]).red_above(60.0),
                panel("Processing latency, p50 and p99", "s", "Time to turn one input into its outputs (project: one batch write).", &[
                    ("histogram_quantile(0.5, sum by (stage, le) (rate(tidewatch_component_processing_duration_seconds_bucket{SEL}[$__rate_interval])))", "{{stage}} p50"),
                    ("histogram_quantile(0.99, sum by (stage, le) (rate(tidewatch_component_processing_duration_seconds_bucket{SEL}[$__rate_interval])))", "{{stage}} p99"),
                ]),
                panel("Batch size, median", "short", "Messages in flight (stages) or per transaction (project) when one finishes.", &[(
                    "histogram_quantile(0.5, sum by (stage, le) (rate(tidewatch_component_batch_size_events_bucket{SEL}[$__rate_interval])))",
                    "{{stage}}",
                )]),
                panel("Event time", "dateTimeAsIso", "The generator's event time and each partition's watermark in aggregate.", &[
                    ("max(tidewatch_generator_event_time_seconds{SEL}) * 1000", "generator"),
                    ("max by (partition) (tidewatch_watermark_seconds{SEL}) * 1000", "watermark, partition {{partition}}"),
                ]),
            ]),
            row("Losses and errors", vec![
                panel("Dead letters by reason", "ops", "Messages sent to the dead-letter topic per second, by stage, code and cause (input: refused as the producer's fault; pipeline: lost, counted by data_completeness).", &[(
                    "sum by (stage, error_code, cause) (rate(tidewatch_dlq_messages_total{SEL}[$__rate_interval]))",
                    "{{stage}} {{error_code}} ({{cause}})",
                )]),
                panel("Dead letters by cause, last hour", "short", "Refused input against records the pipeline lost.", &[(
                    "sum by (cause) (increase(tidewatch_dlq_messages_total{SEL}[1h]))",
                    "{{cause}}",
                )]).pie(),
                panel("Errors and discards", "ops", "Stage errors by type, intentional discards, and headers left out of consumed messages because their names are not UTF-8 (the messages themselves go on).", &[
                    ("sum by (stage, error_type) (rate(tidewatch_component_errors_total{SEL}[$__rate_interval]))", "{{stage}} {{error_type}}"),
                    ("sum by (stage) (rate(tidewatch_component_discarded_events_total{SEL}[$__rate_interval]))", "{{stage}} discarded"),
                    ("sum by (service) (rate(tidewatch_kafka_unreadable_headers_total{SEL}[$__rate_interval]))", "{{service}} headers left out"),
                ]),
            ]),
            row("Kafka", vec![
                panel("Produce latency, p99", "s", "Time until the broker acknowledged a record, by topic.", &[
                    ("histogram_quantile(0.99, sum by (topic, le) (rate(tidewatch_kafka_produce_duration_seconds_bucket{SEL}[$__rate_interval])))", "{{topic}}"),
                ]),
                panel("Produced by outcome", "ops", "Records acknowledged or failed per second, by topic, and producers replaced by a new one (after a broker that lost its state).", &[
                    ("sum by (topic, outcome) (rate(tidewatch_kafka_produced_total{SEL}[$__rate_interval]))", "{{topic}} {{outcome}}"),
                    ("sum by (service, reason) (rate(tidewatch_kafka_producer_renewals_total{SEL}[$__rate_interval]))", "{{service}} producer renewed ({{reason}})"),
                ]),
                panel("Commits and rebalances", "ops", "Offset commits by outcome and rebalances by kind.", &[
                    ("sum by (service, outcome) (rate(tidewatch_kafka_commits_total{SEL}[$__rate_interval]))", "{{service}} commit {{outcome}}"),
                    ("sum by (service, kind) (rate(tidewatch_kafka_rebalances_total{SEL}[$__rate_interval]))", "{{service}} {{kind}}"),
                ]),
            ]),
            row("Windows", vec![
                panel("Open windows", "short", "Windows aggregate holds open now.", &[("sum(tidewatch_open_windows{SEL})", "open windows")]),
                panel("Bars, features and odd trades", "ops", "Bars closed and features emitted per second, trades late, duplicated or replayed per second.", &[
                    ("sum(rate(tidewatch_bars_closed_total{SEL}[$__rate_interval]))", "bars"),
                    ("sum(rate(tidewatch_features_emitted_total{SEL}[$__rate_interval]))", "features"),
                    ("sum(rate(tidewatch_late_trades_total{SEL}[$__rate_interval]))", "late"),
                    ("sum(rate(tidewatch_duplicate_trades_total{SEL}[$__rate_interval]))", "duplicates"),
                    ("sum(rate(tidewatch_replayed_messages_total{SEL}[$__rate_interval]))", "replayed"),
                ]),
                panel("Starting over, last hour", "short", "Checkpoints the topic no longer held and aggregate started over from, partitions a consumer found itself past the end of and consumed again from the beginning, and offsets a consumer never received: each means the broker lost or skipped data.", &[
                    ("sum(increase(tidewatch_checkpoint_resets_total{SEL}[1h]))", "checkpoint resets"),
                    ("sum(increase(tidewatch_kafka_position_resets_total{SEL}[1h]))", "position resets"),
                    ("sum(increase(tidewatch_kafka_skipped_offsets_total{SEL}[1h]))", "offsets skipped"),
                ]).stat().red_above(1.0),
            ]),
        ],
    }
}

fn model() -> Dashboard {
    Dashboard {
        uid: "tidewatch-model",
        title: "Tidewatch / Model",
        description: "Predictions, their judged quality, drift, and the static against the online model.",
        rows: vec![
            row("Predictions", vec![
                panel("Predictions by variant and outcome", "ops", "Predictions per second (API and consumer).", &[(
                    "sum by (service, variant, outcome) (rate(tidewatch_predictions_total{SEL}[$__rate_interval]))",
                    "{{service}} {{variant}} {{outcome}}",
                )]),
                panel("Spike or normal, last hour", "short", "Predictions of the last hour by what they said.", &[(
                    "sum by (outcome) (increase(tidewatch_predictions_total{SEL}[1h]))",
                    "{{outcome}}",
                )]).pie(),
                panel("Predicted probability", "short", "How many predictions fell in each probability bucket over time: the model's confidence as a heatmap.", &[(
                    "sum by (le) (increase(tidewatch_prediction_probability_bucket{SEL}[$__rate_interval]))",
                    "{{le}}",
                )]).heatmap(),
                panel("Served model", "short", "Held-out scores of the served variants (the version is in the legend).", &[
                    ("tidewatch_model_heldout_score{SEL}", "held-out {{variant}} {{metric}}"),
                ]).bars(),
            ]),
            row("Judged quality", vec![
                panel("Accuracy: static against online", "percentunit", "Rolling accuracy over 500 judged predictions; ModelAccuracyLow fires below 70%.", &[(
                    r#"tidewatch_prediction_rolling_score{SEL,metric="accuracy"}"#,
                    "{{variant}}",
                )]).red_below(0.7, 0.8),
                panel("Precision, recall, F1", "percentunit", "Rolling over 500 judged predictions; ModelF1Low fires below 0.3.", &[(
                    r#"tidewatch_prediction_rolling_score{SEL,metric=~"precision|recall|f1"}"#,
                    "{{variant}} {{metric}}",
                )]).red_below(0.3, 0.4),
                panel("Confusion matrix, last hour", "short", "Judged predictions by outcome and variant.", &[(
                    "sum by (variant, outcome) (increase(tidewatch_prediction_outcomes_total{SEL}[1h]))",
                    "{{variant}} {{outcome}}",
                )]).bars(),
            ]),
            row("Drift", vec![
                panel("Drift state", "none", "stable, warning or drift, per detector.", &[(
                    "max by (service, detector) (tidewatch_drift_state{SEL})",
                    "{{service}} {{detector}}",
                )]).table().mapping(&[(0.0, "stable", "green"), (1.0, "warning", "orange"), (2.0, "drift", "red")]),
                panel("Drift signals, last 15 minutes", "short", "Warnings and drifts signalled; DriftDetected fires on any drift, DriftWarningsFrequent above ten warnings an hour.", &[(
                    "sum by (service, detector, level) (increase(tidewatch_drift_events_total{SEL}[15m]))",
                    "{{service}} {{detector}} {{level}}",
                )]),
                panel("Drift statistics", "short", "Detector internals: DDM error rate and best, Page-Hinkley cumulative, ADWIN width and mean.", &[(
                    "tidewatch_drift_statistic{SEL}",
                    "{{service}} {{detector}} {{statistic}}",
                )]),
            ]),
            row("Per-feature drift", vec![
                panel("PSI per feature against the training data", "short", "Population stability index of the live window against the served model's training data, per input feature and the output probability; FeatureDrift fires at 0.25 for 10 minutes. GET /v1/drift/report?format=html on the prediction consumer draws both histograms.", &[(
                    r#"max by (feature) (tidewatch_feature_drift{SEL,statistic="psi"})"#,
                    "{{feature}}",
                )]).red_above(0.25),
                panel("Drifted features", "none", "Per feature: drifted (PSI at or above 0.25) or not.", &[
                    ("max by (feature) (tidewatch_feature_drifted{SEL})", "drifted {{feature}}"),
                ]).table().mapping(&[(0.0, "stable", "green"), (1.0, "drifted", "red")]),
                panel("KS and JS distance per feature", "short", "Binned Kolmogorov-Smirnov statistic and Jensen-Shannon distance (both 0 to 1) of the live window against the training data.", &[(
                    r#"max by (feature, statistic) (tidewatch_feature_drift{SEL,statistic=~"ks|js"})"#,
                    "{{feature}} {{statistic}}",
                )]),
                panel("Drift window", "short", "Feature vectors in the live window; statistics start once it is full.", &[
                    ("sum(tidewatch_feature_drift_window_vectors{SEL})", "vectors"),
                ]).stat(),
            ]),
            row("Training and registry", vec![
                panel("Training runs, last hour", "short", "Training runs in the last hour by what started them (schedule, drift, manual) and how they ended (success registers a challenger; insufficient_data: too few stored bars; failure: TrainingFailing).", &[
                    ("sum by (trigger, status) (increase(tidewatch_training_runs_total{SEL}[1h]))", "{{trigger}} {{status}}"),
                ]),
                panel("Since the last successful training", "s", "Wall time since the trainer last registered a version (read back from the registry at start); NoRecentTraining fires after a day.", &[
                    ("time() - max(tidewatch_training_last_success_timestamp_seconds{SEL})", "since last success"),
                ]).stat().red_above(86_400.0),
                panel("Training duration, mean over the last hour", "s", "Wall time of a run (reading the bars, fitting, scoring, registering), averaged over the runs of the last hour, by trigger.", &[
                    ("sum by (trigger) (increase(tidewatch_training_duration_seconds_sum{SEL}[1h])) / sum by (trigger) (increase(tidewatch_training_duration_seconds_count{SEL}[1h])) > 0", "{{trigger}}"),
                ]),
                panel("Examples the last trained version used", "short", "Labelled examples of the last successful run: trained on, and held out for scoring.", &[
                    ("max by (set) (tidewatch_training_samples{SEL})", "{{set}}"),
                ]).stat(),
                panel("Held-out scores of the last trained version", "percentunit", "The newest challenger's scores on its held-out bars (the ml variant).", &[
                    (r#"max by (metric) (tidewatch_training_heldout_score{SEL,variant="ml"})"#, "{{metric}}"),
                ]).stat(),
                panel("Registry line-up", "none", "The registry version in each role (0: none): champion (serves), challenger (judged beside it), previous (the champion a rollback returns to), as the consumer and trainer last read them.", &[
                    ("max by (alias) (tidewatch_model_registry_alias_version{SEL})", "{{alias}}"),
                ]).stat(),
                panel("F1 by role on the same outcomes", "percentunit", "Champion, challenger and previous champion judged on the same live outcomes (the last PROMOTION_MIN_JUDGEMENTS); a challenger is promoted when it leads by the margin, a champion rolled back when the previous one leads by it. Promotions and rollbacks are drawn as annotations.", &[
                    (r#"max by (role) (tidewatch_model_role_rolling_score{SEL,metric="f1"})"#, "{{role}}"),
                ]),
                panel("Decisions, last 24 hours", "short", "Challengers promoted and rejected, champions rolled back (ChallengerRejected, ModelRolledBack).", &[
                    ("sum by (decision) (increase(tidewatch_model_decisions_total{SEL}[24h]))", "{{decision}}"),
                ]).stat(),
            ]),
            row("Online learning and serving", vec![
                panel("Online model updates", "ops", "Online-learning updates per second; OnlineLearningStalled fires when none happen for 15 minutes while features arrive (and arrived ten minutes before).", &[
                    ("sum(rate(tidewatch_online_model_updates_total{SEL}[$__rate_interval]))", "updates"),
                ]),
                panel("Since the online model's last update", "s", "Seconds since the online model last learned (no value before its first update).", &[
                    ("time() - max(tidewatch_online_model_last_update_timestamp_seconds{SEL} > 0)", "since last update"),
                ]).stat().red_above(900.0),
                panel("Pending and dropped predictions", "short", "Predictions waiting for their outcome, and those dropped in the last hour by reason.", &[
                    ("sum(tidewatch_pending_predictions{SEL})", "pending"),
                    ("sum by (reason) (increase(tidewatch_pending_predictions_dropped_total{SEL}[1h]))", "dropped ({{reason}}), last hour"),
                ]),
                panel("Inference time, p99", "s", "p99 inference time by variant.", &[
                    ("histogram_quantile(0.99, sum by (variant, le) (rate(tidewatch_prediction_inference_duration_seconds_bucket{SEL}[$__rate_interval])))", "{{variant}}"),
                ]),
                panel("Rejected inputs", "reqps", "Prediction requests refused per second, by the field at fault.", &[
                    ("sum by (field) (rate(tidewatch_prediction_validation_errors_total{SEL}[$__rate_interval]))", "{{field}}"),
                ]),
                panel("Active variant", "none", "The variant the API serves (1) per model version.", &[
                    ("max by (model, version) (tidewatch_model_info{SEL})", "{{model}} {{version}}"),
                    ("max by (variant) (tidewatch_model_variant_active{SEL})", "{{variant}} active"),
                ]).stat(),
            ]),
        ],
    }
}

fn data_quality() -> Dashboard {
    Dashboard {
        uid: "tidewatch-data-quality",
        title: "Tidewatch / Data quality",
        description: "Raw record validity, anomalies against the generator's labels, reference data.",
        rows: vec![
            row("Validity", vec![
                panel("Quality score", "percent", "Valid share of the last 1,000 raw records; DataQualityLow fires below 90.", &[(
                    "min by (stage) (tidewatch_data_quality_score{SEL})",
                    "{{stage}}",
                )]).gauge().red_below(90.0, 95.0),
                panel("Issues by field, last hour", "short", "Missing, malformed and out-of-range fields over the last hour.", &[(
                    "sum by (field, issue) (increase(tidewatch_data_quality_issues_total{SEL}[1h]))",
                    "{{field}} {{issue}}",
                )]).table(),
                panel("Issues by field", "ops", "Missing, malformed and out-of-range fields per second.", &[(
                    "sum by (field, issue) (rate(tidewatch_data_quality_issues_total{SEL}[$__rate_interval]))",
                    "{{field}} {{issue}}",
                )]),
                panel("Schema violations", "ops", "Records that are not a venue's format, per second.", &[(
                    "sum by (kind) (rate(tidewatch_schema_violations_total{SEL}[$__rate_interval]))",
                    "{{kind}}",
                )]),
            ]),
            row("Anomalies", vec![
                panel("Anomalies", "ops", "Trades flagged per second, by type and severity; AnomalyRateHigh fires above 2% of trades, CriticalAnomalyDetected on any critical one.", &[(
                    "sum by (type, severity) (rate(tidewatch_anomalies_total{SEL}[$__rate_interval]))",
                    "{{type}} {{severity}}",
                )]),
                panel("Anomaly score", "short", "Flagged trades by score (1 = the critical threshold of their type; 0.5 and up is a warning) over time.", &[(
                    "sum by (le) (increase(tidewatch_anomaly_score_ratio_bucket{SEL}[$__rate_interval]))",
                    "{{le}}",
                )]).heatmap(),
                panel("Anomaly types, last hour", "short", "Flagged trades by type.", &[(
                    "sum by (type) (increase(tidewatch_anomalies_total{SEL}[1h]))",
                    "{{type}}",
                )]).pie(),
                panel("Anomaly severities, last hour", "short", "Flagged trades by severity.", &[(
                    "sum by (severity) (increase(tidewatch_anomalies_total{SEL}[1h]))",
                    "{{severity}}",
                )]).pie(),
                panel("Anomaly confusion matrix, last hour", "short", "Detections against the generator's planted labels.", &[(
                    "sum by (outcome) (increase(tidewatch_anomaly_detection_outcomes_total{SEL}[1h]))",
                    "{{outcome}}",
                )]).bars(),
                panel("Anomaly detection scores", "percentunit", "Precision, recall and F1 against the planted labels since start; AnomalyDetectionConfidenceLow fires when recall stays under 80%.", &[(
                    "tidewatch_anomaly_detection_score{SEL}",
                    "{{metric}}",
                )]).red_below(0.8, 0.9),
                panel("Market regime", "none", "Each symbol's current regime.", &[(
                    "max by (symbol, regime) (tidewatch_market_regime{SEL}) == 1",
                    "{{symbol}} {{regime}}",
                )]).table(),
            ]),
            row("Reference data", vec![
                panel("Reference cache hit ratio", "percentunit", "Lookups served from cache; CacheHitRatioLow fires below 80%.", &[(
                    r#"sum(rate(tidewatch_reference_cache_requests_total{SEL,result="hit"}[$__rate_interval])) / sum(rate(tidewatch_reference_cache_requests_total{SEL}[$__rate_interval]))"#,
                    "hit ratio",
                )]).red_below(0.8, 0.9),
                panel("Cache entries", "short", "Instruments held in enrich's cache.", &[("sum(tidewatch_reference_cache_entries{SEL})", "entries")]),
                panel("Evictions and lookups, last hour", "short", "Cache evictions and database lookups by outcome.", &[
                    ("sum(increase(tidewatch_reference_cache_evictions_total{SEL}[1h]))", "evictions"),
                    ("sum by (outcome) (increase(tidewatch_reference_lookups_total{SEL}[1h]))", "lookups {{outcome}}"),
                ]).bars(),
                panel("Lookup duration, p99", "s", "Database lookups of reference data.", &[
                    ("histogram_quantile(0.99, sum by (le) (rate(tidewatch_reference_lookup_duration_seconds_bucket{SEL}[1h])))", "p99"),
                ]),
            ]),
        ],
    }
}

fn database_runtime() -> Dashboard {
    Dashboard {
        uid: "tidewatch-database-runtime",
        title: "Tidewatch / Database and runtime",
        description: "The services' PostgreSQL pools and statements; every process's CPU, memory and more.",
        rows: vec![
            row("Database (the services' side)", vec![
                panel("Pool connections", "short", "Connections idle and in use, and the pool's size.", &[
                    ("sum by (service, state) (tidewatch_db_pool_connections{SEL})", "{{service}} {{state}}"),
                    ("sum by (service) (tidewatch_db_pool_max_connections{SEL})", "{{service}} max"),
                ]),
                panel("Pool saturation", "percentunit", "In use over the pool's size; DatabasePoolSaturated fires at 90%.", &[(
                    r#"tidewatch_db_pool_connections{SEL,state="in_use"} / ignoring(state) tidewatch_db_pool_max_connections{SEL}"#,
                    "{{service}}",
                )]).red_above(0.9),
                panel("Query duration, p50 and p99", "s", "By statement; SlowDatabaseQueries fires when a statement's p99 stays above 1 s.", &[
                    ("histogram_quantile(0.5, sum by (statement, le) (rate(tidewatch_db_query_duration_seconds_bucket{SEL}[$__rate_interval])))", "{{statement}} p50"),
                    ("histogram_quantile(0.99, sum by (statement, le) (rate(tidewatch_db_query_duration_seconds_bucket{SEL}[$__rate_interval])))", "{{statement}} p99"),
                ]).red_above(1.0),
                panel("Rows written", "ops", "Rows inserted or changed per second by table.", &[(
                    "sum by (table) (rate(tidewatch_db_rows_written_total{SEL}[$__rate_interval]))",
                    "{{table}}",
                )]),
                panel("Transaction errors and retries", "ops", "Failed write transactions by type, and retries; DatabaseErrors fires on any.", &[
                    ("sum by (error_type) (rate(tidewatch_db_transaction_errors_total{SEL}[$__rate_interval]))", "{{error_type}}"),
                    ("sum(rate(tidewatch_db_transaction_retries_total{SEL}[$__rate_interval]))", "retries"),
                ]).red_above(0.0),
            ]),
            row("Processes", vec![
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
                panel("File descriptors in use", "percentunit", "Open descriptors over the limit.", &[
                    ("sum by (service) (process_open_fds{SEL}) / sum by (service) (process_max_fds{SEL})", "{{service}}"),
                ]).red_above(0.8),
                panel("Threads", "short", "Threads per process.", &[
                    ("sum by (service) (process_threads{SEL})", "{{service}}"),
                ]),
                panel("Uptime", "s", "Seconds since each process started (the service's own count).", &[
                    ("max by (service) (tidewatch_uptime_seconds{SEL})", "{{service}}"),
                    ("time() - max by (service) (process_start_time_seconds{SEL})", "{{service}} (process)"),
                ]).table(),
                panel("Build", "none", "Version and commit of each service.", &[(
                    "max by (service, version, git_commit) (tidewatch_build_info{SEL})",
                    "{{service}} {{version}} {{git_commit}}",
                )]).table(),
                panel("Trace export", "ops", "Spans each service exported over OTLP per second, and spans it dropped: the export queue was full, or the endpoint refused or did not answer. All zero while OTEL_EXPORTER_OTLP_ENDPOINT is unset (no traces).", &[
                    ("sum by (service) (rate(tidewatch_trace_spans_exported_total{SEL}[$__rate_interval]))", "{{service}} exported"),
                    ("sum by (service, reason) (rate(tidewatch_trace_spans_dropped_total{SEL}[$__rate_interval]))", "{{service}} dropped ({{reason}})"),
                ]),
                panel("HTTP body sizes, p99", "bytes", "Request and response bodies.", &[
                    ("histogram_quantile(0.99, sum by (service, le) (rate(http_server_request_body_size_bytes_bucket{SEL}[$__rate_interval])))", "{{service}} request"),
                    ("histogram_quantile(0.99, sum by (service, le) (rate(http_server_response_body_size_bytes_bucket{SEL}[$__rate_interval])))", "{{service}} response"),
                ]),
            ]),
            row("Admin and alerting", vec![
                panel("Admin, last hour", "short", "Admin actions and refused admin requests; AdminAuthFailures fires above 5 in 5 minutes.", &[
                    ("sum by (service, action) (increase(tidewatch_admin_actions_total{SEL}[1h]))", "{{service}} {{action}}"),
                    ("sum by (service, reason) (increase(tidewatch_admin_auth_failures_total{SEL}[1h]))", "{{service}} refused ({{reason}})"),
                ]).bars(),
                panel("Alert notifications, last hour", "short", "Notifications the alert receiver got, by receiver and status, and the alerts in them by severity.", &[
                    ("sum by (receiver, status) (increase(tidewatch_alert_notifications_total{SEL}[1h]))", "{{receiver}} {{status}}"),
                    ("sum by (receiver, severity) (increase(tidewatch_alerts_received_total{SEL}[1h]))", "{{receiver}} {{severity}} alerts"),
                ]).bars(),
            ]),
        ],
    }
}

fn postgres() -> Dashboard {
    Dashboard {
        uid: "tidewatch-postgres",
        title: "Tidewatch / PostgreSQL",
        description: "The database itself, through postgres_exporter: connections, transactions, locks, size, cache.",
        rows: vec![
            row("Health", vec![
                panel("Reachable", "none", "Whether postgres_exporter reaches PostgreSQL; PostgresDown fires after a minute without.", &[
                    ("min(pg_up{SEL})", "up"),
                ]).stat().red_below(1.0, 1.0).mapping(&[(0.0, "down", "red"), (1.0, "up", "green")]),
                panel("Connections used", "percentunit", "Sessions over max_connections; PostgresConnectionsNearLimit fires above 80%.", &[
                    ("sum(pg_stat_activity_count{SEL}) / max(pg_settings_max_connections{SEL})", "used"),
                ]).gauge().red_above(0.8),
                panel("Database size", "bytes", "Size of the tidewatch database; PostgresDatabaseGrowing warns when a week of its growth passes 50 GiB.", &[
                    (r#"sum(pg_database_size_bytes{SEL,datname="tidewatch"})"#, "tidewatch"),
                ]).stat(),
                panel("Longest open transaction", "s", "Age of the oldest transaction of the tidewatch database; PostgresLongTransaction fires above 5 minutes.", &[
                    (r#"max(pg_stat_activity_max_tx_duration{SEL,datname="tidewatch"})"#, "longest"),
                ]).stat().red_above(300.0),
            ]),
            row("Activity", vec![
                panel("Connections by state", "short", "Sessions of the tidewatch database by state.", &[
                    (r#"sum by (state) (pg_stat_activity_count{SEL,datname="tidewatch"})"#, "{{state}}"),
                ]),
                panel("Transactions", "ops", "Commits and rollbacks per second.", &[
                    (r#"sum(rate(pg_stat_database_xact_commit{SEL,datname="tidewatch"}[$__rate_interval]))"#, "commits"),
                    (r#"sum(rate(pg_stat_database_xact_rollback{SEL,datname="tidewatch"}[$__rate_interval]))"#, "rollbacks"),
                ]),
                panel("Rows", "ops", "Rows inserted, updated, deleted and fetched per second.", &[
                    (r#"sum(rate(pg_stat_database_tup_inserted{SEL,datname="tidewatch"}[$__rate_interval]))"#, "inserted"),
                    (r#"sum(rate(pg_stat_database_tup_updated{SEL,datname="tidewatch"}[$__rate_interval]))"#, "updated"),
                    (r#"sum(rate(pg_stat_database_tup_deleted{SEL,datname="tidewatch"}[$__rate_interval]))"#, "deleted"),
                    (r#"sum(rate(pg_stat_database_tup_fetched{SEL,datname="tidewatch"}[$__rate_interval]))"#, "fetched"),
                ]),
                panel("Cache hit ratio", "percentunit", "Blocks found in shared buffers rather than read from disk.", &[
                    (r#"sum(rate(pg_stat_database_blks_hit{SEL,datname="tidewatch"}[$__rate_interval])) / (sum(rate(pg_stat_database_blks_hit{SEL,datname="tidewatch"}[$__rate_interval])) + sum(rate(pg_stat_database_blks_read{SEL,datname="tidewatch"}[$__rate_interval])))"#, "hit ratio"),
                ]).red_below(0.9, 0.99),
            ]),
            row("Locks and conflicts", vec![
                panel("Locks by mode", "short", "Locks held in the tidewatch database, by mode.", &[
                    (r#"sum by (mode) (pg_locks_count{SEL,datname="tidewatch"})"#, "{{mode}}"),
                ]),
                panel("Deadlocks, last hour", "short", "Deadlocks PostgreSQL broke; PostgresDeadlocks fires on any in five minutes.", &[
                    (r#"sum(increase(pg_stat_database_deadlocks{SEL,datname="tidewatch"}[1h]))"#, "deadlocks"),
                ]).stat().red_above(1.0),
            ]),
        ],
    }
}

fn host() -> Dashboard {
    Dashboard {
        uid: "tidewatch-host",
        title: "Tidewatch / Host",
        description: "The machine under the stack, through node-exporter: CPU, memory, filesystems, network, load.",
        rows: vec![
            row("Now", vec![
                panel("CPU busy", "percentunit", "Share of all CPUs busy at normal priority (neither idle nor niced work, which yields to the services); HostCpuSaturated fires above 95% for half an hour. CPU by mode shows the niced share.", &[
                    (r#"1 - sum(rate(node_cpu_seconds_total{SEL,mode=~"idle|nice"}[$__rate_interval])) / count(node_cpu_seconds_total{SEL,mode="idle"})"#, "busy"),
                ]).gauge().red_above(0.95),
                panel("Memory available", "percentunit", "Memory the kernel can hand out; HostMemoryLow fires under 10%.", &[
                    ("min(node_memory_MemAvailable_bytes{SEL} / node_memory_MemTotal_bytes{SEL})", "available"),
                ]).gauge().red_below(0.1, 0.2),
                panel("Fullest filesystem", "percentunit", "Free space on the writable filesystem with the least; HostDiskSpaceLow is a ticket under 10% and pages under 5%.", &[
                    (r#"min(node_filesystem_avail_bytes{SEL,fstype!~"ramfs|squashfs|iso9660|nsfs|overlay"} / node_filesystem_size_bytes{SEL} and node_filesystem_readonly{SEL} == 0 and node_filesystem_size_bytes{SEL} > 0)"#, "free"),
                ]).gauge().red_below(0.05, 0.1),
                panel("Load per CPU", "short", "One-minute load average over the number of CPUs.", &[
                    (r#"max(node_load1{SEL}) / count(node_cpu_seconds_total{SEL,mode="idle"})"#, "load per CPU"),
                ]).stat().red_above(2.0),
            ]),
            row("Over time", vec![
                panel("CPU by mode", "percentunit", "Share of all CPUs in each mode.", &[
                    (r#"sum by (mode) (rate(node_cpu_seconds_total{SEL,mode!="idle"}[$__rate_interval])) / scalar(count(node_cpu_seconds_total{SEL,mode="idle"}))"#, "{{mode}}"),
                ]),
                panel("Memory", "bytes", "Total, available and used memory.", &[
                    ("sum(node_memory_MemTotal_bytes{SEL})", "total"),
                    ("sum(node_memory_MemAvailable_bytes{SEL})", "available"),
                    ("sum(node_memory_MemTotal_bytes{SEL} - node_memory_MemAvailable_bytes{SEL})", "used"),
                ]),
                panel("Free space by filesystem", "percentunit", "Writable filesystems' free share.", &[
                    (r#"node_filesystem_avail_bytes{SEL,fstype!~"ramfs|squashfs|iso9660|nsfs|overlay"} / node_filesystem_size_bytes{SEL} and node_filesystem_readonly{SEL} == 0 and node_filesystem_size_bytes{SEL} > 0"#, "{{mountpoint}}"),
                ]).red_below(0.05, 0.1),
                panel("Disk I/O", "Bps", "Bytes read and written per second, by device.", &[
                    ("sum by (device) (rate(node_disk_read_bytes_total{SEL}[$__rate_interval]))", "{{device}} read"),
                    ("sum by (device) (rate(node_disk_written_bytes_total{SEL}[$__rate_interval]))", "{{device}} written"),
                ]),
                panel("Network", "Bps", "Bytes received and sent per second, by interface.", &[
                    (r#"sum by (device) (rate(node_network_receive_bytes_total{SEL,device!="lo"}[$__rate_interval]))"#, "{{device}} in"),
                    (r#"sum by (device) (rate(node_network_transmit_bytes_total{SEL,device!="lo"}[$__rate_interval]))"#, "{{device}} out"),
                ]),
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

/// The Grafana JSON model of one panel at `pos` (x, y).
fn render_panel(p: &Panel, id: usize, (x, y): (usize, usize)) -> Value {
    let ds = json!({"type": "prometheus", "uid": DATASOURCE_UID});
    let mut steps = vec![json!({"color": p.base, "value": null})];
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
            let mut target = json!({
                "refId": char::from(b'A' + j as u8).to_string(),
                "datasource": ds,
                "expr": expr,
                "legendFormat": legend,
                "range": !p.instant,
                "instant": p.instant,
            });
            match p.kind {
                "heatmap" => target["format"] = json!("heatmap"),
                "table" => target["format"] = json!("table"),
                _ => {}
            }
            target
        })
        .collect();
    let (w, h) = p.size();
    let mappings: Vec<Value> = p
        .mappings
        .iter()
        .map(|(v, text, color)| {
            json!({"type": "value", "options": {format!("{v}"): {"text": text, "color": color}}})
        })
        .collect();
    let links: Vec<Value> = p
        .links
        .iter()
        .map(|(title, url)| json!({"title": title, "url": url}))
        .collect();
    // In a table, mappings for one column are an override; otherwise they are the default.
    let mut overrides: Vec<Value> = p
        .column_units
        .iter()
        .map(|(column, unit)| {
            json!({"matcher": {"id": "byName", "options": column},
                   "properties": [{"id": "unit", "value": unit}]})
        })
        .collect();
    let default_mappings = match p.mapped_column {
        Some(column) => {
            overrides.push(json!({"matcher": {"id": "byName", "options": column},
                "properties": [{"id": "mappings", "value": mappings}, {"id": "unit", "value": "none"}]}));
            Vec::new()
        }
        None => mappings,
    };
    let mut panel = json!({
        "id": id,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": ds,
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "targets": targets,
        "fieldConfig": {
            "defaults": {
                "unit": p.unit,
                "thresholds": {"mode": "absolute", "steps": steps},
                "mappings": default_mappings,
                "links": links,
                "color": {"mode": if matches!(p.kind, "stat" | "gauge" | "table") { "thresholds" } else { "palette-classic" }}
            },
            "overrides": overrides
        },
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": true}}
    });
    match p.kind {
        "timeseries" if !p.thresholds.is_empty() => {
            panel["fieldConfig"]["defaults"]["custom"] =
                json!({"thresholdsStyle": {"mode": "line"}});
        }
        // Buckets come as counts per `le`: drawn as they are, not bucketed again.
        "heatmap" => {
            panel["options"] = json!({
                "calculate": false,
                "yAxis": {"unit": p.unit},
                "color": {"mode": "scheme", "scheme": "Oranges", "exponent": 0.5},
                "cellValues": {"unit": "short"},
                "tooltip": {"mode": "single", "yHistogram": true}
            });
        }
        "piechart" => {
            panel["options"]["pieType"] = json!("donut");
            panel["options"]["reduceOptions"] = json!({"calcs": ["lastNotNull"]});
            panel["options"]["legend"]["values"] = json!(["value", "percent"]);
        }
        "barchart" => {
            panel["options"]["orientation"] = json!("horizontal");
            panel["options"]["xField"] = json!("Time");
        }
        "gauge" => {
            panel["options"]["reduceOptions"] = json!({"calcs": ["lastNotNull"]});
            panel["options"]["showThresholdMarkers"] = json!(true);
        }
        // One row per series: instant queries merged on their labels, each value column
        // named by its query's legend, the time column hidden.
        "table" => {
            let rename: serde_json::Map<String, Value> = p
                .queries
                .iter()
                .enumerate()
                // A legend of label templates names series, not a column.
                .filter(|(_, (_, legend))| !legend.contains("{{"))
                .map(|(j, (_, legend))| {
                    let column = if p.queries.len() == 1 {
                        "Value".to_owned()
                    } else {
                        format!("Value #{}", char::from(b'A' + j as u8))
                    };
                    (column, json!(legend))
                })
                .collect();
            panel["transformations"] = json!([
                {"id": "merge", "options": {}},
                {"id": "organize", "options": {
                    "excludeByName": {"Time": true, "__name__": true, "job": true, "instance": true},
                    "renameByName": rename
                }}
            ]);
            panel["fieldConfig"]["defaults"]["custom"] =
                json!({"cellOptions": {"type": "color-text"}});
        }
        _ => {}
    }
    panel
}

/// Links every dashboard carries: the others, by tag, keeping the time range and variables.
fn dashboard_links() -> Value {
    json!([{
        "title": "Tidewatch",
        "type": "dashboards",
        "tags": ["tidewatch"],
        "asDropdown": true,
        "includeVars": true,
        "keepTime": true,
        "targetBlank": false
    }])
}

/// Firing alerts from Prometheus's `ALERTS` series, drawn as annotations on every panel.
fn alert_annotations() -> Value {
    json!({"list": [
        {
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": true,
            "hide": true,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard"
        },
        {
            "name": "Firing alerts",
            "datasource": {"type": "prometheus", "uid": DATASOURCE_UID},
            "enable": true,
            "iconColor": "red",
            "expr": ALERT_ANNOTATION_EXPR,
            "step": "60s",
            "titleFormat": "{{alertname}}",
            "textFormat": "{{severity}}: {{service}} {{slo}}",
            "tagKeys": "severity,service,component",
            "useValueForTime": false
        },
        {
            "name": "Model promotions and rollbacks",
            "datasource": {"type": "prometheus", "uid": DATASOURCE_UID},
            "enable": true,
            "iconColor": "purple",
            "expr": MODEL_DECISION_ANNOTATION_EXPR,
            "step": "60s",
            "titleFormat": "model {{decision}}",
            "textFormat": "{{service}}: the registry's champion changed",
            "tagKeys": "decision,service",
            "useValueForTime": false
        }
    ]})
}

/// The query of the promotions-and-rollbacks annotation.
pub const MODEL_DECISION_ANNOTATION_EXPR: &str =
    r#"changes(tidewatch_model_decisions_total{decision=~"promoted|rolled_back"}[2m]) > 0"#;

/// The query of the alert annotation (evaluated by the dashboard test like the panels').
pub const ALERT_ANNOTATION_EXPR: &str = r#"ALERTS{alertstate="firing"}"#;

/// The Grafana JSON model of `d`.
pub fn render(d: &Dashboard) -> Value {
    let mut panels = Vec::new();
    let mut y = 0;
    for r in &d.rows {
        panels.push(json!({
            "id": panels.len() + 1,
            "type": "row",
            "title": r.title,
            "collapsed": false,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            "panels": []
        }));
        y += 1;
        // Left to right, a new line when the next panel does not fit.
        let (mut x, mut line_height) = (0, 0);
        for p in &r.panels {
            let (w, h) = p.size();
            if x + w > 24 {
                (x, y) = (0, y + line_height);
                line_height = 0;
            }
            panels.push(render_panel(p, panels.len() + 1, (x, y)));
            x += w;
            line_height = line_height.max(h);
        }
        y += line_height;
    }
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
        "annotations": alert_annotations(),
        "links": dashboard_links(),
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
