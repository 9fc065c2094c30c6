//! The read API over the projection. Every parameter is checked before a query runs and a
//! mistake is a 4xx naming the parameter; pages are keyset-paginated (the cursor is the
//! position after the last item, so pages stay stable while rows are added); times are
//! RFC 3339 in UTC. Ranges are `[from, to)`.

use std::collections::HashMap;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Json, Router};
use serde::Serialize;
use sqlx::FromRow;
use tidewatch_web::{openapi, ApiError, ErrorBody};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::store::{is_connection_error, timestamp, Store};
use crate::valid_symbol;

/// Items per page, at most: a day of one-minute bars.
pub const MAX_LIMIT: u32 = 1440;
const DEFAULT_LIMIT: u32 = 500;
/// The bar intervals the projection holds.
const INTERVALS: [(&str, i32); 1] = [("1m", 60)];

/// The routes and their OpenAPI document, without fallbacks: the stage service serves them
/// beside its fault switches, with one document for both.
pub fn documented(store: Store) -> (Router, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(openapi::document(
        "Tidewatch read API",
        "Bars, predictions and their outcomes as projected into PostgreSQL by the `project` service.",
    ))
    .routes(routes!(symbols))
    .routes(routes!(latest))
    .routes(routes!(bars))
    .routes(routes!(predictions))
    .with_state(store)
    .split_for_parts()
}

/// The routes, their OpenAPI document at `/openapi.json`, and JSON 404/405 fallbacks.
pub fn router(store: Store) -> Router {
    let (router, doc) = documented(store);
    openapi::finish(router, &doc)
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// A failed query: 503 while the database is unreachable, else a bare 500.
fn db_error(e: sqlx::Error) -> ApiError {
    if is_connection_error(&e) {
        ApiError::client(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            None,
            "the database is unreachable; try again shortly",
        )
    } else {
        ApiError::Unexpected(anyhow::Error::new(e).context("read query"))
    }
}

/// The query string, checked against the parameters an endpoint knows.
struct Params(HashMap<String, String>);

impl Params {
    fn parse(
        query: Result<Query<Vec<(String, String)>>, QueryRejection>,
        known: &[&str],
    ) -> Result<Self, ApiError> {
        let Query(pairs) = query.map_err(|e| {
            ApiError::client(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                Some("query"),
                format!("the query string cannot be read: {e}"),
            )
        })?;
        let mut map = HashMap::new();
        for (name, value) in pairs {
            if !known.contains(&name.as_str()) {
                // A nameless parameter (`?=x`, `?&`) is a fault of the query string as a whole.
                let field = if name.is_empty() { "query" } else { &name };
                return Err(ApiError::client(
                    StatusCode::BAD_REQUEST,
                    "unknown_parameter",
                    Some(field),
                    format!(
                        "unknown parameter {name:?}; this endpoint takes {}",
                        known.join(", ")
                    ),
                ));
            }
            if map.contains_key(&name) {
                return Err(ApiError::client(
                    StatusCode::BAD_REQUEST,
                    "duplicate_parameter",
                    Some(&name),
                    "the parameter is given more than once",
                ));
            }
            map.insert(name, value);
        }
        Ok(Self(map))
    }

    fn symbol(&self) -> Result<String, ApiError> {
        let s = self.0.get("symbol").ok_or_else(|| {
            ApiError::client(
                StatusCode::BAD_REQUEST,
                "missing_parameter",
                Some("symbol"),
                "symbol is required, e.g. symbol=BTC-USD",
            )
        })?;
        check_symbol(s)?;
        Ok(s.clone())
    }

    fn time(&self, name: &str) -> Result<Option<OffsetDateTime>, ApiError> {
        self.0
            .get(name)
            .map(|v| {
                OffsetDateTime::parse(v, &Rfc3339).map_err(|_| {
                    ApiError::invalid(
                        name,
                        "invalid_time",
                        format!("{name} must be an RFC 3339 time such as 2026-01-01T00:00:00Z"),
                    )
                })
            })
            .transpose()
    }

    /// `[from, to)`, both optional; with `to` at or before `from` the range is empty.
    fn range(&self) -> Result<(OffsetDateTime, OffsetDateTime), ApiError> {
        let from = self.time("from")?.unwrap_or(timestamp(0));
        let to = self
            .time("to")?
            .unwrap_or_else(|| timestamp(253_402_300_799_000)); // 9999-12-31T23:59:59Z
        Ok((from, to))
    }

    fn limit(&self) -> Result<i64, ApiError> {
        match self.0.get("limit") {
            None => Ok(i64::from(DEFAULT_LIMIT)),
            Some(v) => match v.parse::<u32>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(i64::from(n)),
                _ => Err(ApiError::invalid(
                    "limit",
                    "invalid_limit",
                    format!("limit must be an integer from 1 to {MAX_LIMIT}"),
                )),
            },
        }
    }

    /// The cursor of the previous page: items start strictly after it.
    fn cursor(&self) -> Result<Option<OffsetDateTime>, ApiError> {
        self.0
            .get("cursor")
            .map(|v| {
                // What cursor_of writes: milliseconds, up to 14 digits (year 5138).
                (1..=14)
                    .contains(&v.len())
                    .then_some(v)
                    .filter(|v| v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<i64>().ok())
                    .and_then(|ms| {
                        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
                    })
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "cursor",
                            "invalid_cursor",
                            "cursor is not one this API returned; pass next_cursor as it came",
                        )
                    })
            })
            .transpose()
    }

    fn interval(&self) -> Result<(&'static str, i32), ApiError> {
        match self.0.get("interval") {
            None => Ok(INTERVALS[0]),
            Some(v) => INTERVALS
                .iter()
                .find(|(name, _)| name == v)
                .copied()
                .ok_or_else(|| {
                    ApiError::invalid(
                        "interval",
                        "unsupported_interval",
                        format!(
                            "supported intervals: {}",
                            INTERVALS.map(|(n, _)| n).join(", ")
                        ),
                    )
                }),
        }
    }
}

fn check_symbol(s: &str) -> Result<(), ApiError> {
    if valid_symbol(s) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "symbol",
            "invalid_symbol",
            "symbol must be upper-case BASE-QUOTE, e.g. BTC-USD",
        ))
    }
}

/// What one page of a symbol's time series asks for: `[lower, to)`, at most `limit` rows.
struct Page {
    symbol: String,
    lower: OffsetDateTime,
    to: OffsetDateTime,
    limit: i64,
}

impl Params {
    /// The symbol, range, limit and cursor every paged endpoint takes, checked.
    fn page(&self) -> Result<Page, ApiError> {
        let symbol = self.symbol()?;
        let (from, to) = self.range()?;
        let limit = self.limit()?;
        let lower = lower_bound(from, self.cursor()?);
        Ok(Page {
            symbol,
            lower,
            to,
            limit,
        })
    }
}

/// The lower bound of a page: after the cursor, at or after `from`.
fn lower_bound(from: OffsetDateTime, cursor: Option<OffsetDateTime>) -> OffsetDateTime {
    match cursor {
        Some(c) => from.max(c + time::Duration::milliseconds(1)),
        None => from,
    }
}

fn cursor_of(t: OffsetDateTime) -> String {
    ((t.unix_timestamp_nanos() / 1_000_000) as i64).to_string()
}

// --- /v1/symbols ---

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SymbolSummary {
    #[schema(example = "BTC-USD")]
    pub symbol: String,
    /// Close of the newest bar.
    pub last_price: Option<f64>,
    /// End of the newest bar (RFC 3339, UTC).
    pub last_bar_end: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SymbolList {
    pub symbols: Vec<SymbolSummary>,
}

#[derive(FromRow)]
struct SymbolRow {
    symbol: String,
    close: Option<f64>,
    bar_end: Option<OffsetDateTime>,
}

/// The symbols the projection holds, with their last price.
#[utoipa::path(get, path = "/v1/symbols", tag = "read", responses((status = 200, body = SymbolList), (status = 503, body = ErrorBody)))]
pub async fn symbols(State(store): State<Store>) -> Result<Json<SymbolList>, ApiError> {
    store.reachable().map_err(db_error)?;
    let rows: Vec<SymbolRow> = store
        .metrics()
        .timed(
            "select_symbols",
            sqlx::query_as(
                "SELECT symbol, close, bar_end FROM symbol_latest ORDER BY symbol LIMIT 1000",
            )
            .fetch_all(store.pool()),
        )
        .await
        .map_err(db_error)?;
    Ok(Json(SymbolList {
        symbols: rows
            .into_iter()
            .map(|r| SymbolSummary {
                symbol: r.symbol,
                last_price: r.close,
                last_bar_end: r.bar_end.map(rfc3339),
            })
            .collect(),
    }))
}

// --- /v1/symbols/{symbol}/latest ---

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Bar {
    pub symbol: String,
    #[schema(example = "1m")]
    pub interval: String,
    /// Window start (inclusive) and end (exclusive), RFC 3339 UTC.
    pub start: String,
    pub end: String,
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    pub volume: f64,
    pub vwap: f64,
    pub trade_count: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LatestPrediction {
    /// The bar the prediction was made at.
    pub bar_start: String,
    pub variant: String,
    pub model_version: String,
    pub probability: f64,
    pub spike: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Latest {
    pub symbol: String,
    pub last_price: Option<f64>,
    pub bar: Option<Bar>,
    pub prediction: Option<LatestPrediction>,
    pub updated_at: String,
}

#[derive(FromRow)]
struct LatestRow {
    symbol: String,
    bar_interval_seconds: Option<i32>,
    bar_start: Option<OffsetDateTime>,
    bar_end: Option<OffsetDateTime>,
    open: Option<f64>,
    high: Option<f64>,
    low: Option<f64>,
    close: Option<f64>,
    volume: Option<f64>,
    vwap: Option<f64>,
    trade_count: Option<i64>,
    prediction_bar_start: Option<OffsetDateTime>,
    prediction_variant: Option<String>,
    prediction_model_version: Option<String>,
    prediction_probability: Option<f64>,
    prediction_spike: Option<bool>,
    updated_at: OffsetDateTime,
}

fn interval_name(seconds: i32) -> String {
    INTERVALS
        .iter()
        .find(|(_, s)| *s == seconds)
        .map_or_else(|| format!("{seconds}s"), |(n, _)| (*n).to_owned())
}

/// A symbol's newest bar and newest prediction.
#[utoipa::path(
    get,
    path = "/v1/symbols/{symbol}/latest",
    tag = "read",
    params(("symbol" = String, Path, description = "e.g. BTC-USD", pattern = r"^[A-Z0-9-]{1,32}$")),
    responses(
        (status = 200, body = Latest),
        (status = 404, description = "Nothing projected for this symbol", body = ErrorBody),
        (status = 422, description = "Not a symbol", body = ErrorBody),
    )
)]
pub async fn latest(
    State(store): State<Store>,
    symbol: Result<Path<String>, PathRejection>,
) -> Result<Json<Latest>, ApiError> {
    // A segment that does not decode (a percent-encoded byte that is not UTF-8) is no
    // symbol either; axum's own rejection would answer in plain text.
    let symbol = symbol.map(|Path(s)| s).unwrap_or_default();
    check_symbol(&symbol)?;
    store.reachable().map_err(db_error)?;
    let row: Option<LatestRow> = store
        .metrics()
        .timed(
            "select_latest",
            sqlx::query_as("SELECT * FROM symbol_latest WHERE symbol = $1")
                .bind(&symbol)
                .fetch_optional(store.pool()),
        )
        .await
        .map_err(db_error)?;
    let r = row.ok_or_else(|| {
        ApiError::client(
            StatusCode::NOT_FOUND,
            "unknown_symbol",
            Some("symbol"),
            format!("nothing has been projected for {symbol}"),
        )
    })?;
    let bar = match (r.bar_interval_seconds, r.bar_start, r.bar_end) {
        (Some(interval), Some(start), Some(end)) => Some(Bar {
            symbol: r.symbol.clone(),
            interval: interval_name(interval),
            start: rfc3339(start),
            end: rfc3339(end),
            open: r.open.unwrap_or_default(),
            high: r.high.unwrap_or_default(),
            low: r.low.unwrap_or_default(),
            close: r.close.unwrap_or_default(),
            volume: r.volume.unwrap_or_default(),
            vwap: r.vwap.unwrap_or_default(),
            trade_count: r.trade_count.unwrap_or_default(),
        }),
        _ => None,
    };
    let prediction = match (
        r.prediction_bar_start,
        r.prediction_variant,
        r.prediction_model_version,
        r.prediction_probability,
        r.prediction_spike,
    ) {
        (Some(start), Some(variant), Some(model_version), Some(probability), Some(spike)) => {
            Some(LatestPrediction {
                bar_start: rfc3339(start),
                variant,
                model_version,
                probability,
                spike,
            })
        }
        _ => None,
    };
    Ok(Json(Latest {
        symbol: r.symbol,
        last_price: r.close,
        bar,
        prediction,
        updated_at: rfc3339(r.updated_at),
    }))
}

// --- /v1/bars ---

/// The bar intervals, as the API names them.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents the values `interval` takes
enum IntervalName {
    #[schema(rename = "1m")]
    OneMinute,
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // documents the parameters; `Params` reads them
struct BarsQuery {
    /// Required, e.g. BTC-USD.
    #[param(pattern = r"^[A-Z0-9-]{1,32}$")]
    symbol: String,
    /// Bar interval; `1m` (the default) is the one projected.
    #[param(inline, value_type = Option<IntervalName>)]
    interval: Option<String>,
    /// Bars starting at or after this time (RFC 3339).
    #[param(format = DateTime)]
    from: Option<String>,
    /// Bars starting before this time (RFC 3339).
    #[param(format = DateTime)]
    to: Option<String>,
    /// Bars per page, 1 to 1440 (default 500).
    #[param(minimum = 1, maximum = 1440)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9]{1,14}$")]
    cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BarPage {
    pub items: Vec<Bar>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(FromRow)]
struct BarRow {
    symbol: String,
    interval_seconds: i32,
    start_time: OffsetDateTime,
    end_time: OffsetDateTime,
    open: f64,
    high: f64,
    low: f64,
    close: f64,
    volume: f64,
    vwap: f64,
    trade_count: i64,
}

/// A symbol's bars in time order, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/bars",
    tag = "read",
    params(BarsQuery),
    responses(
        (status = 200, body = BarPage),
        (status = 400, description = "Missing, unknown or repeated parameter", body = ErrorBody),
        (status = 422, description = "A parameter's value is not acceptable", body = ErrorBody),
    )
)]
pub async fn bars(
    State(store): State<Store>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<BarPage>, ApiError> {
    let p = Params::parse(
        query,
        &["symbol", "interval", "from", "to", "limit", "cursor"],
    )?;
    let Page {
        symbol,
        lower,
        to,
        limit,
    } = p.page()?;
    let (_, interval) = p.interval()?;
    store.reachable().map_err(db_error)?;
    let mut rows: Vec<BarRow> = store
        .metrics()
        .timed(
            "select_bars",
            sqlx::query_as(
                "SELECT symbol, interval_seconds, start_time, end_time, open, high, low, close, volume, vwap, trade_count \
                 FROM bars WHERE symbol = $1 AND interval_seconds = $2 AND start_time >= $3 AND start_time < $4 \
                 ORDER BY start_time LIMIT $5",
            )
            .bind(&symbol)
            .bind(interval)
            .bind(lower)
            .bind(to)
            .bind(limit + 1)
            .fetch_all(store.pool()),
        )
        .await
        .map_err(db_error)?;
    let next_cursor = next_page(&mut rows, limit, |r| r.start_time);
    Ok(Json(BarPage {
        items: rows
            .into_iter()
            .map(|r| Bar {
                symbol: r.symbol,
                interval: interval_name(r.interval_seconds),
                start: rfc3339(r.start_time),
                end: rfc3339(r.end_time),
                open: r.open,
                high: r.high,
                low: r.low,
                close: r.close,
                volume: r.volume,
                vwap: r.vwap,
                trade_count: r.trade_count,
            })
            .collect(),
        next_cursor,
    }))
}

/// Trims the extra row fetched to learn whether another page exists; its cursor if so.
fn next_page<R>(
    rows: &mut Vec<R>,
    limit: i64,
    key: impl Fn(&R) -> OffsetDateTime,
) -> Option<String> {
    if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| cursor_of(key(r)))
    } else {
        None
    }
}

// --- /v1/predictions ---

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // documents the parameters; `Params` reads them
struct PredictionsQuery {
    /// Required, e.g. BTC-USD.
    #[param(pattern = r"^[A-Z0-9-]{1,32}$")]
    symbol: String,
    /// Predictions made at bars starting at or after this time (RFC 3339).
    #[param(format = DateTime)]
    from: Option<String>,
    /// ... and before this time (RFC 3339).
    #[param(format = DateTime)]
    to: Option<String>,
    /// Predictions per page, 1 to 1440 (default 500).
    #[param(minimum = 1, maximum = 1440)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9]{1,14}$")]
    cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Outcome {
    /// Whether volatility really spiked over the horizon.
    pub spike: bool,
    pub realised_volatility: f64,
    /// The bar whose features revealed it.
    pub judged_by_bar_start: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Prediction {
    pub symbol: String,
    pub bar_start: String,
    pub bar_end: String,
    pub horizon_minutes: i32,
    pub model_version: String,
    pub variant: String,
    pub probability: f64,
    pub spike: bool,
    pub online_probability: f64,
    pub online_spike: bool,
    /// Null until the horizon has passed and the outcome was observed.
    pub outcome: Option<Outcome>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PredictionPage {
    pub items: Vec<Prediction>,
    pub next_cursor: Option<String>,
}

#[derive(FromRow)]
struct PredictionRow {
    symbol: String,
    bar_start: OffsetDateTime,
    bar_end: OffsetDateTime,
    horizon_minutes: i32,
    model_version: String,
    variant: String,
    probability: f64,
    spike: bool,
    online_probability: f64,
    online_spike: bool,
    outcome_spike: Option<bool>,
    realised_volatility: Option<f64>,
    judged_by_bar_start: Option<OffsetDateTime>,
}

/// A symbol's predictions in time order with their outcomes where known.
#[utoipa::path(
    get,
    path = "/v1/predictions",
    tag = "read",
    params(PredictionsQuery),
    responses(
        (status = 200, body = PredictionPage),
        (status = 400, description = "Missing, unknown or repeated parameter", body = ErrorBody),
        (status = 422, description = "A parameter's value is not acceptable", body = ErrorBody),
    )
)]
pub async fn predictions(
    State(store): State<Store>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<PredictionPage>, ApiError> {
    let p = Params::parse(query, &["symbol", "from", "to", "limit", "cursor"])?;
    let Page {
        symbol,
        lower,
        to,
        limit,
    } = p.page()?;
    store.reachable().map_err(db_error)?;
    let mut rows: Vec<PredictionRow> = store
        .metrics()
        .timed(
            "select_predictions",
            sqlx::query_as(
                "SELECT p.symbol, p.bar_start, p.bar_end, p.horizon_minutes, p.model_version, p.variant, \
                        p.probability, p.spike, p.online_probability, p.online_spike, \
                        o.spike AS outcome_spike, o.realised_volatility, o.judged_by_bar_start \
                 FROM predictions p LEFT JOIN prediction_outcomes o USING (symbol, bar_start) \
                 WHERE p.symbol = $1 AND p.bar_start >= $2 AND p.bar_start < $3 \
                 ORDER BY p.bar_start LIMIT $4",
            )
            .bind(&symbol)
            .bind(lower)
            .bind(to)
            .bind(limit + 1)
            .fetch_all(store.pool()),
        )
        .await
        .map_err(db_error)?;
    let next_cursor = next_page(&mut rows, limit, |r| r.bar_start);
    Ok(Json(PredictionPage {
        items: rows
            .into_iter()
            .map(|r| Prediction {
                outcome: match (
                    r.outcome_spike,
                    r.realised_volatility,
                    r.judged_by_bar_start,
                ) {
                    (Some(spike), Some(realised_volatility), Some(by)) => Some(Outcome {
                        spike,
                        realised_volatility,
                        judged_by_bar_start: rfc3339(by),
                    }),
                    _ => None,
                },
                symbol: r.symbol,
                bar_start: rfc3339(r.bar_start),
                bar_end: rfc3339(r.bar_end),
                horizon_minutes: r.horizon_minutes,
                model_version: r.model_version,
                variant: r.variant,
                probability: r.probability,
                spike: r.spike,
                online_probability: r.online_probability,
                online_spike: r.online_spike,
            })
            .collect(),
        next_cursor,
    }))
}
