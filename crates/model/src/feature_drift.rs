//! Per-feature drift: a sliding window of live feature vectors and the served model's
//! probabilities, counted into the reference profile's bins and compared with it (PSI, KS,
//! Jensen-Shannon distance per column, see [`crate::profile`]), exported as gauges and
//! published as a report a person reads (JSON, or HTML with the two histograms side by side).
//!
//! The window holds the last `capacity` vectors of every symbol together (the reference
//! profiles every symbol's training rows together too). Statistics exist once it holds
//! `min_samples`; before that the report says so and no gauge is set, so an alert on them
//! never fires on a handful of vectors.

use std::collections::VecDeque;
use std::fmt::Write as _;

use metrics::Gauge;
use serde::Serialize;
use tidewatch_telemetry::catalog;

use crate::profile::{shares, Distances, ReferenceProfile, PSI_DRIFT};
use crate::Features;

/// The six features and the probability (a validated profile has exactly these).
const COLUMNS: usize = crate::FEATURE_NAMES.len() + 1;

/// Share of drifted columns at which the whole data set counts as drifted (Evidently's
/// default).
pub const DATASET_DRIFT_SHARE: f64 = 0.5;

struct ColumnState {
    counts: Vec<u64>,
    /// Bar time of the first vector of the current drifted stretch.
    drifted_since_ms: Option<i64>,
    distances: Option<Distances>,
    gauges: Option<[Gauge; 4]>,
}

/// The live window against one reference profile.
pub struct FeatureDriftTracker {
    profile: ReferenceProfile,
    capacity: usize,
    min_samples: usize,
    /// Bar start and the bin of every column, oldest first.
    window: VecDeque<(i64, [u8; COLUMNS])>,
    columns: Vec<ColumnState>,
    window_gauge: Option<Gauge>,
}

impl std::fmt::Debug for FeatureDriftTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureDriftTracker")
            .field("model_version", &self.profile.model_version)
            .field("window", &self.window.len())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// One column in the report.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ColumnDrift {
    /// A feature name, or `probability` for the served model's output.
    pub name: String,
    pub cuts: Vec<f64>,
    /// Share of training rows per bin.
    pub reference: Vec<f64>,
    /// Share of the window per bin.
    pub current: Vec<f64>,
    /// None until the window holds `min_samples` vectors.
    pub statistics: Option<Distances>,
    pub drifted: bool,
    /// Bar start (Unix ms) of the first vector since which the column has been drifted.
    pub drifted_since_ms: Option<i64>,
}

/// The window's extent.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Window {
    pub size: usize,
    pub capacity: usize,
    pub min_samples: usize,
    pub first_bar_start_ms: Option<i64>,
    pub last_bar_start_ms: Option<i64>,
}

/// What `GET /v1/drift/report` returns.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DriftReport {
    /// The model whose reference profile the window is compared with.
    pub model_version: String,
    pub reference_rows: u64,
    pub window: Window,
    /// The PSI at or above which a column counts as drifted.
    pub psi_threshold: f64,
    pub columns: Vec<ColumnDrift>,
    pub drifted_columns: usize,
    /// At least half the columns drifted.
    pub dataset_drift: bool,
    /// What drifted and since when, in a sentence or three.
    pub summary: String,
}

impl FeatureDriftTracker {
    /// A tracker whose statistics are exported as gauges (each column's from its first
    /// judgement on: a statistic not computed yet has no series rather than a zero).
    pub fn new(profile: ReferenceProfile, capacity: usize, min_samples: usize) -> Self {
        let mut t = Self::unexported(profile, capacity, min_samples);
        let window = catalog::FEATURE_DRIFT_WINDOW.gauge(&[]);
        window.set(0.0);
        t.window_gauge = Some(window);
        t
    }

    /// A tracker without metrics (tests, tools).
    pub fn unexported(profile: ReferenceProfile, capacity: usize, min_samples: usize) -> Self {
        let columns = profile
            .columns
            .iter()
            .map(|c| ColumnState {
                counts: vec![0; c.shares.len()],
                drifted_since_ms: None,
                distances: None,
                gauges: None,
            })
            .collect();
        let capacity = capacity.max(1);
        Self {
            profile,
            capacity,
            min_samples: min_samples.clamp(1, capacity),
            window: VecDeque::with_capacity(capacity),
            columns,
            window_gauge: None,
        }
    }

    /// One live vector and the probability the served model gave it.
    pub fn push(&mut self, bar_start_ms: i64, features: &Features, probability: f64) {
        let values = features.to_array().into_iter().chain([probability]);
        let mut bins = [0u8; COLUMNS];
        for ((bin, column), (state, v)) in bins
            .iter_mut()
            .zip(&self.profile.columns)
            .zip(self.columns.iter_mut().zip(values))
        {
            let b = column.bin(v);
            state.counts[b] += 1;
            // At most BINS (10) bins: fits.
            *bin = b as u8;
        }
        self.window.push_back((bar_start_ms, bins));
        if self.window.len() > self.capacity {
            if let Some((_, old)) = self.window.pop_front() {
                for (state, b) in self.columns.iter_mut().zip(old) {
                    state.counts[usize::from(b)] -= 1;
                }
            }
        }
        self.evaluate(bar_start_ms);
    }

    fn evaluate(&mut self, now_ms: i64) {
        if let Some(g) = &self.window_gauge {
            g.set(self.window.len() as f64);
        }
        if self.window.len() < self.min_samples {
            return;
        }
        for (state, reference) in self.columns.iter_mut().zip(&self.profile.columns) {
            let d = Distances::between(&shares(&state.counts), &reference.shares);
            state.drifted_since_ms = match (d.drifted(), state.drifted_since_ms) {
                (true, None) => Some(now_ms),
                (true, since) => since,
                (false, _) => None,
            };
            state.distances = Some(d);
            if self.window_gauge.is_some() && state.gauges.is_none() {
                let name = reference.name.as_str();
                let statistic =
                    |s| catalog::FEATURE_DRIFT.gauge(&[("feature", name), ("statistic", s)]);
                state.gauges = Some([
                    statistic("psi"),
                    statistic("ks"),
                    statistic("js"),
                    catalog::FEATURE_DRIFTED.gauge(&[("feature", name)]),
                ]);
            }
            if let Some([psi, ks, js, drifted]) = &state.gauges {
                psi.set(d.psi);
                ks.set(d.ks);
                js.set(d.js);
                drifted.set(f64::from(u8::from(d.drifted())));
            }
        }
    }

    pub fn report(&self) -> DriftReport {
        let columns: Vec<ColumnDrift> = self
            .columns
            .iter()
            .zip(&self.profile.columns)
            .map(|(state, reference)| ColumnDrift {
                name: reference.name.clone(),
                cuts: reference.cuts.clone(),
                reference: reference.shares.clone(),
                current: shares(&state.counts),
                statistics: state.distances,
                drifted: state.distances.is_some_and(|d| d.drifted()),
                drifted_since_ms: state.drifted_since_ms,
            })
            .collect();
        let drifted_columns = columns.iter().filter(|c| c.drifted).count();
        let window = Window {
            size: self.window.len(),
            capacity: self.capacity,
            min_samples: self.min_samples,
            first_bar_start_ms: self.window.front().map(|w| w.0),
            last_bar_start_ms: self.window.back().map(|w| w.0),
        };
        let mut report = DriftReport {
            model_version: self.profile.model_version.clone(),
            reference_rows: self.profile.rows,
            psi_threshold: PSI_DRIFT,
            dataset_drift: drifted_columns as f64 >= DATASET_DRIFT_SHARE * columns.len() as f64,
            drifted_columns,
            columns,
            window,
            summary: String::new(),
        };
        report.summary = summary(&report);
        report
    }
}

/// RFC 3339 in UTC to the second, or the number if out of range.
fn when(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

fn summary(r: &DriftReport) -> String {
    let (Some(first), Some(last)) = (r.window.first_bar_start_ms, r.window.last_bar_start_ms)
    else {
        return format!(
            "No live feature vector yet: the window fills with the next {} vectors, compared with model {}'s {} training rows.",
            r.window.min_samples, r.model_version, r.reference_rows
        );
    };
    let span = format!(
        "the last {} feature vectors (bars {} to {})",
        r.window.size,
        when(first),
        when(last)
    );
    if r.window.size < r.window.min_samples {
        return format!(
            "Too few vectors to judge: {span}; statistics start at {}.",
            r.window.min_samples
        );
    }
    let mut drifted: Vec<&ColumnDrift> = r.columns.iter().filter(|c| c.drifted).collect();
    if drifted.is_empty() {
        let worst = r
            .columns
            .iter()
            .filter_map(|c| c.statistics.map(|s| (c.name.as_str(), s.psi)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let worst = worst.map_or(String::new(), |(name, psi)| {
            format!(" The largest shift is {name}'s (PSI {psi:.3}).")
        });
        return format!(
            "No drift: in {span}, every feature and the output probability stay within PSI {} of model {}'s training data.{worst}",
            r.psi_threshold, r.model_version
        );
    }
    drifted.sort_by(|a, b| {
        let psi = |c: &ColumnDrift| c.statistics.map_or(0.0, |s| s.psi);
        psi(b).total_cmp(&psi(a))
    });
    let listed: Vec<String> = drifted
        .iter()
        .map(|c| {
            let psi = c.statistics.map_or(0.0, |s| s.psi);
            let since = c
                .drifted_since_ms
                .map_or(String::new(), |ms| format!(", since {}", when(ms)));
            format!("{} (PSI {psi:.2}{since})", c.name)
        })
        .collect();
    let probability = if drifted
        .iter()
        .any(|c| c.name == crate::profile::PROBABILITY)
    {
        " The model's output has moved with them: its predictions come from data it was not trained on."
    } else {
        " The model's output distribution has not drifted (yet)."
    };
    format!(
        "{} of {} columns drifted{}: {}. Compared: {span} against model {}'s {} training rows.{probability}",
        r.drifted_columns,
        r.columns.len(),
        if r.dataset_drift {
            ", so the data set as a whole has"
        } else {
            ""
        },
        listed.join(", "),
        r.model_version,
        r.reference_rows
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Reference (grey) and current (blue) shares per bin, side by side, as inline SVG.
fn histogram_svg(c: &ColumnDrift) -> String {
    const W: f64 = 420.0;
    const H: f64 = 150.0;
    const BOTTOM: f64 = 24.0;
    let bins = c.reference.len().max(1);
    let top = c
        .reference
        .iter()
        .chain(&c.current)
        .copied()
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let slot = W / bins as f64;
    let bar = slot * 0.4;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="{} reference and current histograms">"#,
        escape(&c.name)
    );
    for (i, (r, cur)) in c.reference.iter().zip(&c.current).enumerate() {
        let x = i as f64 * slot + slot * 0.1;
        for (k, (share, colour)) in [(r, "#9e9e9e"), (cur, "#1f77b4")].into_iter().enumerate() {
            let h = share / top * (H - BOTTOM - 6.0);
            let _ = write!(
                svg,
                r#"<rect x="{:.1}" y="{:.1}" width="{bar:.1}" height="{h:.1}" fill="{colour}"><title>bin {}: {:.1}%</title></rect>"#,
                x + k as f64 * bar,
                H - BOTTOM - h,
                i + 1,
                share * 100.0
            );
        }
    }
    let _ = write!(
        svg,
        r##"<line x1="0" y1="{0}" x2="{W}" y2="{0}" stroke="#444"/><text x="2" y="{1}" font-size="10">{2}</text><text x="{W}" y="{1}" font-size="10" text-anchor="end">{3}</text></svg>"##,
        H - BOTTOM,
        H - 8.0,
        c.cuts
            .first()
            .map_or("low".to_owned(), |x| format!("&lt; {x:.3e}")),
        c.cuts
            .last()
            .map_or("high".to_owned(), |x| format!("&#8805; {x:.3e}")),
    );
    svg
}

impl DriftReport {
    /// The report as a page: summary, then per column the histograms, statistics and verdict.
    pub fn html(&self) -> String {
        let mut page = String::from(
            "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Tidewatch drift report</title><style>\
             body{font-family:system-ui,sans-serif;margin:2em;max-width:100em;color:#222}\
             main{display:grid;grid-template-columns:repeat(auto-fill,minmax(30em,1fr));gap:1em}\
             section{border:1px solid #ddd;border-radius:6px;padding:1em}\
             .drifted{border-color:#d62728;background:#fff5f5}.verdict{font-weight:bold}\
             .drifted .verdict{color:#d62728}.stable .verdict{color:#2ca02c}\
             table{border-collapse:collapse}td,th{padding:.2em .8em;text-align:right}\
             .legend span{display:inline-block;width:1em;height:1em;vertical-align:middle;margin:0 .3em 0 1em}\
             </style></head><body>",
        );
        let _ = write!(
            page,
            "<h1>Drift report: model {}</h1><p class=\"summary\">{}</p>\
             <p>Window: {} of {} vectors (statistics from {}); reference: {} training rows. \
             A column is drifted at PSI &#8805; {}; the data set when at least {} of {} columns are.</p>\
             <p class=\"legend\"><span style=\"background:#9e9e9e\"></span>reference (training)<span style=\"background:#1f77b4\"></span>current (live window)</p>",
            escape(&self.model_version),
            escape(&self.summary),
            self.window.size,
            self.window.capacity,
            self.window.min_samples,
            self.reference_rows,
            self.psi_threshold,
            (DATASET_DRIFT_SHARE * self.columns.len() as f64).ceil(),
            self.columns.len(),
        );
        page.push_str("<main>");
        for c in &self.columns {
            let (class, verdict) = match (c.statistics, c.drifted) {
                (None, _) => ("pending", "not enough data"),
                (Some(_), true) => ("drifted", "drifted"),
                (Some(_), false) => ("stable", "not drifted"),
            };
            let stats = c.statistics.map_or(
                "<tr><td colspan=\"3\">waiting for the window to fill</td></tr>".to_owned(),
                |s| {
                    format!(
                        "<tr><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td></tr>",
                        s.psi, s.ks, s.js
                    )
                },
            );
            let since = c
                .drifted_since_ms
                .map_or(String::new(), |ms| format!(" since {}", when(ms)));
            let _ = write!(
                page,
                "<section class=\"{class}\" id=\"{name}\"><h2>{name}</h2><p class=\"verdict\">{verdict}{since}</p>{svg}\
                 <table><tr><th>PSI</th><th>KS</th><th>JS distance</th></tr>{stats}</table></section>",
                name = escape(&c.name),
                svg = histogram_svg(c),
            );
        }
        page.push_str("</main></body></html>\n");
        page
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> ReferenceProfile {
        // Features spread evenly over [0, 1); probabilities likewise.
        let rows: Vec<[f64; 6]> = (0..1000).map(|i| [f64::from(i) / 1000.0; 6]).collect();
        let probs: Vec<f64> = (0..1000).map(|i| f64::from(i) / 1000.0).collect();
        ReferenceProfile::build("9.9.9", &rows, &probs)
    }

    fn features(x: f64) -> Features {
        Features {
            ret_1m: x,
            ret_5m: x,
            vol_5m: x,
            vol_15m: x,
            volume_z: x,
            trade_rate: x,
        }
    }

    #[test]
    fn nothing_is_judged_before_the_window_holds_its_minimum() {
        let mut t = FeatureDriftTracker::unexported(profile(), 100, 50);
        let empty = t.report();
        assert!(empty.summary.starts_with("No live feature vector yet"));
        for i in 0..49 {
            t.push(i, &features(0.99), 0.99);
        }
        let r = t.report();
        assert!(r
            .columns
            .iter()
            .all(|c| c.statistics.is_none() && !c.drifted));
        assert!(r.summary.starts_with("Too few vectors"), "{}", r.summary);
        t.push(49, &features(0.99), 0.99);
        assert_eq!(t.report().drifted_columns, 7);
    }

    #[test]
    fn a_shifted_window_drifts_since_its_first_judged_vector_and_recovers_as_it_slides() {
        const T0: i64 = 1_767_225_600_000;
        let at = |i: i64| T0 + i * 60_000;
        let mut t = FeatureDriftTracker::unexported(profile(), 200, 100);
        // Like the training data: every decile equally, the probability too.
        let spread = |i: i64| (i % 10) as f64 / 10.0 + 0.05;
        for i in 0..200 {
            t.push(at(i), &features(spread(i)), spread(i));
        }
        let calm = t.report();
        assert_eq!(calm.drifted_columns, 0);
        assert!(calm.columns[0].statistics.expect("judged").psi < 1e-9);
        assert!(calm.summary.starts_with("No drift"), "{}", calm.summary);
        // Every feature jumps to its top decile; the probability stays spread.
        for i in 200..400 {
            t.push(at(i), &features(0.95), spread(i));
        }
        let shifted = t.report();
        assert_eq!(shifted.drifted_columns, 6);
        assert!(shifted.dataset_drift);
        assert!(!shifted.columns[6].drifted);
        let since = shifted.columns[0].drifted_since_ms.expect("drifted");
        assert!((at(200)..at(300)).contains(&since), "{since}");
        assert!(
            shifted
                .summary
                .starts_with("6 of 7 columns drifted, so the data set as a whole has")
                && shifted.summary.contains("ret_1m (PSI")
                && shifted.summary.contains("has not drifted"),
            "{}",
            shifted.summary
        );
        assert_eq!(shifted.window.first_bar_start_ms, Some(at(200)));
        assert_eq!(shifted.window.size, 200);
        let html = shifted.html();
        for name in crate::FEATURE_NAMES.iter().chain(&["probability"]) {
            assert!(html.contains(&format!("<h2>{name}</h2>")), "{name}");
        }
        assert_eq!(html.matches("<svg").count(), 7);
        assert!(!html.contains("<script"));
        // Back to normal: once the shifted vectors slide out, nothing is drifted.
        for i in 400..600 {
            t.push(at(i), &features(spread(i)), spread(i));
        }
        let recovered = t.report();
        assert_eq!(recovered.drifted_columns, 0);
        assert!(recovered
            .columns
            .iter()
            .all(|c| c.drifted_since_ms.is_none()));
    }
}
