//! `slo-report`: for every SLO of the spec, the objective, the SLI and the error budget left
//! over 1h, 6h, 3d and the compliance period, the burn rates and the state (met, at risk,
//! violated), read from the generated recording rules in a live Prometheus: the same numbers
//! the SLO dashboard shows.

use anyhow::Context as _;
use serde::Serialize;

use crate::Spec;

/// Windows the SLI and the budget are reported over (the period is added).
pub const SLI_WINDOWS: [&str; 3] = ["1h", "6h", "3d"];
/// Windows of the burn rates the alerts use.
pub const BURN_WINDOWS: [&str; 4] = ["1h", "6h", "1d", "3d"];

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Window {
    pub window: String,
    /// Good share over the window (None: no data yet).
    pub sli: Option<f64>,
    /// Share of the window's error budget left: 1 - error ratio / (1 - objective).
    pub budget_remaining: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SloReport {
    pub slo: String,
    pub service: String,
    pub objective: f64,
    pub windows: Vec<Window>,
    /// (window, error ratio over the window / budget).
    pub burn_rates: Vec<(String, Option<f64>)>,
    /// met, at risk, violated (from `slo:status:code`), or unknown without data.
    pub state: &'static str,
}

/// One instant query's single value, or None when it returns nothing.
async fn value(
    client: &reqwest::Client,
    prometheus: &str,
    query: &str,
) -> anyhow::Result<Option<f64>> {
    let url = format!("{}/api/v1/query", prometheus.trim_end_matches('/'));
    let body: serde_json::Value = client
        .get(&url)
        .query(&[("query", query)])
        .send()
        .await
        .with_context(|| format!("querying {url}"))?
        .error_for_status()
        .with_context(|| format!("{query} at {url}"))?
        .json()
        .await
        .context("Prometheus answered no JSON")?;
    let result = body["data"]["result"]
        .as_array()
        .context("no result list")?;
    anyhow::ensure!(
        result.len() <= 1,
        "{query} gives {} series, not one",
        result.len()
    );
    Ok(result
        .first()
        .and_then(|r| r["value"][1].as_str())
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite()))
}

/// The report of every SLO in `spec`.
pub async fn report(prometheus: &str, spec: &Spec) -> anyhow::Result<Vec<SloReport>> {
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    for slo in &spec.slos {
        let sel = format!("{{slo=\"{}\"}}", slo.name);
        let budget = 1.0 - slo.objective;
        let mut windows = Vec::new();
        for w in SLI_WINDOWS.iter().copied().chain([spec.period.as_str()]) {
            let ratio = value(
                &client,
                prometheus,
                &format!("slo:sli_error:ratio_rate{w}{sel}"),
            )
            .await?;
            windows.push(Window {
                window: w.to_owned(),
                sli: ratio.map(|r| 1.0 - r),
                budget_remaining: ratio.map(|r| 1.0 - r / budget),
            });
        }
        let mut burn_rates = Vec::new();
        for w in BURN_WINDOWS {
            burn_rates.push((
                w.to_owned(),
                value(&client, prometheus, &format!("slo:burn_rate:{w}{sel}")).await?,
            ));
        }
        let state = match value(&client, prometheus, &format!("slo:status:code{sel}")).await? {
            Some(c) if c >= 2.0 => "violated",
            Some(c) if c >= 1.0 => "at risk",
            Some(_) => "met",
            None => "unknown",
        };
        out.push(SloReport {
            slo: slo.name.clone(),
            service: slo.service.clone(),
            objective: slo.objective,
            windows,
            burn_rates,
            state,
        });
    }
    Ok(out)
}

fn percent(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{:.3}%", v * 100.0))
}

/// The report as a table for people.
pub fn table(reports: &[SloReport]) -> String {
    let mut out = String::new();
    for r in reports {
        out.push_str(&format!(
            "{} ({}): objective {:.3}%, {}\n",
            r.slo,
            r.service,
            r.objective * 100.0,
            r.state
        ));
        out.push_str(&format!(
            "  {:<8} {:>12} {:>14}\n",
            "window", "SLI", "budget left"
        ));
        for w in &r.windows {
            out.push_str(&format!(
                "  {:<8} {:>12} {:>14}\n",
                w.window,
                percent(w.sli),
                percent(w.budget_remaining)
            ));
        }
        let burns: Vec<String> = r
            .burn_rates
            .iter()
            .map(|(w, b)| {
                format!(
                    "{w} {}",
                    b.map_or_else(|| "-".to_owned(), |b| format!("{b:.2}x"))
                )
            })
            .collect();
        out.push_str(&format!("  burn rates: {}\n\n", burns.join(", ")));
    }
    out
}
