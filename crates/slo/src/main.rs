//! `cargo run -p tidewatch-slo -- generate` writes the SLO rules from the spec;
//! `... -- check` fails if the committed rules are out of date.

use std::path::PathBuf;

use anyhow::Context as _;
use tidewatch_slo::{generate, Spec, GENERATED_RULES, SPEC};

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let command = std::env::args().nth(1).unwrap_or_default();
    let spec_text = std::fs::read_to_string(root.join(SPEC)).context("reading the SLO spec")?;
    let rules = generate(&Spec::parse(&spec_text)?);
    let target = root.join(GENERATED_RULES);
    match command.as_str() {
        "generate" => {
            std::fs::write(&target, rules).context("writing the rules")?;
            println!("wrote {GENERATED_RULES}");
        }
        "check" => {
            let on_disk = std::fs::read_to_string(&target).unwrap_or_default();
            anyhow::ensure!(
                on_disk == rules,
                "{GENERATED_RULES} is out of date: run `cargo run -p tidewatch-slo -- generate`"
            );
            println!("{GENERATED_RULES} is current");
        }
        _ => anyhow::bail!("usage: tidewatch-slo generate|check"),
    }
    Ok(())
}
