"""The native writer reads its common arguments straight from the objects (one-digit ints, ASCII
str) and everything else through the C API: both ways must store the same record, and a bad
argument must raise before anything is claimed."""

from __future__ import annotations

import numpy as np
import pytest

from shmdiag.core import layout as L


class _Str(str):
    pass


def _last(rec):
    (e,) = rec.get_events(1)
    return e


@pytest.mark.parametrize("size", [0, 1, 37, 2**30 - 1, 2**30, 2**31 + 5, 2**62, 2**63 - 1, np.int64(37),
                                  np.uint32(7), True])
def test_message_sizes_of_every_int_shape(rec, size):
    rec.record_message("p", "inv", "outbound", 5)  # a different event before, so a stale value cannot pass
    rec._write(L.KIND_MESSAGE, 0, L.F_OUTBOUND, 2, 0, size, "", "p", "inv", "", "")
    e = _last(rec)
    assert e.metadata["size"] == int(size)
    (got,) = rec.get_peer_diagnostics()
    assert got.bytes_sent == 5 + int(size) and got.bytes_sent_per_msg == {"inv": 5 + int(size)}


@pytest.mark.parametrize("peer", ["peer-7", "pëer-ünïcode", "пир", "😀" * 3, _Str("sub"), "x" * 64])
@pytest.mark.parametrize("msg", ["inv", "véry", _Str("ping")])
def test_text_of_every_str_shape(rec, peer, msg):
    rec.record_message(peer, msg, "inbound", 3)
    e = _last(rec)
    assert (e.peer_id, e.metadata["message_type"]) == (str(peer), str(msg))
    (got,) = rec.get_peer_diagnostics()
    assert (got.peer_id, got.bytes_recv_per_msg) == (str(peer), {str(msg): 3})


def test_bytes_text_and_negative_and_large_fields(rec):
    tidx = rec._shards.type_index("t")
    rec._write(L.KIND_EVENT, 2, 0, tidx, -5, -(2**40), b"t", b"peer", b"", b"", "m\u00e9")
    e = _last(rec)
    assert (e.event_type, e.peer_id, e.message) == ("t", "peer", "m\u00e9")
    assert int(rec._seg.slots["value"][e.seq % rec._seg.capacity]) == -(2**40)
    assert int(rec._seg.slots["ts_ns"][e.seq % rec._seg.capacity]) == -5


@pytest.mark.parametrize("args, exc", [
    ((L.KIND_EVENT, 5, 0, 0, 0, 0, "", "", "", "", ""), ValueError),      # severity above 4
    ((L.KIND_EVENT, -1, 0, 0, 0, 0, "", "", "", "", ""), ValueError),     # one-digit negative
    ((256, 0, 0, 0, 0, 0, "", "", "", "", ""), ValueError),               # kind
    ((L.KIND_EVENT, 2**40, 0, 0, 0, 0, "", "", "", "", ""), ValueError),  # several digits
    ((L.KIND_EVENT, 2**70, 0, 0, 0, 0, "", "", "", "", ""), OverflowError),
    ((L.KIND_EVENT, 0, 0, 0, 2**64, 0, "", "", "", "", ""), OverflowError),
    ((L.KIND_EVENT, 0, 0, 0, 0, -(2**63) - 1, "", "", "", "", ""), OverflowError),
    ((L.KIND_EVENT, 1.0, 0, 0, 0, 0, "", "", "", "", ""), TypeError),
    ((L.KIND_EVENT, 0, 0, 0, 0, 0, "", 7, "", "", ""), TypeError),
    ((L.KIND_EVENT, 0, 0, 0, 0, 0, "", "\ud800", "", "", ""), UnicodeEncodeError),  # a lone surrogate
])
def test_bad_arguments_raise_and_leave_no_trace(rec, args, exc):
    rec.record_message("p", "inv", "inbound", 1)
    before = rec.get_stats().total_events
    with pytest.raises(exc):
        rec._write(*args)
    assert rec.get_stats().total_events == before
    rec.record_message("p", "inv", "inbound", 1)
    assert rec.get_stats().total_events == before + 1
