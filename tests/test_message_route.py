"""record_message as one native call (core/shards.message_writer): with nothing to log at DEBUG a
recorder's record_message is the native route, which writes the common case itself and hands
anything else to the Python method. Both routes must record and refuse exactly alike."""

from __future__ import annotations

import gc
import logging
import time

import pytest

from shmdiag import Recorder, RecorderConfig, Severity
from shmdiag.core.errors import RecorderClosedError


class Peer(str):
    """A str subclass: not the native route's common case."""


CALLS = [
    (("p1", "inv", "inbound", 37), {}),
    (("p1", "tx", "outbound", 0), {}),
    (("[2001:db8::17]:8333", "headers", "inbound", 2**30 - 1), {}),
    (("p2", "inv", "outbound", 2**40), {}),  # not a one-digit int: the Python route
    (("pé", "vérack", "inbound", 5), {}),  # non-ASCII: read through the C API
    ((Peer("p3"), "inv", "inbound", 7), {}),
    (("p4",), {"msg_type": "ping", "direction": "outbound", "size": 8}),
    (("p5", "", "inbound", 1), {}),  # an empty message type is allowed
    (("p6", "inv", "".join(["in", "bound"]), 3), {}),  # an equal direction that is not the literal
]
BAD = [
    ("", "inv", "inbound", 1),
    ("p", "inv", "sideways", 1),
    ("p", "inv", "inbound", -1),
    ("p", 3, "inbound", 1),
    ("p", "inv", "inbound", 1 << 70),
    ("p", "inv", "inbound", True),
    ("p", "inv", "inbound", 1.0),
    (None, "inv", "inbound", 1),
]


def _record_all(rec) -> list[tuple]:
    for args, kwargs in CALLS:
        rec.record_message(*args, **kwargs)
    return [(e.event_type, e.severity, e.peer_id, e.message, e.metadata, e.pid) for e in rec.get_events(0)]


def _errors(rec) -> list[tuple[type, str]]:
    out = []
    for args in BAD:
        with pytest.raises(Exception) as ei:
            rec.record_message(*args)
        out.append((type(ei.value), str(ei.value)))
    return out


def test_the_native_route_records_and_refuses_as_the_python_method(make_recorder):
    fast = make_recorder(100)
    slow = make_recorder(100, log_level="debug")
    assert type(fast.record_message).__name__ == "builtin_function_or_method"
    assert getattr(slow.record_message, "__func__", None) is Recorder.record_message
    assert _record_all(fast) == _record_all(slow)
    assert len(fast.get_events(0)) == len(CALLS)
    assert _errors(fast) == _errors(slow)
    assert len(fast.get_events(0)) == len(CALLS), "a refused call records nothing"
    assert fast.get_stats().events_by_type == slow.get_stats().events_by_type == {"message": len(CALLS)}


def test_with_debug_logging_the_python_method_logs_each_message(make_recorder, caplog):
    rec = make_recorder(100, log_level="debug")
    with caplog.at_level(logging.DEBUG, logger="shmdiag"):
        rec.record_message("p1", "inv", "inbound", 37)
    assert any("p1" in r.getMessage() and "inv" in r.getMessage() for r in caplog.records)


def test_the_native_route_after_close_and_after_the_recorder_is_gone():
    rec = Recorder.with_config(RecorderConfig(max_events=100), collector=False)
    rm = rec.record_message
    rm("p", "inv", "inbound", 1)
    rec.close()
    with pytest.raises(RecorderClosedError):
        rm("p", "inv", "inbound", 1)
    with pytest.raises(RecorderClosedError):
        rm("p", "inv", "sideways", 1)
    rec = Recorder.with_config(RecorderConfig(max_events=100), collector=False)
    rm = rec.record_message
    del rec
    gc.collect()  # the route does not keep the recorder alive: its finalizer closed the ring
    with pytest.raises(RecorderClosedError):
        rm("p", "inv", "inbound", 1)
    with pytest.raises(RecorderClosedError):
        rm("p", "inv", "sideways", 1)


# -- span: a native context manager -------------------------------------------------------------
def _spans(rec, span) -> list[tuple]:
    with span("ping", "p1"):
        pass
    with span("handshake"):
        pass
    with span("ping", peer_id="p2"):  # a keyword: the Python method's own manager
        pass
    with pytest.raises(TimeoutError), span("ping", "p3"):
        raise TimeoutError("no pong in 20 s")
    with pytest.raises(KeyboardInterrupt), span("ping", "p4"):  # not an Exception: not recorded
        raise KeyboardInterrupt
    with span(Peer("op"), "p5"):  # a str subclass: the Python method
        pass
    return [(e.event_type, e.severity, e.peer_id, e.error, {k: v for k, v in e.metadata.items() if k != "seconds"})
            for e in rec.get_events(0)]


def test_the_native_span_records_and_refuses_as_the_python_method(make_recorder):
    fast, slow = make_recorder(100), make_recorder(100)
    assert type(fast.span).__name__ == "builtin_function_or_method"
    assert type(fast.span("op")).__name__ == "Span"
    py_span = Recorder.span.__get__(slow)  # the Python method itself
    got = _spans(fast, fast.span)
    assert got == _spans(slow, py_span)
    assert [g[2] for g in got] == ["p1", "", "p2", "p3", "p5"] and got[3][1] == Severity.ERROR
    assert fast.get_latency_stats()["ping"].count == 2 and fast.get_latency_stats()["ping"].errors == 1
    for bad in [("",), (3,), ("op", 5), ()]:
        with pytest.raises(Exception) as f:
            fast.span(*bad)
        with pytest.raises(Exception) as s:
            py_span(*bad)
        assert (type(f.value), str(f.value)) == (type(s.value), str(s.value))


def test_a_native_span_times_its_block(make_recorder):
    rec = make_recorder(100)
    with rec.span("sleep"):
        time.sleep(0.05)
    st = rec.get_latency_stats()["sleep"]
    assert st.count == 1 and 0.05 <= st.max < 5.0


def test_the_native_span_after_close():
    rec = Recorder.with_config(RecorderConfig(max_events=100), collector=False)
    sp = rec.span
    open_span = sp("op")
    rec.close()
    with pytest.raises(RecorderClosedError):
        sp("op")
    with pytest.raises(RecorderClosedError), open_span:
        pass


def test_spans_kept_nested_or_outliving_their_recorder_are_each_their_own():
    """A span kept before its block, or opened inside another's block, records its own op and
    peer; one kept past its recorder's end refuses, and does not reach into a freed recorder."""
    rec = Recorder.with_config(RecorderConfig(max_events=100), collector=False)
    with rec.span("a", "p1"):
        pass
    kept = rec.span("b", "p2")  # kept before its block: the next span cannot be the same one
    with rec.span("outer", "p3"), rec.span("inner", "p4"):
        pass
    with kept:
        pass
    with rec.span("c"):
        pass
    assert [(e.metadata["op"], e.peer_id) for e in rec.get_events(0)] == [
        ("a", "p1"), ("inner", "p4"), ("outer", "p3"), ("b", "p2"), ("c", "")]
    rec.close()
    del rec
    gc.collect()  # the recorder and its mapping are gone; the spans kept are not
    with pytest.raises(RecorderClosedError), kept:
        pass


def test_a_route_refuses_a_bad_template_when_set_and_keeps_the_old_one(make_recorder):
    """The routes parse write()'s template once, when set: a bad one raises there, and the
    route in place goes on recording as before."""
    rec = make_recorder(100)
    nat = rec._shards.seg.native  # the private native mapping: what message_writer configures
    routes = (  # (set the route with this template, a good template: None where each call fills in)
        (lambda t: nat.set_message(lambda *a: None, t, (0, 1), ("inbound", "outbound")),
         (1, 0, None, 0, 0, None, "", None, None, "", "")),
        (lambda t: nat.set_span(lambda *a: None, lambda *a: None, t), (1, 0, 0, 0, 0, None, "", "", None, "", "")),
    )
    for set_route, good in routes:
        for i, value, what in ((0, 300, "kind"), (1, 9, "severity"), (6, 7, "str")):
            with pytest.raises((ValueError, TypeError), match=what):
                set_route(good[:i] + (value,) + good[i + 1:])
    rec.record_message("p1", "inv", "inbound", 37)
    with rec.span("ping", "p1"):
        pass
    assert [(e.event_type, e.peer_id) for e in rec.get_events(0)] == [("message", "p1"), ("latency", "p1")]
