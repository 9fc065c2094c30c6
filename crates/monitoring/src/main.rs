//! `cargo run -p tidewatch-monitoring -- generate` writes the SLO rules (from the spec) and
//! the Grafana dashboards (from `dashboards.rs`); `... -- check` fails if a committed file
//! is out of date.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tidewatch_monitoring::{dashboards, generate, Spec, GENERATED_RULES, SPEC};

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
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let command = std::env::args().nth(1).unwrap_or_default();
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
        _ => anyhow::bail!("usage: tidewatch-monitoring generate|check"),
    }
    Ok(())
}
