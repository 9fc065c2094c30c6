//! The stage loop against a real Kafka-protocol broker (tansu, started by `scripts/test`).

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tidewatch_kafka::dlq::{self, DLQ_TOPIC};
use tidewatch_kafka::inspect::{read_topic_async, ReadMessage};
use tidewatch_kafka::stage::{self, Input, Outcome, Processor, StageConfig};
use tidewatch_kafka::{ensure_topics, Producer, Record};
use tidewatch_telemetry::{ComponentHealth, Criticality, Health, Shutdown};

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
    let config = StageConfig {
        stage: "test",
        brokers: brokers(),
        group_id: group.clone(),
        input_topic: input.clone(),
        max_in_flight: 64,
        session_timeout_ms: 10_000,
        options: Vec::new(),
        faults: tidewatch_web::Faults::new(&[]),
    };
    let shutdown = Shutdown::new();
    let health = Health::new().handle(
        "broker",
        Criticality::Critical,
        ComponentHealth::healthy("starting"),
    );
    let runner = {
        let (config, producer, shutdown, output) = (
            config.clone(),
            producer.clone(),
            shutdown.clone(),
            output.clone(),
        );
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
