//! Overload benchmark (`scripts/bench-overload`): what clients see above capacity, with load
//! shedding and without, side by side in one run.
//!
//! The service runs in this process on a runtime of its own with one worker thread (one
//! core's capacity), the load on another. Requests are `POST /v1/predict/batch` with 1,000
//! items, so the service's work dominates the client's.
//! 1. Capacity: closed loop, 32 clients, for the warm-up time: served requests per second.
//! 2. Open loop at twice that rate (arrivals do not wait for answers, as real clients do not)
//!    against the service with `--max-concurrent-requests` (default 128) and with no limit.
//!
//!     cargo run --release -p prediction-api --example overload -- [SECONDS] [LIMIT]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser as _;
use prediction_api::settings::Settings;
use prediction_api::{Application, SERVICE};
use tidewatch_telemetry::{BuildInfo, Shutdown, Telemetry};

fn body() -> String {
    let item = r#"{"symbol":"BTC-USD","features":{"ret_1m":0.001,"ret_5m":0.003,"vol_5m":0.004,"vol_15m":0.003,"volume_z":2.0,"trade_rate":8.0}}"#;
    format!(r#"{{"items":[{}]}}"#, vec![item; 1000].join(","))
}

/// Starts the service with `limit` on its own one-thread runtime; returns its URL.
fn serve(limit: usize) -> (String, Shutdown, std::thread::JoinHandle<()>) {
    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/volatility-spike.json"
    );
    let settings = Settings::try_parse_from([
        "prediction-api",
        "--listen",
        "127.0.0.1:0",
        "--model",
        model,
        "--max-concurrent-requests",
        &limit.to_string(),
        "--log-level",
        "warn",
    ])
    .expect("settings");
    let shutdown = Shutdown::new();
    let (tx, rx) = std::sync::mpsc::channel();
    let stop = shutdown.clone();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("server runtime");
        rt.block_on(async move {
            let telemetry = Telemetry::new(BuildInfo::new(SERVICE, "bench")).expect("telemetry");
            let app = Application::build(&settings, telemetry).await.expect("app");
            tx.send(format!("http://{}", app.local_addr().expect("addr")))
                .expect("send");
            app.run(stop).await.expect("serve");
        });
    });
    (rx.recv().expect("the service starts"), shutdown, thread)
}

struct Answer {
    status: u16,
    latency: Duration,
}

async fn closed_loop(client: &reqwest::Client, url: &str, body: &str, secs: f64) -> f64 {
    let served = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let (client, url, body, served) = (
                client.clone(),
                url.to_owned(),
                body.to_owned(),
                served.clone(),
            );
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let res = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    if res.is_ok_and(|r| r.status() == 200) {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }
    served.load(Ordering::Relaxed) as f64 / secs
}

async fn open_loop(
    client: &reqwest::Client,
    url: &str,
    body: &str,
    rate: f64,
    secs: f64,
) -> (Vec<Answer>, usize) {
    let n = (rate * secs) as usize;
    let start = tokio::time::Instant::now();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        let (client, url, body) = (client.clone(), url.to_owned(), body.to_owned());
        let (in_flight, most) = (in_flight.clone(), most.clone());
        tasks.push(tokio::spawn(async move {
            let now = in_flight.fetch_add(1, Ordering::Relaxed) + 1;
            most.fetch_max(now, Ordering::Relaxed);
            let sent = Instant::now();
            let status = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .map_or(0, |r| r.status().as_u16());
            in_flight.fetch_sub(1, Ordering::Relaxed);
            Answer {
                status,
                latency: sent.elapsed(),
            }
        }));
    }
    let mut answers = Vec::with_capacity(n);
    for t in tasks {
        answers.push(t.await.expect("request task"));
    }
    (answers, most.load(Ordering::Relaxed))
}

fn quantile(mut v: Vec<Duration>, q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

struct Row {
    served_per_s: f64,
    shed_share: f64,
    failed: usize,
    p50: Duration,
    p99: Duration,
    p99_all: Duration,
    most_in_flight: usize,
}

fn summarise(answers: Vec<Answer>, most_in_flight: usize, secs: f64) -> Row {
    let ok: Vec<_> = answers
        .iter()
        .filter(|a| a.status == 200)
        .map(|a| a.latency)
        .collect();
    let shed = answers.iter().filter(|a| a.status == 503).count();
    let failed = answers
        .iter()
        .filter(|a| a.status != 200 && a.status != 503)
        .count();
    Row {
        served_per_s: ok.len() as f64 / secs,
        shed_share: shed as f64 / answers.len().max(1) as f64,
        failed,
        p50: quantile(ok.clone(), 0.5),
        p99: quantile(ok, 0.99),
        p99_all: quantile(answers.iter().map(|a| a.latency).collect(), 0.99),
        most_in_flight,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let secs: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10.0);
    let limit: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(128);
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("client runtime");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .build()
        .expect("client");
    let body = body();

    let (url, stop, thread) = serve(limit);
    let batch = format!("{url}/v1/predict/batch");
    let capacity = client_rt.block_on(closed_loop(&client, &batch, &body, secs.min(5.0)));
    println!("capacity: {capacity:.0} requests/s (closed loop, 32 clients, batches of 1,000, one server thread)");
    let rate = capacity * 2.0;
    println!("offered: {rate:.0} requests/s for {secs} s (open loop, 2x capacity)\n");
    let (answers, most) = client_rt.block_on(open_loop(&client, &batch, &body, rate, secs));
    let shedding = summarise(answers, most, secs);
    stop.trigger();
    thread.join().expect("server thread");

    let (url, stop, thread) = serve(0);
    let batch = format!("{url}/v1/predict/batch");
    let (answers, most) = client_rt.block_on(open_loop(&client, &batch, &body, rate, secs));
    let unlimited = summarise(answers, most, secs);
    stop.trigger();
    thread.join().expect("server thread");

    let col = |f: &dyn Fn(&Row) -> String| format!("{:>22} {:>22}", f(&shedding), f(&unlimited));
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    println!(
        "{:34} {:>22} {:>22}",
        "",
        format!("shedding (limit {limit})"),
        "no limit"
    );
    println!(
        "{:34} {}",
        "served (200) per second",
        col(&|r| format!("{:.0}", r.served_per_s))
    );
    println!(
        "{:34} {}",
        "shed (503 overloaded)",
        col(&|r| format!("{:.1}%", r.shed_share * 100.0))
    );
    println!(
        "{:34} {}",
        "failed otherwise (timeouts, resets)",
        col(&|r| r.failed.to_string())
    );
    println!("{:34} {}", "p50 of served", col(&|r| ms(r.p50)));
    println!("{:34} {}", "p99 of served", col(&|r| ms(r.p99)));
    println!("{:34} {}", "p99 of every answer", col(&|r| ms(r.p99_all)));
    println!(
        "{:34} {}",
        "most requests in flight",
        col(&|r| r.most_in_flight.to_string())
    );
    println!(
        "\np99 of served, no limit / shedding: {:.1}x",
        unlimited.p99.as_secs_f64() / shedding.p99.as_secs_f64().max(1e-9)
    );
}
