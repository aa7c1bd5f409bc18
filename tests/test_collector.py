"""shmdiag.collector.Collector: retention cleanup, dead-writer reaping and health transitions,
a round at a time (run_once) and in its thread (start/stop)."""

from __future__ import annotations

import logging
import os
import signal
import time
from datetime import datetime, timedelta, timezone

import pytest

from shmdiag import DiagnosticEvent, Inspector, Recorder, RecorderClosedError, RecorderConfig
from shmdiag.collector import Collector

from helpers import unique_name, unlink_quietly


@pytest.fixture
def make_ring():
    """Created rings without a collector of their own (the test runs one); closed and unlinked after."""
    made: list[Recorder] = []

    def make(**cfg) -> Recorder:
        cfg.setdefault("name", unique_name("coll"))
        rec = Recorder.with_config(RecorderConfig(**cfg), collector=False)
        made.append(rec)
        return rec

    yield make
    for rec in made:
        rec.close()
        unlink_quietly(rec.name)


def _old(msg: str) -> DiagnosticEvent:
    return DiagnosticEvent("old", msg, timestamp=datetime.now(timezone.utc) - timedelta(hours=2))


def test_run_once_expires_old_events_when_cleanup_is_due(make_ring):
    rec = make_ring(max_events=100, retention_period=3600, cleanup_interval=60, enable_health_check=False)
    rec.record_event(_old("a"))
    rec.record_event(DiagnosticEvent("new", "b"))
    c = Collector(rec)
    c.run_once()  # cleanup not due yet
    assert rec.count_retained() == 2
    c.run_once(now=time.monotonic() + 61)
    assert [e.event_type for e in rec.get_events()] == ["new"]
    assert rec.accounting().expired == 1


def _dead_writer(name: str) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            rec = Recorder.attach(name)
            rec.record_message("p1", "inv", "inbound", 37)
        finally:
            os.kill(os.getpid(), signal.SIGKILL)  # holding its shard
    os.waitpid(pid, 0)
    return pid


@pytest.mark.multiprocess
def test_run_once_reaps_dead_writers_with_health_checks_off(make_ring):
    rec = make_ring(max_events=100, enable_health_check=False)
    pid = _dead_writer(rec.name)
    with Inspector.attach(rec.name) as insp:
        assert insp.health_check().writers_dead == 1  # reported by readers, not reaped
        Collector(rec).run_once()
        assert [w.state for w in insp.get_writers() if w.pid == pid] == ["dead"]
    assert rec._shards.reap_all() == 0  # nothing left to reap: the collector did


@pytest.mark.multiprocess
def test_health_transitions_are_logged_once(make_ring, caplog):
    rec = make_ring(max_events=100, enable_health_check=True)
    c = Collector(rec, logging.getLogger("shmdiag.test"))
    with caplog.at_level(logging.INFO, logger="shmdiag.test"):
        c.run_once()
        c.run_once()
        _dead_writer(rec.name)
        c.run_once()
        c.run_once()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0].startswith(f"shmdiag {rec.name} health: healthy")
    assert "died without detaching" in lines[1]  # the death, once, then the transition it caused
    assert "health: healthy -> warning" in lines[2] and "died" in lines[2]
    assert c.last_health == "warning"


def test_thread_start_stop_and_the_creating_recorders_own(make_ring):
    rec = make_ring(max_events=100, cleanup_interval=0.05, retention_period=3600, enable_health_check=False)
    c = Collector(rec)
    assert c.period == 0.05 and not c.running
    c.start()
    c.start()  # already running: no second thread
    assert c.running
    rec.record_event(_old("x"))
    deadline = time.monotonic() + 10
    while rec.count_retained() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rec.count_retained() == 0  # retention ran in the thread
    c.stop()
    assert not c.running
    c.stop()  # idempotent

    own = Recorder(max_events=10, name=unique_name("own"))
    try:
        assert isinstance(own._collector, Collector) and own._collector.running
        with Recorder.attach(own.name) as other:
            assert other._collector is None  # only the creator runs one
    finally:
        own.close()
    assert not own._collector.running
    with pytest.raises(RecorderClosedError):
        own._collector.run_once()


def test_bad_arguments():
    with pytest.raises(TypeError):
        Collector(object())  # type: ignore[arg-type]
