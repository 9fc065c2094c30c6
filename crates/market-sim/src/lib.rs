//! A seeded synthetic market: trades for a fixed set of symbols.
//!
//! Prices follow geometric Brownian motion whose volatility and trading activity depend on a
//! per-symbol Markov regime (calm, normal, turbulent), stepped once per event-time minute.
//! A fraction of trades can be labelled anomalies (price jumps off the path, outsized sizes),
//! mild (inside a detector's warning band) or severe (past its critical thresholds).
//! The same seed and configuration give the same trades, and each symbol draws from its own
//! random stream, so one symbol's trades do not depend on which other symbols are simulated.
//! The simulator does no I/O and knows nothing of wall time: callers map event time.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal, Normal, Poisson};
use serde::{Deserialize, Serialize};

/// Milliseconds in one event-time minute.
pub const MINUTE_MS: i64 = 60_000;

/// Static description of one simulated instrument.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SymbolSpec {
    pub symbol: &'static str,
    pub asset_class: &'static str,
    pub base_price: f64,
    /// Standard deviation of one-minute log returns in the normal regime.
    pub vol_per_minute: f64,
    /// Mean trade arrivals per second in the normal regime.
    pub trades_per_second: f64,
    /// Median trade size in base units.
    pub median_size: f64,
}

/// The simulator's default universe. Volatilities are in the range of liquid crypto and
/// equities at one-minute resolution.
pub const DEFAULT_SYMBOLS: &[SymbolSpec] = &[
    SymbolSpec {
        symbol: "BTC-USD",
        asset_class: "crypto",
        base_price: 65_000.0,
        vol_per_minute: 0.0012,
        trades_per_second: 4.0,
        median_size: 0.05,
    },
    SymbolSpec {
        symbol: "ETH-USD",
        asset_class: "crypto",
        base_price: 3_200.0,
        vol_per_minute: 0.0015,
        trades_per_second: 3.0,
        median_size: 0.8,
    },
    SymbolSpec {
        symbol: "SOL-USD",
        asset_class: "crypto",
        base_price: 150.0,
        vol_per_minute: 0.0020,
        trades_per_second: 2.0,
        median_size: 12.0,
    },
    SymbolSpec {
        symbol: "XRP-USD",
        asset_class: "crypto",
        base_price: 0.55,
        vol_per_minute: 0.0018,
        trades_per_second: 1.5,
        median_size: 2_500.0,
    },
    SymbolSpec {
        symbol: "AAPL",
        asset_class: "equity",
        base_price: 190.0,
        vol_per_minute: 0.0009,
        trades_per_second: 3.0,
        median_size: 100.0,
    },
    SymbolSpec {
        symbol: "EUR-USD",
        asset_class: "fx",
        base_price: 1.08,
        vol_per_minute: 0.0004,
        trades_per_second: 5.0,
        median_size: 100_000.0,
    },
];

/// Looks up a default symbol by name.
pub fn symbol_spec(symbol: &str) -> Option<&'static SymbolSpec> {
    DEFAULT_SYMBOLS.iter().find(|s| s.symbol == symbol)
}

/// Volatility regime of one symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Regime {
    Calm,
    Normal,
    Turbulent,
}

impl Regime {
    pub const ALL: [Regime; 3] = [Regime::Calm, Regime::Normal, Regime::Turbulent];

    /// Multiplier on the symbol's normal one-minute volatility.
    pub fn vol_multiplier(self) -> f64 {
        match self {
            Regime::Calm => 0.5,
            Regime::Normal => 1.0,
            Regime::Turbulent => 3.0,
        }
    }

    /// Multiplier on trade arrivals and sizes: turbulent markets trade more.
    pub fn activity_multiplier(self) -> f64 {
        match self {
            Regime::Calm => 0.7,
            Regime::Normal => 1.0,
            Regime::Turbulent => 2.2,
        }
    }

    /// Per-minute transition probabilities to (calm, normal, turbulent). Turbulence is
    /// persistent but shorter-lived than calm, as in real markets.
    fn transitions(self) -> [f64; 3] {
        match self {
            Regime::Calm => [0.97, 0.03, 0.0],
            Regime::Normal => [0.02, 0.96, 0.02],
            Regime::Turbulent => [0.0, 0.08, 0.92],
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Regime::Calm => "calm",
            Regime::Normal => "normal",
            Regime::Turbulent => "turbulent",
        }
    }
}

/// How far planted anomalies stray. `Mild` ones stay inside the warning band of a detector
/// with critical thresholds at 5% off the recent price and 100 times the typical size (and
/// warning ones at 2.5% and 25 times): a print 3-4% off the path, a trade of 30-70 typical
/// sizes. `Severe` ones are far past the critical thresholds: 6-10% off, 120-200 sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnomalySeverity {
    #[default]
    Mild,
    Severe,
}

impl AnomalySeverity {
    pub const ALL: [AnomalySeverity; 2] = [AnomalySeverity::Mild, AnomalySeverity::Severe];

    pub fn as_str(self) -> &'static str {
        match self {
            AnomalySeverity::Mild => "mild",
            AnomalySeverity::Severe => "severe",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Relative distance of a planted print from the price path.
    fn jump(self) -> std::ops::Range<f64> {
        match self {
            AnomalySeverity::Mild => 0.03..0.04,
            AnomalySeverity::Severe => 0.06..0.10,
        }
    }

    /// Size of a planted outsized trade, in the symbol's median (typical) sizes.
    fn size_multiple(self) -> std::ops::Range<f64> {
        match self {
            AnomalySeverity::Mild => 30.0..70.0,
            AnomalySeverity::Severe => 120.0..200.0,
        }
    }
}

/// Label of an injected anomaly, so detectors downstream can be scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// A print far off the price path (the path itself does not move).
    PriceJump,
    /// A trade many times the usual size.
    OutsizedTrade,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Buy,
    Sell,
}

/// One simulated trade, in event time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trade {
    pub symbol: &'static str,
    /// Per-symbol sequence number, starting at 1.
    pub seq: u64,
    pub ts_ms: i64,
    pub price: f64,
    pub size: f64,
    pub side: Side,
    pub regime: Regime,
    pub anomaly: Option<AnomalyKind>,
}

/// Knobs of the simulation.
#[derive(Debug, Clone, PartialEq)]
pub struct MarketConfig {
    pub seed: u64,
    pub symbols: Vec<SymbolSpec>,
    /// Event time of the first minute, in Unix milliseconds.
    pub start_ms: i64,
    /// Fraction of trades turned into labelled anomalies (0 for clean training data).
    pub anomaly_rate: f64,
    pub anomaly_severity: AnomalySeverity,
    /// Prices to start from instead of each symbol's base price (symbol, price): a market
    /// that continues where an earlier run left off.
    pub start_prices: Vec<(String, f64)>,
}

impl MarketConfig {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            symbols: DEFAULT_SYMBOLS.to_vec(),
            start_ms: 1_767_225_600_000,
            anomaly_rate: 0.0,
            anomaly_severity: AnomalySeverity::Mild,
            start_prices: Vec::new(),
        }
    }
}

struct SymbolState {
    spec: SymbolSpec,
    rng: ChaCha8Rng,
    log_price: f64,
    regime: Regime,
    seq: u64,
}

/// The market: call [`Market::next_minute`] to advance event time by one minute.
pub struct Market {
    symbols: Vec<SymbolState>,
    minute_start_ms: i64,
    anomaly_rate: f64,
    anomaly_severity: AnomalySeverity,
    /// A regime every symbol is kept in, whatever the Markov chain draws.
    held: Option<Regime>,
}

impl std::fmt::Debug for Market {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Market")
            .field("minute_start_ms", &self.minute_start_ms)
            .field(
                "symbols",
                &self
                    .symbols
                    .iter()
                    .map(|s| s.spec.symbol)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Market {
    pub fn new(config: &MarketConfig) -> Self {
        let symbols = config
            .symbols
            .iter()
            .map(|spec| SymbolState {
                spec: *spec,
                // Independent stream per symbol: (seed, symbol name) picks a ChaCha stream.
                rng: {
                    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
                    rng.set_stream(fnv1a(spec.symbol));
                    rng
                },
                log_price: config
                    .start_prices
                    .iter()
                    .find(|(symbol, price)| symbol == spec.symbol && *price > 0.0)
                    .map_or(spec.base_price, |(_, price)| *price)
                    .ln(),
                regime: Regime::Normal,
                seq: 0,
            })
            .collect();
        Self {
            symbols,
            minute_start_ms: config.start_ms,
            anomaly_rate: config.anomaly_rate.clamp(0.0, 1.0),
            anomaly_severity: config.anomaly_severity,
            held: None,
        }
    }

    /// Event time at which the next minute starts.
    pub fn now_ms(&self) -> i64 {
        self.minute_start_ms
    }

    /// Each symbol's current price (its last trade's), to continue from in a later run.
    pub fn prices(&self) -> Vec<(&'static str, f64)> {
        self.symbols
            .iter()
            .map(|s| (s.spec.symbol, s.log_price.exp()))
            .collect()
    }

    pub fn regime(&self, symbol: &str) -> Option<Regime> {
        self.symbols
            .iter()
            .find(|s| s.spec.symbol == symbol)
            .map(|s| s.regime)
    }

    /// Forces every symbol into `regime` (the generator's "switch regime" control); the
    /// Markov chain continues from there.
    pub fn force_regime(&mut self, regime: Regime) {
        for s in &mut self.symbols {
            s.regime = regime;
        }
    }

    /// Keeps every symbol in `regime` from the next minute until released with `None`; the
    /// Markov chain then continues from the held regime. The chain's random draws go on
    /// while held, so the rest of the stream does not depend on how long a hold lasted.
    pub fn hold_regime(&mut self, regime: Option<Regime>) {
        if let Some(r) = regime {
            self.force_regime(r);
        }
        self.held = regime;
    }

    /// The regime every symbol is held in, if any.
    pub fn held_regime(&self) -> Option<Regime> {
        self.held
    }

    /// Plants anomalies at `rate` (0-1) and `severity` from the next simulated minute on.
    pub fn set_anomalies(&mut self, rate: f64, severity: AnomalySeverity) {
        self.anomaly_rate = rate.clamp(0.0, 1.0);
        self.anomaly_severity = severity;
    }

    /// The share and severity of the anomalies planted now.
    pub fn anomalies(&self) -> (f64, AnomalySeverity) {
        (self.anomaly_rate, self.anomaly_severity)
    }

    /// Simulates one event-time minute for every symbol; trades come sorted by time.
    pub fn next_minute(&mut self) -> Vec<Trade> {
        let start = self.minute_start_ms;
        let mut trades = Vec::new();
        for state in &mut self.symbols {
            simulate_minute(
                state,
                start,
                self.anomaly_rate,
                self.anomaly_severity,
                &mut trades,
            );
            if let Some(r) = self.held {
                state.regime = r;
            }
        }
        trades.sort_by_key(|t| t.ts_ms);
        self.minute_start_ms += MINUTE_MS;
        trades
    }
}

/// FNV-1a: a stable hash (unlike std's) so a symbol keeps its stream across releases.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn simulate_minute(
    state: &mut SymbolState,
    start_ms: i64,
    anomaly_rate: f64,
    severity: AnomalySeverity,
    out: &mut Vec<Trade>,
) {
    let regime = state.regime;
    let spec = state.spec;
    let activity = regime.activity_multiplier();
    let sigma = spec.vol_per_minute * regime.vol_multiplier();
    let mean_trades = spec.trades_per_second * 60.0 * activity;
    let n = Poisson::new(mean_trades)
        .map_or(1, |p| p.sample(&mut state.rng) as usize)
        .max(1);

    let mut offsets: Vec<i64> = (0..n)
        .map(|_| state.rng.random_range(0..MINUTE_MS))
        .collect();
    offsets.sort_unstable();
    // Each trade carries an equal share of the minute's variance, so the minute's log return
    // is N(-sigma^2/2, sigma^2) whatever the trade count.
    let step = Normal::new(-0.5 * sigma * sigma / n as f64, sigma / (n as f64).sqrt()).ok();
    let size_dist = LogNormal::new((spec.median_size * activity).ln(), 0.8).ok();
    for offset in offsets {
        let dr = step.map_or(0.0, |d| d.sample(&mut state.rng));
        state.log_price += dr;
        let mut price = state.log_price.exp();
        let mut size = size_dist.map_or(spec.median_size, |d| d.sample(&mut state.rng));
        let side = if dr > 0.0 || (dr == 0.0 && state.rng.random_bool(0.5)) {
            Side::Buy
        } else {
            Side::Sell
        };
        let mut anomaly = None;
        if anomaly_rate > 0.0 && state.rng.random_bool(anomaly_rate) {
            if state.rng.random_bool(0.5) {
                let jump = state.rng.random_range(severity.jump())
                    * if state.rng.random_bool(0.5) {
                        1.0
                    } else {
                        -1.0
                    };
                price *= 1.0 + jump;
                anomaly = Some(AnomalyKind::PriceJump);
            } else {
                size = spec.median_size * state.rng.random_range(severity.size_multiple());
                anomaly = Some(AnomalyKind::OutsizedTrade);
            }
        }
        state.seq += 1;
        out.push(Trade {
            symbol: spec.symbol,
            seq: state.seq,
            ts_ms: start_ms + offset,
            price,
            size,
            side,
            regime,
            anomaly,
        });
    }
    state.regime = next_regime(regime, state.rng.random::<f64>());
}

fn next_regime(current: Regime, u: f64) -> Regime {
    let mut acc = 0.0;
    for (p, r) in current.transitions().into_iter().zip(Regime::ALL) {
        acc += p;
        if u < acc {
            return r;
        }
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run(config: &MarketConfig, minutes: usize) -> Vec<Trade> {
        let mut market = Market::new(config);
        (0..minutes).flat_map(|_| market.next_minute()).collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_trades() {
        let config = MarketConfig::new(7);
        assert_eq!(run(&config, 30), run(&config, 30));
        assert_ne!(run(&config, 30), run(&MarketConfig::new(8), 30));
    }

    #[test]
    fn a_symbols_trades_do_not_depend_on_the_other_symbols() {
        let all = MarketConfig::new(7);
        let mut eth_only = MarketConfig::new(7);
        eth_only.symbols = vec![*symbol_spec("ETH-USD").expect("known")];
        let from_all: Vec<_> = run(&all, 20)
            .into_iter()
            .filter(|t| t.symbol == "ETH-USD")
            .collect();
        assert_eq!(from_all, run(&eth_only, 20));
    }

    #[test]
    fn a_market_given_start_prices_continues_from_them() {
        let mut config = MarketConfig::new(7);
        config.start_prices = vec![("BTC-USD".to_owned(), 80_000.0)];
        let trades = run(&config, 1);
        let btc = trades
            .iter()
            .find(|t| t.symbol == "BTC-USD")
            .expect("a trade");
        let eth = trades
            .iter()
            .find(|t| t.symbol == "ETH-USD")
            .expect("a trade");
        // One minute moves a price by well under 5%, so each starts where it was told to.
        assert!((btc.price / 80_000.0 - 1.0).abs() < 0.05, "{}", btc.price);
        assert!((eth.price / 3_200.0 - 1.0).abs() < 0.05, "{}", eth.price);
    }

    #[test]
    fn a_held_regime_lasts_until_released_and_the_chain_goes_on_from_it() {
        let mut market = Market::new(&MarketConfig::new(5));
        market.hold_regime(Some(Regime::Turbulent));
        for _ in 0..200 {
            let trades = market.next_minute();
            assert!(trades.iter().all(|t| t.regime == Regime::Turbulent));
        }
        assert_eq!(market.held_regime(), Some(Regime::Turbulent));
        market.hold_regime(None);
        // Released: turbulence ends by itself (a 0.92 chance a minute of staying).
        let left = (0..200).any(|_| {
            market
                .next_minute()
                .iter()
                .any(|t| t.regime != Regime::Turbulent)
        });
        assert!(
            left,
            "every symbol stayed turbulent for 200 minutes after release"
        );
    }

    #[test]
    fn turbulent_minutes_are_more_volatile_than_calm_ones() {
        let realised = |regime: Regime| {
            let mut config = MarketConfig::new(3);
            config.symbols = vec![*symbol_spec("BTC-USD").expect("known")];
            let mut market = Market::new(&config);
            let mut closes = vec![];
            for _ in 0..300 {
                market.force_regime(regime);
                closes.push(market.next_minute().last().expect("a trade").price);
            }
            let r: Vec<f64> = closes.windows(2).map(|w| (w[1] / w[0]).ln()).collect();
            (r.iter().map(|x| x * x).sum::<f64>() / r.len() as f64).sqrt()
        };
        let (calm, turbulent) = (realised(Regime::Calm), realised(Regime::Turbulent));
        assert!(turbulent > 4.0 * calm, "calm {calm}, turbulent {turbulent}");
        // Within 20% of the configured volatility.
        assert!(
            (turbulent / (0.0012 * 3.0) - 1.0).abs() < 0.2,
            "turbulent {turbulent}"
        );
    }

    #[test]
    fn anomalies_are_labelled_at_about_the_configured_rate() {
        let mut config = MarketConfig::new(11);
        config.anomaly_rate = 0.01;
        let trades = run(&config, 60);
        let labelled = trades.iter().filter(|t| t.anomaly.is_some()).count() as f64;
        let rate = labelled / trades.len() as f64;
        assert!((0.005..0.02).contains(&rate), "rate {rate}");
        assert!(trades.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms));
    }

    #[test]
    fn mild_anomalies_stay_in_the_warning_band_and_severe_ones_go_past_critical() {
        for (severity, jumps, sizes) in [
            (AnomalySeverity::Mild, 0.025..0.045, 30.0..70.0),
            (AnomalySeverity::Severe, 0.055..0.105, 120.0..200.0),
        ] {
            let mut config = MarketConfig::new(5);
            config.anomaly_rate = 0.02;
            config.anomaly_severity = severity;
            let trades = run(&config, 120);
            let median = |symbol: &str| {
                DEFAULT_SYMBOLS
                    .iter()
                    .find(|s| s.symbol == symbol)
                    .expect("a default symbol")
                    .median_size
            };
            let mut last: HashMap<&str, &Trade> = HashMap::new();
            let (mut checked_jumps, mut checked_sizes) = (0, 0);
            for t in &trades {
                match t.anomaly {
                    Some(AnomalyKind::OutsizedTrade) => {
                        let multiple = t.size / median(t.symbol);
                        assert!(sizes.contains(&multiple), "{severity:?}: {multiple}");
                        checked_sizes += 1;
                    }
                    Some(AnomalyKind::PriceJump) => {
                        // Against the symbol's previous print, when that one was on the path.
                        if let Some(prev) = last.get(t.symbol).filter(|p| p.anomaly.is_none()) {
                            let off = (t.price / prev.price - 1.0).abs();
                            assert!(jumps.contains(&off), "{severity:?}: {off}");
                            checked_jumps += 1;
                        }
                    }
                    None => {}
                }
                last.insert(t.symbol, t);
            }
            assert!(
                checked_jumps > 10 && checked_sizes > 10,
                "{checked_jumps} {checked_sizes}"
            );
        }
    }
}
