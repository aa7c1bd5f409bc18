"""reader.decode_many (in C: _native.decode_slots; and decode_many_py, the generated per-kind
Python decoders) returns exactly what the reference path reader._decode_row returns, record by
record: every kind, nasty text, truncated and continued records, metadata that does not parse,
and timestamps outside the fast range (before 1970, after 2106); fuzzed records. The C search
(read_newest) returns what the numpy search returns, on wrapped, cleared and damaged rings and
under a concurrent writer."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone

import numpy as np
import orjson
import pytest

from shmdiag import DiagnosticEvent, Severity
from shmdiag.core import _native
from shmdiag.core import kinds as K
from shmdiag.core import layout as L
from shmdiag.core import reader as R
from tests.test_kinds import NASTY, RECIPES


def _reference(seg, recs) -> list[DiagnosticEvent]:
    more = R.continuations(seg, recs)
    return [R._decode_row([int(x) for x in r["lens"]], r["text"].tobytes(), int(r["kind"]), int(r["flags"]),
                          int(r["value"]), int(r["severity"]), int(r["ts_ns"]), int(r["pid"]),
                          int(L.w_seq(r["w"])), more.get(i)) for i, r in enumerate(recs)]


def _records(rec) -> np.ndarray:
    return R.newest_records(rec._seg, rec._seg.capacity)


def test_every_kind_decodes_as_the_reference(make_recorder):
    rec = make_recorder(1024)
    for text in ("x", NASTY):
        for recipes in RECIPES.values():
            for record, _ in recipes:
                try:
                    record(rec, text)
                except RuntimeError:  # the failing span re-raises
                    pass
    rec.record_event(DiagnosticEvent("long", "m" * 5000, Severity.INFO, error="e" * 500, metadata={"k": "v" * 200}))
    rec.record_event(DiagnosticEvent("cut", "x" * 20000, Severity.INFO))
    rec.record_event(DiagnosticEvent("meta", "", Severity.DEBUG, metadata={}))
    recs = _records(rec)
    fast = R.decode_many(recs, R.continuations(rec._seg, recs))
    assert fast == _reference(rec._seg, recs)
    assert R.decode_many_py(recs, R.continuations(rec._seg, recs)) == fast
    assert len(fast[-3].message) == 5000 and not fast[-3].truncated
    assert fast[-2].truncated
    # a continued record read without its continuations: its first slot alone, truncated
    alone = R.decode_many(recs)
    i = len(recs) - 3
    assert alone[i].truncated and alone[i].message == fast[i].message[: len(alone[i].message)]
    assert [R.decode(r) for r in recs] == alone


def test_timestamps_outside_the_fast_range(make_recorder):
    rec = make_recorder(64)
    utc = timezone.utc
    stamps = [datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=utc), datetime(1970, 1, 1, tzinfo=utc),
              datetime(2106, 2, 7, 6, 28, 15, 999999, tzinfo=utc), datetime(2200, 1, 1, 0, 0, 0, 1, tzinfo=utc),
              datetime(2026, 11, 30, 8, 0, 0, 500000, tzinfo=utc)]
    for ts in stamps:
        rec.record_event(DiagnosticEvent("t", "m", Severity.INFO, timestamp=ts))
    recs = _records(rec)
    got = R.decode_many(recs)
    assert got == _reference(rec._seg, recs)
    assert R.decode_many_py(recs) == got
    assert [e.timestamp for e in got] == stamps
    # within the fast range alone (one batch takes one path)
    inside = recs[[1, 4]]
    assert [e.timestamp for e in R.decode_many(inside)] == [stamps[1], stamps[4]]
    # and microsecond rounding agrees with the reference on a spread of values
    rng = np.random.default_rng(12)
    for us in rng.integers(0, (1 << 32) * 1_000_000, 2000).tolist():
        assert R._fts(us / 1e6, R._UTC) == R._EPOCH + timedelta(microseconds=us)


def test_metadata_that_does_not_parse_reads_truncated(make_recorder):
    rec = make_recorder(64)
    rec.record_event(DiagnosticEvent("m", "hello", Severity.INFO, metadata={"a": 1}))
    recs = _records(rec).copy()
    r = recs[-1]
    lens = [int(x) for x in r["lens"]]
    start = lens[0] + lens[1]
    r["text"][start] = ord("}")  # f1 (metadata JSON) broken; only the copy, not the ring
    got = R.decode_many(recs)[-1]
    assert got == _reference(rec._seg, recs)[-1]
    assert got.metadata is None and got.truncated and got.message == "hello"


# -- the C fast path (core/_native.c: read_newest, decode_slots) against the reference -----------

def _fuzzed_records(rng: np.random.Generator, n: int) -> np.ndarray:
    """n records with random fields: every kind code (unknown ones read as events), every flag,
    lengths within copy_records' bounds or beyond, invalid UTF-8, valid and broken metadata JSON,
    int64 timestamps and values over their whole range."""
    recs = np.zeros(n, dtype=L.SLOT)
    recs["w"] = [L.w_make(int(s), 0, L.ST_COMMITTED) for s in rng.integers(0, 1 << 40, n)]
    recs["ts_ns"] = rng.integers(-(1 << 63), (1 << 63) - 1, n, dtype=np.int64, endpoint=True)
    recs["ts_ns"][: n // 2] = rng.integers(0, 4_200_000_000_000_000_000, n // 2)  # 1970..2103
    recs["value"] = rng.integers(-(1 << 63), (1 << 63) - 1, n, dtype=np.int64, endpoint=True)
    recs["value"][: n // 3] = rng.integers(0, 10**10, n // 3)
    recs["severity"] = rng.integers(0, 5, n)
    kinds = rng.integers(0, K.KIND_MAX + 1, n)
    kinds[: n // 10] = rng.integers(0, 256, n // 10)
    recs["kind"] = kinds
    recs["flags"] = rng.integers(0, 256, n)
    recs["pid"] = rng.integers(0, 1 << 32, n, dtype=np.uint64)
    texts = rng.integers(0, 256, (n, L.TEXT_SIZE), dtype=np.uint8)
    ascii_rows = rng.random(n) < 0.5
    texts[ascii_rows] = rng.integers(32, 127, (int(ascii_rows.sum()), L.TEXT_SIZE), dtype=np.uint8)
    lens = np.zeros((n, 5), dtype=np.int64)
    lens[:, 0] = rng.integers(0, L.TYPE_CAP + 1, n)
    lens[:, 1] = rng.integers(0, L.PEER_CAP + 1, n)
    for i in range(n):
        room = L.TEXT_SIZE - int(lens[i, :2].sum())
        a = int(rng.integers(0, room + 1))
        b = int(rng.integers(0, room - a + 1))
        lens[i, 2:] = a, b, int(rng.integers(0, room - a - b + 1))
        if i % 7 == 0:  # valid metadata JSON in f1
            doc = orjson.dumps({"k": int(rng.integers(0, 1000)), "s": "ñ"})
            start = int(lens[i, :2].sum())
            if start + len(doc) <= L.TEXT_SIZE:
                texts[i, start: start + len(doc)] = np.frombuffer(doc, dtype=np.uint8)
                lens[i, 2] = len(doc)
                lens[i, 3:] = np.minimum(lens[i, 3:], L.TEXT_SIZE - start - len(doc))
                lens[i, 4] = min(lens[i, 4], L.TEXT_SIZE - start - len(doc) - lens[i, 3])
        if i % 11 == 0:  # beyond the bounds: both read slices cut at the text area's end
            lens[i] = rng.integers(0, 256, 5)
    recs["lens"] = lens
    recs["text"] = texts
    return recs


def test_native_decoder_equals_the_reference_on_fuzzed_records():
    rng = np.random.default_rng(1212)
    recs = _fuzzed_records(rng, 3000)
    ref = [R._decode_row([int(x) for x in r["lens"]], r["text"].tobytes(), int(r["kind"]), int(r["flags"]),
                         int(r["value"]), int(r["severity"]), int(r["ts_ns"]), int(r["pid"]),
                         int(L.w_seq(r["w"])), None) for r in recs]
    got = _native.decode_slots(recs)
    for i, (g, e) in enumerate(zip(got, ref, strict=True)):
        assert g == e, (i, recs[i])
        assert type(g.message) is str and type(g.severity) is Severity and g.timestamp.tzinfo is timezone.utc
    # the Python batch decoder reads one text buffer for all rows: it needs copy_records' bounds
    lens = recs["lens"].astype(np.int64)
    bounded = (lens[:, 0] <= L.TYPE_CAP) & (lens[:, 1] <= L.PEER_CAP) & (lens.sum(axis=1) <= L.TEXT_SIZE)
    assert 0 < bounded.sum() < len(recs)
    assert R.decode_many_py(recs[bounded]) == [e for e, b in zip(ref, bounded, strict=True) if b]
    assert R.decode_many(recs) == ref
    skipped = _native.decode_slots(recs.tobytes(), True)
    cont = (recs["flags"] & L.F_CONTINUED) != 0
    assert [e is None for e in skipped] == cont.tolist()
    assert [e for e in skipped if e is not None] == [e for e, c in zip(ref, cont, strict=True) if not c]
    with pytest.raises(ValueError, match="whole number of slots"):
        _native.decode_slots(recs.tobytes()[:-1])


def _damage(seg, rng: np.random.Generator, count: int) -> None:
    """Damage ``count`` retained records in place, each in one way the reader must refuse."""
    slots = seg.slots
    live = np.flatnonzero((slots["w"] != 0) & (L.w_state(slots["w"]) == L.ST_COMMITTED))
    for j, i in enumerate(rng.choice(live, min(count, len(live)), replace=False).tolist()):
        how = j % 6
        if how == 0:
            slots["checksum"][i] ^= np.uint64(1 << int(rng.integers(0, 64)))
        elif how == 1:
            slots["text"][i, int(rng.integers(0, L.TEXT_SIZE))] ^= np.uint8(0x40)  # checksum no longer holds
        elif how == 2:
            slots["severity"][i] = (int(slots["severity"][i]) + 1) % 5
        elif how == 3:
            slots["w"][i] = (slots["w"][i] & ~np.uint64(3)) | np.uint64(L.ST_BUSY)  # a writer mid-record
        elif how == 4:
            slots["w"][i] += np.uint64(1 << L.W_SEQ_SHIFT)  # names another sequence number
        else:  # out-of-bounds lengths with a checksum that holds: copy_records refuses them
            slots["lens"][i, 1] = L.PEER_CAP + 1
            words = seg.slot_words[i]
            slots["checksum"][i] = (words * L.CHECKSUM_KEYS).sum(dtype=np.uint64)


def _fill(rec, rng: np.random.Generator, n: int) -> None:
    """n events of every kind, some of several slots, some with text over the maximum."""
    for _ in range(n):
        pick = int(rng.integers(0, 20))
        t = NASTY if pick % 3 == 0 else "x"
        if pick == 0:
            rec.record_event(DiagnosticEvent("long", "m" * int(rng.integers(150, 3000)), Severity.INFO,
                                             error="e" * int(rng.integers(0, 400)), metadata={"k": "v" * 50}))
        elif pick == 1:
            rec.record_event(DiagnosticEvent("cut", "y" * 9000, Severity.WARNING, peer_id="p9"))
        else:
            kinds = list(RECIPES.values())
            recipes = kinds[pick % len(kinds)]
            record, _ = recipes[pick % len(recipes)]
            try:
                record(rec, t)
            except RuntimeError:  # the failing span re-raises
                pass


@pytest.mark.parametrize("seed", range(8))
def test_native_search_equals_the_reference(make_recorder, monkeypatch, seed):
    """newest_events through C (read_newest + decode_slots) returns what the numpy search and the
    Python decoders return, on rings that wrapped, were cleared, hold events of several slots and
    damaged records, for every limit, severity and upper bound."""
    rng = np.random.default_rng(seed)
    cap = (64, 256, 1024, 4096)[seed % 4]
    rec = make_recorder(cap)
    seg = rec._seg
    _fill(rec, rng, int(rng.integers(cap // 2, 3 * cap)))
    if seed % 3 == 1:
        rec.clear_events()
        _fill(rec, rng, int(rng.integers(1, cap)))
    if seed % 2 == 0:
        _damage(seg, rng, int(rng.integers(1, 30)))
    native_calls = []
    real = R._decode_raw
    monkeypatch.setattr(R, "_decode_raw", lambda s, raw: native_calls.append(1) or real(s, raw))
    head, base = seg.era()
    cases = [(n, sev, below) for n in (1, 3, 17, 100, cap - 1, cap, 2 * cap) for sev in range(5)
             for below in (None, head - 1, head - int(rng.integers(1, cap)), base + 2)]
    for n, sev, below in cases:
        got = R.newest_events(seg, n, sev, below=below)
        got_recs = R.newest_events(seg, n, sev, below=below, as_records=True)
        monkeypatch.setattr(R, "_NATIVE", False)
        want = R.newest_events(seg, n, sev, below=below)
        want_recs = R.newest_events(seg, n, sev, below=below, as_records=True)
        monkeypatch.setattr(R, "_NATIVE", True)
        assert got == want, (n, sev, below)
        assert got_recs.tobytes() == want_recs.tobytes()
        assert want == _reference(seg, want_recs)
    assert native_calls  # the C path answered (most) of them
    # the public API too
    events = rec.get_events(50)
    monkeypatch.setattr(R, "_NATIVE", False)
    assert events == rec.get_events(50)


def test_native_search_skips_damaged_records_and_looks_further(make_recorder):
    rec = make_recorder(1024)
    for i in range(1024 + 300):
        rec.record_message(f"peer{i % 7}", "inv", "inbound", i)
    seg = rec._seg
    newest = R.newest_records(seg, 10)
    head = seg.era()[0]
    # damage the 5 newest: get_events(10) now reaches 5 further back, and never returns them
    for s in range(head - 5, head):
        seg.slots["checksum"][s % seg.capacity] ^= np.uint64(1)
    got = rec.get_events(10)
    assert [e.seq for e in got] == list(range(head - 15, head - 5))
    assert all(e.metadata == {"message_type": "inv", "direction": "inbound", "size": e.seq} for e in got)
    assert [e.seq for e in got][5:] == [int(L.w_seq(w)) for w in newest["w"][:5]]


_WRITER = r"""
import sys, time
from shmdiag import DiagnosticEvent, Recorder, Severity
rec = Recorder.attach(sys.argv[1])
end = time.monotonic() + float(sys.argv[2])
i = 0
while time.monotonic() < end:
    rec.record_event(DiagnosticEvent("t", f"{i}:" + "x" * (1000 if i % 50 == 0 else i % 150), Severity.INFO,
                                     metadata={"i": i}))
    rec.record_message(f"p{i % 5}", f"m{i % 97}", "inbound", i)
    i += 1
rec.close()
print(i)
"""


def test_native_reads_under_a_concurrent_writer(make_recorder, procs):
    """A writer process laps a small ring while get_events(50) reads it through the C path: every
    event returned is one the writer recorded, whole (or marked truncated), never a torn mix."""
    rec = make_recorder(64)  # a short lap: the writer rewrites slots while they are copied
    p = subprocess.Popen([sys.executable, "-c", _WRITER, rec.name, "2.0"], stdout=subprocess.PIPE, text=True)
    procs.append(p)
    reads = seen = 0
    while p.poll() is None:
        got = rec.get_events(50)
        reads += 1
        seqs = [e.seq for e in got]
        assert seqs == sorted(set(seqs))
        for e in got:
            seen += 1
            if e.event_type == "t" and e.metadata is None:  # its continuations were overwritten: first slot alone
                head, _, rest = e.message.partition(":")
                assert e.truncated and head.isdigit() and set(rest) <= {"x"}, e
            elif e.event_type == "t":
                i = e.metadata["i"]
                want = f"{i}:" + "x" * (1000 if i % 50 == 0 else i % 150)
                assert e.message == want or (e.truncated and want.startswith(e.message)), e
            else:
                size = e.metadata["size"]
                assert e.event_type == "message" and e.metadata["message_type"] == f"m{size % 97}", e
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0 and int(out) > 64
    assert reads > 10 and seen > 0
