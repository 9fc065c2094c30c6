//! Prints METRICS.md from the metric catalogue: `cargo run -p tidewatch-telemetry --example metrics_doc > METRICS.md`.

fn main() {
    print!("{}", tidewatch_telemetry::catalog::markdown());
}
