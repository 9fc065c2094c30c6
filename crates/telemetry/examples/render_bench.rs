//! Times rendering `/metrics` with about 10,000 series through the real recorder and
//! catalogue: prints the series count and the median and p99 render time.

use std::time::Instant;

use tidewatch_telemetry::{catalog, BuildInfo, Metrics};

fn main() -> anyhow::Result<()> {
    let metrics = Metrics::install(&BuildInfo::new("render-bench", env!("CARGO_PKG_VERSION")))?;
    // A realistic mix: RED series for many routes and statuses (a histogram of 15 buckets
    // is 18 series), plus labelled counters and gauges.
    let methods = ["GET", "POST", "PUT", "DELETE"];
    let statuses = ["200", "400", "404", "422", "500"];
    for r in 0..20 {
        let route = format!("/v1/resource{r}/{{id}}");
        for m in methods {
            for s in statuses {
                let labels = [
                    ("http_request_method", m),
                    ("http_route", route.as_str()),
                    ("http_response_status_code", s),
                ];
                let h = catalog::HTTP_SERVER_REQUEST_DURATION.histogram(&labels);
                for i in 0..50 {
                    h.record(f64::from(i) * 0.002);
                }
                catalog::HTTP_SERVER_REQUESTS.counter(&labels).increment(50);
            }
        }
    }
    for i in 0..2_400 {
        let component = format!("component-{i}");
        catalog::HEALTH_STATUS
            .gauge(&[("component", &component), ("status", "healthy")])
            .set(1.0);
    }
    let text = metrics.render();
    let series = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();

    let mut times: Vec<f64> = (0..200)
        .map(|_| {
            let start = Instant::now();
            let out = metrics.render();
            let took = start.elapsed().as_secs_f64() * 1e3;
            std::hint::black_box(out);
            took
        })
        .collect();
    times.sort_by(f64::total_cmp);
    println!(
        "render /metrics: {series} series, {} bytes, median {:.2} ms, p99 {:.2} ms (200 renders)",
        text.len(),
        times[times.len() / 2],
        times[times.len() * 99 / 100]
    );
    Ok(())
}
