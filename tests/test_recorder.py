"""The Go original's test list, ported, plus what it never checked."""

from __future__ import annotations

import copy
import logging
import os
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from shmdiag import (
    DiagnosticEvent,
    DiagnosticStats,
    Recorder,
    RecorderClosedError,
    RecorderConfig,
    RingExistsError,
    Severity,
    ShmDiagError,
)
from shmdiag.core import layout as L

from helpers import shm_path, unique_name

UTC = timezone.utc


def wait_until(pred, timeout: float = 5.0, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


# -- RecordEvent ---------------------------------------------------------------------------------


def test_record_event_round_trip(rec):
    event = DiagnosticEvent(
        "block_validated", "block 871234 valid", Severity.WARNING, peer_id="peer-7",
        metadata={"height": 871234, "ms": 41.5, "tags": ["a", "b"], "ok": True, "none": None},
        error="took too long",
    )
    before = copy.deepcopy(event)
    t0 = datetime.now(UTC)
    rec.record_event(event)
    t1 = datetime.now(UTC)

    assert event == before, "the caller's event object must not be mutated"
    assert event.timestamp is None and event.pid is None and event.seq is None

    (got,) = rec.get_events(limit=0)
    assert got.event_type == "block_validated"
    assert got.message == "block 871234 valid"
    assert got.severity is Severity.WARNING
    assert got.peer_id == "peer-7"
    assert got.metadata == {"height": 871234, "ms": 41.5, "tags": ["a", "b"], "ok": True, "none": None}
    assert got.error == "took too long"
    assert got.pid == os.getpid()
    assert got.seq == 0
    assert got.truncated is False
    assert got.timestamp.tzinfo is not None and got.timestamp.utcoffset() == timedelta(0)
    assert t0 - timedelta(milliseconds=1) <= got.timestamp <= t1 + timedelta(milliseconds=1)


def test_record_event_keeps_caller_timestamp(rec):
    ts = datetime(2024, 3, 1, 12, 30, 45, 123456, tzinfo=UTC)
    event = DiagnosticEvent("custom", "x", timestamp=ts)
    rec.record_event(event)
    assert event.timestamp == ts
    (got,) = rec.get_events()
    assert got.timestamp == ts
    assert got.timestamp.utcoffset() == timedelta(0)


def test_record_event_timestamp_in_other_zone_is_the_same_instant(rec):
    ts = datetime(2024, 3, 1, 14, 30, 45, 500000, tzinfo=timezone(timedelta(hours=2)))
    rec.record_event(DiagnosticEvent("custom", timestamp=ts))
    (got,) = rec.get_events()
    assert got.timestamp == ts
    assert got.timestamp.utcoffset() == timedelta(0)
    assert got.timestamp.hour == 12


def test_record_event_defaults_and_int_severity(rec):
    rec.record_event(DiagnosticEvent("minimal"))
    rec.record_event(DiagnosticEvent("by_int", severity=3))
    a, b = rec.get_events()
    assert (a.message, a.severity, a.peer_id, a.metadata, a.error) == ("", Severity.INFO, "", None, None)
    assert b.severity is Severity.ERROR


def test_record_event_error_may_be_an_exception(rec):
    rec.record_event(DiagnosticEvent("custom", error=ConnectionResetError("reset by peer")))
    assert rec.get_events()[0].error == "reset by peer"


@pytest.mark.parametrize("year", [2300, 1600])
def test_record_event_timestamp_out_of_range_is_value_error(rec, year):
    with pytest.raises(ValueError):
        rec.record_event(DiagnosticEvent("x", timestamp=datetime(year, 1, 1, tzinfo=UTC)))


@pytest.mark.parametrize("year", [2300, 1600])
def test_record_event_timestamp_out_of_range_leaves_no_trace(rec, year):
    with pytest.raises(ValueError):
        rec.record_event(DiagnosticEvent("x", timestamp=datetime(year, 1, 1, tzinfo=UTC)))
    assert rec.get_events(0) == []
    assert rec.get_stats().total_events == 0
    rec.record_event(DiagnosticEvent("x", timestamp=datetime(2200, 1, 1, tzinfo=UTC)))
    rec.record_event(DiagnosticEvent("y", timestamp=datetime(1700, 1, 1, tzinfo=UTC)))
    assert [e.timestamp.year for e in rec.get_events(0)] == [2200, 1700]


def test_record_nil_event(rec):
    with pytest.raises(TypeError):
        rec.record_event(None)
    for not_an_event in ("peer_connected", {"event_type": "x"}, 42, DiagnosticStats()):
        with pytest.raises(TypeError):
            rec.record_event(not_an_event)
    assert rec.get_events(limit=0) == []
    assert rec.get_stats().total_events == 0


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"event_type": ""}, ValueError),
        ({"event_type": 5}, TypeError),
        ({"event_type": "x", "message": 5}, TypeError),
        ({"event_type": "x", "peer_id": None}, TypeError),
        ({"event_type": "x", "severity": 5}, ValueError),
        ({"event_type": "x", "severity": -1}, ValueError),
        ({"event_type": "x", "severity": True}, ValueError),
        ({"event_type": "x", "metadata": ["not", "a", "dict"]}, TypeError),
        ({"event_type": "x", "timestamp": "2024-01-01"}, TypeError),
        ({"event_type": "x", "timestamp": datetime(2024, 1, 1)}, ValueError),  # naive
    ],
)
def test_record_event_rejects_bad_fields_and_leaves_no_trace(rec, kwargs, exc):
    with pytest.raises(exc):
        rec.record_event(DiagnosticEvent(**kwargs))
    assert rec.get_events(limit=0) == []
    assert rec.get_stats().total_events == 0
    assert rec.health_check().total_events == 0


def test_record_after_close(make_recorder):
    r = make_recorder(10)
    r.record_event(DiagnosticEvent("before_close"))
    r.close()
    assert r.closed

    calls = {
        "record_event": lambda: r.record_event(DiagnosticEvent("x")),
        "record_peer_connection": lambda: r.record_peer_connection("p", "1.2.3.4:8333"),
        "record_peer_disconnection": lambda: r.record_peer_disconnection("p", "1.2.3.4:8333", "bye"),
        "record_message": lambda: r.record_message("p", "inv", "inbound", 1),
        "record_error": lambda: r.record_error("p", RuntimeError("x"), "op"),
        "get_events": lambda: r.get_events(),
        "get_stats": lambda: r.get_stats(),
        "accounting": lambda: r.accounting(),
        "export_events": lambda: r.export_events(),
        "clear_events": lambda: r.clear_events(),
        "cleanup_old_events": lambda: r.cleanup_old_events(),
    }
    for what, call in calls.items():
        with pytest.raises(RecorderClosedError):
            call()
            pytest.fail(f"{what} did not raise")
    assert issubclass(RecorderClosedError, ShmDiagError)

    r.close()  # idempotent
    r.close()
    h = r.health_check()
    assert h.status == "stopped"
    assert h.max_events == 10
    assert "closed" in repr(r)


def test_close_from_another_thread_while_writing(make_recorder):
    r = make_recorder(100)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer():
        while not stop.is_set():
            try:
                r.record_message("p", "ping", "inbound", 8)
            except RecorderClosedError:
                return
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)
                return

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(0.05)
    r.close()
    t.join(5)
    stop.set()
    assert not t.is_alive()
    assert errors == []
    assert r.health_check().status == "stopped"


def test_a_shard_given_back_takes_no_more_events_and_none_is_taken_again(make_recorder):
    """close() gives this process's shard back (ShardManager.release) before it unmaps the ring.
    A thread that records in between must neither write into the shard given back (another
    process may be taking it) nor take a new one: it gets RecorderClosedError."""
    r = make_recorder(100, collector=False)
    r.set_batch(8, max_delay=60)
    r.record_message("p", "inv", "inbound", 1)  # staged
    i = r._shards.index
    r._shards.release()  # what close() does first
    shards = r._seg.shards
    assert L.owner_state(int(shards["owner"][i])) == L.SH_EXITED
    assert int(shards["recorded"][i]) == 1  # the staged event was written before
    for late in (lambda: r.record_message("p", "inv", "inbound", 2), lambda: r.record_error("p", "x", "op"),
                 lambda: r.span("ping", "p").__exit__(None, None, None)):
        with pytest.raises(RecorderClosedError):
            late()
    assert int(shards["recorded"][i]) == 1
    assert not (L.owner_state(shards["owner"]) == L.SH_ACTIVE).any()  # no shard taken again
    r.close()


def test_context_manager_closes(ring_name):
    with Recorder(max_events=5, name=ring_name) as r:
        assert os.path.exists(shm_path(ring_name))
        r.record_event(DiagnosticEvent("x"))
        assert not r.closed
    assert r.closed
    assert not os.path.exists(shm_path(ring_name))
    with pytest.raises(RecorderClosedError):
        r.get_events()


def test_context_manager_closes_on_exception(ring_name):
    with pytest.raises(KeyError):
        with Recorder(name=ring_name) as r:
            raise KeyError("boom")
    assert r.closed
    assert not os.path.exists(shm_path(ring_name))


def test_name_kwarg_used_for_segment(ring_name):
    r = Recorder(max_events=7, name=ring_name)
    try:
        assert r.name == ring_name
        assert r.config.name == ring_name
        assert os.path.exists(shm_path(ring_name))
        assert ring_name in repr(r)
    finally:
        r.close()
    assert not os.path.exists(shm_path(ring_name))


def test_generated_name_segment_removed_after_close():
    r = Recorder(max_events=5)
    path = shm_path(r.name)
    try:
        assert os.path.exists(path)
    finally:
        r.close()
    assert not os.path.exists(path)


def test_attached_close_does_not_unlink(make_recorder):
    creator = make_recorder(10)
    other = Recorder.attach(creator.name)
    other.record_event(DiagnosticEvent("from_attached"))
    other.close()
    assert os.path.exists(shm_path(creator.name))
    assert [e.event_type for e in creator.get_events()] == ["from_attached"]
    creator.close()
    assert not os.path.exists(shm_path(creator.name))


def test_name_in_use_raises_ring_exists(make_recorder):
    first = make_recorder(10)
    first.record_event(DiagnosticEvent("x"))
    with pytest.raises(RingExistsError):
        Recorder(name=first.name)
    with pytest.raises(FileExistsError):
        Recorder.with_config(RecorderConfig(name=first.name))
    # the existing ring is untouched
    assert os.path.exists(shm_path(first.name))
    assert [e.event_type for e in first.get_events()] == ["x"]


def test_with_config_rejects_non_config():
    for bad in (None, {"max_events": 10}, 10, "config"):
        with pytest.raises(TypeError):
            Recorder.with_config(bad)


def test_with_config_revalidates_a_mutated_config(ring_name):
    cfg = RecorderConfig(name=ring_name)
    cfg.max_events = 0
    with pytest.raises(ValueError, match="max_events"):
        Recorder.with_config(cfg)
    assert not os.path.exists(shm_path(ring_name))


def test_with_config_honours_config(make_recorder):
    cfg = RecorderConfig(max_events=17, cleanup_interval=12.5, retention_period=99.0, enable_metrics=True,
                         enable_health_check=False, log_level="error", name=unique_name())
    r = make_recorder(config=cfg)
    got = r.config
    assert (got.max_events, got.cleanup_interval, got.retention_period, got.enable_health_check, got.log_level) == (
        17, 12.5, 99.0, False, "error")
    assert r.health_check().max_events == 17
    other = make_recorder(attach=r.name)
    assert other.config.max_events == 17
    assert other.config.retention_period == 99.0
    assert other.config.log_level == "error"


def test_recorder_rejects_bad_max_events(ring_name):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_events"):
            Recorder(max_events=bad, name=ring_name)
    assert not os.path.exists(shm_path(ring_name))


# -- GetEvents -----------------------------------------------------------------------------------


def test_get_events_filters_by_severity(rec):
    for sev in Severity:
        rec.record_event(DiagnosticEvent(f"ev_{sev.name.lower()}", severity=sev))
    rec.record_event(DiagnosticEvent("ev_debug2", severity=Severity.DEBUG))

    assert [e.event_type for e in rec.get_events(limit=0)] == [
        "ev_debug", "ev_info", "ev_warning", "ev_error", "ev_critical", "ev_debug2"]
    got = rec.get_events(limit=0, min_severity=Severity.WARNING)
    assert [e.event_type for e in got] == ["ev_warning", "ev_error", "ev_critical"]
    assert all(e.severity >= Severity.WARNING for e in got)
    assert [e.event_type for e in rec.get_events(0, Severity.CRITICAL)] == ["ev_critical"]
    assert [e.event_type for e in rec.get_events(0, 3)] == ["ev_error", "ev_critical"]  # a plain int works
    assert len(rec.get_events(0, Severity.DEBUG)) == 6


def test_get_events_bad_arguments(rec):
    rec.record_event(DiagnosticEvent("x"))
    with pytest.raises(ValueError):
        rec.get_events(10, 5)
    with pytest.raises(ValueError):
        rec.get_events(10, -1)
    with pytest.raises(TypeError):
        rec.get_events("10")
    with pytest.raises(TypeError):
        rec.get_events(True)
    with pytest.raises(TypeError):
        rec.get_events(2.0)


def test_get_events_limit(rec):
    for i in range(10):
        rec.record_event(DiagnosticEvent("numbered", str(i)))
    assert [e.message for e in rec.get_events(limit=3)] == ["7", "8", "9"]
    assert [e.message for e in rec.get_events(limit=1)] == ["9"]
    all_msgs = [str(i) for i in range(10)]
    assert [e.message for e in rec.get_events(limit=0)] == all_msgs
    assert [e.message for e in rec.get_events(limit=-5)] == all_msgs
    assert [e.message for e in rec.get_events(limit=100)] == all_msgs
    seqs = [e.seq for e in rec.get_events(limit=0)]
    assert seqs == sorted(seqs) == list(range(10))


def test_get_events_default_limit_is_100(rec):
    for i in range(150):
        rec.record_message("p", "inv", "inbound", i)
    got = rec.get_events()
    assert len(got) == 100
    assert [e.metadata["size"] for e in got] == list(range(50, 150))


def test_get_events_limit_applies_after_severity_filter(rec):
    for i in range(10):
        rec.record_event(DiagnosticEvent("e", str(i), Severity.ERROR if i % 3 == 0 else Severity.DEBUG))
    # errors are 0, 3, 6, 9: the two most recent of them, oldest first
    assert [e.message for e in rec.get_events(limit=2, min_severity=Severity.ERROR)] == ["6", "9"]


# -- GetStats ------------------------------------------------------------------------------------


def test_stats(rec):
    empty = rec.get_stats()
    assert empty.total_events == 0
    assert empty.events_by_type == {}
    assert empty.events_by_severity == {s: 0 for s in Severity}
    assert empty.first_event is None and empty.last_event is None
    assert empty.active_peers == 0 and empty.error_rate == 0.0

    t_first = datetime(2024, 1, 1, 0, 0, 0, tzinfo=UTC)
    rec.record_event(DiagnosticEvent("custom", "first", Severity.DEBUG, timestamp=t_first))
    rec.record_peer_connection("p1", "10.0.0.1:8333")     # INFO
    rec.record_peer_connection("p2", "10.0.0.2:8333")     # INFO
    rec.record_peer_connection("p3", "10.0.0.3:8333")     # INFO
    rec.record_peer_disconnection("p2", "10.0.0.2:8333", "timeout")  # WARNING
    rec.record_message("p1", "inv", "inbound", 37)        # DEBUG
    rec.record_message("p1", "tx", "outbound", 250)       # DEBUG
    rec.record_error("p1", TimeoutError("no pong"), "ping")  # ERROR
    rec.record_error("", RuntimeError("disk full"), "persist")  # CRITICAL
    t_last = datetime.now(UTC) + timedelta(hours=1)
    rec.record_event(DiagnosticEvent("custom", "last", Severity.WARNING, timestamp=t_last))

    s = rec.get_stats()
    assert s.total_events == 10
    assert s.events_by_type == {"custom": 2, "peer_connected": 3, "peer_disconnected": 1, "message": 2, "error": 2}
    assert s.events_by_severity == {
        Severity.DEBUG: 3, Severity.INFO: 3, Severity.WARNING: 2, Severity.ERROR: 1, Severity.CRITICAL: 1}
    assert set(s.events_by_severity) == set(Severity)
    assert s.first_event == t_first
    assert s.last_event == t_last
    assert s.error_rate == pytest.approx(2 / 10)
    assert s.active_peers == 2  # p1, p3

    rec.record_peer_connection("p2", "10.0.0.2:8333")
    assert rec.get_stats().active_peers == 3
    rec.record_peer_disconnection("p1", "10.0.0.1:8333", "bye")
    rec.record_peer_disconnection("p3", "10.0.0.3:8333", "bye")
    assert rec.get_stats().active_peers == 1
    rec.record_peer_disconnection("p9", "10.0.0.9:8333", "never connected")
    assert rec.get_stats().active_peers == 1


def test_stats_first_last_from_record_time(rec):
    rec.record_event(DiagnosticEvent("a"))
    rec.record_message("p", "inv", "inbound", 1)
    events = rec.get_events()
    s = rec.get_stats()
    assert s.first_event == events[0].timestamp
    assert s.last_event == events[-1].timestamp


def test_stats_count_overwritten_events(make_recorder):
    r = make_recorder(5)
    for i in range(12):
        r.record_error("p", "e", "op") if i % 4 == 0 else r.record_message("p", "inv", "inbound", i)
    s = r.get_stats()
    assert s.total_events == 12
    assert s.events_by_type == {"error": 3, "message": 9}
    assert s.error_rate == pytest.approx(3 / 12)
    assert len(r.get_events(0)) == 5


def test_stats_active_peers_same_peer_reconnecting(rec):
    for _ in range(3):
        rec.record_peer_connection("p1", "a")
    assert rec.get_stats().active_peers == 1
    rec.record_peer_disconnection("p1", "a", "x")
    assert rec.get_stats().active_peers == 0


def test_stats_active_peers_survives_ring_overwrite(make_recorder):
    r = make_recorder(3)
    r.record_peer_connection("p1", "a")
    r.record_peer_connection("p2", "b")
    for i in range(20):
        r.record_message("p1", "ping", "inbound", i)
    assert r.get_stats().active_peers == 2


def test_stats_are_shared_with_attached_recorders(make_recorder):
    creator = make_recorder(50)
    other = make_recorder(attach=creator.name)
    creator.record_peer_connection("p1", "a")
    other.record_peer_connection("p2", "b")
    other.record_error("p2", "x", "op")
    for r in (creator, other):
        s = r.get_stats()
        assert s.total_events == 3
        assert s.events_by_type == {"peer_connected": 2, "error": 1}
        assert s.active_peers == 2
    assert {e.event_type for e in creator.get_events()} == {"peer_connected", "error"}


# -- ClearEvents ---------------------------------------------------------------------------------


def test_clear_events(rec):
    rec.record_peer_connection("p1", "a")
    rec.record_error("", "boom", "op")
    for i in range(5):
        rec.record_message("p1", "inv", "inbound", i)
    rec.clear_events()

    assert rec.get_events(limit=0) == []
    s = rec.get_stats()
    assert s.total_events == 0
    assert s.events_by_type == {}
    assert s.events_by_severity == {sev: 0 for sev in Severity}
    assert s.first_event is None and s.last_event is None
    assert s.active_peers == 1  # a clear forgets events, not connections: p1 never disconnected
    assert s.error_rate == 0.0
    h = rec.health_check()
    assert (h.event_count, h.total_events, h.status) == (0, 0, "healthy")

    rec.record_message("p1", "tx", "outbound", 9)
    rec.record_event(DiagnosticEvent("after", severity=Severity.WARNING))
    got = rec.get_events(limit=0)
    assert [e.event_type for e in got] == ["message", "after"]
    s = rec.get_stats()
    assert s.total_events == 2
    assert s.events_by_type == {"message": 1, "after": 1}
    assert s.events_by_severity[Severity.DEBUG] == 1 and s.events_by_severity[Severity.WARNING] == 1
    assert s.events_by_severity[Severity.CRITICAL] == 0
    assert s.first_event == got[0].timestamp


def test_clear_events_seen_by_attached_recorder(make_recorder):
    creator = make_recorder(20)
    other = make_recorder(attach=creator.name)
    other.record_event(DiagnosticEvent("x"))
    creator.record_event(DiagnosticEvent("y"))
    other.clear_events()
    assert creator.get_events(0) == []
    assert creator.get_stats().total_events == 0
    other.record_event(DiagnosticEvent("z"))
    assert [e.event_type for e in creator.get_events(0)] == ["z"]
    assert creator.get_stats().total_events == 1


# -- MaxEvents -----------------------------------------------------------------------------------


def test_max_events_limit(make_recorder):
    r = make_recorder(3)
    for i in range(5):
        r.record_event(DiagnosticEvent("numbered", f"event {i}"))
    got = r.get_events(limit=0)
    assert [e.message for e in got] == ["event 2", "event 3", "event 4"]
    assert [e.seq for e in got] == [2, 3, 4]
    assert r.get_stats().total_events == 5
    h = r.health_check()
    assert (h.event_count, h.max_events, h.events_overwritten) == (3, 3, 2)


def test_max_events_one(make_recorder):
    r = make_recorder(1)
    for i in range(4):
        r.record_event(DiagnosticEvent("n", str(i)))
    assert [e.message for e in r.get_events(0)] == ["3"]


# -- concurrency ---------------------------------------------------------------------------------


def test_concurrent_access_threads(make_recorder):
    n_threads, per_thread = 8, 400
    r = make_recorder(n_threads * per_thread)
    barrier = threading.Barrier(n_threads + 1)
    errors: list[BaseException] = []
    reads: list[int] = []

    def writer(tid: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                if i % 2:
                    r.record_message(f"t{tid}", "ping", "inbound", i)
                else:
                    r.record_event(DiagnosticEvent(f"thread_{tid}", str(i), peer_id=f"t{tid}", metadata={"i": i}))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def reader() -> None:
        try:
            barrier.wait()
            for _ in range(30):
                reads.append(len(r.get_events(limit=0)))
                r.get_stats()
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        threads = [threading.Thread(target=writer, args=(t,)) for t in range(n_threads)]
        threads.append(threading.Thread(target=reader))
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        sys.setswitchinterval(old)
    assert errors == []
    assert all(not t.is_alive() for t in threads)

    total = n_threads * per_thread
    s = r.get_stats()
    assert s.total_events == total
    assert s.events_by_type["message"] == total // 2
    for tid in range(n_threads):
        assert s.events_by_type[f"thread_{tid}"] == per_thread // 2

    events = r.get_events(limit=0)
    assert len(events) == total
    seqs = [e.seq for e in events]
    assert len(set(seqs)) == total
    assert sorted(seqs) == list(range(total))
    for tid in range(n_threads):
        mine = [e for e in events if e.peer_id == f"t{tid}"]
        order = [e.metadata["size"] if e.event_type == "message" else e.metadata["i"] for e in mine]
        assert order == list(range(per_thread)), f"thread {tid}'s events out of order"
    assert all(e.pid == os.getpid() and not e.truncated for e in events)
    assert reads == sorted(reads)  # the reader never saw the ring shrink
    h = r.health_check()
    assert (h.events_lost, h.events_abandoned, h.events_overwritten) == (0, 0, 0)


# -- helpers -------------------------------------------------------------------------------------


def test_helpers(rec):
    rec.record_peer_connection("peer-1", "203.0.113.5:8333")
    rec.record_peer_disconnection("peer-1", "203.0.113.5:8333", "ping timeout")
    rec.record_message("peer-1", "inv", "inbound", 37)
    rec.record_message("peer-1", "block", "outbound", 1_234_567)
    rec.record_error("peer-1", TimeoutError("no pong in 20s"), "ping")
    rec.record_error("", OSError("disk full"), "persist")
    rec.record_error("peer-2", "plain text error", "handshake")
    conn, disc, msg_in, msg_out, err, crit, err_str = rec.get_events(limit=0)

    assert (conn.event_type, conn.severity, conn.peer_id) == ("peer_connected", Severity.INFO, "peer-1")
    assert conn.message == "Peer connected: 203.0.113.5:8333"
    assert conn.metadata == {"address": "203.0.113.5:8333"}
    assert conn.error is None

    assert (disc.event_type, disc.severity, disc.peer_id) == ("peer_disconnected", Severity.WARNING, "peer-1")
    assert disc.message == "Peer disconnected: 203.0.113.5:8333 (ping timeout)"
    assert disc.metadata == {"address": "203.0.113.5:8333", "reason": "ping timeout"}

    assert (msg_in.event_type, msg_in.severity) == ("message", Severity.DEBUG)
    assert msg_in.message == "Message inbound: inv (37 bytes)"
    assert msg_in.metadata == {"message_type": "inv", "direction": "inbound", "size": 37}
    assert msg_out.message == "Message outbound: block (1234567 bytes)"
    assert msg_out.metadata == {"message_type": "block", "direction": "outbound", "size": 1_234_567}

    assert (err.event_type, err.severity, err.peer_id) == ("error", Severity.ERROR, "peer-1")
    assert err.message == "Error in ping"
    assert err.metadata == {"operation": "ping"}
    assert err.error == "TimeoutError: no pong in 20s"  # as the traceback's last line says it

    assert (crit.event_type, crit.severity, crit.peer_id) == ("error", Severity.CRITICAL, "")
    assert crit.message == "Error in persist"
    assert crit.error == "OSError: disk full"

    assert err_str.severity is Severity.ERROR and err_str.error == "plain text error"
    for e in (conn, disc, msg_in, msg_out, err, crit, err_str):
        assert e.truncated is False and e.pid == os.getpid()


def test_record_error_with_empty_exception_text_uses_type_name(rec):
    rec.record_error("p", ValueError(), "parse")
    assert rec.get_events()[0].error == "ValueError"


def test_record_message_zero_size(rec):
    rec.record_message("p", "verack", "inbound", 0)
    assert rec.get_events()[0].message == "Message inbound: verack (0 bytes)"


@pytest.mark.parametrize(
    "call, exc",
    [
        (lambda r: r.record_message("p", "inv", "inbound", -1), ValueError),
        (lambda r: r.record_message("p", "inv", "sideways", 1), ValueError),
        (lambda r: r.record_message("p", "inv", "", 1), ValueError),
        (lambda r: r.record_message("p", "inv", "inbound", 1.0), TypeError),
        (lambda r: r.record_message("p", "inv", "inbound", "1"), TypeError),
        (lambda r: r.record_message("p", "inv", "inbound", True), TypeError),
        (lambda r: r.record_message(7, "inv", "inbound", 1), TypeError),
        (lambda r: r.record_message(None, "inv", "inbound", 1), TypeError),
        (lambda r: r.record_message("", "inv", "inbound", 1), ValueError),
        (lambda r: r.record_message("p", b"inv", "inbound", 1), TypeError),
        (lambda r: r.record_peer_connection(7, "a"), TypeError),
        (lambda r: r.record_peer_connection("", "a"), ValueError),
        (lambda r: r.record_peer_connection("p", None), TypeError),
        (lambda r: r.record_peer_disconnection(b"p", "a", "r"), TypeError),
        (lambda r: r.record_peer_disconnection("p", "a", 3), TypeError),
        (lambda r: r.record_error(7, "e", "op"), TypeError),
        (lambda r: r.record_error("p", None, "op"), TypeError),
        (lambda r: r.record_error("p", "e", None), TypeError),
    ],
)
def test_helper_argument_errors(rec, call, exc):
    with pytest.raises(exc):
        call(rec)
    assert rec.get_events(limit=0) == []
    assert rec.get_stats().total_events == 0


def test_record_message_huge_size_is_value_error(rec):
    with pytest.raises(ValueError):
        rec.record_message("p", "inv", "inbound", 1 << 63)


def test_record_message_huge_size_leaves_no_trace(rec):
    with pytest.raises(ValueError):
        rec.record_message("p", "inv", "inbound", 1 << 63)
    assert rec.get_stats().total_events == 0
    rec.record_message("p", "inv", "inbound", (1 << 63) - 1)
    assert rec.get_events()[0].metadata["size"] == (1 << 63) - 1


def test_metadata_not_json_serialisable_names_the_key(rec):
    with pytest.raises(TypeError, match="when"):
        rec.record_event(DiagnosticEvent("x", metadata={"ok": 1, "when": object()}))
    with pytest.raises(TypeError, match="nested"):
        rec.record_event(DiagnosticEvent("x", metadata={"nested": {"deep": {1, 2}}}))
    with pytest.raises(TypeError, match="big"):
        rec.record_event(DiagnosticEvent("x", metadata={"big": 1 << 70}))
    with pytest.raises(TypeError):
        rec.record_event(DiagnosticEvent("x", metadata={1: "non-str key"}))
    assert rec.get_stats().total_events == 0


# -- truncation ----------------------------------------------------------------------------------


def _roundtrip_with_neighbours(r, event):
    r.record_event(DiagnosticEvent("before", "neighbour 1", peer_id="n1", metadata={"k": 1}, error="e1"))
    r.record_event(event)
    r.record_event(DiagnosticEvent("after", "neighbour 2", peer_id="n2", metadata={"k": 2}, error="e2"))
    before, got, after = r.get_events(limit=0)
    assert (before.event_type, before.message, before.peer_id, before.metadata, before.error, before.truncated) == (
        "before", "neighbour 1", "n1", {"k": 1}, "e1", False)
    assert (after.event_type, after.message, after.peer_id, after.metadata, after.error, after.truncated) == (
        "after", "neighbour 2", "n2", {"k": 2}, "e2", False)
    return got


def _assert_clean_prefix(got: str, original: str, max_bytes: int):
    assert "\ufffd" not in got
    assert original.startswith(got)
    assert len(got.encode()) <= max_bytes


def test_truncation_long_message(rec):
    budget = rec.text_budget("long", "p")
    assert budget == L.TEXT_MAX
    got = _roundtrip_with_neighbours(rec, DiagnosticEvent("long", "m" * 500, peer_id="p"))
    assert got.truncated is False and got.message == "m" * 500  # several slots: whole
    rec.clear_events()
    got = _roundtrip_with_neighbours(rec, DiagnosticEvent("long", "m" * (budget + 500), peer_id="p"))
    assert got.truncated is True
    assert got.message == "m" * budget
    assert got.event_type == "long" and got.peer_id == "p"


def test_truncation_multibyte_message_cut_on_utf8_boundary(rec):
    for filler in ("日本", "ñ", "😀", "a日"):
        room = rec.text_budget("mb")
        msg = filler * (room // len(filler.encode()) + 50)
        got = _roundtrip_with_neighbours(rec, DiagnosticEvent("mb", msg))
        assert got.truncated is True
        _assert_clean_prefix(got.message, msg, room)
        widest = max(len(c.encode()) for c in filler)
        assert len(got.message.encode()) > room - widest  # as much as fits
        rec.clear_events()


def test_truncation_peer_id_and_event_type(rec):
    peer = "日" * 30  # 90 bytes > 64
    etype = "ñ" * 20  # 40 bytes > 32
    got = _roundtrip_with_neighbours(rec, DiagnosticEvent(etype, "short", peer_id=peer))
    assert got.truncated is True
    assert got.peer_id == "日" * 21
    assert got.event_type == "ñ" * 16
    assert got.message == "short"
    # the stats count the type under the same (cut) name
    assert rec.get_stats().events_by_type["ñ" * 16] == 1


def test_truncation_metadata_drops_whole_keys(rec):
    room = rec.text_budget("meta", "p") - 1  # the message "m"
    meta = {"a": "x" * 60, "b": "y" * room, "c": 1, "ñ": "日本"}
    got = _roundtrip_with_neighbours(rec, DiagnosticEvent("meta", "m", peer_id="p", metadata=meta))
    assert got.truncated is True
    assert isinstance(got.metadata, dict)
    assert got.metadata == {"a": "x" * 60, "c": 1, "ñ": "日本"}
    assert got.message == "m"


def test_truncation_metadata_that_cannot_fit_at_all(rec):
    got = _roundtrip_with_neighbours(rec, DiagnosticEvent("meta", "m", metadata={"huge": "z" * L.TEXT_MAX}))
    assert got.truncated is True
    assert got.metadata == {}


def test_truncation_keeps_the_message_first_then_the_error(rec, make_recorder):
    """Issue 12: error text stored before the message used to cut the message (even to empty)."""
    budget = rec.text_budget("t", "p")
    meta = {"k": "v" * 100}
    err = "e" * budget
    got = _roundtrip_with_neighbours(rec, DiagnosticEvent("t", "message text", peer_id="p", metadata=meta, error=err))
    assert got.truncated is True
    assert got.message == "message text"
    assert got.error == "e" * (budget - len("message text"))
    assert got.metadata is None  # no room left: the metadata is the first to go
    # within one slot too: on a ring too small for a second slot, the message still comes first
    small = make_recorder(16)
    assert small.text_budget("t", "p") == L.TEXT_SIZE - 2
    small.record_event(DiagnosticEvent("t", "lost peer during IBD headers sync", peer_id="p", error="x" * 300,
                                       metadata={"k": 1}))
    (e,) = small.get_events(0)
    assert e.message == "lost peer during IBD headers sync" and e.truncated is True
    assert e.error == "x" * (L.TEXT_SIZE - 2 - len(e.message)) and e.metadata is None


def test_truncation_of_helper_text(rec):
    address = "a" * (L.TEXT_MAX + 300)
    rec.record_peer_connection("p", address)
    got = rec.get_events()[0]
    assert got.truncated is True
    assert got.message.startswith("Peer connected: aaa")
    assert address.startswith(got.metadata["address"])
    assert len(got.metadata["address"]) == rec.text_budget("", "p")
    rec.record_peer_connection("p", "b" * 1000)
    got = rec.get_events()[-1]
    assert got.truncated is False and got.metadata["address"] == "b" * 1000


def test_exactly_fitting_text_not_truncated(rec):
    msg = "x" * (L.TEXT_SIZE - len("fit") - len("p"))
    rec.record_event(DiagnosticEvent("fit", msg, peer_id="p"))
    got = rec.get_events()[0]
    assert got.message == msg and got.truncated is False


# -- logging -------------------------------------------------------------------------------------


def _shmdiag_records(caplog):
    return [r for r in caplog.records if r.name == "shmdiag" and "health:" not in r.getMessage()
            and "retention cleanup" not in r.getMessage()]


def test_critical_event_is_logged_and_process_continues(rec, caplog):
    caplog.set_level(logging.DEBUG, logger="shmdiag")
    rec.record_event(DiagnosticEvent("node_failure", "database corrupted", Severity.CRITICAL, peer_id="p9"))
    rec.record_error("", RuntimeError("out of disk"), "persist")
    rec.record_event(DiagnosticEvent("still_alive", "after the critical ones"))
    crit = [r for r in _shmdiag_records(caplog) if r.levelno == logging.CRITICAL]
    assert len(crit) == 2
    assert "database corrupted" in crit[0].getMessage() and "node_failure" in crit[0].getMessage()
    assert "persist" in crit[1].getMessage() and "out of disk" in crit[1].getMessage()
    assert [e.event_type for e in rec.get_events(0)] == ["node_failure", "error", "still_alive"]


def test_levels_map_to_logging_levels(make_recorder, caplog):
    caplog.set_level(logging.DEBUG, logger="shmdiag")
    r = make_recorder(20, log_level="debug")
    for sev in Severity:
        r.record_event(DiagnosticEvent("lvl", f"sev {sev.name}", sev))
    got = [(rec.levelno, rec.getMessage()) for rec in _shmdiag_records(caplog)]
    assert [lvl for lvl, _ in got] == [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL]
    assert all(f"sev {s.name}" in m for (_, m), s in zip(got, Severity, strict=False))


def test_log_level_filtering(make_recorder, caplog):
    caplog.set_level(logging.DEBUG, logger="shmdiag")
    r = make_recorder(20, log_level="warning")
    r.record_event(DiagnosticEvent("quiet", "info-level event", Severity.INFO))
    r.record_peer_connection("p1", "a:1")
    r.record_message("p1", "inv", "inbound", 1)
    assert _shmdiag_records(caplog) == []
    r.record_event(DiagnosticEvent("loud", "warning-level event", Severity.WARNING))
    r.record_peer_disconnection("p1", "a:1", "bye")
    r.record_error("p1", "x", "op")
    msgs = [(rec.levelno, rec.getMessage()) for rec in _shmdiag_records(caplog)]
    assert len(msgs) == 3
    assert msgs[0][0] == logging.WARNING and "warning-level event" in msgs[0][1]
    assert msgs[1][0] == logging.WARNING and "Peer disconnected: a:1 (bye)" in msgs[1][1]
    assert msgs[2][0] == logging.ERROR and "Error in op" in msgs[2][1]
    # everything is still recorded, whatever is logged
    assert len(r.get_events(0)) == 6


def test_default_log_level_is_info(rec, caplog):
    caplog.set_level(logging.DEBUG, logger="shmdiag")
    rec.record_message("p", "inv", "inbound", 1)
    rec.record_event(DiagnosticEvent("dbg", severity=Severity.DEBUG))
    assert _shmdiag_records(caplog) == []
    rec.record_peer_connection("p", "a")
    assert [r.levelno for r in _shmdiag_records(caplog)] == [logging.INFO]


def test_log_level_debug_logs_messages(make_recorder, caplog):
    caplog.set_level(logging.DEBUG, logger="shmdiag")
    r = make_recorder(10, log_level="debug")
    r.record_message("p", "inv", "outbound", 5)
    (logged,) = _shmdiag_records(caplog)
    assert logged.levelno == logging.DEBUG
    assert "Message outbound: inv (5 bytes)" in logged.getMessage()


def test_custom_logger_is_used(make_recorder, caplog):
    caplog.set_level(logging.DEBUG, logger="myapp.diag")
    r = make_recorder(10, logger=logging.getLogger("myapp.diag"))
    r.record_event(DiagnosticEvent("x", "to my logger", Severity.ERROR))
    got = [rec for rec in caplog.records if rec.name == "myapp.diag"]
    assert len(got) == 1 and "to my logger" in got[0].getMessage()
    assert not [rec for rec in caplog.records if rec.name == "shmdiag"]


# -- severities ----------------------------------------------------------------------------------


def test_severity_names():
    assert [int(s) for s in Severity] == [0, 1, 2, 3, 4]
    assert [s.name for s in Severity] == ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
    assert str(Severity.DEBUG) == "DEBUG"
    assert str(Severity.INFO) == "INFO"
    assert str(Severity.WARNING) == "WARNING"
    assert str(Severity.ERROR) == "ERROR"
    assert str(Severity.CRITICAL) == "CRITICAL"
    assert f"{Severity.WARNING}" == "WARNING"
    assert Severity(2) is Severity.WARNING
    assert Severity.DEBUG < Severity.INFO < Severity.WARNING < Severity.ERROR < Severity.CRITICAL


# -- retention -----------------------------------------------------------------------------------


def test_cleanup_old_event(rec):
    now = datetime.now(UTC)
    rec.record_event(DiagnosticEvent("old", "25h ago", timestamp=now - timedelta(hours=25)))
    rec.record_event(DiagnosticEvent("oldish", "23h ago", timestamp=now - timedelta(hours=23)))
    rec.record_event(DiagnosticEvent("recent", "now"))
    rec.record_message("p", "inv", "inbound", 1)
    stats_before = rec.get_stats()

    assert rec.cleanup_old_events() == 1
    assert [e.event_type for e in rec.get_events(0)] == ["oldish", "recent", "message"]
    assert rec.get_stats() == stats_before  # stats are cumulative: cleanup does not change them
    h = rec.health_check()
    assert (h.event_count, h.total_events, h.events_expired) == (3, 4, 1)
    acct = rec.accounting()
    assert acct.recorded == h.event_count + acct.overwritten + acct.lost + acct.abandoned + acct.expired

    assert rec.cleanup_old_events() == 0
    assert len(rec.get_events(0)) == 3


def test_cleanup_honours_retention_period(make_recorder):
    r = make_recorder(10, retention_period=5.0)
    now = datetime.now(UTC)
    r.record_event(DiagnosticEvent("old", timestamp=now - timedelta(seconds=10)))
    r.record_event(DiagnosticEvent("new", timestamp=now - timedelta(seconds=1)))
    assert r.cleanup_old_events() == 1
    assert [e.event_type for e in r.get_events(0)] == ["new"]


def test_cleanup_runs_periodically(make_recorder):
    r = make_recorder(10, cleanup_interval=0.1, retention_period=5.0)
    now = datetime.now(UTC)
    r.record_event(DiagnosticEvent("old", timestamp=now - timedelta(seconds=10)))
    r.record_event(DiagnosticEvent("recent"))
    assert wait_until(lambda: [e.event_type for e in r.get_events(0)] == ["recent"], timeout=5)
    assert r.health_check().events_expired == 1
    assert r.get_stats().total_events == 2


def test_cleanup_not_run_before_interval(make_recorder):
    r = make_recorder(10, cleanup_interval=60.0, retention_period=5.0)
    r.record_event(DiagnosticEvent("old", timestamp=datetime.now(UTC) - timedelta(seconds=10)))
    time.sleep(0.3)
    assert [e.event_type for e in r.get_events(0)] == ["old"]


def test_background_cleanup_covers_events_of_attached_writers(make_recorder):
    creator = make_recorder(10, cleanup_interval=0.1, retention_period=5.0)
    other = make_recorder(attach=creator.name)
    other.record_event(DiagnosticEvent("old", timestamp=datetime.now(UTC) - timedelta(seconds=10)))
    # the creator's thread does the cleanup for everyone
    assert wait_until(lambda: other.get_events(0) == [], timeout=5)
