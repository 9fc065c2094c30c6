//! Helpers for end-to-end tests: service binaries as child processes (killed when dropped),
//! free loopback ports, readiness and metrics over HTTP.
//!
//! The binaries are the ones `cargo test --workspace` builds next to this test binary
//! (`target/<profile>/`); run the tests through `scripts/test`, which also starts the broker
//! and PostgreSQL they need.

use std::collections::{BTreeSet, HashMap};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// Path of a workspace binary built beside the running test.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join(name))
        .expect("target directory");
    assert!(
        path.exists(),
        "{} is missing: build the workspace's binaries first (`cargo build --workspace`, or run scripts/test)",
        path.display()
    );
    path
}

/// A port free on loopback right now that this process has not handed out before. The
/// kernel may give a port just released again, and a port handed out stays released until
/// its service binds it: a CI run started aggregate and project on the same port, and
/// project exited with "address in use" while aggregate answered its readiness probe.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        if given.insert(port) {
            return port;
        }
    }
}

pub fn env_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run this test through scripts/test, which starts the infrastructure")
    })
}

/// Creates an empty database named `prefix_<pid>_<nanos>` on the server of `DATABASE_URL`
/// and returns its URL: each test gets tables of its own (zero-to-production's
/// `spawn_app` habit), so tests sharing the server cannot see each other's rows.
pub async fn fresh_database(prefix: &str) -> anyhow::Result<String> {
    use sqlx::Connection as _;
    let base = env_var("DATABASE_URL");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let name = format!("{prefix}_{}_{nanos}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .context("connecting to DATABASE_URL")?;
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await
        .context("creating the test database")?;
    let (head, _) = base
        .rsplit_once('/')
        .context("DATABASE_URL has no database name")?;
    Ok(format!("{head}/{name}"))
}

/// Every row of every table the projection writes, as text, sorted: two dumps are equal
/// exactly when the tables are (`updated_at` included).
pub async fn dump_projection(pool: &sqlx::PgPool) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for table in [
        "bars",
        "predictions",
        "prediction_outcomes",
        "symbol_latest",
    ] {
        let rows: Vec<(String,)> =
            sqlx::query_as(&format!("SELECT t::text FROM {table} t ORDER BY 1"))
                .fetch_all(pool)
                .await
                .with_context(|| format!("reading {table}"))?;
        out.extend(rows.into_iter().map(|(r,)| format!("{table}: {r}")));
    }
    Ok(out)
}

/// Stores one-minute bars as `project` would (the `bars` table), one series per symbol.
pub async fn store_bars(
    pool: &sqlx::PgPool,
    series: &[(String, Vec<tidewatch_model::features::Bar>)],
) {
    for (symbol, bars) in series {
        for b in bars {
            sqlx::query(
                "INSERT INTO bars (symbol, interval_seconds, start_time, end_time, open, high, \
                 low, close, volume, vwap, trade_count) VALUES ($1, 60, \
                 to_timestamp($2::double precision / 1000), \
                 to_timestamp($2::double precision / 1000 + 60), $3, $4, $5, $6, $7, $6, $8)",
            )
            .bind(symbol)
            .bind(b.start_ms)
            .bind(b.open)
            .bind(b.high)
            .bind(b.low)
            .bind(b.close)
            .bind(b.volume)
            .bind(b.trades as i64)
            .execute(pool)
            .await
            .expect("insert bar");
        }
    }
}

/// The values of the series of `name` in a Prometheus text exposition whose labels
/// include every `(label, value)` given.
fn samples<'a>(
    text: &'a str,
    name: &'a str,
    labels: &'a [(&str, &str)],
) -> impl Iterator<Item = f64> + 'a {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(move |l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse().ok())
            .flatten()
        })
}

/// The value of the first series of `name` whose labels include every `(label, value)`
/// given.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text, name, labels).next()
}

/// The sum of the series of `name` whose labels include every `(label, value)` given.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text, name, labels).sum()
}

/// A service process; SIGKILLed when dropped, so a failing test leaves nothing behind.
#[derive(Debug)]
pub struct Service {
    /// The binary's name.
    pub name: String,
    /// Which instance, in logs and failure messages (the binary's name unless given).
    pub label: String,
    pub port: u16,
    args: Vec<String>,
    env: HashMap<String, String>,
    child: Option<Child>,
    log: PathBuf,
}

impl Service {
    /// Starts `binary` with `--listen 127.0.0.1:<free port>`, the arguments and environment
    /// given, and its log (stdout and stderr) in a file of the temp directory.
    pub fn start(name: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_instance(name, name, args, env)
    }

    /// [`Self::start`] for one of several instances of `name`, with a log of its own.
    pub fn start_instance(
        name: &str,
        label: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut s = Self {
            name: name.to_owned(),
            label: label.to_owned(),
            port: free_port(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            child: None,
            log: std::env::temp_dir()
                .join(format!("tidewatch-e2e-{label}-{}.log", std::process::id())),
        };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(binary(&self.name))
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .args(&self.args)
            .envs(&self.env)
            .env("LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.label))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// SIGKILL: no draining, no commit, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL, then the same command again.
    pub fn restart_after_kill(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    /// Waits for the process to exit by itself; its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().context("not running")?;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}",
                self.label
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM and wait: the graceful path.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let child = self.child.as_ref().context("not running")?;
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        self.wait_exit(timeout)
    }

    /// The service's whole log (stdout and stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the service's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Waits until `/health/ready` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let client = reqwest::Client::new();
        loop {
            if let Ok(r) = client.get(self.url("/health/ready")).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} not ready within {timeout:?}; log:\n{}",
                self.label,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The `/metrics` exposition.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(self.url("/metrics")).await?.text().await?)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy on loopback in front of a real service, which a test can cut (every
/// connection closed, new ones refused) and restore: a database "going away" without
/// stopping the database other tests share.
#[derive(Debug, Clone)]
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    generation: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl Proxy {
    pub async fn start(target: std::net::SocketAddr) -> anyhow::Result<Self> {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let proxy = Self {
            addr: listener.local_addr()?,
            up: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
            generation: std::sync::Arc::new(tokio::sync::watch::channel(0).0),
        };
        let (up, generation) = (proxy.up.clone(), proxy.generation.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused in effect
                }
                let mut cut = generation.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Ok(proxy)
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A PostgreSQL cluster of the test's own (initdb into a temporary directory, a free
/// loopback port), so a test can stop and start the server itself without disturbing the
/// tests sharing the server `scripts/test` started. Stopped and removed when dropped.
#[derive(Debug)]
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    /// initdb, start, and create the database `tidewatch`.
    pub fn start() -> anyhow::Result<Self> {
        let bin = postgres_bin()?;
        let dir = std::env::temp_dir().join(format!(
            "tidewatch-e2e-postgres-{}-{}",
            std::process::id(),
            free_port()
        ));
        let cluster = Self {
            bin,
            dir,
            port: free_port(),
        };
        cluster.run("mkdir", &["-p", &cluster.path("")])?;
        cluster.run(
            "initdb",
            &[
                "-D",
                &cluster.path("data"),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        cluster.start_server()?;
        cluster.run(
            "createdb",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &cluster.port.to_string(),
                "-U",
                "postgres",
                "tidewatch",
            ],
        )?;
        Ok(cluster)
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/tidewatch", self.port)
    }

    /// A fast shutdown, as an operator's restart does: every session is ended, the data
    /// stays.
    pub fn stop_server(&self) -> anyhow::Result<()> {
        self.run(
            "pg_ctl",
            &["-D", &self.path("data"), "-m", "fast", "-w", "stop"],
        )
    }

    pub fn start_server(&self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.path("")
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.path("data"),
                "-l",
                &self.path("postgres.log"),
                "-w",
                "-t",
                "60",
                "-o",
                &options,
                "start",
            ],
        )
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// Runs a program (a PostgreSQL one by name, or `mkdir`) as the `postgres` user when
    /// the test runs as root, which initdb and the server refuse to be; the cluster's
    /// directory is made by that user too, so the server owns it.
    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let program_path = match program {
            "mkdir" => PathBuf::from(program),
            _ => self.bin.join(program),
        };
        let as_root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self")?) == 0;
        let mut command = if as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program_path);
            c
        } else {
            Command::new(&program_path)
        };
        let output = command
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {program}"))?;
        anyhow::ensure!(
            output.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &["-D", &self.path("data"), "-m", "immediate", "-w", "stop"],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest server binaries under /usr/lib/postgresql (Debian's layout), or `PG_BIN`.
fn postgres_bin() -> anyhow::Result<PathBuf> {
    if let Ok(bin) = std::env::var("PG_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL server binaries not found under /usr/lib/postgresql (set PG_BIN)")?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .context("no PostgreSQL version under /usr/lib/postgresql has initdb")
}

/// A tansu broker of the test's own on a free loopback port, keeping everything in memory,
/// so a test can stop and restart the broker process itself (losing every topic, producer
/// id and offset, as a broker restarted without its volume does) without disturbing the
/// tests sharing the broker `scripts/test` started. Killed when dropped.
#[derive(Debug)]
pub struct PrivateBroker {
    port: u16,
    child: Option<Child>,
}

impl PrivateBroker {
    pub fn start() -> anyhow::Result<Self> {
        let mut broker = Self {
            port: free_port(),
            child: None,
        };
        broker.start_server()?;
        Ok(broker)
    }

    /// `host:port`, for `KAFKA_BROKERS`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL, and waits until the process is gone and its port is free again.
    pub fn stop_server(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            child.wait().context("waiting for tansu to exit")?;
        }
        let port = self.port;
        within_30_s(&format!("port {port} free after tansu exited"), || {
            TcpListener::bind(("127.0.0.1", port)).is_ok()
        })
    }

    /// Starts tansu on the same port and waits until it accepts connections.
    pub fn start_server(&mut self) -> anyhow::Result<()> {
        let url = format!("tcp://{}", self.brokers());
        let child = tansu_broker(&url, &url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting tansu (scripts/test installs it)")?;
        self.child = Some(child);
        let port = self.port;
        within_30_s(&format!("tansu listening on {port}"), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
    }
}

/// `tansu broker` listening on `listen` and advertising `advertised` (`tcp://host:port`),
/// in memory unless `--storage-engine` is added; `$TANSU` names another binary.
pub fn tansu_broker(listen: &str, advertised: &str) -> Command {
    let mut command = Command::new(std::env::var("TANSU").unwrap_or_else(|_| "tansu".into()));
    command.args([
        "broker",
        "--listener-url",
        listen,
        "--advertised-listener-url",
        advertised,
    ]);
    command
}

/// Polls `done` every 100 ms for up to 30 s.
fn within_30_s(what: &str, done: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        anyhow::ensure!(Instant::now() < deadline, "not {what} within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An OTLP/HTTP trace receiver inside a test: a stand-in for the OpenTelemetry Collector,
/// which cannot run here. It decodes each export with the `opentelemetry-proto` types (the
/// real protobuf the services send) and keeps every span with its service's name.
#[derive(Debug)]
pub struct OtlpReceiver {
    addr: std::net::SocketAddr,
    spans: std::sync::Arc<std::sync::Mutex<Vec<ReceivedSpan>>>,
    _server: tokio::task::JoinHandle<()>,
}

/// One span as the receiver got it: ids in lowercase hex, attributes as strings.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service: String,
    pub name: String,
    /// The OTLP span kind (2 server, 4 producer, 5 consumer).
    pub kind: i32,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    /// (trace id, span id) of each link.
    pub links: Vec<(String, String)>,
    pub attributes: std::collections::BTreeMap<String, String>,
    /// The OTLP status code (0 unset, 1 ok, 2 error) and message.
    pub status: (i32, String),
}

impl OtlpReceiver {
    pub async fn start() -> anyhow::Result<Self> {
        use opentelemetry_proto::tonic::collector::trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
        };
        use prost::Message as _;

        let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let store = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let store = store.clone();
                async move {
                    let request = match ExportTraceServiceRequest::decode(body) {
                        Ok(r) => r,
                        Err(e) => {
                            return (http::StatusCode::BAD_REQUEST, e.to_string().into_bytes())
                        }
                    };
                    let received = received_spans(request);
                    store.lock().expect("spans").extend(received);
                    (
                        http::StatusCode::OK,
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            spans,
            _server: server,
        })
    }

    /// The value for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("spans").clone()
    }
}

fn received_spans(
    request: opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
) -> Vec<ReceivedSpan> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::common::v1::KeyValue;

    fn text(kv: &KeyValue) -> String {
        match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => s.clone(),
            Some(Value::IntValue(i)) => i.to_string(),
            Some(Value::BoolValue(b)) => b.to_string(),
            Some(Value::DoubleValue(d)) => d.to_string(),
            other => format!("{other:?}"),
        }
    }
    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .map(text)
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    kind: span.kind,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(kv)))
                        .collect(),
                    status: span
                        .status
                        .map_or((0, String::new()), |s| (s.code, s.message)),
                });
            }
        }
    }
    out
}
