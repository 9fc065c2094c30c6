//! The generator's record stream: the simulated market's trades in venue formats, with bad
//! records, late trades and unknown symbols planted at configured rates. A pure function of
//! the seed and the mix (wall time and pacing play no part), so the same seed gives the same
//! records in the same order.

use std::collections::VecDeque;

use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use tidewatch_market_sim::{AnomalyKind, AnomalySeverity, Market, MarketConfig, Regime, Trade};
use tidewatch_schema::{encode_raw, Venue};

/// How long a late trade is held back, in event time: far beyond any sensible allowed
/// lateness, so the aggregate stage must see it as late.
pub const LATE_DELAY_MS: i64 = 3 * 60_000;
/// The symbol planted as unknown: not in the instruments table.
pub const UNKNOWN_SYMBOL: &str = "ZZZ-USD";

/// What one generated record is; the `tidewatch.sim.kind` header says so downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A well-formed trade.
    Valid,
    /// A well-formed trade labelled as an anomaly (price jump or outsized size).
    Anomaly,
    /// Not JSON (a truncated record).
    Malformed,
    /// The price field is missing.
    MissingField,
    /// A negative price.
    OutOfRange,
    /// Well-formed, for a symbol no instrument exists for.
    UnknownSymbol,
    /// A well-formed trade published minutes after later trades of its symbol.
    Late,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Valid,
        Kind::Anomaly,
        Kind::Malformed,
        Kind::MissingField,
        Kind::OutOfRange,
        Kind::UnknownSymbol,
        Kind::Late,
    ];
    const BAD: [Kind; 4] = [
        Kind::Malformed,
        Kind::MissingField,
        Kind::OutOfRange,
        Kind::UnknownSymbol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Valid => "valid",
            Kind::Anomaly => "anomaly",
            Kind::Malformed => "malformed",
            Kind::MissingField => "missing_field",
            Kind::OutOfRange => "out_of_range",
            Kind::UnknownSymbol => "unknown_symbol",
            Kind::Late => "late",
        }
    }
}

pub fn anomaly_str(kind: AnomalyKind) -> &'static str {
    match kind {
        AnomalyKind::PriceJump => "price_jump",
        AnomalyKind::OutsizedTrade => "outsized_trade",
    }
}

/// Shares of records planted as bad (split evenly over the four bad kinds) and as late.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mix {
    pub bad_fraction: f64,
    pub late_fraction: f64,
}

/// One record, ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub kind: Kind,
    pub venue: Venue,
    /// The message key: the trade's symbol, so a symbol's records stay in order.
    pub symbol: String,
    pub event_time_ms: i64,
    pub payload: Vec<u8>,
    pub anomaly: Option<AnomalyKind>,
}

pub struct RecordStream {
    market: Market,
    upcoming: VecDeque<Trade>,
    rng: ChaCha8Rng,
    mix: Mix,
    /// Late trades waiting for their symbol to move on by [`LATE_DELAY_MS`].
    held: Vec<(Trade, Venue)>,
    ready: VecDeque<Generated>,
    /// Trade ids of the unknown symbol: its own sequence, as a venue would number it.
    unknown_seq: u64,
}

impl std::fmt::Debug for RecordStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordStream")
            .field("market", &self.market)
            .field("mix", &self.mix)
            .finish_non_exhaustive()
    }
}

impl RecordStream {
    pub fn new(config: &MarketConfig, mix: Mix) -> Self {
        // The planting decisions draw from their own stream, apart from the market's.
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        rng.set_stream(u64::from_be_bytes(*b"generatr"));
        Self {
            market: Market::new(config),
            upcoming: VecDeque::new(),
            rng,
            mix,
            held: Vec::new(),
            ready: VecDeque::new(),
            unknown_seq: 0,
        }
    }

    /// Changes the share of bad records from the next record on (a bad-record burst).
    pub fn set_bad_fraction(&mut self, fraction: f64) {
        self.mix.bad_fraction = fraction;
    }

    /// Plants anomalies at `rate` and `severity` from the next simulated minute.
    pub fn set_anomalies(&mut self, rate: f64, severity: AnomalySeverity) {
        self.market.set_anomalies(rate, severity);
    }

    /// Holds every symbol's volatility regime from the next simulated minute, or releases
    /// the hold (`None`).
    pub fn hold_regime(&mut self, regime: Option<Regime>) {
        self.market.hold_regime(regime);
    }

    pub fn regime(&self, symbol: &str) -> Option<Regime> {
        self.market.regime(symbol)
    }

    /// Where a later run continues this market: the first minute not yet simulated (so
    /// nothing published or still buffered here can be repeated) and the current prices.
    pub fn continuation(&self) -> crate::Resume {
        crate::Resume {
            start_ms: self.market.now_ms(),
            prices: self
                .market
                .prices()
                .into_iter()
                .map(|(symbol, price)| (symbol.to_owned(), price))
                .collect(),
        }
    }

    /// The next record to publish.
    pub fn next_record(&mut self) -> Generated {
        loop {
            if let Some(g) = self.ready.pop_front() {
                return g;
            }
            let trade = self.next_trade();
            let venue = if self.rng.random_bool(0.5) {
                Venue::Alpha
            } else {
                Venue::Beta
            };
            let draw: f64 = self.rng.random();
            let generated = if draw < self.mix.bad_fraction {
                let kind = Kind::BAD[self.rng.random_range(0..Kind::BAD.len())];
                if kind == Kind::UnknownSymbol {
                    self.unknown_seq += 1;
                }
                plant(kind, venue, &trade, self.unknown_seq)
            } else if draw < self.mix.bad_fraction + self.mix.late_fraction {
                self.held.push((trade, venue));
                continue;
            } else {
                let kind = if trade.anomaly.is_some() {
                    Kind::Anomaly
                } else {
                    Kind::Valid
                };
                encode(kind, venue, &trade)
            };
            // Held trades of this symbol whose delay has passed follow the next trade that
            // reaches the windows downstream (bad records never do).
            if matches!(generated.kind, Kind::Valid | Kind::Anomaly) {
                let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
                    .into_iter()
                    .partition(|(t, _)| {
                        t.symbol == trade.symbol && t.ts_ms + LATE_DELAY_MS <= trade.ts_ms
                    });
                self.held = keep;
                self.ready
                    .extend(due.iter().map(|(t, v)| encode(Kind::Late, *v, t)));
            }
            return generated;
        }
    }

    fn next_trade(&mut self) -> Trade {
        loop {
            if let Some(t) = self.upcoming.pop_front() {
                return t;
            }
            self.upcoming.extend(self.market.next_minute());
        }
    }
}

fn encode(kind: Kind, venue: Venue, trade: &Trade) -> Generated {
    Generated {
        kind,
        venue,
        symbol: trade.symbol.to_owned(),
        event_time_ms: trade.ts_ms,
        payload: encode_raw(venue, trade).to_string().into_bytes(),
        anomaly: trade.anomaly,
    }
}

/// A bad record made from `trade`, as a faulty venue feed would send it; `unknown_seq`
/// numbers the unknown symbol's trades.
fn plant(kind: Kind, venue: Venue, trade: &Trade, unknown_seq: u64) -> Generated {
    let mut value = encode_raw(venue, trade);
    let price_field = match venue {
        Venue::Alpha => "px",
        Venue::Beta => "price_e8",
    };
    let mut symbol = trade.symbol.to_owned();
    let payload = match kind {
        Kind::Malformed => {
            let mut text = value.to_string();
            text.truncate(text.len() / 2);
            text
        }
        Kind::MissingField => {
            if let Some(o) = value.as_object_mut() {
                o.remove(price_field);
            }
            value.to_string()
        }
        Kind::OutOfRange => {
            if let Some(p) = value.get_mut(price_field) {
                *p = match venue {
                    Venue::Alpha => serde_json::json!(-trade.price),
                    Venue::Beta => serde_json::json!(-((trade.price * 1e8).round() as i64)),
                };
            }
            value.to_string()
        }
        Kind::UnknownSymbol => {
            symbol = UNKNOWN_SYMBOL.to_owned();
            let (field, name, id_field, id) = match venue {
                Venue::Alpha => (
                    "sym",
                    UNKNOWN_SYMBOL.to_owned(),
                    "id",
                    serde_json::json!(unknown_seq.to_string()),
                ),
                Venue::Beta => (
                    "instrument",
                    UNKNOWN_SYMBOL.replacen('-', "/", 1),
                    "trade_id",
                    serde_json::json!(unknown_seq),
                ),
            };
            if let Some(o) = value.as_object_mut() {
                o.insert(field.to_owned(), serde_json::json!(name));
                o.insert(id_field.to_owned(), id);
            }
            value.to_string()
        }
        Kind::Valid | Kind::Anomaly | Kind::Late => value.to_string(),
    };
    Generated {
        kind,
        venue,
        symbol,
        event_time_ms: trade.ts_ms,
        payload: payload.into_bytes(),
        anomaly: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tidewatch_schema::decode_raw;

    fn stream(seed: u64) -> RecordStream {
        let mut config = MarketConfig::new(seed);
        config.anomaly_rate = 0.01;
        RecordStream::new(
            &config,
            Mix {
                bad_fraction: 0.04,
                late_fraction: 0.02,
            },
        )
    }

    #[test]
    fn the_same_seed_gives_the_same_records() {
        let (mut a, mut b, mut c) = (stream(1), stream(1), stream(2));
        let ra: Vec<_> = (0..5_000).map(|_| a.next_record()).collect();
        let rb: Vec<_> = (0..5_000).map(|_| b.next_record()).collect();
        let rc: Vec<_> = (0..5_000).map(|_| c.next_record()).collect();
        assert_eq!(ra, rb);
        assert_ne!(ra, rc);
    }

    #[test]
    fn planted_records_are_what_their_kind_says() {
        let mut s = stream(3);
        let mut seen: HashMap<Kind, usize> = HashMap::new();
        let mut newest: HashMap<String, i64> = HashMap::new();
        for _ in 0..20_000 {
            let g = s.next_record();
            *seen.entry(g.kind).or_default() += 1;
            let decoded = decode_raw(&g.payload, 0);
            match g.kind {
                Kind::Valid | Kind::Anomaly | Kind::Late => {
                    let t = decoded.expect("valid kinds decode");
                    assert_eq!(t.symbol, g.symbol);
                    assert_eq!(t.event_time_ms, g.event_time_ms);
                    if g.kind != Kind::Late {
                        assert_eq!(g.kind == Kind::Anomaly, g.anomaly.is_some());
                    }
                }
                Kind::UnknownSymbol => {
                    assert_eq!(decoded.expect("decodes").symbol, UNKNOWN_SYMBOL);
                }
                Kind::Malformed => assert_eq!(decoded.unwrap_err().code(), "malformed_record"),
                Kind::MissingField => assert_eq!(decoded.unwrap_err().code(), "missing_price"),
                Kind::OutOfRange => assert_eq!(decoded.unwrap_err().code(), "out_of_range"),
            }
            let last = newest.entry(g.symbol.clone()).or_insert(i64::MIN);
            if g.kind == Kind::Late {
                assert!(
                    g.event_time_ms + LATE_DELAY_MS <= *last,
                    "a late trade comes after its symbol moved on by the delay"
                );
            } else if matches!(g.kind, Kind::Valid | Kind::Anomaly) {
                assert!(
                    g.event_time_ms >= *last,
                    "on-time records are in event-time order"
                );
                *last = g.event_time_ms;
            }
        }
        for kind in Kind::ALL {
            assert!(
                seen.get(&kind).copied().unwrap_or(0) > 0,
                "{kind:?} planted"
            );
        }
        let late = seen[&Kind::Late] as f64 / 20_000.0;
        assert!((0.01..0.03).contains(&late), "late share {late}");
    }
}
