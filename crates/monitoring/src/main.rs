//! `cargo run -p tidewatch-monitoring -- generate` writes the SLO rules (from the spec), the
//! Grafana dashboards (from `dashboards.rs`) and the Kubernetes base (from compose and the
//! rules); `... -- check` fails if a committed file is out of date; `... -- slo-report --prometheus URL [--json]` prints every SLO's
//! objective, SLI, budget, burn rates and state from a live Prometheus.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tidewatch_monitoring::{dashboards, generate, kubernetes, report, Spec, GENERATED_RULES, SPEC};

/// Every generated file: its path under the workspace root and its text.
fn outputs(root: &Path) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let spec_text = std::fs::read_to_string(root.join(SPEC)).context("reading the SLO spec")?;
    let mut out = vec![(
        PathBuf::from(GENERATED_RULES),
        generate(&Spec::parse(&spec_text)?),
    )];
    for d in dashboards::all() {
        out.push((
            Path::new(dashboards::DIR).join(dashboards::file_name(&d)),
            dashboards::file_text(&d),
        ));
    }
    out.extend(kubernetes::manifests(root)?);
    Ok(out)
}

/// `slo-report --prometheus URL [--json]`: every SLO's numbers from a live Prometheus.
fn slo_report(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let mut prometheus = None;
    let mut json = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--prometheus" => prometheus = it.next().cloned(),
            "--json" => json = true,
            other => {
                anyhow::bail!("unknown argument {other:?}: slo-report --prometheus URL [--json]")
            }
        }
    }
    let prometheus = prometheus
        .or_else(|| std::env::var("TIDEWATCH_PROMETHEUS_URL").ok())
        .context("slo-report needs --prometheus URL (or TIDEWATCH_PROMETHEUS_URL)")?;
    let spec =
        Spec::parse(&std::fs::read_to_string(root.join(SPEC)).context("reading the SLO spec")?)?;
    let reports = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(report::report(&prometheus, &spec))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!("{}", report::table(&reports));
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().cloned().unwrap_or_default();
    if command == "slo-report" {
        return slo_report(&root, &args[1..]);
    }
    let outputs = outputs(&root)?;
    match command.as_str() {
        "generate" => {
            for (path, text) in outputs {
                std::fs::create_dir_all(root.join(&path).parent().context("a parent")?)?;
                std::fs::write(root.join(&path), text)
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("wrote {}", path.display());
            }
        }
        "check" => {
            for (path, text) in outputs {
                let on_disk = std::fs::read_to_string(root.join(&path)).unwrap_or_default();
                anyhow::ensure!(
                    on_disk == text,
                    "{} is out of date: run `cargo run -p tidewatch-monitoring -- generate`",
                    path.display()
                );
            }
            println!("every generated monitoring file is current");
        }
        _ => anyhow::bail!(
            "usage: tidewatch-monitoring generate | check | slo-report --prometheus URL [--json]"
        ),
    }
    Ok(())
}
