//! The stage loop against a real Kafka-protocol broker (tansu, started by `scripts/test`).

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tidewatch_kafka::dlq::{self, DLQ_TOPIC};
use tidewatch_kafka::inspect::{read_topic_async, ReadMessage};
use tidewatch_kafka::stage::{self, Input, Outcome, Processor, StageConfig};
use tidewatch_kafka::{ensure_topics, Producer, Record};
use tidewatch_telemetry::{ComponentHealth, Criticality, Health, Shutdown};

mod raw_kafka;

fn brokers() -> String {
    std::env::var("TIDEWATCH_KAFKA_BROKERS")
        .expect("TIDEWATCH_KAFKA_BROKERS is not set: run this test through scripts/test, which starts a broker")
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

/// Doubles integers; anything else is dead-lettered.
struct Doubler {
    output: String,
}

impl Processor for Doubler {
    async fn process(&mut self, input: &Input<'_>) -> Outcome {
        match std::str::from_utf8(input.payload)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
        {
            Some(n) => Outcome::Emit(vec![Record::new(
                &self.output,
                input.key.map(<[u8]>::to_vec),
                (n * 2).to_string().into_bytes(),
            )]),
            None => Outcome::DeadLetter {
                code: tidewatch_kafka::Code::pipeline("decode_failed"),
                reason: format!(
                    "not an integer: {:?}",
                    String::from_utf8_lossy(input.payload)
                ),
            },
        }
    }
}

/// Runs the [`Doubler`] stage from `input` to `output` in a task until the returned
/// shutdown is triggered.
fn start_doubler(
    input: &str,
    output: &str,
    group: &str,
) -> (Shutdown, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let config = StageConfig {
        stage: "test",
        brokers: brokers(),
        group_id: group.to_owned(),
        input_topic: input.to_owned(),
        max_in_flight: 64,
        session_timeout_ms: 10_000,
        options: Vec::new(),
        faults: tidewatch_web::Faults::new(&[]),
    };
    let producer = Producer::new(&brokers(), "test-stage").expect("producer");
    let shutdown = Shutdown::new();
    let health = Health::new().handle(
        "broker",
        Criticality::Critical,
        ComponentHealth::healthy("starting"),
    );
    let runner = {
        let (shutdown, output) = (shutdown.clone(), output.to_owned());
        tokio::spawn(async move {
            stage::run(
                &config,
                &producer,
                &mut Doubler { output },
                &shutdown,
                &health,
            )
            .await
        })
    };
    (shutdown, runner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_transformed_or_dead_lettered_once_and_offsets_are_committed() {
    let (input, output, group) = (
        unique("stage-in"),
        unique("stage-out"),
        unique("stage-group"),
    );
    ensure_topics(&brokers(), &[&input, &output, DLQ_TOPIC], 3)
        .await
        .expect("topics");
    let producer = Producer::new(&brokers(), "test-producer").expect("producer");
    let mut sent = Vec::new();
    for i in 0..200i64 {
        let payload = if i % 10 == 7 {
            format!("bad-{i}")
        } else {
            i.to_string()
        };
        sent.push(producer.send(&Record::new(
            &input,
            Some(format!("k{}", i % 5).into_bytes()),
            payload.into_bytes(),
        )));
    }
    for delivery in sent {
        delivery.await.expect("input delivered");
    }
    let (shutdown, runner) = start_doubler(&input, &output, &group);

    let outputs = read_topic_async(
        brokers(),
        output.clone(),
        180,
        Duration::from_secs(60),
        |_| true,
    )
    .await
    .expect("read outputs");
    let source = input.clone();
    let dead = read_topic_async(
        brokers(),
        DLQ_TOPIC.to_owned(),
        20,
        Duration::from_secs(60),
        move |m| m.headers.get(dlq::HEADER_SOURCE_TOPIC) == Some(&source),
    )
    .await
    .expect("read dead letters");
    shutdown.trigger();
    let stopped = runner.await.expect("joined");

    assert!(stopped.is_ok(), "{stopped:?}");
    let mut got: Vec<i64> = outputs
        .iter()
        .map(|m| {
            String::from_utf8_lossy(&m.payload)
                .parse()
                .expect("integer")
        })
        .collect();
    got.sort_unstable();
    let want: Vec<i64> = (0..200).filter(|i| i % 10 != 7).map(|i| i * 2).collect();
    assert_eq!(got, want, "each valid input exactly once");
    assert_eq!(dead.len(), 20, "each bad input dead-lettered exactly once");
    for ReadMessage {
        payload, headers, ..
    } in &dead
    {
        assert!(
            String::from_utf8_lossy(&payload[..]).starts_with("bad-"),
            "unchanged payload"
        );
        assert_eq!(
            headers.get(dlq::HEADER_ERROR_CODE).map(String::as_str),
            Some("decode_failed")
        );
        assert_eq!(
            headers.get(dlq::HEADER_STAGE).map(String::as_str),
            Some("test")
        );
        assert!(headers
            .get(dlq::HEADER_SOURCE_OFFSET)
            .is_some_and(|o| o.parse::<i64>().is_ok()));
        assert!(headers
            .get(dlq::HEADER_ERROR_REASON)
            .is_some_and(|r| r.contains("not an integer")));
    }

    // The group's committed offsets cover every input message: a restart replays nothing.
    // (Offsets start at 0 and are contiguous, so the committed offsets sum to the count.)
    let checker: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", &group)
        .create()
        .expect("checker");
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition(&input, p);
    }
    let committed = checker
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    let total: i64 = committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            other => panic!(
                "partition {} has no committed offset: {other:?}",
                e.partition()
            ),
        })
        .sum();
    assert_eq!(total, 200, "committed offsets cover all 200 input messages");
}

/// A header name that is not UTF-8 is legal on the wire, and rdkafka 0.39 panics reading
/// one: the stage must leave that header out and go on, not crash on the message and on
/// every replay of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_name_that_is_not_utf8_neither_stops_the_stage_nor_loses_the_message() {
    let (input, output, group) = (
        unique("badheader-in"),
        unique("badheader-out"),
        unique("badheader-group"),
    );
    ensure_topics(&brokers(), &[&input, &output, DLQ_TOPIC], 1)
        .await
        .expect("topics");
    let records = [
        raw_kafka::RawRecord {
            key: Some(b"k"),
            value: b"1",
            headers: &[(b"before", b"ok")],
        },
        raw_kafka::RawRecord {
            key: Some(b"k"),
            value: b"2",
            headers: &[
                (b"kept", b"a"),
                (b"\xff\xfe not utf-8", b"dropped"),
                (b"also-kept", b"b"),
            ],
        },
        raw_kafka::RawRecord {
            key: Some(b"k"),
            value: b"3",
            headers: &[],
        },
    ];
    // One broker leads every partition here (scripts/test starts one).
    let broker = brokers();
    let broker = broker.split(',').next().expect("a broker");
    let first = raw_kafka::produce(broker, &input, 0, &records).expect("raw produce");

    let (shutdown, runner) = start_doubler(&input, &output, &group);
    let outputs = read_topic_async(brokers(), output, 3, Duration::from_secs(60), |_| true)
        .await
        .expect("read outputs");
    let stopped_early = runner.is_finished();
    shutdown.trigger();
    let stopped = runner.await;
    assert!(
        !stopped_early,
        "the stage stopped before shutdown: {stopped:?}"
    );
    assert!(matches!(stopped, Ok(Ok(()))), "{stopped:?}");
    let mut got: Vec<String> = outputs
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    got.sort_unstable();
    assert_eq!(got, ["2", "4", "6"], "every message processed once");

    // The topic reader, too, leaves the unreadable header out and keeps the rest.
    let read = read_topic_async(brokers(), input, 3, Duration::from_secs(30), |_| true)
        .await
        .expect("read input back");
    let bad = read
        .iter()
        .find(|m| m.offset == first + 1)
        .expect("the message with the bad header name");
    assert_eq!(bad.payload, b"2");
    let mut names: Vec<&str> = bad.headers.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["also-kept", "kept"]);
}
