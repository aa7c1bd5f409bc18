"""shmdiag.Inspector: the read-only seam. It reads what a Recorder reads, from any process, and
never writes a byte of the ring (it maps it read-only), not even to reap a dead writer."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import orjson
import pytest

import shmdiag
from shmdiag import (
    DiagnosticEvent,
    Inspector,
    ReadOnlyRingError,
    Recorder,
    RecorderClosedError,
    RecorderConfig,
    RingNotFoundError,
    Severity,
)

from helpers import OPS_WRITER, LineReader, shm_path, unique_name, unlink_quietly, write

TRAFFIC = ([["conn", "p1", "203.0.113.5:8333"], ["conn", "p2", "198.51.100.7:8333"]]
           + [["msg", "p1", "inv", "inbound", 37]] * 20 + [["msg", "p2", "tx", "outbound", 250]] * 10
           + [["err", "p2", "bad checksum", "read"], ["lat", "ping", 0.05, "p1"], ["lat", "handshake", 0.012, "p1"],
              ["disc", "p2", "198.51.100.7:8333", "timeout"], ["event", "block_validated", "block 1 valid", 1, ""]])

# Everything an Inspector reads, as JSON, from a process of its own.
READ_ALL = textwrap.dedent(
    """
    import sys, orjson
    from shmdiag import Inspector
    with Inspector.attach(sys.argv[1]) as insp:
        h = insp.health_check()
        out = {
            "events": insp.get_events(0), "warnings": insp.get_events(5, 2), "stats": insp.get_stats(),
            "health": h, "accounting": insp.accounting(), "peers": insp.get_peer_diagnostics(),
            "network": insp.get_network_diagnostic(), "latency": insp.get_latency_stats(),
            "writers": insp.get_writers(), "retained": insp.count_retained(),
            "export": orjson.loads(insp.export_events("json")),
        }
    sys.stdout.buffer.write(orjson.dumps(out, option=orjson.OPT_NON_STR_KEYS))
    """
)


def _read_all(src) -> dict:
    """What READ_ALL prints, from ``src`` (a Recorder or an Inspector) in this process."""
    out = {
        "events": src.get_events(0), "warnings": src.get_events(5, 2), "stats": src.get_stats(),
        "health": src.health_check(), "accounting": src.accounting(), "peers": src.get_peer_diagnostics(),
        "network": src.get_network_diagnostic(), "latency": src.get_latency_stats(), "writers": src.get_writers(),
        "retained": src.count_retained(), "export": orjson.loads(src.export_events("json")),
    }
    return orjson.loads(orjson.dumps(out, option=orjson.OPT_NON_STR_KEYS))


def _comparable(d: dict) -> dict:
    """Drop what differs between two reads of an unchanged ring: the clock."""
    for h in (d["health"], d["export"]["health"]):
        for k in ("uptime", "idle_seconds", "window_covered", "window_error_rate_covered"):  # the clock
            h.pop(k)
    d["export"].pop("exported_at")
    return d


def _holding_writer(name: str, ops: list) -> subprocess.Popen:
    """A writer process that records ``ops``, prints "ready" and then stays attached (holding its
    shard) until its stdin closes or it is killed."""
    script = OPS_WRITER.replace("with Recorder.attach(name) as rec:", "if True:\n    rec = Recorder.attach(name)")
    script = script.replace('print("done", flush=True)', 'print("ready", flush=True)\nsys.stdin.read()')
    return subprocess.Popen([sys.executable, "-c", script, name, json.dumps(ops)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_ready(p: subprocess.Popen) -> None:
    LineReader(p).lines_until(lambda line, _: line == b"ready")


@pytest.fixture
def quiet_ring():
    """A created ring whose collector does not run (nothing writes into it behind the test)."""
    rec = Recorder.with_config(RecorderConfig(max_events=1000, name=unique_name("insp")), collector=False)
    yield rec
    rec.close()
    unlink_quietly(rec.name)


# -- (a) another process reads what the Recorder reads ----------------------------------------
@pytest.mark.multiprocess
def test_inspector_in_another_process_reads_what_the_recorder_reads(make_recorder, procs):
    rec = make_recorder(1000)
    rec.record_event(DiagnosticEvent("startup", "node up", Severity.WARNING, metadata={"v": 1}))
    writer = _holding_writer(rec.name, TRAFFIC)  # a live writer, attached, holding its shard
    procs.append(writer)
    _wait_ready(writer)
    rec.record_error("", RuntimeError("disk full"), "store")
    cp = subprocess.run([sys.executable, "-c", READ_ALL, rec.name], capture_output=True, timeout=60)
    assert cp.returncode == 0, cp.stderr.decode()
    theirs = _comparable(orjson.loads(cp.stdout))
    ours = _comparable(_read_all(rec))
    assert theirs == ours
    # ... and they are the real figures, not two empty reads.
    assert ours["stats"]["total_events"] == len(TRAFFIC) + 2 == ours["retained"] == len(ours["events"])
    assert {w["pid"] for w in ours["writers"]} == {os.getpid(), writer.pid}
    assert all(w["alive"] for w in ours["writers"])
    assert ours["health"]["writers_alive"] == 2
    assert ours["latency"]["handshake"]["count"] == 1
    assert {p["peer_id"] for p in ours["peers"]} == {"p1", "p2"}
    assert len(ours["export"]["events"]) == len(TRAFFIC) + 2
    assert [e["severity"] for e in ours["warnings"]] == [2, 3, 2, 4]  # startup, error, disconnect, critical


@pytest.mark.multiprocess
def test_inspector_follows_a_ring_being_written(make_recorder, procs):
    """history + follower in another process: every event of a writer recording meanwhile, in order, once."""
    rec = make_recorder(50_000)
    follow = textwrap.dedent(
        """
        import sys, time
        from shmdiag import Inspector
        from shmdiag.core.follow import Gap
        n = int(sys.argv[2])
        with Inspector.attach(sys.argv[1]) as insp:
            events, cursor = insp.history(0)
            f = insp.follower(cursor, accept=lambda e: e.event_type == "probe")
            print("following", flush=True)
            got, gaps, deadline = [], 0, time.monotonic() + 60
            while len(got) < n and time.monotonic() < deadline:
                for it in f.poll():
                    if isinstance(it, Gap):
                        gaps += it.skipped
                    else:
                        got.append(it.message)
                time.sleep(0.01)
            print(gaps, *got, flush=True)
        """
    )
    n = 3000
    reader = subprocess.Popen([sys.executable, "-c", follow, rec.name, str(n)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    procs.append(reader)
    lines = LineReader(reader)
    lines.lines_until(lambda line, _: line == b"following")
    write(rec.name, [["many", n, "w"]])
    out = lines.lines_until(lambda line, _: True, timeout=60)[0].split()
    assert reader.wait(timeout=30) == 0, reader.stderr.read().decode()
    assert out[0] == b"0"  # nothing skipped
    assert [m.decode() for m in out[1:]] == [f"w:{i}" for i in range(n)]


# -- (b) not a byte written, not even to reap ------------------------------------------------
def _every_read(insp: Inspector) -> dict:
    """Every reading method of the Inspector, with a few argument variants."""
    out: dict = {}
    out["events"] = insp.get_events()
    out["all"] = insp.get_events(0, Severity.DEBUG)
    out["errors"] = insp.get_events(3, min_severity=Severity.ERROR)
    out["stats"] = insp.get_stats()
    out["health"] = insp.health_check()
    out["accounting"] = insp.accounting()
    out["peers"] = insp.get_peer_diagnostics()
    out["network"] = insp.get_network_diagnostic()
    out["latency"] = insp.get_latency_stats()
    out["writers"] = insp.get_writers()
    out["retained"] = insp.count_retained()
    for fmt in ("json", "ndjson"):
        out[f"export_{fmt}"] = insp.export_events(fmt)
        buf = io.BytesIO()
        insp.write_export(buf, fmt, progress=lambda done, total: None)
        out[f"stream_{fmt}"] = buf.getvalue()
    events, cursor = insp.history(5, follow=True)
    out["history"] = events
    out["history_once"] = insp.history(5, Severity.INFO, lambda e: True, follow=False)
    f = insp.follower(max(0, cursor - 3), min_severity=Severity.DEBUG)
    out["poll"] = f.poll() + f.poll()
    out["identity"] = (insp.name, insp.config, insp.capacity, insp.creator_pid, insp.created_ns, insp.closed,
                       os.fstat(insp.fileno()).st_ino, repr(insp))
    return out


@pytest.mark.multiprocess
def test_inspector_writes_not_a_byte_even_with_a_dead_writer(quiet_ring, procs):
    rec = quiet_ring
    write(rec.name, TRAFFIC)  # a writer that detached cleanly
    victim = _holding_writer(rec.name, [["conn", "p9", "192.0.2.1:8333"], ["msg", "p9", "ping", "outbound", 8]])
    procs.append(victim)
    _wait_ready(victim)
    os.kill(victim.pid, signal.SIGKILL)  # dies holding its shard
    victim.wait(timeout=10)
    path = shm_path(rec.name)
    with open(path, "rb") as f:
        before = f.read()

    with Inspector.attach(rec.name) as insp:
        first = _every_read(insp)
        second = _every_read(insp)  # a second round, after the first could have changed something
    insp.close()  # idempotent
    with open(path, "rb") as f:
        after = f.read()
    assert after == before

    # The dead writer is reported, not reaped.
    dead = [w for w in first["writers"] if w.pid == victim.pid]
    assert len(dead) == 1 and dead[0].state == "dead" and not dead[0].alive and dead[0].recorded == 2
    assert first["health"].writers_dead == 1
    assert second["writers"] == first["writers"]
    assert first["retained"] == len(TRAFFIC) + 2
    assert first["export_json"].count(b'"seq"') == len(TRAFFIC) + 2

    # Positive control: the Recorder's health check does reap, and that is a write the snapshot sees.
    h = rec.health_check()
    assert h.writers_dead == 1
    with open(path, "rb") as f:
        assert f.read() != before


# -- (c) a read-only mapping: write paths fail cleanly ----------------------------------------
def test_inspector_has_no_write_methods_and_its_mapping_refuses_stores(quiet_ring):
    rec = quiet_ring
    rec.record_message("p1", "inv", "inbound", 37)
    path = shm_path(rec.name)
    with open(path, "rb") as f:
        before = f.read()
    with Inspector.attach(rec.name) as insp:
        for attr in ("record_event", "record_message", "record_peer_connection", "record_peer_disconnection",
                     "record_error", "record_latency", "span", "clear_events", "cleanup_old_events"):
            assert not hasattr(insp, attr), attr
        seg = insp._seg
        nat = seg.native
        assert seg.readonly and nat.readonly
        head = seg.header_word("head")
        with pytest.raises(ReadOnlyRingError):
            nat.store(head, 0)
        with pytest.raises(ReadOnlyRingError):
            nat.cas(head, nat.load(head), 0)
        with pytest.raises(ReadOnlyRingError):
            nat.fetch_add(head, 1)
        with pytest.raises(ReadOnlyRingError):
            nat.write(3, 0, 0, 2, 0, 1, "", "p1", "inv", "", "")
        with pytest.raises(ReadOnlyRingError):
            nat.new_era()
        with pytest.raises(ReadOnlyRingError):
            nat.add_expired(1)
        with pytest.raises(ReadOnlyRingError):
            nat.bind_shard(0)
        with pytest.raises(ReadOnlyRingError):
            nat.set_provider(lambda: None)
        with pytest.raises(ReadOnlyRingError):
            nat.peer_update("p1", 0, True, 0)
        with pytest.raises(ReadOnlyRingError):
            nat.retire(np.zeros(1, "<u8"), np.zeros(1, "<u8"), 0)
        with pytest.raises(ValueError, match="read-only"):  # numpy views are read-only too
            seg.slots["w"][0] = 0
        with pytest.raises(TypeError):  # and so is the mapping itself (PROT_READ underneath)
            seg._mmap[0:1] = b"x"
        assert nat.load(head) & 0xFFFF == 1  # reads still work
        assert insp.get_stats().total_events == 1
    with open(path, "rb") as f:
        assert f.read() == before
    assert issubclass(ReadOnlyRingError, shmdiag.ShmDiagError)


def test_inspector_errors_are_shmdiag_errors_or_bad_arguments(quiet_ring):
    with pytest.raises(RingNotFoundError):
        Inspector.attach(unique_name("nope"))
    with pytest.raises(ValueError):
        Inspector.attach("../etc/passwd")
    with pytest.raises(TypeError):
        Inspector()  # type: ignore[call-arg]
    insp = Inspector.attach(quiet_ring.name)
    with pytest.raises(TypeError):
        insp.get_events("10")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        insp.get_events(10, 9)
    with pytest.raises(ValueError):
        insp.export_events("xml")
    with pytest.raises(TypeError):
        insp.write_export(io.BytesIO(), "json", progress=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        insp.history(5, accept=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        insp.follower(-1)
    f = insp.follower(0)
    insp.close()
    assert insp.closed and "closed" in repr(insp)
    h = insp.health_check()
    assert h.status == "stopped" and h.message == "inspector is closed"
    for call in (insp.get_events, insp.get_stats, insp.accounting, insp.get_writers, insp.get_latency_stats,
                 insp.get_network_diagnostic, insp.count_retained, insp.export_events, insp.fileno, f.poll,
                 lambda: insp.history(1), lambda: insp.write_export(io.BytesIO())):
        with pytest.raises(RecorderClosedError, match="inspector"):
            call()
    assert quiet_ring.get_stats().total_events == 0  # the ring is still there: closing never unlinks
    assert os.path.exists(shm_path(quiet_ring.name))


def test_recorder_reads_through_its_inspector(quiet_ring):
    rec = quiet_ring
    rec.record_peer_connection("p1", "203.0.113.5:8333")
    rec.record_latency("ping", 0.02, peer_id="p1")
    with Inspector.attach(rec.name) as insp:
        assert _comparable(_read_all(insp)) == _comparable(_read_all(rec))
        assert insp.creator_pid == rec.creator_pid == os.getpid()
        assert insp.config == rec.config
    rec.close()
    assert rec.health_check().message == "recorder is closed"
    with pytest.raises(RecorderClosedError, match="recorder"):
        rec.get_stats()


def test_loghandler_uses_the_public_log_keyword(quiet_ring, caplog):
    import logging

    rec = quiet_ring
    with caplog.at_level(logging.DEBUG, logger="shmdiag"):
        rec.record_event(DiagnosticEvent("quiet", "not logged", Severity.ERROR), log=False)
        rec.record_event(DiagnosticEvent("loud", "logged", Severity.ERROR))
    assert [r.getMessage() for r in caplog.records if r.name == "shmdiag"] == ["loud logged"]
    assert [e.event_type for e in rec.get_events()] == ["quiet", "loud"]
