"""shmdiag.LoggingHandler: code that already logs flows into the ring, from every process."""

from __future__ import annotations

import logging
import multiprocessing as mp
import secrets

import pytest

from shmdiag import LoggingHandler, Recorder, Severity


@pytest.fixture
def logger():
    lg = logging.getLogger(f"p2p.test.{secrets.token_hex(3)}")
    lg.setLevel(logging.DEBUG)
    lg.propagate = False
    yield lg
    lg.handlers.clear()


def test_a_log_record_becomes_an_event(rec, logger):
    logger.addHandler(LoggingHandler(rec))
    logger.warning("peer %s sent %d bad headers", "p7", 3, extra={"peer_id": "p7", "height": 871234, "obj": object})
    (e,) = rec.get_events(limit=0)
    assert e.event_type == logger.name
    assert e.message == "peer p7 sent 3 bad headers"
    assert e.severity == Severity.WARNING and e.peer_id == "p7"
    assert e.metadata == {"height": 871234, "obj": str(object)}
    assert e.error is None


def test_levels_map_to_severities(rec, logger):
    logger.addHandler(LoggingHandler(rec))
    for level in (logging.DEBUG, logging.INFO, 25, logging.WARNING, logging.ERROR, logging.CRITICAL, 60):
        logger.log(level, "x")
    got = [e.severity for e in rec.get_events(limit=0)]
    assert got == [Severity.DEBUG, Severity.INFO, Severity.INFO, Severity.WARNING, Severity.ERROR,
                   Severity.CRITICAL, Severity.CRITICAL]


def test_extra_event_type_and_exception_text(rec, logger):
    logger.addHandler(LoggingHandler(rec))
    try:
        raise ConnectionRefusedError("refused by 10.0.0.1:8333")
    except ConnectionRefusedError:
        logger.exception("dial failed", extra={"event_type": "dial"})
    (e,) = rec.get_events(limit=0)
    assert e.event_type == "dial" and e.severity == Severity.ERROR
    assert e.error.startswith("Traceback (most recent call last):\n")  # the whole traceback
    assert 'raise ConnectionRefusedError("refused by 10.0.0.1:8333")' in e.error
    assert e.error.endswith("\nConnectionRefusedError: refused by 10.0.0.1:8333")
    assert e.message == "dial failed" and e.truncated is False
    assert rec.get_stats().events_by_type == {"dial": 1}


def test_on_the_root_logger_it_neither_loops_nor_duplicates(make_recorder, caplog):
    r = make_recorder(100, log_level="debug")
    handler = LoggingHandler(r)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with caplog.at_level(logging.DEBUG):
            logging.getLogger("node").error("disk almost full")
            r.record_error("p1", "boom", "read")  # the recorder logs this through "shmdiag"
    finally:
        root.removeHandler(handler)
    types = [e.event_type for e in r.get_events(limit=0)]
    assert types == ["node", "error"]  # shmdiag's own log line was not recorded a second time
    assert [rec.name for rec in caplog.records].count("shmdiag") == 1


def test_a_closed_recorder_drops_and_counts(make_recorder, logger):
    r = make_recorder(100)
    h = LoggingHandler(r)
    logger.addHandler(h)
    r.close()
    logger.info("after close")
    logger.info("again")
    assert h.dropped == 2


def _child(name: str, i: int) -> None:
    rec = Recorder.attach(name)
    lg = logging.getLogger("crawler")
    lg.setLevel(logging.INFO)
    lg.addHandler(LoggingHandler(rec))
    for j in range(50):
        lg.info("visited %d", j, extra={"peer_id": f"c{i}", "j": j})
    rec.close()


@pytest.mark.multiprocess
def test_every_process_logs_into_one_ring(rec):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_child, args=(rec.name, i)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    events = rec.get_events(limit=0)
    assert len(events) == 150
    for i in range(3):
        mine = [e for e in events if e.peer_id == f"c{i}"]
        assert [e.metadata["j"] for e in mine] == list(range(50))
        assert len({e.pid for e in mine}) == 1
