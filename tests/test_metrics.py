"""/metrics' exposition: its figures are the ring's, its label sets are bounded, promtool accepts it."""

from __future__ import annotations

import shutil
import subprocess

import pytest

pytest.importorskip("prometheus_client", reason="needs the 'web' extra")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from shmdiag import DiagnosticEvent, Inspector, Severity  # noqa: E402
from shmdiag.core import layout as L  # noqa: E402
from shmdiag.metrics import BUCKETS, exposition  # noqa: E402
from shmdiag.metrics.collector import bounded_types, exposition_via_registry  # noqa: E402


def scrape(name: str) -> tuple[bytes, dict[str, list]]:
    with Inspector.attach(name) as insp:
        text = exposition(insp)
    samples: dict[str, list] = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            samples.setdefault(s.name, []).append(s)
    return text, samples


def value(samples: dict, name: str, **labels: str) -> float:
    got = [s.value for s in samples[name] if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(got) == 1, (name, labels, samples.get(name))
    return got[0]


def record_a_node(rec) -> None:
    rec.record_peer_connection("p1", "203.0.113.5:8333")
    rec.record_peer_connection("p2", "[2001:db8::1]:8333")
    for i in range(10):
        rec.record_message("p1", "inv", "inbound", 37 + i)
        rec.record_message("p2", "tx", "outbound", 250)
    rec.record_message("p2", "ping", "outbound", 8)
    rec.record_error("p1", TimeoutError("no pong"), "ping")
    rec.record_peer_disconnection("p2", "[2001:db8::1]:8333", "bye")
    rec.record_event(DiagnosticEvent("block_validated", "ok", Severity.WARNING))
    for s in (0.00009, 0.003, 0.003, 0.2, 7.5):  # none within 2% of a bucket boundary
        rec.record_latency("handshake", s, peer_id="p1")
    rec.record_latency("ping", 0.042, peer_id="p1")
    try:
        with rec.span("handshake"):
            raise ValueError("refused")
    except ValueError:
        pass


def test_figures_are_the_rings(rec):
    record_a_node(rec)
    _, m = scrape(rec.name)
    stats, health = rec.get_stats(), rec.health_check()
    by_type = {s.labels["type"]: s.value for s in m["shmdiag_events_total"]}
    assert by_type == stats.events_by_type
    assert sum(by_type.values()) == stats.total_events
    assert {s.labels["severity"]: s.value for s in m["shmdiag_events_by_severity_total"]} == {
        sev.name.lower(): n for sev, n in stats.events_by_severity.items()}
    assert value(m, "shmdiag_messages_total", message="inv", direction="inbound") == 10
    assert value(m, "shmdiag_messages_total", message="tx", direction="outbound") == 10
    assert value(m, "shmdiag_messages_total", message="ping", direction="outbound") == 1
    assert {(s.labels["message"], s.labels["direction"]) for s in m["shmdiag_messages_total"]} == {
        ("inv", "inbound"), ("tx", "outbound"), ("ping", "outbound")}
    assert value(m, "shmdiag_message_bytes_total", message="inv", direction="inbound") == sum(37 + i for i in range(10))
    assert value(m, "shmdiag_message_bytes_total", message="tx", direction="outbound") == 2500
    assert value(m, "shmdiag_message_bytes_total", message="ping", direction="outbound") == 8
    assert value(m, "shmdiag_peers_connected") == stats.active_peers == 1
    assert value(m, "shmdiag_peers_tracked") == 2
    assert value(m, "shmdiag_peers_max") == rec.config.max_peers
    assert value(m, "shmdiag_ring_capacity_events") == 1000
    assert value(m, "shmdiag_ring_retained_events") == health.event_count == stats.total_events
    for what in ("overwritten", "lost", "abandoned", "expired"):
        assert value(m, f"shmdiag_events_{what}_total") == 0
    assert {s.labels["status"]: s.value for s in m["shmdiag_health_status"]}[health.status] == 1
    assert sum(s.value for s in m["shmdiag_health_status"]) == 1
    assert value(m, "shmdiag_writers_alive") == health.writers_alive == 1
    with Inspector.attach(rec.name) as insp:
        assert value(m, "shmdiag_ring_created_time_seconds") == pytest.approx(insp.created_ns / 1e9)

    lat = rec.get_latency_stats()
    assert value(m, "shmdiag_operation_duration_seconds_count", operation="handshake") == lat["handshake"].count == 5
    assert value(m, "shmdiag_operation_duration_seconds_sum", operation="handshake") == pytest.approx(
        0.00009 + 0.006 + 0.2 + 7.5)
    assert value(m, "shmdiag_operation_errors_total", operation="handshake") == 1
    assert value(m, "shmdiag_operation_errors_total", operation="ping") == 0
    buckets = {float(s.labels["le"]): s.value for s in m["shmdiag_operation_duration_seconds_bucket"]
               if s.labels["operation"] == "handshake"}
    assert sorted(buckets) == sorted([*BUCKETS, float("inf")])
    assert buckets[0.0001] == 1 and buckets[0.0025] == 1 and buckets[0.005] == 3 and buckets[0.25] == 4
    assert buckets[5.0] == 4 and buckets[10.0] == 5 and buckets[float("inf")] == 5
    counts = [buckets[k] for k in sorted(buckets)]
    assert counts == sorted(counts)  # cumulative


def test_labels_are_bounded(rec):
    """No peer id or address anywhere; message labels only the ring's named types and *other*."""
    for i in range(L.MSG_TYPES + 10):  # more message types than the registry names
        rec.record_message(f"peer-{i}", f"msg{i}", "inbound", 1)
        rec.record_peer_connection(f"peer-{i}", f"198.51.100.{i}:8333")
    text, m = scrape(rec.name)
    assert b"peer-" not in text and b"198.51.100" not in text
    names = {s.labels["message"] for s in m["shmdiag_message_bytes_total"]}
    assert len(names) <= L.MSG_TYPES and "*other*" in names
    assert sum(s.value for s in m["shmdiag_message_bytes_total"]) == L.MSG_TYPES + 10
    assert sum(s.value for s in m["shmdiag_messages_total"]) == L.MSG_TYPES + 10
    assert {s.labels["message"] for s in m["shmdiag_messages_total"]} == names
    assert value(m, "shmdiag_messages_total", message="*other*", direction="inbound") == 11  # 46 named


def test_message_counters_do_not_drop_when_peer_entries_are_recycled(make_recorder):
    """Per-type messages and bytes are each writer's own exact counters: recycling the entries of
    disconnected peers (a small table, far more peers) moves nothing to *other*, and they only grow."""
    rec = make_recorder(4096, max_peers=8)
    types = ("inv", "tx", "block", "headers")
    last: dict[tuple[str, str], float] = {}
    for i in range(300):
        peer = f"peer-{i}"
        rec.record_peer_connection(peer, f"198.51.100.{i % 250}:8333")
        rec.record_message(peer, types[i % 4], "inbound", 100 + i % 4)
        rec.record_message(peer, "ping", "outbound", 8)
        rec.record_peer_disconnection(peer, "", "done")
        if i % 50 == 49:
            _, m = scrape(rec.name)
            now = {(s.labels["message"], s.labels["direction"]): s.value for s in m["shmdiag_message_bytes_total"]}
            assert all(now.get(k, 0) >= v for k, v in last.items()), (last, now)  # never a counter reset
            last = now
    _, m = scrape(rec.name)
    assert value(m, "shmdiag_peers_recycled_total") > 0
    for k, t in enumerate(types):
        assert value(m, "shmdiag_messages_total", message=t, direction="inbound") == 75
        assert value(m, "shmdiag_message_bytes_total", message=t, direction="inbound") == 75 * (100 + k)
    assert value(m, "shmdiag_messages_total", message="ping", direction="outbound") == 300
    assert value(m, "shmdiag_message_bytes_total", message="ping", direction="outbound") == 300 * 8
    assert "*other*" not in {s.labels["message"] for s in m["shmdiag_message_bytes_total"]}


def _record_messages_and_die(name: str) -> None:
    import os
    import signal

    from shmdiag import Recorder
    rec = Recorder.attach(name)
    for _ in range(5):
        rec.record_message("w", "addr", "inbound", 30)
    os.kill(os.getpid(), signal.SIGKILL)


def test_message_counters_of_a_dead_writer_stay_and_a_clear_zeroes_them(rec):
    import multiprocessing as mp
    import signal

    p = mp.get_context("spawn").Process(target=_record_messages_and_die, args=(rec.name,))
    p.start()
    p.join(60)
    assert p.exitcode == -signal.SIGKILL
    rec.record_message("me", "addr", "outbound", 7)
    rec.reap_dead_writers()
    _, m = scrape(rec.name)
    assert value(m, "shmdiag_messages_total", message="addr", direction="inbound") == 5
    assert value(m, "shmdiag_message_bytes_total", message="addr", direction="inbound") == 150
    assert value(m, "shmdiag_messages_total", message="addr", direction="outbound") == 1
    rec.clear_events()
    _, m = scrape(rec.name)
    assert "shmdiag_messages_total" not in m and "shmdiag_message_bytes_total" not in m
    rec.record_message("me", "addr", "outbound", 7)
    _, m = scrape(rec.name)
    assert [(s.labels["message"], s.labels["direction"], s.value) for s in m["shmdiag_messages_total"]] == [
        ("addr", "outbound", 1)]
    label_keys = {k for samples in m.values() for s in samples for k in s.labels}
    assert label_keys <= {"type", "severity", "message", "direction", "status", "operation", "le"}


def test_event_types_fold_into_other_beyond_the_cap():
    many = {f"t{i}": i + 1 for i in range(100)}
    folded = bounded_types(many, limit=10)
    assert len(folded) == 10 and sum(folded.values()) == sum(many.values())
    assert "t99" in folded and "t0" not in folded and folded[L.OTHER_TYPE] == sum(range(1, 92))


def test_an_empty_ring_scrapes(rec):
    _, m = scrape(rec.name)
    assert value(m, "shmdiag_ring_retained_events") == 0
    assert "shmdiag_operation_duration_seconds_count" not in m


def test_render_is_generate_latest_byte_for_byte(rec):
    """/metrics' fast text writer against prometheus_client's own, with label values that need
    escaping (event types come from writers)."""
    record_a_node(rec)
    rec.record_event(DiagnosticEvent('we"ird\\type\nx', "m"))
    rec.record_event(DiagnosticEvent("ünïcode ✓", "m"))
    with Inspector.attach(rec.name) as insp:
        assert exposition(insp) == exposition_via_registry(insp)


def test_promtool_accepts_it(rec, tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus; .ci/run installs it)")
    record_a_node(rec)
    text, _ = scrape(rec.name)
    cp = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert cp.stdout == b"" and cp.stderr == b"", cp.stdout + cp.stderr  # not even a lint warning


def test_the_readme_documents_every_metric(rec):
    import re
    from pathlib import Path

    record_a_node(rec)
    _, m = scrape(rec.name)
    families = {re.sub(r"_(bucket|count|sum)$", "", n) if "duration_seconds" in n else n for n in m}
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    documented = set(re.findall(r"`(shmdiag_[a-z_]+)", readme))
    assert families <= documented, families - documented
