"""Alert rules: parsing, evaluation from the shared counters, the Prometheus rule file (checked by
the real promtool), and notifications to a real Alertmanager and a webhook, from a real collector."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import urllib.error
import urllib.request

import pytest

from shmdiag import DiagnosticEvent, Inspector, Severity
from shmdiag.alerts import AlertConfigError, AlertEngine, default_rules, parse_alerting, prometheus_rules

from helpers import (
    CLI,
    TESTS_DIR,
    assert_one_error_line,
    attachable,
    free_port,
    http_json,
    need_binary,
    run_cli,
    unique_name,
    validate_json,
    wait_for,
    write,
)


class Clock:
    """Time the test moves by hand, so a window of minutes passes at once."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def engine(rec, toml_rules: dict, clock: Clock) -> AlertEngine:
    return AlertEngine(rec, parse_alerting({"alerting": {"defaults": False}, **toml_rules}), clock=clock)


# -- parsing ------------------------------------------------------------------------------------
def test_the_issues_vocabulary_parses():
    cfg = parse_alerting({
        "alerting": {"interval": 1, "alertmanager": "http://127.0.0.1:9093", "webhook": "http://127.0.0.1:8080/hook"},
        "alert": [
            {"name": "ErrorBurst", "event_type": "error", "rate_above": 5.0, "window": 10, "for": 0,
             "severity": "critical", "summary": "more than 5 errors/s"},
            {"name": "RingUnhealthy", "condition": "health", "at_least": "degraded"},
        ]})
    by = {r.name: r for r in cfg.rules}
    assert by["ErrorBurst"].condition == "rate" and by["ErrorBurst"].rate_above == 5.0
    assert by["ErrorBurst"].severity == "critical" and by["ErrorBurst"].window == 10
    assert by["RingUnhealthy"].at_least == "degraded"  # the configured rule replaces the default of that name
    assert [r.name for r in cfg.rules].count("RingUnhealthy") == 1
    assert {r.name for r in default_rules()} <= set(by)  # the defaults stay on
    assert cfg.alertmanager == "http://127.0.0.1:9093"


@pytest.mark.parametrize("table, needle", [
    ({"alert": [{"name": "X", "condition": "nonsense"}]}, "[[alert]] 'X': condition: unknown condition"),
    ({"alert": [{"name": "X", "condition": "error_rate"}]}, "[[alert]] 'X': above: required"),
    ({"alert": [{"name": "X", "event_type": "error"}]}, "[[alert]] 'X': rate_above: required"),
    ({"alert": [{"name": "X", "event_type": "error", "rate_above": 1, "window": -5}]}, "[[alert]] 'X': window"),
    ({"alert": [{"name": "X", "condition": "idle", "seconds": 0}]}, "[[alert]] 'X': seconds: must be positive"),
    ({"alert": [{"name": "X", "condition": "health", "at_least": "meh"}]}, "[[alert]] 'X': at_least"),
    ({"alert": [{"name": "X", "condition": "peer_ping", "above": 1, "window": 3}]}, "'X': window: not a parameter"),
    ({"alert": [{"name": "X", "condition": "idle", "seconds": 1, "severity": "page"}]}, "'X': severity"),
    ({"alert": [{"name": "X", "condition": "idle", "seconds": 1}, {"name": "X", "condition": "peer_table_full"}]},
     "[[alert]] 'X': name: two rules"),
    ({"alert": [{"condition": "idle", "seconds": 1}]}, "[[alert]] #1: name"),
    ({"alerting": {"alertmanager": "localhost:9093"}}, "[alerting]: alertmanager: not an http(s) URL"),
    ({"alerting": {"webhook": "http://127.0.0.1:99999/x"}}, "[alerting]: webhook: bad port"),
    ({"alerting": {"interval": 0}}, "[alerting]: interval: must be positive"),
])
def test_bad_rules_are_refused_naming_the_rule_and_field(table, needle):
    with pytest.raises(AlertConfigError) as e:
        parse_alerting(table)
    assert needle in str(e.value)


def test_serve_refuses_a_bad_rule_with_one_line_and_exit_2(tmp_path, ring_name):
    cfg = tmp_path / "ring.toml"
    cfg.write_text('[shmdiag]\nmax_events = 100\n\n[[alert]]\nname = "Slow"\ncondition = "peer_ping"\n')
    cp = run_cli("serve", ring_name, "--config", str(cfg))
    assert_one_error_line(cp, 2, "[[alert]] 'Slow': above: required by condition 'peer_ping'")
    assert not attachable(ring_name)  # refused before creating anything


# -- evaluation ---------------------------------------------------------------------------------
def test_rate_rule_fires_on_a_burst_then_resolves(rec):
    clock = Clock()
    eng = engine(rec, {"alert": [{"name": "ErrorBurst", "event_type": "error", "rate_above": 5.0, "window": 10}]},
                 clock)
    assert eng.evaluate() == []
    for i in range(30):
        rec.record_message(f"p{i}", "inv", "inbound", 37)  # traffic that is not an error
    clock.t += 1
    assert eng.evaluate() == []
    for i in range(60):
        rec.record_error(f"p{i % 3}", TimeoutError("no pong"), "ping")
    clock.t += 1
    [t] = eng.evaluate()
    assert (t.state, t.alert.rule.name, t.alert.value) == ("firing", "ErrorBurst", 6.0)  # 60 errors / 10 s
    clock.t += 5
    assert eng.evaluate() == []  # still within the window: still firing, no new transition
    assert eng.states["ErrorBurst"].state == "firing"
    clock.t += 6
    [t] = eng.evaluate()  # the burst left the window
    assert t.state == "resolved" and eng.states["ErrorBurst"].state == "inactive"


def test_for_keeps_an_alert_pending_until_it_has_held_long_enough(rec):
    clock = Clock()
    eng = engine(rec, {"alert": [{"name": "Errs", "min_severity": "error", "rate_above": 0.5, "window": 10,
                                  "for": 5}]}, clock)
    eng.evaluate()
    for _ in range(20):
        rec.record_event(DiagnosticEvent("boom", "bad", Severity.CRITICAL))
    clock.t += 1
    assert eng.evaluate() == [] and eng.states["Errs"].state == "pending"
    clock.t += 3
    assert eng.evaluate() == [] and eng.states["Errs"].state == "pending"
    clock.t += 2
    [t] = eng.evaluate()
    assert t.state == "firing"


def test_error_rate_ignores_debug_volume(rec):
    clock = Clock()
    eng = engine(rec, {"alert": [{"name": "ER", "condition": "error_rate", "above": 0.2, "window": 60}]}, clock)
    eng.evaluate()
    for _ in range(1000):
        rec.record_message("p", "inv", "inbound", 37)  # DEBUG
    for _ in range(10):
        rec.record_event(DiagnosticEvent("ok", "fine", Severity.INFO))
    for _ in range(5):
        rec.record_error("p", ValueError("bad"), "parse")
    clock.t += 1
    [t] = eng.evaluate()  # 5 errors of 15 events at INFO and above: 33%, though 0.5% of all events
    assert t.state == "firing" and abs(t.alert.value - 5 / 15) < 1e-9


def test_a_clear_is_a_counter_reset_not_a_negative_rate(rec):
    clock = Clock()
    eng = engine(rec, {"alert": [{"name": "E", "event_type": "error", "rate_above": 0.5, "window": 10}]}, clock)
    for _ in range(50):
        rec.record_error("p", ValueError("x"), "op")
    clock.t += 100
    assert [t.state for t in eng.evaluate()] == ["firing"]  # 50 since the engine started
    clock.t += 100
    assert [t.state for t in eng.evaluate()] == ["resolved"]  # none in the last 10 s
    rec.clear_events()
    for _ in range(8):
        rec.record_error("p", ValueError("x"), "op")
    clock.t += 1
    [t] = eng.evaluate()
    assert t.state == "firing" and t.alert.value == 0.8  # the 8 since the clear, over 10 s


def test_peer_conditions(rec):
    clock = Clock()
    eng = engine(rec, {"alert": [{"name": "PeerErr", "condition": "peer_errors", "above": 3, "window": 60},
                                 {"name": "Ping", "condition": "peer_ping", "above": 0.5}]}, clock)
    rec.record_peer_connection("slow", "10.0.0.1:8333")
    rec.record_latency("ping", 0.2, peer_id="slow")
    eng.evaluate()
    assert {s.state for s in eng.states.values()} == {"inactive"}
    rec.record_latency("ping", 0.9, peer_id="slow")
    for _ in range(4):
        rec.record_error("flaky", ConnectionResetError("reset"), "read")
    clock.t += 1
    fired = {t.alert.rule.name: t for t in eng.evaluate()}
    assert set(fired) == {"PeerErr", "Ping"}
    assert "flaky" in fired["PeerErr"].alert.text and "slow" in fired["Ping"].alert.text
    resolved = []
    for _ in range(7):  # the collector evaluates every few seconds; the window moves past the errors
        clock.t += 10
        resolved += [t.alert.rule.name for t in eng.evaluate() if t.state == "resolved"]
    assert resolved == ["PeerErr"]  # the slow ping stays


@pytest.mark.multiprocess
def test_writer_died_and_idle_with_real_processes(rec, procs):
    clock = Clock()
    eng = engine(rec, {"alert": [{"name": "Died", "condition": "writer_died", "window": 60},
                                 {"name": "Idle", "condition": "idle", "seconds": 30}]}, clock)
    script = textwrap.dedent("""
        import sys, time
        from shmdiag import Recorder
        rec = Recorder.attach(sys.argv[1])
        rec.record_message("p", "inv", "inbound", 1)
        print("ready", flush=True)
        time.sleep(120)
    """)
    p = subprocess.Popen([sys.executable, "-c", script, rec.name], stdout=subprocess.PIPE)
    procs.append(p)
    assert p.stdout.readline() == b"ready\n"
    eng.evaluate()
    clock.t += 31  # a writer alive, no event for 31 s
    fired = eng.evaluate()
    assert [t.alert.rule.name for t in fired] == ["Idle"]
    p.kill()
    p.wait(10)
    clock.t += 1
    fired = {t.alert.rule.name: t.state for t in eng.evaluate()}
    assert fired == {"Died": "firing", "Idle": "resolved"}  # no writer alive: not idle, stopped
    clock.t += 61
    assert [(t.alert.rule.name, t.state) for t in eng.evaluate()] == [("Died", "resolved")]


# -- the Prometheus rule file, with the real promtool -----------------------------------------
def test_alert_rules_pass_promtool_check_and_unit_tests(tmp_path):
    promtool = need_binary("promtool")
    out = tmp_path / "rules.yml"
    cp = run_cli("alert-rules", "-o", str(out))
    assert cp.returncode == 0, cp.stderr
    check = subprocess.run([promtool, "check", "rules", str(out)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"{len(default_rules())} rules found" in check.stdout + check.stderr
    shutil.copy(TESTS_DIR / "data" / "alert_rules_test.yml", tmp_path)
    unit = subprocess.run([promtool, "test", "rules", "alert_rules_test.yml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert unit.returncode == 0, unit.stdout + unit.stderr
    # and the unit tests can fail: a rule with another threshold no longer passes them
    out.write_text(out.read_text().replace("> 0.2", "> 0.5"))
    unit = subprocess.run([promtool, "test", "rules", "alert_rules_test.yml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert unit.returncode != 0 and "ErrorRateHigh" in unit.stdout + unit.stderr


def test_alert_rules_of_a_config_and_peer_rules_left_out(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[alerting]\ndefaults = false\n\n[[alert]]\nname = "ErrorBurst"\nevent_type = "error"\n'
                   'rate_above = 5.0\nwindow = 10\nseverity = "critical"\n\n'
                   '[[alert]]\nname = "Ping"\ncondition = "peer_ping"\nabove = 2\n')
    cp = run_cli("alert-rules", "--config", str(cfg))
    assert cp.returncode == 0, cp.stderr
    assert 'expr: "sum without (type) (rate(shmdiag_events_total{type=\\"error\\"}[10s])) > 5"' in cp.stdout
    assert "# Ping: condition peer_ping is about single peers" in cp.stdout
    assert "RingUnhealthy" not in cp.stdout
    text = prometheus_rules(parse_alerting({}).rules)
    assert text.count("- alert:") == len(default_rules())


# -- a real collector, a real Alertmanager, a webhook ----------------------------------------
@pytest.fixture
def alertmanager(tmp_path, procs):
    am = need_binary("prometheus-alertmanager") if shutil.which("prometheus-alertmanager") else \
        need_binary("alertmanager")
    port = free_port()
    conf = tmp_path / "am.yml"
    conf.write_text("route:\n  receiver: nobody\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\n"
                    "receivers:\n  - name: nobody\n")
    p = subprocess.Popen([am, f"--config.file={conf}", f"--storage.path={tmp_path / 'am-data'}",
                          f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    procs.append(p)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert p.poll() is None, p.stderr.read().decode()
        try:
            http_json(f"{url}/api/v2/status", timeout=1)
            return True
        except OSError:
            return False

    wait_for(ready, timeout=30, what="alertmanager to answer")
    return url


class Hook(http.server.BaseHTTPRequestHandler):
    got: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
        n = int(self.headers.get("Content-Length", 0))
        Hook.got.append(json.loads(self.rfile.read(n)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook():
    Hook.got = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/hook", Hook.got
    srv.shutdown()
    srv.server_close()


def serve_with(tmp_path, procs, shm_names, config: str, tag: str, *extra: str) -> tuple[str, subprocess.Popen]:
    name = unique_name(tag)
    shm_names.append(name)
    cfg = tmp_path / f"{tag}.toml"
    cfg.write_text(config)
    p = subprocess.Popen([*CLI, "serve", name, "--config", str(cfg), *extra], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    procs.append(p)
    wait_for(lambda: attachable(name) or p.poll() is not None, what="serve to create the ring")
    assert p.poll() is None, p.stderr.read()
    return name, p


def am_alerts(url: str, name: str) -> list[dict]:
    return [a for a in http_json(f"{url}/api/v2/alerts") if a["labels"].get("alertname") == name]


@pytest.mark.multiprocess
def test_burst_of_errors_reaches_alertmanager_and_the_webhook_then_resolves(tmp_path, procs, shm_names,
                                                                           alertmanager, webhook):
    hook_url, got = webhook
    config = textwrap.dedent(f"""
        [shmdiag]
        max_events = 10000

        [alerting]
        interval = 0.2
        resend = 1
        alertmanager = "{alertmanager}"
        webhook = "{hook_url}"
        defaults = false

        [[alert]]
        name = "ErrorBurst"
        event_type = "error"
        rate_above = 5.0
        window = 8
        severity = "critical"
        summary = "more than 5 errors/s"
    """)
    name, serve = serve_with(tmp_path, procs, shm_names, config, "alerts")
    write(name, [["err", f"p{i % 4}", "timeout", "ping"] for i in range(80)])  # 80 errors in 8 s: 10/s
    wait_for(lambda: am_alerts(alertmanager, "ErrorBurst"), timeout=20, what="the alert in Alertmanager")
    [a] = am_alerts(alertmanager, "ErrorBurst")
    assert a["labels"]["severity"] == "critical" and a["labels"]["ring"] == name and a["labels"]["instance"]
    assert a["annotations"]["summary"] == "more than 5 errors/s"
    assert a["status"]["state"] == "active"
    # the same alert, in the ring itself and in `shmdiag alerts`
    with Inspector.attach(name) as insp:
        [ev] = [e for e in insp.get_events(100) if e.event_type == "alert"]
    assert ev.severity == Severity.CRITICAL and "ErrorBurst firing" in ev.message
    cp = run_cli("alerts", name, "--json")
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    [st] = doc["alerts"]
    assert (st["name"], st["state"]) == ("ErrorBurst", "firing")
    assert doc["notifications"]["failed"] == {"alertmanager": 0, "webhook": 0}
    # no more errors: the burst leaves the window and the alert resolves, in Alertmanager too
    wait_for(lambda: not am_alerts(alertmanager, "ErrorBurst"), timeout=30, what="the alert to resolve")
    wait_for(lambda: [g["state"] for g in got] == ["firing", "resolved"], timeout=10, what="webhook calls")
    assert got[0]["alertname"] == "ErrorBurst" and got[1]["endsAt"]
    os.kill(serve.pid, signal.SIGTERM)
    _, err = serve.communicate(timeout=20)
    text = err.decode()
    assert "alert ErrorBurst FIRING (critical)" in text and "alert ErrorBurst RESOLVED" in text


@pytest.mark.multiprocess
def test_writer_killed_and_idle_ring_reach_alertmanager(tmp_path, procs, shm_names, alertmanager):
    config = textwrap.dedent(f"""
        [alerting]
        interval = 0.2
        resend = 1
        alertmanager = "{alertmanager}"
        defaults = false

        [[alert]]
        name = "WriterDied"
        condition = "writer_died"
        window = 60

        [[alert]]
        name = "RingIdle"
        condition = "idle"
        seconds = 1.5
    """)
    name, _ = serve_with(tmp_path, procs, shm_names, config, "died")
    script = ("import sys, time\nfrom shmdiag import Recorder\nrec = Recorder.attach(sys.argv[1])\n"
              "rec.record_message('p', 'inv', 'inbound', 1)\nprint('ready', flush=True)\ntime.sleep(120)\n")
    w = subprocess.Popen([sys.executable, "-c", script, name], stdout=subprocess.PIPE)
    procs.append(w)
    assert w.stdout.readline() == b"ready\n"
    wait_for(lambda: am_alerts(alertmanager, "RingIdle"), timeout=20, what="RingIdle in Alertmanager")
    w.send_signal(signal.SIGKILL)
    w.wait(10)
    wait_for(lambda: am_alerts(alertmanager, "WriterDied"), timeout=20, what="WriterDied in Alertmanager")
    [a] = am_alerts(alertmanager, "WriterDied")
    assert a["labels"]["severity"] == "warning" and a["labels"]["ring"] == name
    assert str(w.pid) in a["annotations"]["found"]
    # no writer alive any more: the ring is stopped, not idle
    wait_for(lambda: not am_alerts(alertmanager, "RingIdle"), timeout=30, what="RingIdle to resolve")


@pytest.mark.multiprocess
def test_an_unreachable_alertmanager_is_counted_and_never_stops_the_collector(tmp_path, procs, shm_names):
    dead = f"http://127.0.0.1:{free_port()}"
    config = textwrap.dedent(f"""
        [alerting]
        interval = 0.2
        timeout = 0.5
        retries = 1
        alertmanager = "{dead}"
        webhook = "{dead}/hook"
        defaults = false

        [[alert]]
        name = "AnyError"
        event_type = "error"
        rate_above = 0
        window = 5
    """)
    port = free_port()
    name, serve = serve_with(tmp_path, procs, shm_names, config, "unreach", "--http", f"127.0.0.1:{port}")
    write(name, [["err", "p", "boom", "op"]])

    def failed() -> bool:
        cp = run_cli("alerts", name, "--json")
        if cp.returncode != 0:
            return False
        f = json.loads(cp.stdout)["notifications"]["failed"]
        return f["alertmanager"] >= 1 and f["webhook"] >= 1  # (sent one after the other)

    wait_for(failed, timeout=30, what="the failures to be counted")
    doc = json.loads(run_cli("alerts", name, "--json").stdout)
    assert "Connection refused" in doc["notifications"]["last_error"]
    validate_json(doc, "alerts")
    write(name, [["msg", "p", "inv", "inbound", 37]])  # the collector still collects; the ring still records
    assert serve.poll() is None
    cp = run_cli("alerts", name)
    assert cp.returncode == 0 and "FIRING" in cp.stdout and "failed" in cp.stdout
    # the endpoint shows the same: /api/alerts, and the metrics of alerts and failed deliveries
    # health says so too, as a line and in its JSON (and /api/health)
    cp = run_cli("health", name, "--json")
    h = json.loads(cp.stdout)
    validate_json(h, "health")
    assert h["alerts"]["firing"] == ["AnyError"] and h["alerts"]["notifications_failed"] >= 2
    assert "Connection refused" in h["alerts"]["last_error"]
    assert "notifications failed" in run_cli("health", name).stdout
    try:
        api_health = http_json(f"http://127.0.0.1:{port}/api/health")
    except urllib.error.HTTPError as e:  # 503 when critical: the same document
        api_health = json.loads(e.read())
    assert api_health["alerts"]["firing"] == ["AnyError"]
    api = http_json(f"http://127.0.0.1:{port}/api/alerts")
    assert api["evaluated"] is True and [(a["name"], a["state"]) for a in api["alerts"]] == [("AnyError", "firing")]
    validate_json(api, "alerts")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert 'shmdiag_alerts_firing{alertname="AnyError",severity="warning"} 1.0' in text
    failed = [line for line in text.splitlines()
              if line.startswith('shmdiag_alert_notifications_failed_total{receiver="alertmanager"}')]
    assert failed and float(failed[0].split()[-1]) >= 1


def test_alerts_of_a_ring_whose_collector_runs_no_rules_says_so(rec):
    cp = run_cli("alerts", rec.name)
    assert_one_error_line(cp, 1, "no collector evaluates alerts", f"shmdiag serve {rec.name}")

