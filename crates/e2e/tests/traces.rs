//! One trace from a raw trade to the stored prediction, end to end: the generator, the
//! stages, the consumer and project run as processes on the real broker and PostgreSQL with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at an OTLP receiver inside the test (a stand-in
//! for the Collector, which cannot run here; it decodes the real OTLP protobuf). Every
//! record is sampled.
//!
//! The spans must show what a user following a record in Jaeger would follow: a trade's
//! spans in generator, normalize, enrich and aggregate in one trace, parent to child; a
//! bar's span linked to the trades that made it; a prediction's span linked to the
//! features it was made from, and its outcome's too; project's batch span linked to the
//! rows it stored; every span with the messaging attributes; a dead-lettered record's span
//! ended with an error status and its reason. And an HTTP request that carries a
//! `traceparent` to the prediction API continues that trace: its span is the caller's
//! child, the response names the trace, and the request's log line carries the trace id.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use support::{Run, Stage};
use tidewatch_e2e::{env_var, OtlpReceiver, ReceivedSpan, Service};

const RECORDS: u64 = 24_000;
/// `tidewatch_kafka::trace::MAX_LINKS`.
const MAX_LINKS: usize = 32;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

fn by_name<'a>(spans: &'a [ReceivedSpan], service: &str, name: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trade_is_one_trace_through_the_pipeline_and_aggregates_link_to_their_sources() {
    let receiver = OtlpReceiver::start().await.expect("receiver");
    let endpoint = receiver.endpoint();
    let brokers = env_var("TIDEWATCH_KAFKA_BROKERS");
    let database = tidewatch_e2e::fresh_database("traces")
        .await
        .expect("database");
    let run = Run::new(database.clone());
    let env = [
        ("KAFKA_BROKERS", brokers.as_str()),
        ("DATABASE_URL", database.as_str()),
        ("KAFKA_TOPIC_PARTITIONS", "3"),
        ("LOG_LEVEL", "info"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_TRACES_SAMPLER_ARG", "1"),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "100000"),
    ];
    let mut stages: Vec<Service> = Stage::ALL.iter().map(|s| run.start(*s, 0, &env)).collect();
    for s in &stages {
        s.wait_ready(Duration::from_secs(90))
            .await
            .expect("stage ready");
    }
    let mut generator = run.start_generator(RECORDS, 4000, &env);
    let status = tokio::task::block_in_place(|| generator.wait_exit(Duration::from_secs(120)))
        .expect("generator exits");
    assert!(status.success(), "generator: {}", generator.log_tail());

    // Wait until project has stored outcomes (the last link of the chain), then stop every
    // stage: SIGTERM flushes the spans still queued. Every record is traced and the binaries
    // are unoptimised, so on a loaded machine this takes minutes: the wait ends in failure
    // only when no stage has received a record for a minute (a stall), or after ten.
    let pool = sqlx::PgPool::connect(&database).await.expect("pool");
    let started = std::time::Instant::now();
    let mut progress = (0.0, started);
    loop {
        let outcomes: i64 = sqlx::query_scalar("SELECT count(*) FROM prediction_outcomes")
            .fetch_one(&pool)
            .await
            .unwrap_or(0); // the table exists once project has migrated
        if outcomes > 0 {
            break;
        }
        let mut received = Vec::new();
        for s in &stages {
            let m = s.metrics().await.unwrap_or_default();
            let n = support::metric_sum(&m, "tidewatch_component_received_events_total", &[]);
            received.push((s.label.as_str(), n));
        }
        let total: f64 = received.iter().map(|(_, n)| n).sum();
        if total > progress.0 {
            progress = (total, std::time::Instant::now());
        }
        if progress.1.elapsed() > Duration::from_secs(60)
            || started.elapsed() > Duration::from_secs(600)
        {
            panic!(
                "no outcome stored after {:?} ({:?} since a stage last received a record); \
                 records received: {received:?}\n{}",
                started.elapsed(),
                progress.1.elapsed(),
                support::reports(&stages).await
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "first outcome stored {:?} after the generator exited ({} records received by the stages)",
        started.elapsed(),
        progress.0
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    for s in &mut stages {
        let status = tokio::task::block_in_place(|| s.terminate(Duration::from_secs(30)))
            .expect("stage stops");
        assert!(status.success(), "{}", s.log_tail());
    }
    let spans = receiver.spans();
    let index: HashMap<(&str, &str), &ReceivedSpan> = spans
        .iter()
        .map(|s| ((s.trace_id.as_str(), s.span_id.as_str()), s))
        .collect();
    let find = |trace: &str, span: &str| index.get(&(trace, span)).copied();

    // Every span speaks the messaging conventions.
    for s in &spans {
        assert_eq!(
            s.attributes.get("messaging.system").map(String::as_str),
            Some("kafka"),
            "{s:?}"
        );
        assert!(
            s.attributes.contains_key("messaging.destination.name"),
            "{s:?}"
        );
        let operation = s
            .attributes
            .get("messaging.operation.type")
            .map(String::as_str);
        match s.kind {
            PRODUCER => assert_eq!(operation, Some("send"), "{s:?}"),
            CONSUMER => {
                assert_eq!(operation, Some("process"), "{s:?}");
                assert!(
                    s.attributes.contains_key("messaging.consumer.group.name"),
                    "{s:?}"
                );
                if !s.attributes.contains_key("messaging.batch.message_count") {
                    for key in [
                        "messaging.destination.partition.id",
                        "messaging.kafka.offset",
                    ] {
                        assert!(s.attributes.contains_key(key), "{key}: {s:?}");
                    }
                }
            }
            other => panic!("span kind {other}: {s:?}"),
        }
    }

    // A trade, parent to child: generator send -> normalize process -> send -> enrich
    // process -> send -> aggregate process, all in the trade's trace.
    let chain = [
        ("normalize", format!("process {}", run.raw)),
        ("normalize", format!("send {}", run.normalized)),
        ("enrich", format!("process {}", run.normalized)),
        ("enrich", format!("send {}", run.enriched)),
        ("aggregate", format!("process {}", run.enriched)),
    ];
    let sent = by_name(&spans, "generator", &format!("send {}", run.raw));
    assert!(
        sent.len() as u64 >= RECORDS * 9 / 10,
        "{} of {RECORDS} trades sent with spans",
        sent.len()
    );
    let aggregated = by_name(&spans, "aggregate", &format!("process {}", run.enriched));
    let mut whole = 0;
    for end in &aggregated {
        let mut span = *end;
        for (service, name) in chain.iter().rev().skip(1) {
            let parent = find(&span.trace_id, &span.parent_span_id)
                .unwrap_or_else(|| panic!("the parent of {span:?} was exported"));
            assert_eq!(
                (parent.service.as_str(), parent.name.as_str()),
                (*service, name.as_str())
            );
            span = parent;
        }
        let root = find(&span.trace_id, &span.parent_span_id).expect("the generator's span");
        assert_eq!(root.service, "generator");
        assert!(root.parent_span_id.is_empty(), "a trade starts its trace");
        whole += 1;
    }
    assert!(
        whole as u64 >= RECORDS * 8 / 10,
        "{whole} trades traced to aggregate"
    );

    // A bar's span links to the trades (aggregate's process spans) that made it.
    let bars = by_name(&spans, "aggregate", &format!("send {}", run.bars));
    assert!(!bars.is_empty(), "bars were sent with spans");
    for bar in &bars {
        assert!(
            !bar.links.is_empty() && bar.links.len() <= MAX_LINKS,
            "{bar:?}"
        );
        let symbol = &bar.attributes["messaging.kafka.message.key"];
        for (trace, span) in &bar.links {
            let trade = find(trace, span).expect("linked trade span exported");
            assert_eq!(trade.name, format!("process {}", run.enriched));
            assert_eq!(
                &trade.attributes["messaging.kafka.message.key"], symbol,
                "a trade of the bar's symbol"
            );
        }
    }

    // A prediction's span links to the features it was made from; an outcome's to the
    // features of the prediction it judges, which came earlier.
    let features_processed = format!("process {}", run.features);
    for (name, min) in [
        (format!("send {}", run.predictions), 1),
        (format!("send {}", run.outcomes), 1),
    ] {
        let sends = by_name(&spans, "prediction-consumer", &name);
        assert!(sends.len() >= min, "{name}: {} spans", sends.len());
        for s in sends {
            assert_eq!(s.links.len(), 1, "{s:?}");
            let (trace, span) = &s.links[0];
            let features = find(trace, span).expect("linked features span exported");
            assert_eq!(features.name, features_processed);
            if name.ends_with(&run.predictions) {
                assert_eq!(
                    s.parent_span_id, features.span_id,
                    "a prediction is its features' child"
                );
            } else {
                assert_ne!(
                    s.trace_id, features.trace_id,
                    "an outcome judges an earlier bar"
                );
            }
        }
    }

    // project's batch spans link to the records they stored: bars, predictions, outcomes.
    let batches: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| {
            s.service == "project" && s.attributes.contains_key("messaging.batch.message_count")
        })
        .collect();
    assert!(!batches.is_empty(), "project exported batch spans");
    let mut stored_kinds = HashSet::new();
    for b in &batches {
        assert!(b.parent_span_id.is_empty(), "a batch is a trace of its own");
        assert!(b.links.len() <= MAX_LINKS, "{b:?}");
        for (trace, span) in &b.links {
            let row = find(trace, span).expect("linked record's span exported");
            assert_eq!(row.kind, PRODUCER, "{row:?}");
            stored_kinds.insert(row.attributes["messaging.destination.name"].clone());
        }
    }
    for topic in [&run.bars, &run.predictions, &run.outcomes] {
        assert!(
            stored_kinds.contains(topic),
            "a batch linked to a {topic} record"
        );
    }

    eprintln!(
        "{} spans; {} of {} trades traced generator -> aggregate; {} bar spans with {} links; {} batch spans",
        spans.len(),
        whole,
        sent.len(),
        bars.len(),
        bars.iter().map(|b| b.links.len()).sum::<usize>(),
        batches.len()
    );

    // Dead letters: the planted bad records' spans end in error, with the reason.
    let failed: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.status.0 == 2).collect();
    let malformed = failed
        .iter()
        .filter(|s| s.service == "normalize" && s.attributes.contains_key("error.type"))
        .count();
    assert!(malformed > 0, "the planted bad records' spans failed");
    eprintln!(
        "{} failed spans, {malformed} of them normalize's",
        failed.len()
    );
    for s in &failed {
        assert!(!s.status.1.is_empty(), "an error status says why: {s:?}");
        assert!(s.attributes.contains_key("error.type"), "{s:?}");
        let parent =
            find(&s.trace_id, &s.parent_span_id).expect("a failed record's parent exported");
        assert_eq!(parent.kind, PRODUCER, "{parent:?}");
    }
}

/// The prediction API exporting its traces to a receiver of the test's, with debug JSON logs
/// and the settings `extra` adds.
async fn traced_api(extra: &[(&str, &str)]) -> (OtlpReceiver, Service) {
    let receiver = OtlpReceiver::start().await.expect("receiver");
    let endpoint = receiver.endpoint();
    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/volatility-spike.json"
    );
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("LOG_LEVEL", "debug"),
        ("LOG_FORMAT", "json"),
    ];
    env.extend_from_slice(extra);
    let api = Service::start("prediction-api", &["--model", model], &env).expect("api starts");
    api.wait_ready(Duration::from_secs(30))
        .await
        .expect("api ready");
    (receiver, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_request_with_a_traceparent_continues_the_callers_trace() {
    let (receiver, mut api) = traced_api(&[]).await;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let caller = "b7ad6b7169203331";
    let response = reqwest::Client::new()
        .post(api.url("/v1/predict"))
        .header("traceparent", format!("00-{trace}-{caller}-01"))
        .json(&serde_json::json!({
            "symbol": "BTC-USD",
            "features": {"ret_1m": 0.001, "ret_5m": 0.003, "vol_5m": 0.004, "vol_15m": 0.003, "volume_z": 2.0, "trade_rate": 8.0}
        }))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let answer = response.headers()["traceresponse"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let parts: Vec<&str> = answer.split('-').collect();
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", trace, "01"),
        "{answer}"
    );
    let server_span = parts[2].to_owned();

    let status =
        tokio::task::block_in_place(|| api.terminate(Duration::from_secs(30))).expect("api stops");
    assert!(status.success());
    let spans = receiver.spans();
    let span = spans
        .iter()
        .find(|s| s.span_id == server_span)
        .unwrap_or_else(|| panic!("the request's span was exported: {spans:?}"));
    assert_eq!(span.service, "prediction-api");
    assert_eq!(span.kind, 2, "a server span");
    assert_eq!(
        (span.trace_id.as_str(), span.parent_span_id.as_str()),
        (trace, caller)
    );
    assert_eq!(span.name, "POST /v1/predict");
    assert_eq!(span.attributes["http.route"], "/v1/predict");
    assert_eq!(span.attributes["http.response.status_code"], "200");

    let log = api.log();
    let line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "request finished" && l["route"] == "/v1/predict")
        .unwrap_or_else(|| panic!("the request's log line: {log}"));
    assert_eq!(line["trace_id"], trace, "{line}");
    assert_eq!(line["span_id"], server_span.as_str(), "{line}");
    assert_eq!(line["route"], "/v1/predict", "{line}");
}

/// The sampler decides before a request's span exists (`tidewatch_telemetry::trace::sample`),
/// and the provider keeps what it decided rather than drawing again: with a ratio of one
/// half, about half of the new traces are exported (a second draw would keep a quarter); a
/// caller's "not sampled" is followed and a caller's "sampled" too; an unsampled request
/// still names its trace in the response and in its log line, flags 00.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sampler_decides_before_a_request_span_is_made_and_the_provider_keeps_it() {
    const REQUESTS: usize = 400;
    let (receiver, mut api) = traced_api(&[
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
    ])
    .await;
    let client = reqwest::Client::new();
    let body = serde_json::json!({
        "symbol": "BTC-USD",
        "features": {"ret_1m": 0.001, "ret_5m": 0.003, "vol_5m": 0.004, "vol_15m": 0.003, "volume_z": 2.0, "trade_rate": 8.0}
    });
    // (trace id, span id, flags) the response names.
    let predict = |traceparent: Option<String>| {
        let mut request = client.post(api.url("/v1/predict")).json(&body);
        if let Some(tp) = traceparent {
            request = request.header("traceparent", tp);
        }
        async move {
            let response = request.send().await.expect("request");
            assert_eq!(response.status(), 200);
            let answer = response.headers()["traceresponse"]
                .to_str()
                .expect("ascii")
                .to_owned();
            let parts: Vec<String> = answer.split('-').map(str::to_owned).collect();
            assert_eq!((parts.len(), parts[0].as_str()), (4, "00"), "{answer}");
            (parts[1].clone(), parts[2].clone(), parts[3].clone())
        }
    };
    let mut roots = Vec::new();
    for _ in 0..REQUESTS {
        roots.push(predict(None).await);
    }
    let unsampled_caller = "1af7651916cd43dd8448eb211c80319c";
    let refused = predict(Some(format!("00-{unsampled_caller}-b7ad6b7169203331-00"))).await;
    let sampled_caller = "2af7651916cd43dd8448eb211c80319c";
    let kept = predict(Some(format!("00-{sampled_caller}-b7ad6b7169203331-01"))).await;

    let status =
        tokio::task::block_in_place(|| api.terminate(Duration::from_secs(30))).expect("api stops");
    assert!(status.success());
    let spans = receiver.spans();
    let exported: HashMap<&str, &ReceivedSpan> = spans
        .iter()
        .filter(|s| s.name == "POST /v1/predict")
        .map(|s| (s.span_id.as_str(), s))
        .collect();

    // Every response flagged 01 has its span exported under the trace it names; none
    // flagged 00 has one.
    for (trace, span, flags) in roots.iter().chain([&refused, &kept]) {
        match (flags.as_str(), exported.get(span.as_str())) {
            ("01", Some(s)) => assert_eq!(&s.trace_id, trace),
            ("00", None) => {}
            other => panic!("flags and export disagree for {trace}-{span}: {other:?}"),
        }
    }
    let sampled = roots.iter().filter(|(_, _, f)| f == "01").count();
    // Binomial(400, 0.5): mean 200, standard deviation 10. Deciding twice would keep 100.
    assert!(
        (140..=260).contains(&sampled),
        "{sampled} of {REQUESTS} new traces sampled at a ratio of 0.5"
    );
    assert_eq!(
        exported.len(),
        sampled + 1,
        "the sampled roots and the sampled caller's"
    );
    assert_eq!(
        (refused.0.as_str(), refused.2.as_str()),
        (unsampled_caller, "00")
    );
    assert_eq!((kept.0.as_str(), kept.2.as_str()), (sampled_caller, "01"));

    // An unsampled request's log line names the trace the response named.
    let log = api.log();
    let line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "request finished" && l["trace_id"] == unsampled_caller)
        .unwrap_or_else(|| panic!("the unsampled request's log line: {log}"));
    assert_eq!(line["span_id"], refused.1.as_str(), "{line}");
}
