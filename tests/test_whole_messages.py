"""Whole messages (issue 12): an event's text up to layout.TEXT_MAX bytes kept whole in several
consecutive slots of its writer's run; beyond it the message first, then the error, then the
metadata, marked truncated; continuation slots never counted or read as events of their own."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import orjson
import pytest

from shmdiag import DiagnosticEvent, Inspector, Severity
from shmdiag.core import follow, reader, snapshot
from shmdiag.core import layout as L
from shmdiag.export.dicts import OPTS, event_to_dict
from shmdiag.loghandler import LoggingHandler

from helpers import unique_name


def _ev(msg: str, *, etype: str = "t", peer: str = "p", error: str | None = None, meta: dict | None = None,
        sev: Severity = Severity.INFO) -> DiagnosticEvent:
    return DiagnosticEvent(etype, msg, severity=sev, peer_id=peer, metadata=meta, error=error)


def _slots_of(rec, event: DiagnosticEvent) -> tuple[DiagnosticEvent, int]:
    """Record ``event`` between two one-slot markers; return it read back and the slots it took."""
    rec.record_message("mark", "inv", "inbound", 1)
    rec.record_event(event)
    rec.record_message("mark", "inv", "inbound", 2)
    a, got, b = rec.get_events(3)
    return got, b.seq - got.seq


def _words(seg) -> np.ndarray:
    return seg.slots["w"].copy()


def _books(name: str) -> int:
    """The books at rest agree with a slot scan and with get_events(0); return retained."""
    with Inspector.attach(name) as ins:
        seg = ins._seg
        c = snapshot.counters(seg)
        acct = ins.accounting()
        events = ins.get_events(0)
        assert c.in_flight == 0 and c.adjusted == 0, c
        assert acct.recorded == acct.retained + acct.overwritten + acct.lost + acct.abandoned + acct.expired, acct
        assert acct.retained == reader.scan_retained(seg) == len(events) == ins.count_retained(), (acct, len(events))
        return acct.retained


# -- boundaries ------------------------------------------------------------------------------------

def test_message_boundaries_one_slot_two_slots_max_over(rec):
    room1 = L.TEXT_SIZE - 2  # event type "t", peer "p"
    budget = rec.text_budget("t", "p")
    assert budget == L.TEXT_MAX and L.TEXT_MAX >= 4096
    cases = [
        (room1, 1, False),                        # exactly one slot
        (room1 + 1, 2, False),                    # one byte over: a continuation
        (room1 + L.CONT_TEXT, 2, False),          # two slots, full
        (room1 + L.CONT_TEXT + 1, 3, False),
        (4096, 1 + -(-(4096 - room1) // L.CONT_TEXT), False),
        (budget, 1 + -(-(budget - room1) // L.CONT_TEXT), False),  # the documented maximum
        (budget + 1, 1 + -(-(budget - room1) // L.CONT_TEXT), True),  # over it: cut, marked
    ]
    for n, slots, cut in cases:
        msg = "".join(chr(ord("a") + i % 26) for i in range(n))
        got, took = _slots_of(rec, _ev(msg))
        assert took == slots, (n, took)
        assert got.truncated is cut, n
        assert got.message == msg[:budget]
        assert (got.event_type, got.peer_id, got.severity) == ("t", "p", Severity.INFO)
    assert _books(rec.name) == len(cases) * 3


def test_error_and_metadata_boundaries_and_priority(rec):
    budget = rec.text_budget("t", "p")
    meta = {"k": "v" * 1500, "n": 7}
    err = "E" * 2000
    got, took = _slots_of(rec, _ev("m" * 2500, error=err, meta=meta))
    assert (got.message, got.error, got.metadata, got.truncated) == ("m" * 2500, err, meta, False)
    assert took > 20
    # over the maximum: the message whole, the error cut, the metadata keys dropped (never cut)
    got, _ = _slots_of(rec, _ev("m" * 4000, error="E" * 4000, meta=meta))
    assert got.message == "m" * 4000 and got.error == "E" * (budget - 4000)
    assert got.metadata is None  # not even "{}" fits: none kept
    assert got.truncated is True
    # a message over the maximum alone: the error and metadata go entirely
    got, _ = _slots_of(rec, _ev("m" * (budget + 10), error="E", meta={"a": 1}))
    assert (got.message, got.error, got.truncated) == ("m" * budget, "", True)
    # UTF-8 never split, at the slot boundaries nor at the cut
    for ch in ("é", "日", "😀"):
        msg = ch * (budget // len(ch.encode()) + 3)
        got, _ = _slots_of(rec, _ev(msg, error="x"))
        assert "\ufffd" not in got.message and msg.startswith(got.message)
        assert len(got.message.encode()) > budget - 4 and got.truncated is True
        msg = ch * (1000 // len(ch.encode()))
        got, _ = _slots_of(rec, _ev(msg, error=ch * 300))
        assert (got.message, got.error, got.truncated) == (msg, ch * 300, False)


def test_helper_text_whole_and_one_event_in_every_count(rec):
    rec.record_error("peer-1", "e" * 3000, "o" * 500)
    rec.record_peer_disconnection("peer-1", "a" * 300, "r" * 2000)
    rec.record_event(_ev("x" * 3000, etype="custom"))
    err, disc, custom = rec.get_events(0)
    assert err.error == "e" * 3000 and err.message == "Error in " + "o" * 500 and not err.truncated
    assert disc.metadata == {"address": "a" * 300, "reason": "r" * 2000} and not disc.truncated
    stats = rec.get_stats()
    assert stats.total_events == 3 and stats.events_by_type == {"error": 1, "peer_disconnected": 1, "custom": 1}
    (peer,) = [p for p in rec.get_peer_diagnostics() if p.peer_id == "peer-1"]
    assert peer.error_count == 1
    assert rec.count_retained() == 3 == _books(rec.name)
    w = _words(rec._seg)
    assert int(np.count_nonzero((w != 0) & (L.w_state(w) == L.ST_CONT))) > 30  # the continuations


def test_record_error_stores_the_exception_type(rec):
    rec.record_error("p", KeyError("feefilter"), "recv")
    rec.record_error("p", ValueError(), "parse")
    rec.record_error("p", "already text", "x")
    a, b, c = rec.get_events(0)
    assert a.error == "KeyError: 'feefilter'"
    assert b.error == "ValueError"
    assert c.error == "already text"


def test_small_ring_keeps_less_and_says_so(make_recorder):
    r = make_recorder(64)  # 4 slots at most per event
    assert L.event_slots_max(64) == 4
    budget = r.text_budget("t", "p")
    assert budget == L.TEXT_SIZE - 2 + 3 * L.CONT_TEXT
    got, took = _slots_of(r, _ev("m" * 1000))
    assert took == 4 and got.truncated is True and got.message == "m" * budget


# -- several writers -------------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys, os, time
    from shmdiag import Recorder, DiagnosticEvent, Severity
    name, w, n, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    rec = Recorder.attach(name)
    while not os.path.exists(go):
        time.sleep(0.001)
    for i in range(n):
        size = 150 + (i * 397 + w * 101) % 3500
        body = (chr(ord("a") + w) * size)
        tag = f"w{w}-{i}-{size}:"
        if i % 3 == 0:
            rec.record_message(f"p{w}", "inv", "inbound", i)
        rec.record_event(DiagnosticEvent("long", tag + body, severity=Severity.INFO, peer_id=f"p{w}",
                                         error=chr(ord("A") + w) * (i % 500), metadata={"w": w, "i": i}))
    rec.close()
    """
)


def _check_whole(e: DiagnosticEvent, lapped: bool = False) -> tuple[int, int]:
    tag, _, body = e.message.partition(":")
    w, i, size = (int(x) for x in tag[1:].split("-"))
    error = chr(ord("A") + w) * (i % 500)
    if lapped and e.truncated:
        # In a ring that laps, a continuation slot can still be busy with a writer a lap behind
        # (preempted mid-event): the event is cut there, never waited for (_native.c,
        # take_conts). Cut, but never mixed with another writer's bytes.
        assert body == chr(ord("a") + w) * len(body) and len(body) < size, (tag, body[:50])
        assert error.startswith(e.error or "") and e.metadata in ({}, {"w": w, "i": i}) and e.peer_id == f"p{w}"
        return w, i
    assert body == chr(ord("a") + w) * size, (tag, body[:50])
    assert e.error == error
    assert e.metadata == {"w": w, "i": i} and e.peer_id == f"p{w}" and e.truncated is False
    return w, i


@pytest.mark.multiprocess
@pytest.mark.parametrize("capacity", [4000, 200_000])
def test_concurrent_writers_never_interleave_an_event(make_recorder, tmp_path, capacity):
    rec = make_recorder(capacity)
    go = tmp_path / "go"
    n, nw = 400, 4
    ws = [subprocess.Popen([sys.executable, "-c", WRITER, rec.name, str(w), str(n), str(go)],
                           stderr=subprocess.PIPE) for w in range(nw)]
    # a follower reading while they write: every event once, whole, in order
    fol = follow.Follower(rec._seg, rec._seg.era()[0]) if capacity > 100_000 else None
    got: list = []
    go.touch()
    deadline = time.monotonic() + 120
    while any(w.poll() is None for w in ws) and time.monotonic() < deadline:
        if fol is not None:
            got += fol.poll()
        time.sleep(0.005)
    for w in ws:
        _, err = w.communicate(timeout=120)
        assert w.returncode == 0, err
    events = [e for e in rec.get_events(0) if e.event_type == "long"]
    seen = {_check_whole(e, lapped=capacity < 100_000) for e in events}
    assert len(seen) == len(events)
    acct = rec.accounting()
    assert acct.recorded == nw * (n + -(-n // 3))
    retained = _books(rec.name)
    if capacity > 100_000:  # nothing lapped: every event is there
        assert len(events) == nw * n and retained == acct.recorded
        for _ in range(100):
            more = fol.poll()
            got += more
            if fol.cursor >= rec._seg.era()[0]:
                break
            time.sleep(0.03)
        evs = [x for x in got if isinstance(x, DiagnosticEvent)]
        gaps = [x for x in got if not isinstance(x, DiagnosticEvent)]
        assert not gaps and len(evs) == acct.recorded
        assert [e.seq for e in evs] == sorted(e.seq for e in evs)
        assert {_check_whole(e) for e in evs if e.event_type == "long"} == seen
    else:
        assert acct.overwritten > 0


# -- damage, wrap, death ---------------------------------------------------------------------------

def test_continuation_overwritten_or_damaged_reads_truncated_never_foreign(rec):
    seg = rec._seg
    rec.record_event(_ev("A" * 3000, error="x" * 100))
    rec.record_event(_ev("B" * 3000, error="y" * 100))
    a, b = rec.get_events(0)
    assert a.message == "A" * 3000 and b.message == "B" * 3000
    idx, w = reader.export_snapshot(seg)
    recs, valid = reader.copy_records(seg, idx, w)
    assert valid.all() and len(recs) == 2
    first_part = len(reader.decode(recs[0]).message)
    assert reader.decode(recs[0]).truncated is True  # read alone: its first slot, marked
    # damage one byte of a's third continuation: a reads truncated, b whole
    cap = seg.capacity
    pos = (a.seq + 3) % cap
    seg.slot_words[pos][10] ^= np.uint64(1 << 40)
    x, y = rec.get_events(0)
    assert (x.message, x.truncated, x.error) == ("A" * first_part, True, "")
    assert (y.message, y.truncated) == ("B" * 3000, False)
    # b's continuations copied over a's (same run lengths, other event): refused
    nb = (b.seq - a.seq)
    for k in range(1, nb):
        seg.slot_words[(a.seq + k) % cap] = seg.slot_words[(b.seq + k) % cap]
    x, y = rec.get_events(0)
    assert x.message == "A" * first_part and x.truncated is True
    # the ring wraps over the continuations after the first slot was copied: truncated, not B's
    recs, valid = reader.copy_records(seg, idx, w)
    for i in range(cap):
        rec.record_message("wrap", "inv", "inbound", i)
    assert reader.continuations(seg, recs) == {0: None, 1: None}
    e = reader.decode(recs[1], None)
    assert e.message == "B" * len(e.message) and e.truncated is True and len(e.message) < 3000
    assert _books(rec.name) == cap


def test_ring_wrap_over_long_events_keeps_the_books(make_recorder):
    r = make_recorder(600)
    for i in range(400):
        if i % 5 == 0:
            r.record_message("p", "inv", "inbound", i)
        else:
            r.record_event(_ev(f"{i}:" + "z" * (100 + 37 * i % 3000), error="e" * (i % 300)))
    acct = r.accounting()
    assert acct.recorded == 400 and acct.overwritten > 0
    retained = _books(r.name)
    assert retained < 600
    for e in r.get_events(0):
        if e.event_type == "t":
            i = int(e.message.split(":")[0])
            assert e.message == f"{i}:" + "z" * (100 + 37 * i % 3000) and e.error == "e" * (i % 300)
            assert e.truncated is False
    # an export says the same as the reference path, continued rows whole
    data = r.export_events("ndjson").splitlines()  # (NDJSON is events only)
    ref = [orjson.dumps(event_to_dict(e), option=OPTS) for e in r.get_events(0)]
    assert data == ref


def _die_mid_event(name: str, stage: int) -> None:
    """Fill the ring with one-slot events, then leave a 5-slot event as its writer would at
    ``stage`` (its first slot and continuations 1..stage taken, BUSY, each over a live event;
    the CAS of continuation ``stage`` done, its count not yet in jmeta) and die."""
    from shmdiag import Recorder
    rec = Recorder.attach(name)
    seg, nat = rec._seg, rec._seg.native
    for i in range(seg.capacity):
        rec.record_message("victim", "inv", "inbound", i)
    nat.drop_run()
    i = rec._shards.index
    tidx = rec._shards.type_index("long")
    seq = nat.fetch_add(seg.header_word("head"), 5) & L.SEQ_MASK
    prev = 0
    for k in range(stage + 1):
        off = seg.slot_word((seq + k) % seg.capacity)
        prev = nat.load(off)
        assert L.w_state(prev) == L.ST_COMMITTED
        assert nat.cas(off, prev, L.w_make(seq + k, 1 if k == 0 else L.SEV_CONT, L.ST_BUSY))
    nat.store(seg.shard_word(i, "jprev"), prev)
    nat.store(seg.shard_word(i, "jmeta"), L.jmeta_make(tidx, 1, 0, ncont=4, stage=stage, overwrote=stage))
    nat.store(seg.shard_word(i, "journal"), L.j_make(seq, L.PH_CLAIMED))
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.multiprocess
@pytest.mark.parametrize("stage", [1, 3])
def test_writer_killed_mid_event_is_counted_once_and_never_read(make_recorder, stage):
    rec = make_recorder(512, collector=False)
    p = mp.get_context("spawn").Process(target=_die_mid_event, args=(rec.name, stage))
    p.start()
    p.join(60)
    assert p.exitcode == -signal.SIGKILL
    with Inspector.attach(rec.name) as ins:
        acct = ins.accounting()
        assert acct.in_flight == 1 and acct.recorded == 512 and acct.retained == 512
    seg = rec._seg
    head = seg.era()[0]
    seq = head - 5
    # a follower before the reap: the busy first slot is one unreadable event, its busy
    # continuations nothing
    before = follow.Follower(seg, seq - 2, pending_timeout=0.0)
    out = before.poll()
    time.sleep(0.01)  # the follower times a record in flight from the poll that first saw it claimed
    out += before.poll()
    gaps = [g for g in out if isinstance(g, follow.Gap)]
    assert sum(g.unreadable for g in gaps) == 1 and sum(g.overwritten for g in gaps) == 0, gaps
    assert [e.seq for e in out if not isinstance(e, follow.Gap)] == [seq - 2, seq - 1]
    fol = follow.Follower(seg, seq - 2, pending_timeout=0.0)
    assert rec.reap_dead_writers() == 1
    acct = rec.accounting()
    # one event: recorded once, abandoned; the stage + 1 live events its slots took, overwritten
    assert (acct.recorded, acct.abandoned, acct.overwritten) == (513, 1, stage + 1)
    assert _books(rec.name) == 512 - (stage + 1)
    w = seg.slots["w"]
    assert L.w_state(int(w[seq % 512])) == L.ST_DELETED
    for k in range(1, stage + 1):
        assert L.w_state(int(w[(seq + k) % 512])) == L.ST_CONT  # not an event, not a gap
    assert all(e.event_type == "message" for e in rec.get_events(0))
    out = fol.poll()
    gaps = [g for g in out if isinstance(g, follow.Gap)]
    assert sum(g.unreadable for g in gaps) == 1 and sum(g.overwritten for g in gaps) == 0


KILLABLE = textwrap.dedent(
    """
    import sys
    from shmdiag import Recorder, DiagnosticEvent
    rec = Recorder.attach(sys.argv[1])
    print("ready", flush=True)
    i = 0
    while True:
        rec.record_event(DiagnosticEvent("long", f"{i}:" + "q" * (i * 131 % 4000), peer_id="k"))
        i += 1
    """
)


@pytest.mark.multiprocess
def test_sigkilled_long_writers_books_and_reads(make_recorder, procs):
    rec = make_recorder(2000, collector=False)
    for _ in range(5):
        p = subprocess.Popen([sys.executable, "-c", KILLABLE, rec.name], stdout=subprocess.PIPE)
        procs.append(p)
        assert p.stdout.readline() == b"ready\n"
        time.sleep(0.05)
        os.kill(p.pid, signal.SIGKILL)  # anywhere, often inside an event
        p.wait()
    assert rec.reap_dead_writers() == 5
    assert _books(rec.name) <= 2000
    for e in rec.get_events(0):
        i = int(e.message.split(":")[0])
        if not e.truncated:
            assert e.message == f"{i}:" + "q" * (i * 131 % 4000)
        else:  # read from its first slot alone
            assert (f"{i}:" + "q" * (i * 131 % 4000)).startswith(e.message)


# -- logging ---------------------------------------------------------------------------------------

def _deep(n: int, text: str) -> None:
    if n == 0:
        raise ValueError(text)
    exec(f"def f{n}(g):\n    g()\n", globals())  # distinct frames: no "[Previous line repeated]"
    globals()[f"f{n}"](lambda: _deep(n - 1, text))


def test_logging_handler_keeps_message_whole_and_traceback_within_budget(rec):
    logger = logging.getLogger(unique_name("log"))
    logger.propagate = False
    logger.addHandler(LoggingHandler(rec))
    msg = "parse failure " + "m" * 3000
    try:
        _deep(120, "bad header " + "h" * 50)
    except ValueError:
        logger.exception(msg)
    try:
        _deep(3, "short")
    except ValueError:
        logger.exception("small")
    big, small = rec.get_events(0)
    assert big.message == msg and big.severity == Severity.ERROR
    budget = rec.text_budget(big.event_type, "")
    assert len(big.error.encode()) <= budget - len(msg.encode())
    assert big.error.startswith("Traceback (most recent call last):\n  ... (")
    assert "lines left out)" in big.error
    assert big.error.endswith("ValueError: bad header " + "h" * 50)
    assert big.truncated is False
    assert small.message == "small" and small.error.startswith("Traceback (most recent call last):\n")
    assert small.error.count("\n  File ") >= 4 and small.error.endswith("ValueError: short")


def test_the_continued_flag_is_the_writers_own(rec):
    """A caller's flags never claim continuations that are not there."""
    tidx = rec._shards.type_index("t")
    rec._write(L.KIND_EVENT, 1, L.F_CONTINUED, tidx, 0, 0, "t", "", b"", "", "short")
    (e,) = rec.get_events(0)
    assert (e.message, e.truncated) == ("short", False)
