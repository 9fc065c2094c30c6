//! The projection's writes and the read API against a real PostgreSQL (a fresh database
//! per test on the server `scripts/test` starts): batches are idempotent, every table keeps
//! the newest version of a key whatever order versions arrive in, `symbol_latest` only
//! moves forward, and the read API pages, validates and formats as documented.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use project::api;
use project::store::{Item, Row, Store, Version, Written};
use serde_json::{json, Value};
use tidewatch_schema::{BarRecord, OutcomeRecord, PredictionRecord};

/// 2026-01-01T00:00:00Z
const T0: i64 = 1_767_225_600_000;
const MINUTE: i64 = 60_000;

async fn store() -> Store {
    let url = tidewatch_e2e::fresh_database("project")
        .await
        .expect("a fresh database");
    let args = tidewatch_db::DatabaseArgs {
        database_url: url.into(),
        database_password: None,
        database_max_connections: 4,
        database_start_timeout_seconds: 10,
    };
    Store::new(
        tidewatch_db::connect_and_migrate(&args)
            .await
            .expect("migrated"),
    )
}

/// A newer version than any made before: every helper call is a message sent later.
fn next_version() -> Version {
    static SENT: AtomicI64 = AtomicI64::new(0);
    let n = SENT.fetch_add(1, Ordering::Relaxed);
    Version {
        produced_ms: T0 + n,
        offset: n,
    }
}

fn item(row: Row) -> Item {
    Item {
        version: next_version(),
        row,
    }
}

fn bar(symbol: &str, minute: i64, close: f64) -> Item {
    item(Row::Bar(BarRecord {
        symbol: symbol.to_owned(),
        interval_seconds: 60,
        start_ms: T0 + minute * MINUTE,
        end_ms: T0 + (minute + 1) * MINUTE,
        open: 100.0,
        high: close.max(100.0) + 1.0,
        low: close.min(100.0) - 1.0,
        close,
        volume: 2.5,
        vwap: 100.5,
        trade_count: 7,
    }))
}

fn prediction(symbol: &str, minute: i64, spike: bool) -> Item {
    item(Row::Prediction(PredictionRecord {
        symbol: symbol.to_owned(),
        bar_start_ms: T0 + minute * MINUTE,
        bar_end_ms: T0 + (minute + 1) * MINUTE,
        horizon_minutes: 5,
        model_version: "v-test".to_owned(),
        variant: "ml".to_owned(),
        probability: if spike { 0.9 } else { 0.1 },
        spike,
        online_probability: 0.5,
        online_spike: false,
    }))
}

fn outcome(symbol: &str, minute: i64, spike: bool) -> Item {
    item(Row::Outcome(OutcomeRecord {
        symbol: symbol.to_owned(),
        bar_start_ms: T0 + minute * MINUTE,
        horizon_minutes: 5,
        judged_by_bar_start_ms: T0 + (minute + 5) * MINUTE,
        realised_volatility: 0.004,
        spike_threshold: 0.003,
        spike,
    }))
}

async fn dump(store: &Store) -> Vec<String> {
    tidewatch_e2e::dump_projection(store.pool())
        .await
        .expect("dump")
}

#[tokio::test]
async fn writing_the_same_batch_again_changes_no_row() {
    let store = store().await;
    let batch = vec![
        bar("BTC-USD", 0, 101.0),
        bar("BTC-USD", 1, 102.0),
        bar("ETH-USD", 0, 50.0),
        prediction("BTC-USD", 0, true),
        outcome("BTC-USD", 0, false),
    ];
    let first = store.write(&batch).await.expect("write");
    assert_eq!(
        first,
        Written {
            bars: 3,
            predictions: 1,
            outcomes: 1,
            latest: 3
        }
    );
    let before = dump(&store).await;
    tokio::time::sleep(Duration::from_millis(20)).await; // now() would differ
    let again = store.write(&batch).await.expect("write again");
    assert_eq!(again, Written::default(), "a replay writes nothing");
    assert_eq!(
        dump(&store).await,
        before,
        "every table unchanged, updated_at included"
    );

    // A corrected bar is a real change.
    let corrected = store
        .write(&[bar("BTC-USD", 1, 103.0)])
        .await
        .expect("write");
    assert_eq!((corrected.bars, corrected.latest), (1, 1));
}

#[tokio::test]
async fn duplicates_within_a_batch_keep_the_last_and_latest_never_moves_back() {
    let store = store().await;
    store
        .write(&[
            bar("SOL-USD", 5, 10.0),
            bar("SOL-USD", 5, 11.0),
            prediction("SOL-USD", 5, false),
        ])
        .await
        .expect("write");
    // An older bar and prediction arrive late (a replay of another partition).
    store
        .write(&[bar("SOL-USD", 3, 9.0), prediction("SOL-USD", 3, true)])
        .await
        .expect("write");
    let (close, bar_start, spike): (f64, time::OffsetDateTime, bool) = sqlx::query_as(
        "SELECT close, bar_start, prediction_spike FROM symbol_latest WHERE symbol = 'SOL-USD'",
    )
    .fetch_one(store.pool())
    .await
    .expect("latest");
    assert_eq!(close, 11.0, "the last of the duplicates won");
    assert_eq!(
        bar_start.unix_timestamp() * 1000,
        T0 + 5 * MINUTE,
        "latest stays at the newest bar"
    );
    assert!(!spike, "latest prediction stays at the newest");
    let bars: i64 = sqlx::query_scalar("SELECT count(*) FROM bars")
        .fetch_one(store.pool())
        .await
        .expect("count");
    assert_eq!(bars, 2);
}

/// What a user reads of one symbol: its bar's close, its prediction's spike, its outcome's
/// spike, and the latest close and prediction spike.
async fn values(store: &Store, symbol: &str) -> (f64, bool, bool, f64, bool) {
    sqlx::query_as(
        "SELECT b.close, p.spike, o.spike, l.close, l.prediction_spike \
         FROM bars b, predictions p, prediction_outcomes o, symbol_latest l \
         WHERE b.symbol = $1 AND p.symbol = $1 AND o.symbol = $1 AND l.symbol = $1",
    )
    .bind(symbol)
    .fetch_one(store.pool())
    .await
    .expect("one row of each")
}

#[tokio::test]
async fn a_version_that_arrives_after_a_newer_one_changes_nothing() {
    let store = store().await;
    // Two versions of the same bar, prediction and outcome: sent first, then sent again
    // with other values (a stage that read its input again after a crash).
    let older = [
        bar("ADA-USD", 0, 10.0),
        prediction("ADA-USD", 0, false),
        outcome("ADA-USD", 0, false),
    ];
    let newer = [
        bar("ADA-USD", 0, 12.0),
        prediction("ADA-USD", 0, true),
        outcome("ADA-USD", 0, true),
    ];
    let want = (12.0, true, true, 12.0, true);

    // In order, in two batches.
    store.write(&older).await.expect("write");
    let moved = store.write(&newer).await.expect("write");
    assert_eq!(
        moved,
        Written {
            bars: 1,
            predictions: 1,
            outcomes: 1,
            latest: 2
        }
    );
    assert_eq!(values(&store, "ADA-USD").await, want);

    // The older batch written late (an instance that lost its partitions while writing,
    // or a replay) changes nothing, updated_at included.
    let before = dump(&store).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let late = store.write(&older).await.expect("write");
    assert_eq!(late, Written::default(), "an older version writes nothing");
    assert_eq!(dump(&store).await, before, "every table unchanged");

    // Both versions in one batch, newest first, of another symbol: the newest still wins.
    let renamed = |i: &Item| Item {
        row: match &i.row {
            Row::Bar(b) => Row::Bar(BarRecord {
                symbol: "XRP-USD".into(),
                ..b.clone()
            }),
            Row::Prediction(p) => Row::Prediction(PredictionRecord {
                symbol: "XRP-USD".into(),
                ..p.clone()
            }),
            Row::Outcome(o) => Row::Outcome(OutcomeRecord {
                symbol: "XRP-USD".into(),
                ..o.clone()
            }),
        },
        ..i.clone()
    };
    let both: Vec<Item> = newer.iter().chain(&older).map(renamed).collect();
    store.write(&both).await.expect("write");
    assert_eq!(values(&store, "XRP-USD").await, want);
}

struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    async fn start(store: Store) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, api::router(store)).await });
        Self {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let res = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn the_read_api_pages_through_a_day_of_bars_in_order() {
    let store = store().await;
    let day: Vec<Item> = (0..1440)
        .map(|m| bar("BTC-USD", m, 100.0 + m as f64 / 100.0))
        .collect();
    for chunk in day.chunks(500) {
        store.write(chunk).await.expect("write");
    }
    let api = Api::start(store).await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            None => "/v1/bars?symbol=BTC-USD&interval=1m&limit=400".to_owned(),
            Some(c) => format!("/v1/bars?symbol=BTC-USD&interval=1m&limit=400&cursor={c}"),
        };
        let (status, page) = api.get(&path).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        for item in page["items"].as_array().expect("items") {
            seen.push(item["start"].as_str().expect("start").to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 4);
    assert_eq!(seen.len(), 1440, "every bar once");
    assert_eq!(seen[0], "2026-01-01T00:00:00Z", "RFC 3339 in UTC");
    assert_eq!(seen[1439], "2026-01-01T23:59:00Z");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in time order");

    // A range is [from, to).
    let (status, page) = api
        .get("/v1/bars?symbol=BTC-USD&from=2026-01-01T01:00:00Z&to=2026-01-01T01:03:00Z")
        .await;
    assert_eq!(status, 200);
    let starts: Vec<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["start"].as_str().expect("start"))
        .collect();
    assert_eq!(
        starts,
        [
            "2026-01-01T01:00:00Z",
            "2026-01-01T01:01:00Z",
            "2026-01-01T01:02:00Z"
        ]
    );
    assert_eq!(page["items"][0]["interval"], "1m");
    assert_eq!(page["items"][0]["trade_count"], 7);

    let (status, symbols) = api.get("/v1/symbols").await;
    assert_eq!(status, 200);
    assert_eq!(symbols["symbols"][0]["symbol"], "BTC-USD");
    assert_eq!(symbols["symbols"][0]["last_price"], 100.0 + 1439.0 / 100.0);
    assert_eq!(
        symbols["symbols"][0]["last_bar_end"],
        "2026-01-02T00:00:00Z"
    );
}

#[tokio::test]
async fn latest_and_predictions_show_outcomes_once_known() {
    let store = store().await;
    store
        .write(&[
            bar("ETH-USD", 0, 50.0),
            prediction("ETH-USD", 0, true),
            prediction("ETH-USD", 1, false),
            outcome("ETH-USD", 0, true),
        ])
        .await
        .expect("write");
    let api = Api::start(store).await;

    let (status, latest) = api.get("/v1/symbols/ETH-USD/latest").await;
    assert_eq!(status, 200, "{latest}");
    assert_eq!(latest["last_price"], 50.0);
    assert_eq!(latest["bar"]["start"], "2026-01-01T00:00:00Z");
    assert_eq!(latest["prediction"]["bar_start"], "2026-01-01T00:01:00Z");
    assert_eq!(latest["prediction"]["spike"], false);

    let (status, page) = api.get("/v1/predictions?symbol=ETH-USD").await;
    assert_eq!(status, 200, "{page}");
    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["outcome"]["spike"], true);
    assert_eq!(
        items[0]["outcome"]["judged_by_bar_start"],
        "2026-01-01T00:05:00Z"
    );
    assert!(items[1]["outcome"].is_null(), "horizon not passed yet");

    let (status, err) = api.get("/v1/symbols/DOGE-USD/latest").await;
    assert_eq!(status, 404);
    assert_eq!(err["error"]["code"], "unknown_symbol");
}

#[tokio::test]
async fn every_bad_parameter_is_a_4xx_naming_it() {
    let api = Api::start(store().await).await;
    for (path, status, field) in [
        ("/v1/bars", 400, "symbol"),
        ("/v1/bars?symbol=btc%20usd", 422, "symbol"),
        ("/v1/bars?symbol=BTC-USD&interval=7m", 422, "interval"),
        ("/v1/bars?symbol=BTC-USD&from=yesterday", 422, "from"),
        ("/v1/bars?symbol=BTC-USD&to=2026-13-01T00:00:00Z", 422, "to"),
        ("/v1/bars?symbol=BTC-USD&limit=0", 422, "limit"),
        ("/v1/bars?symbol=BTC-USD&limit=1441", 422, "limit"),
        ("/v1/bars?symbol=BTC-USD&limit=ten", 422, "limit"),
        ("/v1/bars?symbol=BTC-USD&cursor=abc", 422, "cursor"),
        // The document's pattern for a cursor, `^[0-9]{1,14}$`, is what the server takes.
        ("/v1/bars?symbol=BTC-USD&cursor=%2B5", 422, "cursor"),
        (
            "/v1/bars?symbol=BTC-USD&cursor=100000000000000",
            422,
            "cursor",
        ),
        ("/v1/bars?symbol=BTC-USD&sort=desc", 400, "sort"),
        ("/v1/bars?symbol=BTC-USD&=x", 400, "query"),
        ("/v1/bars?symbol=BTC-USD&symbol=ETH-USD", 400, "symbol"),
        ("/v1/predictions?from=2026-01-01T00:00:00Z", 400, "symbol"),
        (
            "/v1/predictions?symbol=BTC-USD&interval=1m",
            400,
            "interval",
        ),
        ("/v1/symbols/not%20a%20symbol/latest", 422, "symbol"),
    ] {
        let (got, body) = api.get(path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(body["error"]["field"], field, "{path}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{path}: {body}"
        );
    }
    // A range with `to` before `from` is valid by the document and empty.
    let (status, body) = api
        .get("/v1/bars?symbol=BTC-USD&from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"], json!([]), "{body}");
    let (status, body) = api.get("/v1/nowhere").await;
    assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));
}

#[tokio::test]
async fn openapi_documents_every_read_route() {
    let api = Api::start(store().await).await;
    let (status, doc) = api.get("/openapi.json").await;
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().expect("paths");
    for path in [
        "/v1/symbols",
        "/v1/symbols/{symbol}/latest",
        "/v1/bars",
        "/v1/predictions",
    ] {
        assert!(paths.contains_key(path), "{path} missing");
    }
    let params: Vec<&str> = doc["paths"]["/v1/bars"]["get"]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        params,
        ["symbol", "interval", "from", "to", "limit", "cursor"]
    );
}
