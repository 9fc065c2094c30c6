#!/usr/bin/env python3
"""What a user checks on a running `docker compose up`, for scripts/check-compose-docker.

Talks to the stack only through its published ports (read API, prediction API, Prometheus,
alert-receiver) and the Docker CLI, as a user would. Subcommands:

  first-day            every service healthy, every scrape target up, bars and judged
                       predictions served, /v1/predict answers, Tidewatch containers
                       read-only as uid 10001, build info names the commit, binaries
                       stripped, and a stopped stage pages through Alertmanager
  snapshot FILE        records the stored bars and judged predictions and the time
  after STEP FILE [S]  after a restart: bars and judged predictions keep coming (within S
                       seconds, default 240), and the late dead letters since the snapshot
                       are no flood; prints figures

Settings come from the environment scripts/check-compose-docker sets: TW_COMPOSE (the
compose command as a JSON list), the TIDEWATCH_*_PORT variables, ADMIN_TOKEN, GIT_COMMIT.
"""
import glob
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

COMPOSE = json.loads(os.environ["TW_COMPOSE"])
TIDEWATCH = ["generator", "normalize", "enrich", "aggregate", "prediction-consumer",
             "project", "prediction-api", "alert-receiver", "loadgen", "trainer"]
SYMBOL = "BTC-USD"
# The generator's default share of late trades is 0.2%; a restart that made trades late
# wholesale would dead-letter nearly all of them.
LATE_SHARE_LIMIT = 0.02

failed = []


def check(ok, what):
    print(("  ok      " if ok else "  FAILED  ") + what, flush=True)
    if not ok:
        failed.append(what)
    return ok


def port(name):
    return int(os.environ[f"TIDEWATCH_{name}_PORT"])


def http(method, port_, path, body=None, headers=None, timeout=10):
    """(status, parsed JSON body or None)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port_}{path}", data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None


def wait(what, timeout, probe, interval=2):
    """Polls `probe` until it returns something truthy; returns it, or None after `timeout`."""
    deadline = time.time() + timeout
    last_error = None
    while time.time() < deadline:
        try:
            value = probe()
            if value:
                return value
        except (OSError, ValueError, KeyError, urllib.error.URLError) as e:
            last_error = e
        time.sleep(interval)
    print(f"          gave up waiting for {what} after {timeout}s" + (f" ({last_error})" if last_error else ""))
    return None


def prom(query):
    status, body = http("GET", port("PROMETHEUS"), "/api/v1/query?" + urllib.parse.urlencode({"query": query}))
    if status != 200:
        raise ValueError(f"Prometheus answered {status} to {query}")
    return body["data"]["result"]


def prom_value(query):
    result = prom(query)
    return float(result[0]["value"][1]) if result else 0.0


def compose(*args):
    return subprocess.run(COMPOSE + list(args), check=True, capture_output=True, text=True).stdout


def docker(*args):
    return subprocess.run(["docker"] + list(args), check=True, capture_output=True, text=True).stdout


def psql(sql):
    return compose("exec", "-T", "postgres", "psql", "-U", "tidewatch", "-d", "tidewatch", "-tAc", sql).strip()


def container(service):
    return compose("ps", "-q", service).strip()


def services_state():
    out = compose("ps", "-a", "--format", "json").strip()
    rows = json.loads(out) if out.startswith("[") else [json.loads(line) for line in out.splitlines() if line]
    return {r["Service"]: r for r in rows}


def stored():
    return {
        "bars": int(psql("SELECT count(*) FROM bars")),
        "judged": int(psql("SELECT count(*) FROM prediction_outcomes")),
        "newest_bar": psql("SELECT coalesce(max(start_time)::text, '') FROM bars"),
    }


def first_day():
    print("first day: what a user sees after `docker compose up --wait`")
    state = services_state()
    for name, row in sorted(state.items()):
        healthy = row.get("State") == "running" and row.get("Health", "") in ("healthy", "")
        check(healthy, f"{name} is running{' and healthy' if row.get('Health') else ''} ({row.get('Status')})")
    check("grafana" not in state, "grafana is left out (no stand-in image here)")

    expected = set()
    for path in glob.glob("monitoring/prometheus/targets/compose/*.json"):
        for group in json.load(open(path)):
            expected.update(group["targets"])

    def targets_up():
        _, body = http("GET", port("PROMETHEUS"), "/api/v1/targets?state=active")
        up = {t["labels"].get("instance") for t in body["data"]["activeTargets"] if t["health"] == "up"}
        return up if expected <= up else None
    up = wait("every compose target up", 120, targets_up)
    check(up is not None, f"Prometheus scrapes all {len(expected)} compose targets by their compose names, all up"
          + ("" if up else f"; down: {sorted(expected - (targets_up_now() or set()))}"))

    def bars():
        status, body = http("GET", port("READ_API"), f"/v1/bars?symbol={SYMBOL}&limit=5")
        return body["items"] if status == 200 and body["items"] else None
    items = wait("bars from the read API", 180, bars)
    check(bool(items), f"the read API serves {SYMBOL} bars" + (f" (first: {items[0]['start']})" if items else ""))

    def judged():
        status, body = http("GET", port("READ_API"), f"/v1/predictions?symbol={SYMBOL}&limit=1000")
        done = [p for p in body["items"] if p["outcome"] is not None] if status == 200 else []
        return done or None
    # Features need 16 bars of history and an outcome 5 bars more: at the demo's 200
    # records a second an event minute takes about 6 s, so the first judgement comes after
    # two to three minutes.
    done = wait("judged predictions from the read API", 300, judged)
    check(bool(done), f"the read API serves judged {SYMBOL} predictions ({len(done or [])} with an outcome)")

    features = {"ret_1m": 0.001, "ret_5m": 0.003, "vol_5m": 0.004, "vol_15m": 0.003,
                "volume_z": 2.0, "trade_rate": 8.0}
    status, body = http("POST", port("API"), "/v1/predict", {"symbol": SYMBOL, "features": features})
    check(status == 200 and 0.0 <= body.get("probability", -1) <= 1.0,
          f"POST /v1/predict answers 200 with a probability ({status}: {body})")

    # The per-feature drift report, as a user opens it from the host (statistics come once
    # the window is full, minutes later; the report says so meanwhile).
    status, body = http("GET", port("CONSUMER"), "/v1/drift/report")
    check(status == 200 and (body or {}).get("window", {}).get("size", 0) > 0
          and len(body.get("columns", [])) == 7 and body.get("summary"),
          f"GET /v1/drift/report on the published consumer port answers with a filling window "
          f"({status}: {(body or {}).get('summary')})")

    # The load driver keeps the prediction API busy, so its dashboards and SLOs have data.
    def api_traffic():
        served = prom_value('sum(increase(http_server_requests_total{service="prediction-api",'
                            'http_route=~"/v1/predict.*",http_response_status_code="200"}[1m]))')
        return served if served > 0 else None
    served = wait("load driver traffic in Prometheus", 120, api_traffic, interval=5)
    ok = {r["metric"]["endpoint"]: float(r["value"][1]) for r in
          prom('sum by (endpoint) (tidewatch_loadgen_requests_total{outcome="ok"})')}
    check(bool(served) and ok.get("predict", 0) > 0 and ok.get("predict_batch", 0) > 0,
          f"loadgen keeps the prediction API busy: {served or 0:.0f} predictions answered 200 in the last "
          f"minute; loadgen counts ok {ok}")
    status, body = http("PUT", port("LOADGEN"), "/v1/admin/rate", {"requests_per_second": 12},
                        {"authorization": f"Bearer {os.environ['ADMIN_TOKEN']}"})
    check(status == 200 and body.get("requests_per_second") == 12,
          f"PUT /v1/admin/rate changes the load driver's rate at run time ({status}: {body})")
    target = wait("the new rate in Prometheus", 60, lambda: prom_value("tidewatch_loadgen_target_rate") == 12, 5)
    check(bool(target), "tidewatch_loadgen_target_rate follows the new rate")

    for name in TIDEWATCH:
        info = json.loads(docker("inspect", container(name)))[0]
        pid = info["State"]["Pid"]
        uid = next(line.split()[1] for line in open(f"/proc/{pid}/status") if line.startswith("Uid:"))
        check(info["HostConfig"]["ReadonlyRootfs"] and uid == "10001",
              f"{name} runs with a read-only root file system as uid {uid}")

    commit = os.environ["GIT_COMMIT"]
    builds = prom("tidewatch_build_info")
    commits = {r["metric"].get("service"): r["metric"].get("git_commit") for r in builds}
    check(len(commits) == len(TIDEWATCH) and set(commits.values()) == {commit},
          f"tidewatch_build_info of every service names the built commit {commit[:12]} ({commits})")

    # Stripped binaries: no symbol table and no debug sections.
    scratch = docker("create", "tidewatch:0.1.0").strip()
    try:
        docker("cp", f"{scratch}:/usr/local/bin/prediction-api", "/tmp/tidewatch-check-binary")
    finally:
        docker("rm", scratch)
    sections = subprocess.run(["readelf", "-SW", "/tmp/tidewatch-check-binary"], check=True,
                              capture_output=True, text=True).stdout
    os.remove("/tmp/tidewatch-check-binary")
    check(".symtab" not in sections and ".debug_" not in sections,
          "the image's binaries are stripped (no .symtab, no .debug_* sections)")

    # A fault a user can cause: a stopped stage. ServiceDown waits a minute, then
    # Alertmanager routes it (severity critical) to the receiver.
    stopped_at = time.time()
    compose("stop", "enrich")

    def paged():
        status, body = http("GET", port("ALERT_RECEIVER"), "/v1/notifications")
        for n in body["notifications"] if status == 200 else []:
            for a in n["alerts"]:
                labels = a.get("labels", {})
                if (labels.get("alertname") == "ServiceDown" and labels.get("service") == "enrich"
                        and a.get("status") == "firing"):
                    return n["receiver"]
        return None
    receiver = wait("ServiceDown{service=enrich} at alert-receiver", 240, paged, interval=5)
    check(receiver is not None,
          f"stopping enrich fires ServiceDown, routed by Alertmanager to receiver {receiver!r} "
          f"after {time.time() - stopped_at:.0f}s")
    compose("start", "enrich")


def snapshot(path):
    s = stored()
    s["at"] = time.time()
    json.dump(s, open(path, "w"))
    print(f"  before: {s['bars']} bars, {s['judged']} judged predictions stored, newest bar {s['newest_bar']}")


def after(step, path, timeout=240):
    before = json.load(open(path))
    print(f"after {step}:")

    def progressed():
        now = stored()
        # A minute of event time is a wall second: 100 new bars is well under two minutes.
        return now if now["bars"] >= before["bars"] + 100 and now["judged"] > before["judged"] else None
    now = wait(f"new bars and judged predictions after {step}", timeout, progressed, interval=3)
    now = now or stored()
    elapsed = time.time() - before["at"]
    check(now["bars"] >= before["bars"] + 100,
          f"bars keep coming: {before['bars']} -> {now['bars']} stored, {elapsed:.0f}s after the snapshot")
    check(now["judged"] > before["judged"],
          f"judged predictions keep coming: {before['judged']} -> {now['judged']}")
    check(now["newest_bar"] > before["newest_bar"],
          f"the newest bar moves on: {before['newest_bar']} -> {now['newest_bar']}")
    # Prometheus keeps its data across the restarts (its volume); increase() handles the
    # counter resets of restarted services. Wait for two scrapes past the progress above.
    time.sleep(35)
    window = f"{int(time.time() - before['at']) + 1}s"
    trades = prom_value(f'sum(increase(tidewatch_generator_records_total{{kind=~"valid|anomaly"}}[{window}]))')
    late = prom_value(f'sum(increase(tidewatch_late_trades_total[{window}]))')
    by_reason = {(r["metric"].get("stage"), r["metric"].get("error_code")): float(r["value"][1])
                 for r in prom(f"sum by (stage, error_code) (increase(tidewatch_dlq_messages_total[{window}]))")}
    resets = prom_value(f"sum(increase(tidewatch_checkpoint_resets_total[{window}]))")
    print("          dead letters since the snapshot: "
          + (", ".join(f"{s}/{c} {v:.0f}" for (s, c), v in sorted(by_reason.items()) if v >= 0.5) or "none")
          + f"; checkpoint resets: {resets:.0f}")
    check(trades > 0 and late <= LATE_SHARE_LIMIT * trades,
          f"no flood of late trades: {late:.0f} late of {trades:.0f} published since the snapshot "
          f"({(late / trades if trades else 0):.2%}, limit {LATE_SHARE_LIMIT:.0%})")


def targets_up_now():
    try:
        _, body = http("GET", port("PROMETHEUS"), "/api/v1/targets?state=active")
        return {t["labels"].get("instance") for t in body["data"]["activeTargets"] if t["health"] == "up"}
    except OSError:
        return set()


def main():
    command = sys.argv[1:]
    if command[:1] == ["first-day"]:
        first_day()
    elif command[:1] == ["snapshot"] and len(command) == 2:
        snapshot(command[1])
    elif command[:1] == ["after"] and len(command) in (3, 4):
        after(command[1], command[2], *(int(t) for t in command[3:]))
    else:
        sys.exit(__doc__)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
