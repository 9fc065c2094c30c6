# shellcheck shell=bash
# Private infrastructure on loopback for tests, benchmarks and the native stack: tansu
# (Kafka protocol), PostgreSQL in its own cluster, Prometheus and Alertmanager, each on a
# free port under one run directory, all stopped by infra_stop. Source this file; it
# defines functions and the TW_* variables, and changes nothing until they are called.

TW_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TANSU_VERSION=0.6.0
TANSU_FEATURES=dynostore,postgres
TW_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/tidewatch
TW_BROKER_STORE_ROOT=$TW_CACHE/trixie-postgres

log() { printf '\033[1m[%s]\033[0m %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi
}

# Installs Debian packages that are missing (apt-get update only when something is).
ensure_apt() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Everything the tests need beyond Rust: Prometheus and promtool, Alertmanager and amtool,
# PostgreSQL, wrk for benchmarks, tansu (built from crates.io, 12-20 minutes cold) and the
# PostgreSQL its durable storage needs: the two halves below, which scripts/test runs apart.
ensure_tools() {
  ensure_base_tools
  ensure_broker_tools
}

# The Debian packages and the Rust toolchain: minutes at most.
ensure_base_tools() {
  ensure_apt prometheus prometheus-alertmanager prometheus-node-exporter prometheus-postgres-exporter \
    postgresql wrk python3 curl debootstrap
  export PATH="$HOME/.cargo/bin:$PATH"
  ensure_rust_toolchain
}

# tansu, built from crates.io (12-20 minutes cold), and the root its PostgreSQL storage runs
# in. Needs ensure_base_tools first; scripts/test runs it beside the workspace build.
ensure_broker_tools() {
  export PATH="$HOME/.cargo/bin:$PATH"
  mkdir -p "$TW_CACHE"
  # One build at a time: a second caller (the Docker preparation beside scripts/test's
  # background build) waits for the first and then finds everything there.
  local lock
  exec {lock}>"$TW_CACHE/broker-tools.lock"
  flock "$lock"
  # The stamp names the features and the patch: a tansu built without the PostgreSQL engine
  # or without the patch is rebuilt.
  local stamp="$TW_CACHE/tansu-$TANSU_VERSION-$TANSU_FEATURES-$(tansu_patch_id)"
  if ! { [ -f "$stamp" ] && tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; }; then
    log "building tansu $TANSU_VERSION ($TANSU_FEATURES, patched) from crates.io (once per machine, 12-20 minutes)"
    build_tansu
    : >"$stamp"
  fi
  ensure_broker_store_root
  exec {lock}>&-
}

# tansu 0.6.0's group coordinator drops a member that missed its heartbeats while its group
# was formed, but keeps it as the leader: when the group forms again (a static member back
# under a new member id, after a broker outage), every join names that dead leader, whose
# assignment never comes, and the group's consumers wait without partitions forever.
# scripts/lib/tansu-0.6.0-group-leader.patch lets the next member to join lead instead.
TANSU_PATCH=$TW_ROOT/scripts/lib/tansu-$TANSU_VERSION-group-leader.patch
tansu_patch_id() { sha256sum "$TANSU_PATCH" | cut -c1-12; }

# Downloads crate $1 at $TANSU_VERSION from crates.io into directory $2, checked against the
# checksum the crates.io index publishes.
fetch_crate() {
  local crate=$1 dir=$2 want got
  want=$(curl -sSfL "https://index.crates.io/${crate:0:2}/${crate:2:2}/$crate" \
    | python3 -c 'import json, sys; v = sys.argv[1]; print(next(d["cksum"] for d in map(json.loads, sys.stdin) if d["vers"] == v))' "$TANSU_VERSION") \
    || die "no $crate $TANSU_VERSION in the crates.io index"
  curl -sSfL -o "$dir/$crate.crate" "https://static.crates.io/crates/$crate/$crate-$TANSU_VERSION.crate"
  got=$(sha256sum "$dir/$crate.crate" | cut -d' ' -f1)
  [ "$got" = "$want" ] || die "$crate $TANSU_VERSION: checksum $got, crates.io says $want"
  tar -xzf "$dir/$crate.crate" -C "$dir"
}

# tansu $TANSU_VERSION from its crates.io sources and their lock file, with tansu-broker
# patched ($TANSU_PATCH), installed as ~/.cargo/bin/tansu.
build_tansu() {
  local dir
  dir=$(mktemp -d)
  fetch_crate tansu "$dir"
  fetch_crate tansu-broker "$dir"
  (cd "$dir/tansu-broker-$TANSU_VERSION" && git apply -p1 "$TANSU_PATCH") \
    || die "the tansu patch does not apply"
  printf '\n[patch.crates-io]\ntansu-broker = { path = "../tansu-broker-%s" }\n' "$TANSU_VERSION" \
    >>"$dir/tansu-$TANSU_VERSION/Cargo.toml"
  # The package's own Cargo.lock pins every dependency. The patch may change only the
  # patched entry (its source and checksum go); anything else stops the build.
  cp "$dir/tansu-$TANSU_VERSION/Cargo.lock" "$dir/Cargo.lock.published"
  (cd "$dir/tansu-$TANSU_VERSION" && cargo metadata --quiet --format-version 1 >/dev/null) \
    || die "tansu's dependencies do not resolve"
  local changed
  # diff exits 1 when the files differ, as they must: only what it prints is judged.
  changed=$(diff "$dir/Cargo.lock.published" "$dir/tansu-$TANSU_VERSION/Cargo.lock" | grep '^[<>]' || :)
  [ "$changed" = "$(printf '< source = "registry+https://github.com/rust-lang/crates.io-index"\n< checksum = "%s"' \
    "$(sha256sum "$dir/tansu-broker.crate" | cut -d' ' -f1)")" ] \
    || die "patching tansu-broker changed more of tansu's Cargo.lock than its entry: $changed"
  (cd "$dir/tansu-$TANSU_VERSION" && CARGO_TARGET_DIR="$dir/target" \
    cargo build --release --locked --quiet --bin tansu --features "$TANSU_FEATURES") \
    || die "tansu did not build"
  install -m 755 "$dir/target/release/tansu" "$HOME/.cargo/bin/tansu"
  rm -rf "$dir"
}

# The system's Debian mirror, for debootstrap (here and in docker.sh) and trixie's packages.
debian_mirror() {
  local uri
  uri=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n 1)
  [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $0 !~ /security/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null)
  echo "${uri:-http://deb.debian.org/debian}"
}

# tansu's PostgreSQL storage (the broker that keeps its topics across a restart) queries
# with PostgreSQL 16 syntax; bookworm has 15. Debian trixie's PostgreSQL 17 runs in a
# minimal trixie root of its own (debootstrap from the system's mirror, about a minute,
# once per machine), started with chroot.
ensure_broker_store_root() {
  [ -x "$TW_BROKER_STORE_ROOT/usr/lib/postgresql/17/bin/postgres" ] && return 0
  local partial="$TW_BROKER_STORE_ROOT.partial"
  log "debootstrapping Debian trixie with PostgreSQL 17 for tansu's storage (once per machine)"
  as_root rm -rf "$partial"
  mkdir -p "$TW_CACHE"
  as_root debootstrap --variant=minbase --include=postgresql-17 trixie "$partial" \
    "$(debian_mirror)" >"$TW_CACHE/trixie-postgres.log" 2>&1 \
    || die "debootstrap failed: $(tail -5 "$TW_CACHE/trixie-postgres.log")"
  as_root mv "$partial" "$TW_BROKER_STORE_ROOT"
}

# rust-toolchain.toml pins a release; rustup would download it when missing. A machine whose
# default toolchain already is that release (and that reaches no rustup server) gets it
# linked under the pinned name instead, as rustup itself would name it.
ensure_rust_toolchain() {
  local pinned sysroot host
  pinned=$(sed -n 's/^channel = "\(.*\)"$/\1/p' "$TW_ROOT/rust-toolchain.toml")
  command -v rustup >/dev/null || return 0
  rustup toolchain list | grep -q "^$pinned-" && return 0
  if (cd / && rustc --version) | grep -q "^rustc $pinned "; then
    sysroot=$(cd / && rustc --print sysroot)
    host=$(cd / && rustc -vV | sed -n 's/^host: //p')
    log "linking the default toolchain ($sysroot) as $pinned-$host"
    ln -s "$sysroot" "${RUSTUP_HOME:-$HOME/.rustup}/toolchains/$pinned-$host"
  fi
}

# A port free on loopback now that no script of this machine handed out lately. The kernel
# may give a port just released again, and a port handed out is released until its service
# binds it: two services of one stack could get the same port, and the later one would not
# start. The ports handed out are remembered in a file (the last 1,000, under a lock).
free_port() {
  python3 - "${TMPDIR:-/tmp}/tidewatch-ports-given" <<'PY'
import fcntl, socket, sys
with open(sys.argv[1], "a+") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    f.seek(0)
    given = f.read().split()[-1000:]
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
        s.close()
        if port not in given:
            break
    f.seek(0)
    f.truncate()
    f.write("\n".join(given + [port]) + "\n")
print(port)
PY
}

wait_for() { # description timeout_seconds command...
  local what=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "$what did not come up within ${timeout}s"
    sleep 0.2
  done
}

tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Creates the run directory; every start_* below puts its data and log there.
infra_init() {
  TW_RUN=$(mktemp -d "${TMPDIR:-/tmp}/tidewatch.XXXXXX")
  chmod 755 "$TW_RUN"  # PostgreSQL runs as its own user and must reach its directory
  : >"$TW_RUN/pids"
  export TW_RUN
}

remember_pid() { echo "$1 $2" >>"$TW_RUN/pids"; }

start_tansu() {
  TW_KAFKA_PORT=${TW_KAFKA_PORT:-$(free_port)}
  tansu broker --listener-url "tcp://127.0.0.1:$TW_KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$TW_KAFKA_PORT" >"$TW_RUN/tansu.log" 2>&1 &
  remember_pid $! tansu
  wait_for "tansu on :$TW_KAFKA_PORT" 30 tcp_open "$TW_KAFKA_PORT"
  export TIDEWATCH_KAFKA_BROKERS="127.0.0.1:$TW_KAFKA_PORT"
  log "tansu (Kafka protocol) on $TIDEWATCH_KAFKA_BROKERS"
}

# The PostgreSQL 17 server that keeps durable brokers' topics (tansu's PostgreSQL storage),
# in the trixie root; TIDEWATCH_TANSU_STORE is its URL without a database: each broker
# gets a database of its own (scripts/lib/tansu-postgres.sql).
start_broker_store() {
  local root=$TW_BROKER_STORE_ROOT dir bin=/usr/lib/postgresql/17/bin
  dir=/var/lib/tidewatch/$(basename "$TW_RUN")
  TW_BROKER_STORE_PORT=${TW_BROKER_STORE_PORT:-$(free_port)}
  as_root mkdir -p "$root$dir"
  as_root chroot "$root" chown postgres:postgres "$dir"
  as_root chroot --userspec=postgres:postgres "$root" "$bin/initdb" -D "$dir/data" -A trust -U postgres \
    -E UTF8 --locale=C.UTF-8 --no-sync >"$TW_RUN/broker-store-init.log" 2>&1 \
    || die "initdb (broker store) failed: $(tail -5 "$TW_RUN/broker-store-init.log")"
  # fsync off: the broker is restarted, not the machine, and the page cache survives that.
  as_root chroot --userspec=postgres:postgres "$root" "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
    -o "-p $TW_BROKER_STORE_PORT -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c dynamic_shared_memory_type=mmap -c max_connections=300" \
    start >/dev/null || die "PostgreSQL 17 (broker store) did not start: $(tail -5 "$root$dir/postgres.log")"
  echo "pg17 $dir" >>"$TW_RUN/pids"
  export TIDEWATCH_TANSU_STORE="postgres://postgres@127.0.0.1:$TW_BROKER_STORE_PORT"
  log "PostgreSQL 17 for durable brokers on 127.0.0.1:$TW_BROKER_STORE_PORT"
}

# A database in the broker store with tansu's tables, for one broker: prints its URL.
broker_store_database() { # name
  psql -q -v ON_ERROR_STOP=1 "$TIDEWATCH_TANSU_STORE/postgres" -c "create database $1" >/dev/null \
    && psql -q -v ON_ERROR_STOP=1 "$TIDEWATCH_TANSU_STORE/$1" -f "$TW_ROOT/scripts/lib/tansu-postgres.sql" >/dev/null \
    && echo "$TIDEWATCH_TANSU_STORE/$1"
}

pg_bin() { find /usr/lib/postgresql -maxdepth 2 -name bin -type d | sort -V | tail -n 1; }

as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_postgres() {
  local bin dir="$TW_RUN/postgres"
  bin=$(pg_bin)
  [ -x "$bin/initdb" ] || die "PostgreSQL server binaries not found under /usr/lib/postgresql"
  TW_PG_PORT=${TW_PG_PORT:-$(free_port)}
  mkdir -p "$dir"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
  as_postgres "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --no-sync >"$TW_RUN/postgres-init.log" 2>&1 \
    || die "initdb failed: $(tail -5 "$TW_RUN/postgres-init.log")"
  as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
    -o "-p $TW_PG_PORT -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off" start >/dev/null \
    || die "PostgreSQL did not start: $(tail -5 "$dir/postgres.log")"
  echo "pg $dir/data" >>"$TW_RUN/pids"
  as_postgres "$bin/createdb" -h 127.0.0.1 -p "$TW_PG_PORT" -U postgres tidewatch
  export DATABASE_URL="postgres://postgres@127.0.0.1:$TW_PG_PORT/tidewatch"
  log "PostgreSQL on 127.0.0.1:$TW_PG_PORT (database tidewatch)"
}

# The off-the-shelf parts' exporters, as compose runs them: node-exporter for the host, and
# postgres_exporter for the PostgreSQL at $DATABASE_URL; each is added to Prometheus's
# targets (start Prometheus first).
start_node_exporter() {
  local port=${TW_NODE_EXPORTER_PORT:-$(free_port)}
  prometheus-node-exporter --web.listen-address="127.0.0.1:$port" \
    --collector.textfile.directory= --no-collector.systemd >"$TW_RUN/node-exporter.log" 2>&1 &
  remember_pid $! node-exporter
  wait_for "node-exporter on :$port" 30 curl -fsS "http://127.0.0.1:$port/metrics" -o /dev/null
  echo "[{\"targets\": [\"127.0.0.1:$port\"], \"labels\": {\"service\": \"node-exporter\"}}]" \
    >"$TIDEWATCH_PROMETHEUS_TARGETS/node-exporter.json"
  log "node-exporter on 127.0.0.1:$port"
}

start_postgres_exporter() {
  local port=${TW_PG_EXPORTER_PORT:-$(free_port)}
  DATA_SOURCE_NAME="${DATABASE_URL}?sslmode=disable" prometheus-postgres-exporter \
    --web.listen-address="127.0.0.1:$port" >"$TW_RUN/postgres-exporter.log" 2>&1 &
  remember_pid $! postgres-exporter
  wait_for "postgres-exporter on :$port" 30 bash -c "curl -fsS 'http://127.0.0.1:$port/metrics' | grep -q '^pg_up 1'"
  echo "[{\"targets\": [\"127.0.0.1:$port\"], \"labels\": {\"service\": \"postgres-exporter\"}}]" \
    >"$TIDEWATCH_PROMETHEUS_TARGETS/postgres-exporter.json"
  log "postgres-exporter on 127.0.0.1:$port"
}

# Prometheus reads monitoring/prometheus/prometheus.yml with the scrape and evaluation
# interval given (tests use 1s), the repository's rules, and a target directory of its own.
start_prometheus() {
  local interval=${1:-15s} dir="$TW_RUN/prometheus"
  TW_PROM_PORT=${TW_PROM_PORT:-$(free_port)}
  mkdir -p "$dir/targets" "$dir/data"
  sed -e "s/^\(  scrape_interval:\) 15s/\1 $interval/" \
      -e "s/^\(  evaluation_interval:\) 15s/\1 $interval/" \
      -e "s/^\(  scrape_timeout:\) 10s/\1 $interval/" \
      "$TW_ROOT/monitoring/prometheus/prometheus.yml" >"$dir/prometheus.yml"
  grep -q "scrape_interval: $interval" "$dir/prometheus.yml" || die "could not set the scrape interval"
  if [ -n "${TW_RULES_SPEEDUP:-}" ]; then
    # Same rules, every duration divided: alerts fire on the same conditions, sooner.
    python3 "$TW_ROOT/scripts/lib/speedup-rules.py" "$TW_RULES_SPEEDUP" \
      "$TW_ROOT/monitoring/prometheus/rules" "$dir/rules" || die "could not speed up the rules"
  else
    ln -s "$TW_ROOT/monitoring/prometheus/rules" "$dir/rules"
  fi
  echo "[{\"targets\": [\"127.0.0.1:$TW_PROM_PORT\"], \"labels\": {\"service\": \"prometheus\"}}]" >"$dir/targets/prometheus.json"
  prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
    --web.listen-address="127.0.0.1:$TW_PROM_PORT" --web.enable-lifecycle >"$dir/prometheus.log" 2>&1 &
  remember_pid $! prometheus
  wait_for "Prometheus on :$TW_PROM_PORT" 60 curl -fsS "http://127.0.0.1:$TW_PROM_PORT/-/ready"
  export TIDEWATCH_PROMETHEUS_URL="http://127.0.0.1:$TW_PROM_PORT"
  export TIDEWATCH_PROMETHEUS_TARGETS="$dir/targets"
  log "Prometheus on $TIDEWATCH_PROMETHEUS_URL (scrape interval $interval${TW_RULES_SPEEDUP:+, rule durations divided by $TW_RULES_SPEEDUP})"
}

# Alertmanager reads monitoring/alertmanager/alertmanager.yml; with TW_RECEIVER_URL set (the
# native stack's alert-receiver), a copy whose webhooks point there instead of the compose
# host name `alert-receiver:9095`.
start_alertmanager() {
  local dir="$TW_RUN/alertmanager" config="$TW_ROOT/monitoring/alertmanager/alertmanager.yml"
  TW_AM_PORT=${TW_AM_PORT:-$(free_port)}
  mkdir -p "$dir"
  if [ -n "${TW_RECEIVER_URL:-}" ]; then
    sed "s#http://alert-receiver:9095#$TW_RECEIVER_URL#" "$config" >"$dir/alertmanager.yml"
    config="$dir/alertmanager.yml"
    # Template paths are relative to the configuration file.
    ln -sfn "$TW_ROOT/monitoring/alertmanager/templates" "$dir/templates"
  fi
  prometheus-alertmanager --config.file="$config" \
    --storage.path="$dir" --web.listen-address="127.0.0.1:$TW_AM_PORT" --cluster.listen-address= \
    >"$dir/alertmanager.log" 2>&1 &
  remember_pid $! alertmanager
  wait_for "Alertmanager on :$TW_AM_PORT" 60 curl -fsS "http://127.0.0.1:$TW_AM_PORT/-/ready"
  export TIDEWATCH_ALERTMANAGER_URL="http://127.0.0.1:$TW_AM_PORT"
  if [ -n "${TIDEWATCH_PROMETHEUS_TARGETS:-}" ]; then
    echo "[{\"targets\": [\"127.0.0.1:$TW_AM_PORT\"], \"labels\": {\"service\": \"alertmanager\"}}]" \
      >"$TIDEWATCH_PROMETHEUS_TARGETS/alertmanager.json"
  fi
  log "Alertmanager on $TIDEWATCH_ALERTMANAGER_URL"
}

# Stops everything started above (newest first) and removes the run directory unless
# TW_KEEP_RUN is set. Safe to call twice and from a trap.
infra_stop() {
  [ -n "${TW_RUN:-}" ] && [ -f "$TW_RUN/pids" ] || return 0
  # Runs from an EXIT trap under `set -e`: one failed kill must not stop the cleanup.
  set +e
  local what arg
  while read -r arg what; do
    if [ "$arg" = pg ]; then
      as_postgres "$(pg_bin)/pg_ctl" -D "$what" -m fast -w stop >/dev/null 2>&1
    elif [ "$arg" = pg17 ]; then
      as_root chroot --userspec=postgres:postgres "$TW_BROKER_STORE_ROOT" \
        /usr/lib/postgresql/17/bin/pg_ctl -D "$what/data" -m fast -w stop >/dev/null 2>&1
      [ -n "${TW_KEEP_RUN:-}" ] || as_root rm -rf "${TW_BROKER_STORE_ROOT:?}$what"
    elif kill "$arg" 2>/dev/null; then
      for _ in $(seq 50); do kill -0 "$arg" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$arg" 2>/dev/null && kill -9 "$arg" 2>/dev/null
    fi
  done < <(tac "$TW_RUN/pids")
  : >"$TW_RUN/pids"
  if [ -n "${TW_KEEP_RUN:-}" ]; then log "run directory kept: $TW_RUN"; else rm -rf "$TW_RUN"; fi
  return 0
}
