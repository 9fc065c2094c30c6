//! Monitoring as code, and the checks that keep monitoring files honest.
//!
//! - [`dashboards`]: the Grafana dashboards, written in Rust and rendered to JSON.
//! - [`kubernetes`]: the Kubernetes base, generated from docker-compose.yml and the rules.
//! - [`Spec`]: `monitoring/slo/slos.yml`, the one place SLOs are declared.
//! - [`generate`]: the spec as Prometheus rules, after the Google SRE workbook's
//!   multi-window, multi-burn-rate alerts: SLI error ratios over every window the alerts
//!   need, burn rates, the error budget left in the period, the fast (page) and slow
//!   (ticket) burn alerts behind a minimum-traffic guard, and an alert when the SLI's metric
//!   is absent. The output is deterministic text, so a test can require the committed file
//!   to equal it.
//! - [`metric_names`] and [`rule_expressions`]: the metric names a PromQL expression reads
//!   and the expressions of a rules file, so a test can prove every one is catalogued.

pub mod dashboards;
pub mod kubernetes;
pub mod report;

use std::collections::BTreeSet;
use std::fmt::Write as _;

use anyhow::Context as _;
use serde::Deserialize;

/// Where the generated rules go, relative to the workspace root.
pub const GENERATED_RULES: &str = "monitoring/prometheus/rules/slo.generated.yml";
/// Where the spec lives, relative to the workspace root.
pub const SPEC: &str = "monitoring/slo/slos.yml";
/// Base of every alert's `runbook_url`: a section of monitoring/RUNBOOK.md.
pub const RUNBOOK: &str = "https://github.com/tidewatch/tidewatch/blob/main/monitoring/RUNBOOK.md";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// The compliance period, a Prometheus duration (e.g. `30d`).
    pub period: String,
    pub slos: Vec<Slo>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    /// snake_case; the `slo` label of every rule generated for it.
    pub name: String,
    pub service: String,
    pub component: String,
    /// The target share of good events (or good time), e.g. 0.999.
    pub objective: f64,
    pub description: String,
    sli: SliSpec,
    /// A selector that must return series while the SLI can be measured.
    pub absent: String,
}

/// The spec's `sli:` mapping: exactly one of `events` or `time`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SliSpec {
    events: Option<EventsSli>,
    time: Option<TimeSli>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsSli {
    errors: String,
    total: String,
    min_rate: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeSli {
    bad: String,
}

impl Slo {
    pub fn sli(&self) -> Sli {
        match (&self.sli.events, &self.sli.time) {
            (Some(e), _) => Sli::Events {
                errors: e.errors.clone(),
                total: e.total.clone(),
                min_rate: e.min_rate,
            },
            (None, Some(t)) => Sli::Time { bad: t.bad.clone() },
            // `validate` refuses a spec without either.
            (None, None) => Sli::Time {
                bad: "vector(0)".to_owned(),
            },
        }
    }
}

/// How an SLO's indicator is measured.
#[derive(Debug, Clone)]
pub enum Sli {
    /// Bad events over all events; both are rates over `{{window}}`.
    Events {
        errors: String,
        total: String,
        /// Events per second over an hour below which burn alerts stay silent.
        min_rate: f64,
    },
    /// The share of time `bad` (0 or 1 at each evaluation) was 1.
    Time { bad: String },
}

/// The windows the alerts read (short and long of each pair).
const WINDOWS: [&str; 7] = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"];

/// One multi-window burn-rate condition: both windows above `factor`.
struct Burn {
    long: &'static str,
    short: &'static str,
    factor: f64,
}

const FAST: [Burn; 2] = [
    Burn {
        long: "1h",
        short: "5m",
        factor: 14.4,
    },
    Burn {
        long: "6h",
        short: "30m",
        factor: 6.0,
    },
];
const SLOW: [Burn; 2] = [
    Burn {
        long: "1d",
        short: "2h",
        factor: 3.0,
    },
    Burn {
        long: "3d",
        short: "6h",
        factor: 1.0,
    },
];

impl Spec {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let spec: Spec = serde_yaml_ng::from_str(text).context("the SLO spec is not valid")?;
        spec.validate()?;
        Ok(spec)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let mut names = BTreeSet::new();
        for slo in &self.slos {
            anyhow::ensure!(
                !slo.name.is_empty()
                    && slo
                        .name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "SLO name {:?} must be snake_case",
                slo.name
            );
            anyhow::ensure!(
                names.insert(&slo.name),
                "SLO {} is declared twice",
                slo.name
            );
            anyhow::ensure!(
                slo.objective > 0.0 && slo.objective < 1.0,
                "{}: the objective must be between 0 and 1, exclusive",
                slo.name
            );
            anyhow::ensure!(
                slo.sli.events.is_some() != slo.sli.time.is_some(),
                "{}: the sli needs exactly one of events or time",
                slo.name
            );
            let exprs = match slo.sli() {
                Sli::Events { errors, total, .. } => vec![errors, total],
                Sli::Time { bad } => vec![bad],
            };
            for e in exprs.iter().chain([&slo.absent]) {
                promql_parser::parser::parse(&e.replace("{{window}}", "5m"))
                    .map_err(|err| anyhow::anyhow!("{}: {e:?} is not PromQL: {err}", slo.name))?;
            }
        }
        Ok(())
    }
}

fn labels(out: &mut String, indent: &str, pairs: &[(&str, &str)]) {
    let _ = writeln!(out, "{indent}labels:");
    for (k, v) in pairs {
        let _ = writeln!(out, "{indent}  {k}: {v}");
    }
}

/// One alerting rule; its runbook section is named after it.
fn alert(
    out: &mut String,
    name: &str,
    expr: &str,
    for_: &str,
    label_pairs: &[(&str, &str)],
    summary: &str,
    description: &str,
) {
    let _ = writeln!(out, "      - alert: {name}");
    let _ = writeln!(out, "        expr: {}", quote(expr));
    let _ = writeln!(out, "        for: {for_}");
    labels(out, "        ", label_pairs);
    let _ = writeln!(out, "        annotations:");
    let _ = writeln!(out, "          summary: {}", quote(summary));
    let _ = writeln!(out, "          description: {}", quote(description));
    let _ = writeln!(
        out,
        "          runbook_url: {RUNBOOK}#{}",
        name.to_lowercase()
    );
}

fn record(out: &mut String, name: &str, expr: &str, slo: &Slo) {
    let _ = writeln!(out, "      - record: {name}");
    let _ = writeln!(out, "        expr: {}", quote(expr));
    labels(
        out,
        "        ",
        &[("slo", &slo.name), ("service", &slo.service)],
    );
}

/// A YAML double-quoted scalar.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn burn_condition(slo: &Slo, burns: &[Burn]) -> String {
    let sel = format!("{{slo=\"{}\"}}", slo.name);
    burns
        .iter()
        .map(|b| {
            format!(
                "(slo:burn_rate:{}{sel} > {f} and slo:burn_rate:{}{sel} > {f})",
                b.long,
                b.short,
                f = b.factor
            )
        })
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Seconds an SLI must have been measured before its budget alerts may fire.
const BUDGET_MEASURED_FOR: u32 = 86_400;

/// The rules file for `spec`.
pub fn generate(spec: &Spec) -> String {
    let mut out = String::from(
        "# Generated from monitoring/slo/slos.yml by `cargo run -p tidewatch-monitoring -- generate`.\n\
         # Do not edit: change the spec and generate again (a test checks this file is current).\n\
         groups:\n",
    );
    for slo in &spec.slos {
        let sel = format!("{{slo=\"{}\"}}", slo.name);
        // Rounded so 1 - 0.999 reads 0.001, not 0.0010000000000000009.
        let budget = ((1.0 - slo.objective) * 1e9).round() / 1e9;
        let _ = writeln!(out, "  - name: slo-{}", slo.name);
        let _ = writeln!(out, "    rules:");
        let sli = slo.sli();
        let ratio = |window: &str| match &sli {
            Sli::Events { errors, total, .. } => format!(
                "({}) / ({})",
                errors.replace("{{window}}", window),
                total.replace("{{window}}", window)
            ),
            Sli::Time { .. } => format!("avg_over_time(slo:sli_bad:instant{sel}[{window}])"),
        };
        if let Sli::Time { bad } = &sli {
            record(&mut out, "slo:sli_bad:instant", bad, slo);
        }
        for w in WINDOWS.iter().copied().chain([spec.period.as_str()]) {
            record(
                &mut out,
                &format!("slo:sli_error:ratio_rate{w}"),
                &ratio(w),
                slo,
            );
        }
        for w in WINDOWS {
            record(
                &mut out,
                &format!("slo:burn_rate:{w}"),
                &format!("slo:sli_error:ratio_rate{w}{sel} / {budget}"),
                slo,
            );
        }
        record(
            &mut out,
            "slo:error_budget_remaining:ratio",
            &format!(
                "1 - slo:sli_error:ratio_rate{}{sel} / {budget}",
                spec.period
            ),
            slo,
        );
        record(
            &mut out,
            "slo:objective:ratio",
            &format!("vector({})", slo.objective),
            slo,
        );
        let guard = match &sli {
            Sli::Events {
                total, min_rate, ..
            } => {
                record(
                    &mut out,
                    "slo:sli_events:rate1h",
                    &total.replace("{{window}}", "1h"),
                    slo,
                );
                format!(" and on(slo) (slo:sli_events:rate1h{sel} > {min_rate})")
            }
            Sli::Time { .. } => String::new(),
        };
        for (alert_name, burns, severity, for_, kind, speed) in [
            (
                "SLOErrorBudgetBurnFast",
                &FAST,
                "critical",
                "2m",
                "page",
                "fast",
            ),
            (
                "SLOErrorBudgetBurnSlow",
                &SLOW,
                "warning",
                "15m",
                "ticket",
                "slowly",
            ),
        ] {
            alert(
                &mut out,
                alert_name,
                &format!("({}){guard}", burn_condition(slo, burns)),
                for_,
                &[
                    ("severity", severity),
                    ("slo", &slo.name),
                    ("service", &slo.service),
                    ("component", &slo.component),
                    ("notify", kind),
                ],
                &format!("{} is burning its error budget {speed}", slo.name),
                &format!(
                    "{} ({}; objective {}% over {}) burns its error budget at {{{{ $value | humanize }}}}x the sustainable rate.",
                    slo.name,
                    slo.description.trim_end_matches('.'),
                    slo.objective * 100.0,
                    spec.period
                ),
            );
        }
        // 0 met, 1 at risk (under a quarter of the budget left, or burning faster than
        // sustainable over six hours), 2 violated (budget spent): the SLO dashboard's state
        // and slo-report's.
        record(
            &mut out,
            "slo:status:code",
            &format!(
                "(slo:error_budget_remaining:ratio{sel} < bool 0) \
                 + clamp_max((slo:error_budget_remaining:ratio{sel} < bool 0.25) \
                 + (slo:burn_rate:6h{sel} > bool 1), 1)"
            ),
            slo,
        );
        // How long the SLI has been measured: a budget "remaining" over a 30-day window
        // that holds minutes of data says nothing, so the budget alerts wait for a day.
        record(
            &mut out,
            "slo:measured_for:seconds",
            &format!(
                "time() - min_over_time(timestamp(slo:objective:ratio{sel})[{}:1h])",
                spec.period
            ),
            slo,
        );
        for (severity, floor, notify) in [("warning", 0.25, "ticket"), ("critical", 0.10, "page")] {
            alert(
                &mut out,
                "SLOErrorBudgetLow",
                &format!(
                    "slo:error_budget_remaining:ratio{sel} < {floor} \
                     and on(slo) slo:measured_for:seconds{sel} > {BUDGET_MEASURED_FOR}"
                ),
                "15m",
                &[
                    ("severity", severity),
                    ("slo", &slo.name),
                    ("service", &slo.service),
                    ("component", &slo.component),
                    ("notify", notify),
                ],
                &format!(
                    "{} has {{{{ $value | humanizePercentage }}}} of its error budget left",
                    slo.name
                ),
                &format!(
                    "{} ({}) has less than {}% of its {} error budget left ({{{{ $value | humanizePercentage }}}}): \
                     a little more of what spent it and the {}% objective is missed.",
                    slo.name,
                    slo.description.trim_end_matches('.'),
                    floor * 100.0,
                    spec.period,
                    slo.objective * 100.0
                ),
            );
        }
        alert(
            &mut out,
            "SLOMetricAbsent",
            &format!("absent({})", slo.absent),
            "10m",
            &[
                ("severity", "warning"),
                ("slo", &slo.name),
                ("service", &slo.service),
                ("component", &slo.component),
            ],
            &format!("{} cannot be measured", slo.name),
            &format!(
                "No series match {} for 10 minutes: the SLI and its burn alerts are blind.",
                slo.absent
            ),
        );
    }
    out
}

/// The metric names `expr` reads (selectors with a name; `{__name__=...}` is not used here).
pub fn metric_names(expr: &str) -> anyhow::Result<BTreeSet<String>> {
    use promql_parser::parser::Expr;
    use promql_parser::util::{walk_expr, ExprVisitor};
    struct Names(BTreeSet<String>);
    impl ExprVisitor for Names {
        type Error = std::convert::Infallible;
        fn pre_visit(&mut self, e: &Expr) -> Result<bool, Self::Error> {
            match e {
                Expr::VectorSelector(vs) => self.0.extend(vs.name.clone()),
                Expr::MatrixSelector(ms) => self.0.extend(ms.vs.name.clone()),
                _ => {}
            }
            Ok(true)
        }
    }
    let parsed = promql_parser::parser::parse(expr)
        .map_err(|e| anyhow::anyhow!("{expr:?} is not PromQL: {e}"))?;
    let mut names = Names(BTreeSet::new());
    let Ok(_) = walk_expr(&mut names, &parsed);
    Ok(names.0)
}

#[derive(Debug, Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
struct RuleGroup {
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
struct Rule {
    record: Option<String>,
    alert: Option<String>,
    expr: String,
}

/// A rules file's recording rule names, alert names and expressions.
#[derive(Debug, Default)]
pub struct Rules {
    pub records: BTreeSet<String>,
    pub alerts: BTreeSet<String>,
    pub expressions: Vec<String>,
}

/// Reads a Prometheus rules file.
pub fn rule_expressions(yaml: &str) -> anyhow::Result<Rules> {
    let file: RuleFile = serde_yaml_ng::from_str(yaml).context("not a rules file")?;
    let mut rules = Rules::default();
    for rule in file.groups.into_iter().flat_map(|g| g.rules) {
        rules.records.extend(rule.record);
        rules.alerts.extend(rule.alert);
        rules.expressions.push(rule.expr);
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_every_selector_of_an_expression() {
        let names = metric_names(
            r#"sum(rate(a_total{job="x"}[5m])) / sum(rate(b_bucket{le="0.1"}[5m])) > bool 0.5 and on() absent(c)"#,
        )
        .expect("parses");
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            ["a_total", "b_bucket", "c"]
        );
    }

    #[test]
    fn a_bad_spec_is_refused_with_the_reason() {
        let base = r#"
period: 30d
slos:
  - name: a
    service: s
    component: c
    objective: OBJ
    description: d
    sli: {events: {errors: "sum(rate(e_total[{{window}}]))", total: "sum(rate(t_total[{{window}}]))", min_rate: 1}}
    absent: t_total
"#;
        assert!(Spec::parse(&base.replace("OBJ", "0.99")).is_ok());
        let err = Spec::parse(&base.replace("OBJ", "1.5")).expect_err("objective");
        assert!(format!("{err:#}").contains("objective"), "{err:#}");
        let err = Spec::parse(&base.replace("OBJ", "0.99").replace("e_total[", "e_total[["))
            .expect_err("promql");
        assert!(format!("{err:#}").contains("not PromQL"), "{err:#}");
    }
}
