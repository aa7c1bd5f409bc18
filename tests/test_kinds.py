"""The table of event kinds (shmdiag/core/kinds.py) and the three renderings derived from it:
events read back (decode), the fast export's JSON and the recorder's log lines agree, kind by
kind, and the table covers every kind code the writers store."""

from __future__ import annotations

import logging

import numpy as np
import orjson
import pytest

from shmdiag import DiagnosticEvent, LoggingHandler, Severity
from shmdiag.core import kinds as K
from shmdiag.core import layout as L
from shmdiag.core import reader as _reader

NASTY = 'q"uote \\ new\nline\ttab ñ 日本 😀'


def _span_fails(rec, t: str) -> None:
    with pytest.raises(RuntimeError):
        with rec.span(f"handshake {t}", peer_id="p1"):
            raise RuntimeError(f"boom {t}")


# Per kind: ways to record one through the public API, and whether each writes a log line.
RECIPES = {
    "event": [
        (lambda rec, t: rec.record_event(DiagnosticEvent(f"custom {t[:4]}", f"hello {t}", Severity.WARNING,
                                                         peer_id="p1", metadata={"k": t, "n": 5}, error=f"err {t}")),
         True),
        (lambda rec, t: rec.record_event(DiagnosticEvent("plain", t, Severity.ERROR)), True),
    ],
    "peer_connected": [(lambda rec, t: rec.record_peer_connection("p1", f"203.0.113.5:8333 {t}"), True)],
    "peer_disconnected": [(lambda rec, t: rec.record_peer_disconnection("p1", f"addr {t}", f"reason {t}"), True)],
    "message": [
        (lambda rec, t: rec.record_message("p1", t[:12], "outbound", 1234), True),
        (lambda rec, t: rec.record_message("p1", "inv", "inbound", 0), True),
    ],
    "error": [
        (lambda rec, t: rec.record_error("p1", ValueError(f"bad {t}"), f"op {t}"), True),
        (lambda rec, t: rec.record_error("", f"node-wide {t}", "persist"), True),  # CRITICAL
    ],
    "latency": [
        (lambda rec, t: rec.record_latency(f"ping {t}", 0.0123456, peer_id="p1"), False),  # not logged
        (_span_fails, True),
    ],
}


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logged(make_recorder, request):
    """A recorder logging everything (log_level debug) to a captured logger of its own."""
    logger = logging.getLogger(f"test_kinds.{request.node.name}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    cap = _Capture()
    logger.addHandler(cap)
    try:
        yield make_recorder(100, logger=logger, log_level="debug"), cap
    finally:
        logger.removeHandler(cap)


def test_every_kind_has_a_recipe():
    assert sorted(RECIPES) == sorted(k.name for k in K.KINDS)


def _exported(rec) -> dict[int, dict]:
    lines = rec.export_events("ndjson").splitlines()
    return {e["seq"]: e for e in map(orjson.loads, lines)}


@pytest.mark.parametrize("text", ["x", NASTY], ids=["plain", "nasty"])
@pytest.mark.parametrize("kind", K.KINDS, ids=[k.name for k in K.KINDS])
def test_three_renderings_agree(logged, kind, text):
    rec, cap = logged
    for i, (record, logs) in enumerate(RECIPES[kind.name]):
        before = len(cap.records)
        record(rec, text)
        e = rec.get_events(1)[0]
        where = f"{kind.name} #{i}"
        # what the table says of the event itself
        if kind.event_type is not None:
            assert e.event_type == kind.event_type, where
        if kind.severity is not None:
            assert e.severity == kind.severity, where
        if kind.metadata is not None:
            assert list(e.metadata) == list(kind.metadata), where
        # decode == the fast export, exactly (parsed)
        x = _exported(rec)[e.seq]
        assert x["message"] == e.message, where
        assert x["metadata"] == e.metadata, where
        assert x["error"] == e.error, where
        assert (x["event_type"], x["peer_id"], x["severity"]) == (e.event_type, e.peer_id, str(e.severity)), where
        assert x["truncated"] is e.truncated is False, where  # (texts short enough to fit)
        # the log line, from the same values by the kind's log template
        new = cap.records[before:]
        if not logs:
            assert new == [], where
            continue
        assert len(new) == 1, where
        r = new[0]
        assert r.levelno == (int(e.severity) + 1) * 10, where
        etype, *peer, message = r.args
        assert etype == e.event_type and peer == ([e.peer_id] if e.peer_id else []), where
        values = {**(e.metadata if kind.metadata is not None else {}), "message": e.message, "error": e.error}
        assert message == kind.log.format_map(values), where
        if kind.log == "{message}":
            assert message == e.message, where


def test_log_lines_say_what_they_said(logged):
    rec, cap = logged
    rec.record_peer_connection("p", "a:1")
    rec.record_peer_disconnection("p", "a:1", "bye")
    rec.record_message("p", "inv", "inbound", 5)
    rec.record_error("p", "xxx", "parse")
    _span_fails(rec, "t")
    assert [r.args[-1] for r in cap.records] == [
        "Peer connected: a:1", "Peer disconnected: a:1 (bye)", "Message inbound: inv (5 bytes)",
        "Error in parse: xxx", "handshake t failed: RuntimeError: boom t"]
    assert rec.get_events(5)[-1].message.startswith("handshake t took ")


def test_the_table_covers_every_kind_the_writers_store(make_recorder):
    rec = make_recorder(100)
    for recipes in RECIPES.values():
        for record, _ in recipes:
            record(rec, "x")
    with rec.span("ok"):
        pass
    log = logging.getLogger("test_kinds.handler")
    log.propagate = False
    handler = LoggingHandler(rec)
    log.addHandler(handler)
    try:
        log.warning("via the handler", extra={"peer_id": "p9", "n": 1})
    finally:
        log.removeHandler(handler)
    idx, w = _reader.export_snapshot(rec._seg)
    codes = set()
    for raw, skipped, _ in _reader.export_chunks(rec._seg, idx, w, 1000):
        assert skipped == 0
        codes |= set(raw.view(L.SLOT)["kind"].ravel().tolist())
    assert codes == set(K.BY_CODE)  # every code stored is in the table, every kind is written
    assert [k.code for k in K.KINDS] == list(range(len(K.KINDS))) and K.KIND_MAX == L.KIND_MAX == max(codes)
    assert L.BUILTIN_TYPES == tuple(k.event_type for k in K.KINDS if k.event_type)


def test_the_reader_refuses_codes_outside_the_table(make_recorder):
    rec = make_recorder(100)
    rec._seg.native.write(K.KIND_MAX + 1, 1, 0, 5, 0, 0, b"t", b"p", b"", b"", b"m")
    rec.record_peer_connection("p", "a")
    idx, w = _reader.export_snapshot(rec._seg)
    _, valid = _reader.copy_records(rec._seg, idx, w)
    assert valid.tolist() == [False, True]
    assert [e.message for e in rec.get_events(0)] == ["Peer connected: a"]


def test_a_kind_is_checked_when_the_table_is_built():
    f = K.Field("address", "f1", "an address")
    with pytest.raises(ValueError, match="template field"):
        K.Kind(9, "x", "x", None, (f,), "Hello {adress}", ("address",))
    with pytest.raises(ValueError, match="metadata key"):
        K.Kind(9, "x", "x", None, (f,), "Hello {address}", ("size",))
    with pytest.raises(ValueError, match="log line"):
        K.Kind(9, "x", "x", None, (f,), "Hello {address}", ("address",), log="{nope}")
    k = K.Kind(9, "x", "x", None, (f,), "Hello {address}!", ("address",), log="{message} ({address})")
    assert k.message({"address": "a"}) == "Hello a!" and k.log_line(address="a") == "Hello a! (a)"
    assert [p for p in k.pieces] == [("Hello ", "address", ""), ("!", None, "")]
    assert np.uint8(K.F_OUTBOUND) == L.F_OUTBOUND
