//! Writes the fuzz targets' seed corpus (`fuzz/seeds`, see `scripts/fuzz`) from the
//! generator's own records: for each kind it plants (valid, anomaly, malformed, missing
//! field, out of range, unknown symbol, late), a few raw records of both venues for
//! `raw_venue`, and the canonical trade that normalize makes of each decodable one for
//! `canonical_records` (prefixed with that target's byte for a `Trade`).
//!
//!   cargo run -p tidewatch-generator --example fuzz_seeds -- fuzz/seeds

use std::collections::BTreeMap;
use std::path::PathBuf;

use generator::stream::{Mix, RecordStream};
use tidewatch_market_sim::MarketConfig;

const PER_KIND: usize = 4;

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or_else(|| anyhow::anyhow!("usage: fuzz_seeds DIR"))?,
    );
    let mut config = MarketConfig::new(42);
    config.anomaly_rate = 0.02;
    let mut stream = RecordStream::new(
        &config,
        Mix {
            bad_fraction: 0.2,
            late_fraction: 0.05,
        },
    );
    let raw = dir.join("raw_venue");
    let canonical = dir.join("canonical_records");
    std::fs::create_dir_all(&raw)?;
    std::fs::create_dir_all(&canonical)?;
    let mut written: BTreeMap<(&'static str, String), usize> = BTreeMap::new();
    for _ in 0..20_000 {
        let g = stream.next_record();
        let venue = format!("{:?}", g.venue).to_lowercase();
        let n = written.entry((g.kind.as_str(), venue.clone())).or_default();
        if *n >= PER_KIND {
            continue;
        }
        let name = format!("{}-{venue}-{n}", g.kind.as_str());
        std::fs::write(raw.join(&name), &g.payload)?;
        if let Ok(trade) = tidewatch_schema::decode_raw(&g.payload, g.event_time_ms) {
            let mut seed = vec![0u8];
            seed.extend(serde_json::to_vec(&trade)?);
            std::fs::write(canonical.join(format!("trade-{name}")), seed)?;
        }
        *n += 1;
    }
    for ((kind, venue), n) in &written {
        println!("{kind} {venue}: {n}");
    }
    Ok(())
}
