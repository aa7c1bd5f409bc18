"""The archive's column-wise rows (archive/columns.py) say what the per-event reference path says,
for every kind of record and every awkward text: the two are compared row by row."""

from __future__ import annotations

import orjson

from shmdiag import DiagnosticEvent, Inspector, Severity
from shmdiag.archive.columns import fast_rows
from shmdiag.archive.rows import batch_rows, reference_rows
from shmdiag.core.follow import Batch


def _rows_both(rec) -> tuple[list, list]:
    with Inspector.attach(rec.name) as ins:
        f = ins.follower(0)
        fast, ref = [], []
        for it in f.poll_raw(max_seqs=1 << 20):
            if isinstance(it, Batch):
                fast += batch_rows(it.raw, it.seg)
                odd = fast_rows(it.raw)[1]
                assert 0 < len(odd) < len(it.raw) // 4  # the NUL rows, the long event: the rest column-wise
                ref += reference_rows(it.raw, it.seg)
    return fast, ref


def _norm(row: tuple) -> tuple:
    meta = row[8]
    return (*row[:8], None if meta is None else orjson.loads(meta), *row[9:])


def test_fast_rows_equal_the_reference_path_for_every_kind(make_recorder):
    rec = make_recorder(4096)
    texts = ["plain", 'quote " and \\ backslash', "tab\tnewline\n", "ünïcødé ✓ 🚀", "", "nul\x00inside", "x" * 190]
    for i, t in enumerate(texts):
        rec.record_event(DiagnosticEvent(f"ty{i}", t, Severity(i % 5), peer_id=t[:10],
                                         metadata={"k": t, "n": i, "f": 1.5} if i % 2 else None,
                                         error=t if i % 3 == 0 else None))
        rec.record_peer_connection(f"p{t[:5]}", f"10.0.0.{i}:{t[:4]}")
        rec.record_peer_disconnection(f"p{t[:5]}", f"10.0.0.{i}:1", t)
        rec.record_message(f"p{i}", t[:12] or "inv", "inbound" if i % 2 else "outbound", i * 1000 + 3)
        rec.record_error(f"p{i}" if i % 2 else "", t, f"op{t[:3]}")
        with rec.span("op" + t[:3], peer_id=f"p{i}"):
            pass
        try:
            with rec.span("boom", peer_id="p"):
                raise ValueError(t)
        except ValueError:
            pass
    rec.record_event(DiagnosticEvent("long", "y" * 3000 + "✓", metadata={"a": "b" * 500}))  # several slots
    fast, ref = _rows_both(rec)
    assert len(fast) == len(ref) == 7 * 7 + 1
    for a, b in zip(fast, ref, strict=True):
        assert _norm(a) == _norm(b)
    assert max(r[10] for r in fast) > 10
