"""The JSON API of ``shmdiag web`` / ``shmdiag serve --http``, run as a user runs it (the CLI, a
real server on a free loopback port): the same dicts as the CLI's --json, filters, the live
stream with its gap records, bad input answered with a 4xx, and not a byte of the ring written."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import orjson
import pytest

pytest.importorskip("aiohttp", reason="needs the 'web' extra")

from shmdiag import DiagnosticEvent, Recorder, RecorderConfig, Severity  # noqa: E402

from helpers import (  # noqa: E402
    CLI,
    LineReader,
    assert_one_error_line,
    run_cli,
    shm_path,
    unique_name,
    validate_json,
)

pytestmark = pytest.mark.multiprocess


def start_web(name: str, procs: list, *extra: str, cmd: str = "web") -> str:
    p = subprocess.Popen([*CLI, cmd, name, "--http", "127.0.0.1:0", *extra], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    procs.append(p)
    line = LineReader(p).lines_until(lambda line, _: b"dashboard" in line)[-1]
    return next(w for w in line.decode().split() if w.startswith("http://"))


def get(url: str, timeout: float = 10.0) -> tuple[int, dict | list | str, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body, status, headers = r.read(), r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        body, status, headers = e.read(), e.code, dict(e.headers)
    ctype = headers.get("Content-Type", "")
    return status, (json.loads(body) if ctype.startswith("application/json") else body.decode()), headers


def cli_json(*args: str) -> dict:
    cp = run_cli(*args, "--json")
    assert cp.returncode in (0, 1, 2), cp.stderr
    return json.loads(cp.stdout)


@pytest.fixture
def node():
    """A ring without a collector (nothing in this process writes to it behind the test's back),
    with peers, messages, errors, timings and custom events."""
    rec = Recorder.with_config(RecorderConfig(name=unique_name("web"), max_events=1000), collector=False)
    for i in range(5):
        rec.record_peer_connection(f"p{i}", f"203.0.113.{i}:8333")
        for _ in range(i + 1):
            rec.record_message(f"p{i}", "inv", "inbound", 37 * (i + 1))
        rec.record_latency("ping", 0.01 * (i + 1), peer_id=f"p{i}")
    rec.record_error("p3", TimeoutError("no pong"), "ping")
    rec.record_event(DiagnosticEvent("block_validated", "block 1 valid", Severity.WARNING, peer_id="p1"))
    yield rec
    rec.close()


def test_the_api_serves_what_the_cli_prints(node, procs):
    url = start_web(node.name, procs)
    status, stats, headers = get(url + "api/stats")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert stats == cli_json("stats", node.name)
    status, health, _ = get(url + "api/health")
    cli_health = cli_json("health", node.name)
    # 1 error among 7 events at INFO and above: a warning, which still answers 200
    assert status == 200 and health["status"] == cli_health["status"] == "warning"
    timed = {"uptime", "idle_seconds", "window_covered", "window_error_rate_covered", "window_source"}
    def untimed(d: dict) -> dict:
        return {k: v for k, v in d.items() if k not in timed}

    assert untimed(health) == untimed(cli_health)
    status, peers, _ = get(url + "api/peers?sort=bytes&limit=2")
    assert status == 200 and [p["peer_id"] for p in peers["peers"]] == ["p4", "p3"]
    assert peers["omitted_peers"] == 3 and peers["total_peers"] == 5 and peers["active_peers"] == 5
    assert peers["peers"][0]["bytes_received_per_msg"] == {"inv": 5 * 5 * 37}
    _, by_errors, _ = get(url + "api/peers?sort=errors&limit=1")
    assert by_errors["peers"][0]["peer_id"] == "p3" and by_errors["peers"][0]["errors"] == 1
    _, by_id, _ = get(url + "api/peers?sort=peer_id&limit=0")
    assert [p["peer_id"] for p in by_id["peers"]] == [f"p{i}" for i in range(5)]
    status, lat, _ = get(url + "api/latency")
    assert status == 200 and (lat["schema_version"], lat["kind"]) == (1, "latency")
    assert lat["operations"]["ping"]["count"] == 5 and lat["operations"]["ping"]["max"] == pytest.approx(0.05)
    status, writers, _ = get(url + "api/writers")
    assert status == 200 and [w["pid"] for w in writers["writers"]] == [os.getpid()]
    assert writers["writers"][0]["total_events"] == stats["total_events"]


def test_every_document_validates_against_its_schema(node, procs):
    """Every top-level object the API answers starts with schema_version and kind, and follows
    its schema in shmdiag/schemas (the same as the CLI's --json where the CLI prints one)."""
    url = start_web(node.name, procs)
    for path, kind in [("api/stats", "stats"), ("api/health", "health"), ("api/peers?limit=2", "peers"),
                       ("api/latency", "latency"), ("api/writers", "writers"), ("api/ring", "ring"),
                       ("api/events?limit=5", "events"), ("api/events?type=error&min_severity=error", "events"),
                       ("api/alerts", "alerts")]:
        _, doc, _ = get(url + path)
        assert isinstance(doc, dict) and (doc["schema_version"], doc["kind"]) == (1, kind), path
        validate_json(doc, kind)
        if kind == "events":
            assert doc["events"], path
    _, ring, _ = get(url + "api/ring")
    assert (ring["name"], ring["capacity"], ring["creator_pid"]) == (node.name, 1000, os.getpid())
    _, alerts, _ = get(url + "api/alerts")
    assert alerts["evaluated"] is False and alerts["alerts"] == []


def test_events_and_their_filters(node, procs):
    url = start_web(node.name, procs)
    _, all_, _ = get(url + "api/events?limit=1000")
    assert len(all_["events"]) == node.get_stats().total_events
    assert [e["seq"] for e in all_["events"]] == sorted(e["seq"] for e in all_["events"])
    _, last2, _ = get(url + "api/events?limit=2")
    assert last2["events"] == all_["events"][-2:]
    _, warn, _ = get(url + "api/events?min_severity=warning")
    assert [e["event_type"] for e in warn["events"]] == ["error", "block_validated"]
    _, typed, _ = get(url + "api/events?type=message&type=latency&limit=3")
    want = [e for e in all_["events"] if e["event_type"] in ("message", "latency")][-3:]
    assert typed["events"] == want
    _, peer, _ = get(url + "api/events?peer=p1")
    assert {e["peer_id"] for e in peer["events"]} == {"p1"} and len(peer["events"]) == 5
    cut = all_["events"][10]["timestamp"]
    _, since, _ = get(url + "api/events?limit=1000&since=" + urllib.parse.quote(cut))
    assert since["events"] and all(e["timestamp"] >= cut for e in since["events"])
    assert since["events"][0]["seq"] <= all_["events"][10]["seq"]
    # the rest of tail's filters: until, pid (repeatable), grep, durations as --since takes them
    _, until, _ = get(url + "api/events?limit=1000&until=" + urllib.parse.quote(cut))
    assert until["events"] and all(e["timestamp"] <= cut for e in until["events"])
    assert until["events"][-1]["seq"] >= all_["events"][10]["seq"]
    _, mine, _ = get(url + f"api/events?limit=1000&pid={os.getpid()}&pid=1")
    assert mine["events"] == all_["events"]
    _, other, _ = get(url + "api/events?pid=1")
    assert other["events"] == []
    _, grepped, _ = get(url + "api/events?grep=" + urllib.parse.quote("^block \\d"))
    assert [e["message"] for e in grepped["events"]] == ["block 1 valid"]
    _, recent, _ = get(url + "api/events?limit=1000&since=1h")
    assert recent["events"] == all_["events"]
    _, none, _ = get(url + "api/events?type=never_recorded")
    assert none["events"] == [] and (none["schema_version"], none["kind"]) == (1, "events")


def test_the_api_filters_as_get_events(node, procs):
    """/api/events answers what Inspector.get_events answers for the same filters."""
    url = start_web(node.name, procs)
    from shmdiag.export.dicts import event_to_dict

    cases = [("type=message&peer=p2&limit=2", dict(event_type="message", peer_id="p2"), 2),
             ("min_severity=error&grep=pong", dict(min_severity=Severity.ERROR, grep="pong"), 100),
             ("type=latency&type=error&limit=4", dict(event_type=["latency", "error"]), 4)]
    for query, kw, limit in cases:
        _, got, _ = get(url + "api/events?" + query)
        want = [event_to_dict(e) for e in node.get_events(limit, **kw)]
        assert got["events"] == orjson.loads(orjson.dumps(want, option=orjson.OPT_UTC_Z)), query
        assert got["events"], query


@pytest.mark.parametrize("query,needle", [
    ("api/events?limit=abc", "limit"),
    ("api/events?limit=-1", "limit"),
    ("api/events?limit=10001", "limit"),
    ("api/events?min_severity=loud", "min_severity"),
    ("api/events?since=yesterday", "since"),
    ("api/events?until=soon", "until"),
    ("api/events?since=2999-01-01T00:00:00Z", "since"),
    ("api/events?since=1h&until=2h", "until"),
    ("api/events?pid=abc", "pid"),
    ("api/events?pid=0", "pid"),
    ("api/events?grep=" + urllib.parse.quote("(unclosed"), "grep"),
    ("api/events?limit=1&limit=2", "limit"),
    ("api/peers?sort=size", "sort"),
    ("api/peers?limit=1e3", "limit"),
    ("api/events/stream?n=9999", "n"),
    ("api/events?type=" + "x" * 300, "type"),
])
def test_malformed_queries_are_400s(node, procs, query, needle):
    url = start_web(node.name, procs)
    status, body, _ = get(url + query)
    assert status == 400 and needle in body["error"], body


def test_what_is_not_an_endpoint_is_a_4xx_and_the_server_lives_on(node, procs):
    url = start_web(node.name, procs)
    host, port = urllib.parse.urlsplit(url).netloc.split(":")
    assert get(url + "nope")[0] == 404
    assert get(url + "static/../../../../etc/passwd")[0] == 404
    req = urllib.request.Request(url + "api/stats", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 405
    assert get(url + "api/stats?" + "a" * 20_000)[0] in (400, 414, 431)
    with socket.create_connection((host, int(port)), timeout=5) as s:  # not HTTP at all
        s.sendall(b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
        assert s.recv(100).split(b" ")[1] == b"400"
    assert get(url + "api/stats")[0] == 200
    assert procs[-1].poll() is None


def test_health_is_503_when_critical(procs):
    rec = Recorder.with_config(RecorderConfig(name=unique_name("web"), max_events=100), collector=False)
    try:
        url = start_web(rec.name, procs)
        rec.record_message("p", "inv", "inbound", 1)
        time.sleep(0.6)  # past the API's half-second cache
        assert get(url + "api/health")[0] == 200
        for _ in range(3):
            rec.record_error("p", TimeoutError("x"), "ping")
        time.sleep(0.6)
        status, body, _ = get(url + "api/health")
        assert status == 503 and body["status"] == "error" and "error rate" in body["message"]
        # The ring removed while served: still answered, as an error (detached), never a crash.
        os.unlink(shm_path(rec.name))
        time.sleep(0.6)
        status, body, _ = get(url + "api/health")
        assert status == 503 and "removed" in body["message"]
        assert get(url + "metrics")[0] == 200
    finally:
        rec.close()


def test_no_endpoint_writes_to_the_ring(node, procs):
    def digest() -> str:
        with open(shm_path(node.name), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    before = digest()
    url = start_web(node.name, procs)
    for path in ("", "metrics", "api", "api/stats", "api/health", "api/peers?limit=0", "api/latency", "api/writers",
                 "api/events?limit=1", "api/events?limit=10000&type=message", "static/dashboard.js"):
        assert get(url + path)[0] == 200, path
    read_stream(url + "api/events/stream?n=10", lambda items: len(items) >= 10)
    assert digest() == before


def read_stream(url: str, done, timeout: float = 10.0) -> list[dict]:
    """``data:`` items of a Server-Sent Events stream until ``done(items)``."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    conn.request("GET", f"{u.path}?{u.query}")
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream"
    items: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        while not done(items):
            assert time.monotonic() < deadline, f"stream: timed out with {items[-3:]}"
            line = r.fp.readline()
            assert line, "stream ended"
            if line.startswith(b"data: "):
                items.append(json.loads(line[6:]))
    finally:
        conn.close()
    return items


def test_the_stream_delivers_new_events_within_a_second(node, procs):
    url = start_web(node.name, procs)
    import threading

    def later() -> None:
        time.sleep(0.5)
        node.record_event(DiagnosticEvent("marker", "hello", Severity.ERROR, peer_id="p9"))

    t0 = time.monotonic()
    threading.Thread(target=later).start()
    items = read_stream(url + "api/events/stream?n=3&min_severity=error",
                        lambda items: any(i.get("event_type") == "marker" for i in items))
    assert time.monotonic() - t0 < 0.5 + 1.0
    assert [i["event_type"] for i in items] == ["error", "marker"]  # the backlog filtered, then live


def test_the_stream_says_what_went_by_unread(procs):
    """Writers far faster than the stream reads: gap records, and delivered + skipped covers
    every sequence number from the first item on."""
    rec = Recorder.with_config(RecorderConfig(name=unique_name("web"), max_events=2048), collector=False)
    try:
        url = start_web(rec.name, procs)
        rec.record_message("p", "inv", "inbound", 1)

        import threading

        def flood() -> None:
            time.sleep(0.3)
            for i in range(200_000):
                rec.record_message("p", "inv", "inbound", i)
            rec.record_event(DiagnosticEvent("last", "end"))

        threading.Thread(target=flood).start()
        items = read_stream(url + "api/events/stream?n=1",
                            lambda items: any(i.get("event_type") == "last" for i in items), timeout=60)
        gaps = [i for i in items if i.get("kind") == "gap"]
        events = [i for i in items if i.get("kind") != "gap"]
        assert gaps and sum(g["skipped"] for g in gaps) > 0
        covered = len(events) + sum(g["skipped"] for g in gaps)
        assert covered == events[-1]["seq"] - events[0]["seq"] + 1
        for it in items:  # the stream's own gap records ("dropped") carry schema_version too
            validate_json(it, it["kind"])
        assert any("dropped" in g for g in gaps)
    finally:
        rec.close()


def test_bad_addresses_and_rings_are_one_line(node, procs):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        cp = run_cli("web", node.name, "--http", f"127.0.0.1:{port}", timeout=30)
        assert_one_error_line(cp, 1, "cannot listen on 127.0.0.1", str(port))
        name = unique_name("srv")
        cp = run_cli("serve", name, "--http", f"127.0.0.1:{port}", timeout=30)
        assert_one_error_line(cp, 1, "cannot listen")
        assert not os.path.exists(shm_path(name)), "a refused serve must not leave a ring"
    cp = run_cli("web", node.name, "--http", "192.0.2.1:8080", timeout=30)  # not an address of this host
    assert_one_error_line(cp, 1, "cannot listen on 192.0.2.1:8080")
    for bad in ("localhost", "127.0.0.1:99999", "127.0.0.1:http", "[::1"):
        cp = run_cli("web", node.name, "--http", bad, timeout=30)
        assert cp.returncode == 2 and "Traceback" not in cp.stderr and len(cp.stderr.strip().splitlines()) == 1
    cp = run_cli("web", unique_name("none"), "--http", "127.0.0.1:0", timeout=30)
    assert_one_error_line(cp, 1, "no shmdiag ring named")


def test_serve_http_serves_the_collectors_ring(ring_name, procs):
    url = start_web(ring_name, procs, cmd="serve")
    with Recorder.attach(ring_name) as rec:
        rec.record_message("p", "tx", "outbound", 250)
    time.sleep(0.6)
    status, stats, _ = get(url + "api/stats")
    assert status == 200 and stats["total_events"] == 1
    status, health, _ = get(url + "api/health")
    assert status == 200 and health["collector_alive"] is True
    status, text, _ = get(url + "metrics")
    assert status == 200 and 'shmdiag_message_bytes_total{direction="outbound",message="tx"} 250.0' in text
    p = procs[-1]
    p.terminate()
    assert p.wait(timeout=30) == 0
    assert not os.path.exists(shm_path(ring_name))


def test_a_filtered_stream_starts_with_older_matches(procs):
    """?n= with a filter looks past the live backlog (the last 500 items) into the ring."""
    rec = Recorder.with_config(RecorderConfig(name=unique_name("web"), max_events=5000), collector=False)
    try:
        rec.record_event(DiagnosticEvent("rare", "long ago", peer_id="old"))
        for i in range(2000):
            rec.record_message("p", "inv", "inbound", i)
        url = start_web(rec.name, procs)
        items = read_stream(url + "api/events/stream?n=5&type=rare", lambda items: len(items) >= 1)
        assert items[0]["event_type"] == "rare" and items[0]["message"] == "long ago"
        items = read_stream(url + "api/events/stream?n=2&peer=old&type=rare", lambda items: len(items) >= 1)
        assert items[0]["peer_id"] == "old"
    finally:
        rec.close()


def test_web_stops_cleanly_on_sigterm_and_leaves_the_ring(node, procs):
    url = start_web(node.name, procs)
    assert get(url + "api/stats")[0] == 200
    p = procs[-1]
    p.terminate()
    assert p.wait(timeout=30) == 0
    assert b"Traceback" not in p.stderr.read()
    assert os.path.exists(shm_path(node.name))  # read-only: it never removes what it serves
