//! normalize on the real broker (tansu, started by `scripts/test`): both venue formats become
//! canonical trades, every bad record is dead-lettered with its code, quality is counted.

use std::time::Duration;

use clap::Parser as _;
use normalize::{Normalize, Settings, SERVICE};
use tidewatch_kafka::dlq::{self, DLQ_TOPIC};
use tidewatch_kafka::inspect::read_topic_async;
use tidewatch_kafka::service::StageService;
use tidewatch_kafka::{Producer, Record};
use tidewatch_market_sim::{Market, MarketConfig};
use tidewatch_schema::{encode_raw, Trade, Venue};
use tidewatch_telemetry::{BuildInfo, Shutdown, Telemetry};

fn brokers() -> String {
    std::env::var("TIDEWATCH_KAFKA_BROKERS")
        .expect("TIDEWATCH_KAFKA_BROKERS is not set: run this test through scripts/test, which starts a broker")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_venues_become_canonical_trades_and_bad_records_are_dead_lettered() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let (input, output) = (format!("raw-{nanos}"), format!("normalized-{nanos}"));
    let settings = Settings::try_parse_from([
        "normalize",
        "--listen",
        "127.0.0.1:0",
        "--brokers",
        &brokers(),
        "--input-topic",
        &input,
        "--output-topic",
        &output,
        "--group-id",
        &format!("normalize-{nanos}"),
    ])
    .expect("settings");
    let telemetry = Telemetry::new(BuildInfo::new(SERVICE, "test")).expect("telemetry");
    let service = StageService::build(
        SERVICE,
        settings.listen,
        &settings.stage,
        &input,
        &[&output],
        telemetry,
    )
    .await
    .expect("service builds");
    let ops = service.local_addr().expect("bound");
    let shutdown = Shutdown::new();
    let runner = tokio::spawn(service.run(Normalize::new(output.clone()), shutdown.clone()));

    let mut market = Market::new(&MarketConfig::new(9));
    let trades: Vec<_> = market.next_minute().into_iter().take(100).collect();
    let producer = Producer::new(&brokers(), "test").expect("producer");
    let bad: [(&str, &str); 4] = [
        ("not json", "malformed_record"),
        (r#"{"venue":"gamma"}"#, "unknown_venue"),
        (
            r#"{"venue":"alpha","id":"x","sym":"BTC-USD","qty":1,"side":"buy","ts":"2026-01-01T00:00:00Z"}"#,
            "missing_price",
        ),
        (
            r#"{"exchange":"beta","trade_id":1,"instrument":"BTC/USD","price_e8":-5,"size_e8":1,"taker_side":"B","time_us":1767225600000000}"#,
            "out_of_range",
        ),
    ];
    let mut deliveries = Vec::new();
    for (i, t) in trades.iter().enumerate() {
        let venue = if i % 2 == 0 {
            Venue::Alpha
        } else {
            Venue::Beta
        };
        deliveries.push(producer.send(&Record::new(
            &input,
            None,
            encode_raw(venue, t).to_string().into_bytes(),
        )));
    }
    for (raw, _) in bad {
        deliveries.push(producer.send(&Record::new(&input, None, raw.as_bytes().to_vec())));
    }
    for d in deliveries {
        d.await.expect("delivered");
    }

    let normalized = read_topic_async(
        brokers(),
        output.clone(),
        100,
        Duration::from_secs(60),
        |_| true,
    )
    .await
    .expect("read outputs");
    let source = input.clone();
    let dead = read_topic_async(
        brokers(),
        DLQ_TOPIC.to_owned(),
        4,
        Duration::from_secs(60),
        move |m| m.headers.get(dlq::HEADER_SOURCE_TOPIC) == Some(&source),
    )
    .await
    .expect("read dead letters");
    let metrics = reqwest::get(format!("http://{ops}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    shutdown.trigger();
    let stopped = runner.await.expect("joined");

    assert!(stopped.is_ok(), "{stopped:?}");
    assert_eq!(normalized.len(), 100, "each valid trade once");
    let mut ids: Vec<String> = normalized
        .iter()
        .map(|m| {
            let t: Trade = serde_json::from_slice(&m.payload).expect("canonical trade");
            assert_eq!(
                m.key.as_deref(),
                Some(t.symbol.as_bytes()),
                "keyed by symbol"
            );
            t.trade_id
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 100);
    let mut codes: Vec<&str> = dead
        .iter()
        .filter_map(|m| m.headers.get(dlq::HEADER_ERROR_CODE).map(String::as_str))
        .collect();
    codes.sort_unstable();
    let mut want: Vec<&str> = bad.iter().map(|(_, c)| *c).collect();
    want.sort_unstable();
    assert_eq!(
        codes, want,
        "each bad record dead-lettered once with its code"
    );
    assert!(metrics.contains(r#"tidewatch_data_quality_issues_total{stage="normalize",field="price",issue="missing"} 1"#), "{metrics}");
    assert!(metrics.contains(
        r#"tidewatch_dlq_messages_total{stage="normalize",error_code="unknown_venue",cause="input"} 1"#
    ));
    assert!(metrics.contains("tidewatch_data_quality_score{stage=\"normalize\"}"));
}
