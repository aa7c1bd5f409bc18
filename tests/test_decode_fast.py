"""reader.decode_many (generated per-kind decoders, numpy columns, timestamps by fromtimestamp)
returns exactly what the reference path reader._decode_row returns, record by record: every kind,
nasty text, truncated and continued records, metadata that does not parse, and timestamps
outside the fast path's range (before 1970, after 2106)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np

from shmdiag import DiagnosticEvent, Severity
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
