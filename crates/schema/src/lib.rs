//! The messages on Tidewatch's topics and how raw input becomes them.
//!
//! Two venues publish trades in different shapes (`trades.raw`):
//!
//! - **alpha**: `{"venue":"alpha","id":"A-1","sym":"BTC-USD","px":65000.5,"qty":0.05,
//!   "side":"buy","ts":"2026-01-01T00:00:00.123Z"}`: decimal price and size, RFC 3339 time.
//! - **beta**: `{"exchange":"beta","trade_id":17,"instrument":"BTC/USD","price_e8":6500050000000,
//!   "size_e8":5000000,"taker_side":"B","time_us":1767225600123000}`: fixed-point integers
//!   scaled by 10^8, a slash in the symbol, microseconds since the epoch.
//!
//! [`decode_raw`] turns either into a canonical [`Trade`] (`trades.normalized`) or a
//! [`Rejection`] with a bounded code and the offending field. Nothing here panics on input.

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub const TOPIC_TRADES_RAW: &str = "trades.raw";
pub const TOPIC_TRADES_NORMALIZED: &str = "trades.normalized";
pub const TOPIC_TRADES_ENRICHED: &str = "trades.enriched";
pub const TOPIC_BARS: &str = "bars.1m";
pub const TOPIC_FEATURES: &str = "features.1m";

/// Headers the generator puts on each raw record to say what it injected; every stage
/// forwards them, so checks downstream (enrich's anomaly confusion matrix, the pipeline
/// test's accounting) can compare what happened with what was planted.
pub const SIM_HEADER_PREFIX: &str = "tidewatch.sim.";
/// What the record is: `valid`, `anomaly`, `malformed`, `missing_field`, `out_of_range`,
/// `unknown_symbol` or `late`.
pub const HEADER_SIM_KIND: &str = "tidewatch.sim.kind";
/// The planted anomaly, when there is one: `price_jump` or `outsized_trade`.
pub const HEADER_SIM_ANOMALY: &str = "tidewatch.sim.anomaly";

/// Fixed-point scale of venue beta's prices and sizes.
const BETA_SCALE: f64 = 1e8;
/// Event times outside [2000-01-01, 2100-01-01) are treated as corrupt.
const MIN_EVENT_MS: i64 = 946_684_800_000;
const MAX_EVENT_MS: i64 = 4_102_444_800_000;
const MAX_SYMBOL_LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Venue {
    Alpha,
    Beta,
}

impl Venue {
    pub fn as_str(self) -> &'static str {
        match self {
            Venue::Alpha => "alpha",
            Venue::Beta => "beta",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Buy,
    Sell,
}

/// The canonical trade every stage after `normalize` works with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trade {
    /// `<venue>:<symbol>:<venue's id>`: venues number trades per instrument, so the symbol
    /// is part of the identity.
    pub trade_id: String,
    pub venue: Venue,
    /// `BASE-QUOTE`, e.g. `BTC-USD` (beta's `BTC/USD` is rewritten).
    pub symbol: String,
    pub price: f64,
    pub size: f64,
    pub side: Side,
    /// When the trade happened, Unix milliseconds.
    pub event_time_ms: i64,
    /// When the pipeline first saw it (the raw message's Kafka timestamp), Unix milliseconds.
    pub ingest_time_ms: i64,
}

/// A canonical trade with its instrument's reference data and what anomaly detection found
/// (`trades.enriched`). Anomalous trades stay in the stream, flagged: the venue did print them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrichedTrade {
    #[serde(flatten)]
    pub trade: Trade,
    pub asset_class: String,
    pub base: String,
    pub quote: String,
    pub tick_size: f64,
    pub lot_size: f64,
    pub anomalies: Vec<Anomaly>,
}

/// One finding of enrich's anomaly detection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    /// `price_band`, `price_jump` or `outsized_size`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `warning` or `critical`.
    pub severity: String,
    /// How far off: relative price deviation, or size in multiples of the typical size.
    pub score: f64,
}

/// One closed OHLC bar (`bars.1m`). Its identity is (symbol, interval, start): a replay
/// produces the same bar again, which a keyed upsert absorbs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BarRecord {
    pub symbol: String,
    pub interval_seconds: u32,
    /// Window start (inclusive) and end (exclusive), Unix milliseconds of event time.
    pub start_ms: i64,
    pub end_ms: i64,
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    pub volume: f64,
    /// Volume-weighted average price.
    pub vwap: f64,
    pub trade_count: u64,
}

/// The model's features as of one closed bar (`features.1m`), computed exactly as in
/// training by the model crate's `FeatureBuilder`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureRecord {
    pub symbol: String,
    pub interval_seconds: u32,
    /// The bar these features were computed at (its start and end).
    pub bar_start_ms: i64,
    pub bar_end_ms: i64,
    /// The bar's close, so outcomes can be judged from later features alone.
    pub close: f64,
    pub features: tidewatch_model::Features,
}

pub const TOPIC_PREDICTIONS: &str = "predictions";

/// One prediction made from one feature vector (`predictions`): will realised volatility
/// over the next `horizon_minutes` bars exceed the model's spike threshold?
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionRecord {
    pub symbol: String,
    /// The bar the features were computed at.
    pub bar_start_ms: i64,
    pub bar_end_ms: i64,
    pub horizon_minutes: u64,
    pub model_version: String,
    /// The static model's variant (`ml` or `baseline`).
    pub variant: String,
    pub probability: f64,
    pub spike: bool,
    /// The online model's view of the same features.
    pub online_probability: f64,
    pub online_spike: bool,
}

pub const TOPIC_OUTCOMES: &str = "outcomes";

/// What the market did over one prediction's horizon (`outcomes`), published by
/// prediction-consumer when the bar `horizon_minutes` later arrives. Keyed like the
/// prediction it judges, (symbol, bar_start_ms), so the two join in the database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    pub symbol: String,
    /// The predicted bar (the prediction's `bar_start_ms`).
    pub bar_start_ms: i64,
    pub horizon_minutes: u64,
    /// The later bar whose features revealed the outcome.
    pub judged_by_bar_start_ms: i64,
    /// Realised volatility over the horizon (the judging bar's `vol_5m`).
    pub realised_volatility: f64,
    /// The model's spike threshold the volatility was compared with.
    pub spike_threshold: f64,
    /// Whether a spike really happened.
    pub spike: bool,
}

/// The fields a rejection can name: a fixed set, so it can be a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    Record,
    Venue,
    TradeId,
    Symbol,
    Price,
    Size,
    Side,
    EventTime,
}

impl Field {
    pub const ALL: [Field; 8] = [
        Field::Record,
        Field::Venue,
        Field::TradeId,
        Field::Symbol,
        Field::Price,
        Field::Size,
        Field::Side,
        Field::EventTime,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Field::Record => "record",
            Field::Venue => "venue",
            Field::TradeId => "trade_id",
            Field::Symbol => "symbol",
            Field::Price => "price",
            Field::Size => "size",
            Field::Side => "side",
            Field::EventTime => "event_time",
        }
    }
}

/// What was wrong, as a bounded code (the dead-letter header and metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Issue {
    /// Not JSON, or not an object.
    Malformed,
    /// Neither venue's shape.
    UnknownVenue,
    Missing,
    /// Present but of the wrong type or format.
    Invalid,
    /// Well-formed but impossible (non-positive price, time in another century).
    OutOfRange,
}

impl Issue {
    pub const ALL: [Issue; 5] = [
        Issue::Malformed,
        Issue::UnknownVenue,
        Issue::Missing,
        Issue::Invalid,
        Issue::OutOfRange,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Issue::Malformed => "malformed",
            Issue::UnknownVenue => "unknown_venue",
            Issue::Missing => "missing",
            Issue::Invalid => "invalid",
            Issue::OutOfRange => "out_of_range",
        }
    }
}

/// Why a raw record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}", field = .field.as_str())]
pub struct Rejection {
    pub issue: Issue,
    pub field: Field,
    pub reason: String,
}

impl Rejection {
    fn new(issue: Issue, field: Field, reason: impl Into<String>) -> Self {
        Self {
            issue,
            field,
            reason: reason.into(),
        }
    }

    /// The bounded error code for the dead-letter header, e.g. `missing_price`.
    pub fn code(&self) -> &'static str {
        use Field::*;
        use Issue::*;
        match (self.issue, self.field) {
            (Malformed, _) => "malformed_record",
            (UnknownVenue, _) => "unknown_venue",
            (Missing, TradeId) => "missing_trade_id",
            (Missing, Symbol) => "missing_symbol",
            (Missing, Price) => "missing_price",
            (Missing, Size) => "missing_size",
            (Missing, Side) => "missing_side",
            (Missing, EventTime) => "missing_event_time",
            (Missing, _) => "missing_field",
            (Invalid, _) => "invalid_field",
            (OutOfRange, _) => "out_of_range",
        }
    }
}

type Object = serde_json::Map<String, serde_json::Value>;

fn field<'a>(obj: &'a Object, name: &str, f: Field) -> Result<&'a serde_json::Value, Rejection> {
    match obj.get(name) {
        None | Some(serde_json::Value::Null) => Err(Rejection::new(
            Issue::Missing,
            f,
            format!("{name} is missing"),
        )),
        Some(v) => Ok(v),
    }
}

fn number(obj: &Object, name: &str, f: Field) -> Result<f64, Rejection> {
    field(obj, name, f)?
        .as_f64()
        .ok_or_else(|| Rejection::new(Issue::Invalid, f, format!("{name} is not a number")))
}

fn integer(obj: &Object, name: &str, f: Field) -> Result<i64, Rejection> {
    field(obj, name, f)?
        .as_i64()
        .ok_or_else(|| Rejection::new(Issue::Invalid, f, format!("{name} is not an integer")))
}

fn string<'a>(obj: &'a Object, name: &str, f: Field) -> Result<&'a str, Rejection> {
    field(obj, name, f)?
        .as_str()
        .ok_or_else(|| Rejection::new(Issue::Invalid, f, format!("{name} is not a string")))
}

fn positive(value: f64, f: Field) -> Result<f64, Rejection> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(Rejection::new(
            Issue::OutOfRange,
            f,
            format!("{} must be positive, got {value}", f.as_str()),
        ))
    }
}

fn symbol(raw: &str) -> Result<String, Rejection> {
    let s = raw.replace('/', "-").to_ascii_uppercase();
    let ok = (1..=MAX_SYMBOL_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(s)
    } else {
        Err(Rejection::new(
            Issue::Invalid,
            Field::Symbol,
            "symbol must be 1-32 characters of A-Z, 0-9, '.', '_', '-' or '/'",
        ))
    }
}

fn event_time(ms: i64) -> Result<i64, Rejection> {
    if (MIN_EVENT_MS..MAX_EVENT_MS).contains(&ms) {
        Ok(ms)
    } else {
        Err(Rejection::new(
            Issue::OutOfRange,
            Field::EventTime,
            format!("event time {ms} ms is outside 2000-2100"),
        ))
    }
}

fn decode_alpha(obj: &Object, ingest_time_ms: i64) -> Result<Trade, Rejection> {
    let id = string(obj, "id", Field::TradeId)?;
    let sym = symbol(string(obj, "sym", Field::Symbol)?)?;
    if id.is_empty() || id.len() > 64 {
        return Err(Rejection::new(
            Issue::Invalid,
            Field::TradeId,
            "id must be 1-64 characters",
        ));
    }
    let price = positive(number(obj, "px", Field::Price)?, Field::Price)?;
    let size = positive(number(obj, "qty", Field::Size)?, Field::Size)?;
    let side = match string(obj, "side", Field::Side)? {
        "buy" => Side::Buy,
        "sell" => Side::Sell,
        other => {
            return Err(Rejection::new(
                Issue::Invalid,
                Field::Side,
                format!("side {other:?} is not buy or sell"),
            ))
        }
    };
    let ts = string(obj, "ts", Field::EventTime)?;
    let parsed = OffsetDateTime::parse(ts, &Rfc3339).map_err(|e| {
        Rejection::new(
            Issue::Invalid,
            Field::EventTime,
            format!("ts is not RFC 3339: {e}"),
        )
    })?;
    let ms = (parsed.unix_timestamp_nanos() / 1_000_000) as i64;
    Ok(Trade {
        trade_id: format!("alpha:{sym}:{id}"),
        venue: Venue::Alpha,
        symbol: sym.clone(),
        price,
        size,
        side,
        event_time_ms: event_time(ms)?,
        ingest_time_ms,
    })
}

fn decode_beta(obj: &Object, ingest_time_ms: i64) -> Result<Trade, Rejection> {
    let id = integer(obj, "trade_id", Field::TradeId)?;
    let sym = symbol(string(obj, "instrument", Field::Symbol)?)?;
    let price = positive(
        integer(obj, "price_e8", Field::Price)? as f64 / BETA_SCALE,
        Field::Price,
    )?;
    let size = positive(
        integer(obj, "size_e8", Field::Size)? as f64 / BETA_SCALE,
        Field::Size,
    )?;
    let side = match string(obj, "taker_side", Field::Side)? {
        "B" => Side::Buy,
        "S" => Side::Sell,
        other => {
            return Err(Rejection::new(
                Issue::Invalid,
                Field::Side,
                format!("taker_side {other:?} is not B or S"),
            ))
        }
    };
    let us = integer(obj, "time_us", Field::EventTime)?;
    Ok(Trade {
        trade_id: format!("beta:{sym}:{id}"),
        venue: Venue::Beta,
        symbol: sym.clone(),
        price,
        size,
        side,
        event_time_ms: event_time(us.div_euclid(1000))?,
        ingest_time_ms,
    })
}

/// Decodes and validates one raw record of either venue.
pub fn decode_raw(payload: &[u8], ingest_time_ms: i64) -> Result<Trade, Rejection> {
    let value: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|e| Rejection::new(Issue::Malformed, Field::Record, format!("not JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| Rejection::new(Issue::Malformed, Field::Record, "not a JSON object"))?;
    match (
        obj.get("venue").and_then(|v| v.as_str()),
        obj.get("exchange").and_then(|v| v.as_str()),
    ) {
        (Some("alpha"), _) => decode_alpha(obj, ingest_time_ms),
        (_, Some("beta")) => decode_beta(obj, ingest_time_ms),
        _ => Err(Rejection::new(
            Issue::UnknownVenue,
            Field::Venue,
            "neither venue alpha nor exchange beta",
        )),
    }
}

/// Encodes a simulated trade in a venue's raw format (the generator's side of the contract).
pub fn encode_raw(venue: Venue, trade: &tidewatch_market_sim::Trade) -> serde_json::Value {
    let side_buy = trade.side == tidewatch_market_sim::Side::Buy;
    match venue {
        Venue::Alpha => {
            let ts = OffsetDateTime::from_unix_timestamp_nanos(i128::from(trade.ts_ms) * 1_000_000)
                .ok()
                .and_then(|t| t.format(&Rfc3339).ok())
                .unwrap_or_default();
            serde_json::json!({
                "venue": "alpha",
                "id": trade.seq.to_string(),
                "sym": trade.symbol,
                "px": trade.price,
                "qty": trade.size,
                "side": if side_buy { "buy" } else { "sell" },
                "ts": ts,
            })
        }
        Venue::Beta => serde_json::json!({
            "exchange": "beta",
            "trade_id": trade.seq,
            "instrument": trade.symbol.replacen('-', "/", 1),
            "price_e8": (trade.price * BETA_SCALE).round() as i64,
            "size_e8": (trade.size * BETA_SCALE).round() as i64,
            "taker_side": if side_buy { "B" } else { "S" },
            "time_us": trade.ts_ms * 1000,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidewatch_market_sim::{Market, MarketConfig};

    fn sim_trades() -> Vec<tidewatch_market_sim::Trade> {
        let mut market = Market::new(&MarketConfig::new(5));
        (0..3).flat_map(|_| market.next_minute()).collect()
    }

    #[test]
    fn both_venue_formats_decode_to_the_same_canonical_trade() {
        for t in sim_trades().iter().take(500) {
            let a = decode_raw(encode_raw(Venue::Alpha, t).to_string().as_bytes(), 7)
                .expect("alpha decodes");
            let b = decode_raw(encode_raw(Venue::Beta, t).to_string().as_bytes(), 7)
                .expect("beta decodes");
            assert_eq!(a.symbol, t.symbol);
            assert_eq!(b.symbol, t.symbol);
            assert_eq!((a.event_time_ms, b.event_time_ms), (t.ts_ms, t.ts_ms));
            assert_eq!(a.side, b.side);
            assert!((a.price - t.price).abs() <= t.price * 1e-12);
            assert!((b.price - t.price).abs() <= 1e-8, "beta keeps 8 decimals");
            assert!((b.size - t.size).abs() <= 1e-8);
            assert_eq!(a.ingest_time_ms, 7);
        }
    }

    #[test]
    fn each_kind_of_bad_record_is_rejected_with_its_field_and_code() {
        let good = r#"{"venue":"alpha","id":"1","sym":"BTC-USD","px":1.5,"qty":2,"side":"buy","ts":"2026-01-01T00:00:00Z"}"#;
        assert!(decode_raw(good.as_bytes(), 0).is_ok());
        let cases: &[(&str, Issue, Field, &str)] = &[
            (
                "not json",
                Issue::Malformed,
                Field::Record,
                "malformed_record",
            ),
            ("[1,2]", Issue::Malformed, Field::Record, "malformed_record"),
            (
                r#"{"venue":"gamma"}"#,
                Issue::UnknownVenue,
                Field::Venue,
                "unknown_venue",
            ),
            (
                &good.replace(r#""px":1.5,"#, ""),
                Issue::Missing,
                Field::Price,
                "missing_price",
            ),
            (
                &good.replace(r#""px":1.5"#, r#""px":null"#),
                Issue::Missing,
                Field::Price,
                "missing_price",
            ),
            (
                &good.replace(r#""px":1.5"#, r#""px":-1.5"#),
                Issue::OutOfRange,
                Field::Price,
                "out_of_range",
            ),
            (
                &good.replace(r#""qty":2"#, r#""qty":0"#),
                Issue::OutOfRange,
                Field::Size,
                "out_of_range",
            ),
            (
                &good.replace(r#""qty":2"#, r#""qty":"2""#),
                Issue::Invalid,
                Field::Size,
                "invalid_field",
            ),
            (
                &good.replace("buy", "hold"),
                Issue::Invalid,
                Field::Side,
                "invalid_field",
            ),
            (
                &good.replace("2026-01-01T00:00:00Z", "yesterday"),
                Issue::Invalid,
                Field::EventTime,
                "invalid_field",
            ),
            (
                &good.replace("2026-01-01", "1970-01-01"),
                Issue::OutOfRange,
                Field::EventTime,
                "out_of_range",
            ),
            (
                &good.replace("BTC-USD", "BTC USD"),
                Issue::Invalid,
                Field::Symbol,
                "invalid_field",
            ),
            (
                &good.replace(r#""id":"1","#, ""),
                Issue::Missing,
                Field::TradeId,
                "missing_trade_id",
            ),
            (
                r#"{"exchange":"beta","trade_id":1,"instrument":"BTC/USD","price_e8":0,"size_e8":1,"taker_side":"B","time_us":1767225600000000}"#,
                Issue::OutOfRange,
                Field::Price,
                "out_of_range",
            ),
            (
                r#"{"exchange":"beta","trade_id":1,"instrument":"BTC/USD","price_e8":1,"size_e8":1,"taker_side":"X","time_us":1767225600000000}"#,
                Issue::Invalid,
                Field::Side,
                "invalid_field",
            ),
        ];
        for (raw, issue, field, code) in cases {
            let r = decode_raw(raw.as_bytes(), 0).expect_err(raw);
            assert_eq!(
                (r.issue, r.field, r.code()),
                (*issue, *field, *code),
                "{raw}: {r}"
            );
            assert!(!r.reason.is_empty());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: truncations and byte flips of valid records.
        for t in sim_trades().iter().take(50) {
            for venue in [Venue::Alpha, Venue::Beta] {
                let raw = encode_raw(venue, t).to_string().into_bytes();
                for cut in 0..raw.len() {
                    let _ = decode_raw(&raw[..cut], 0);
                    let mut flipped = raw.clone();
                    flipped[cut] ^= 0x5a;
                    let _ = decode_raw(&flipped, 0);
                }
            }
        }
    }
}
