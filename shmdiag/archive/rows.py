"""Events to archive rows and back: the one place that knows how a follower's output is read.

``read_batch`` is the adapter over the public follower (``Inspector.follower(...).poll()``):
when the follower hands out columns instead of events, only it changes.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import numpy as np
import orjson

from shmdiag.archive.columns import fast_rows
from shmdiag.archive.store import Batch, GapRow, Row, Source
from shmdiag.core import layout as L
from shmdiag.core.follow import Gap
from shmdiag.core.models import DiagnosticEvent, Severity
from shmdiag.core.reader import More, continuations, decode_many

if TYPE_CHECKING:
    from shmdiag.core.segment import Segment
    from shmdiag.inspector import Following

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)
_SEV = {int(s): s for s in Severity}
OVERWRITTEN = "overwritten before the collector read them"
UNREADABLE = "never completed by their writer (stopped, died or dropped them), or expired"


def event_row(e: DiagnosticEvent, slots: int = 1) -> Row:
    ts = e.timestamp
    ns = (ts - _EPOCH) // _US * 1000 if ts is not None else 0
    return (ns, e.seq, e.pid, e.event_type, int(e.severity), e.peer_id, e.message, e.error,
            None if e.metadata is None else orjson.dumps(e.metadata).decode(), int(e.truncated), slots)


def slots_of(more: More | None) -> int:
    """The sequence numbers an event takes, from what its continuation slots carry (``more``,
    reader.continuations): its first slot and ceil(bytes / CONT_TEXT) continuations, as the
    writer fills them; 1 when it has none, or they could not be read (gone meanwhile)."""
    if more is None:
        return 1
    return 1 + -(-sum(map(len, more)) // L.CONT_TEXT)


def gap_row(g: Gap) -> GapRow:
    reason = OVERWRITTEN if g.overwritten and not g.unreadable else UNREADABLE if not g.overwritten else \
        f"{OVERWRITTEN}; {UNREADABLE}"
    return GapRow(g.first_seq, g.last_seq, overwritten=g.overwritten, unreadable=g.unreadable, reason=reason)


def reference_rows(raw: np.ndarray, seg: Segment | None) -> list[Row]:
    """Rows of validated records, decoded event by event (events of several slots whole)."""
    recs = raw.view(L.SLOT).reshape(len(raw))
    more = continuations(seg, recs) if seg is not None else {}
    events = decode_many(recs, more)
    if more:
        return [event_row(e, slots_of(more.get(i))) for i, e in enumerate(events)]
    return [event_row(e) for e in events]


def batch_rows(raw: np.ndarray, seg: Segment | None) -> list[Row]:
    """Rows of validated records ((k, SLOT_SIZE) uint8, a follower Batch's ``raw``), in order:
    column-wise (archive/columns.py), the few it leaves to the reference path decoded."""
    if not len(raw):
        return []
    fast, odd = fast_rows(raw)
    if not len(odd):
        return fast
    slow = reference_rows(np.ascontiguousarray(raw[odd]), seg)
    if not fast:
        return slow
    out: list[Row] = []
    it = iter(fast)
    prev = 0
    for i, row in zip(odd.tolist(), slow, strict=True):
        out.extend(itertools.islice(it, i - prev))
        out.append(row)
        prev = i + 1
    out.extend(it)
    return out


def read_batch(following: Following, src: Source, max_seqs: int = 1 << 16) -> Batch:
    """One poll of the follower as a Batch: the cursor before and after, rows and gaps.

    With a follower that has ``poll_raw`` (issue 12's), at most ``max_seqs`` sequence numbers
    per call (a collector a whole ring behind does not decode it all at once), records decoded
    a batch at a time; otherwise today's ``poll()``."""
    lo = following.cursor
    raw = getattr(following, "poll_raw", None)
    items = raw(max_seqs) if raw is not None else following.poll()
    rows: list[Row] = []
    gaps: list[GapRow] = []
    for it in items:
        if isinstance(it, Gap):
            gaps.append(gap_row(it))
        elif isinstance(it, DiagnosticEvent):
            rows.append(event_row(it))
        else:  # a batch of validated records
            rows += batch_rows(it.raw, it.seg)
    return Batch(src, lo, following.cursor, rows, gaps)


def caught_up(following: Following) -> bool:
    """Whether the last poll went as far as the follower could (else poll again at once)."""
    return bool(getattr(following, "waiting", True))


def row_event(row: Row) -> DiagnosticEvent:
    """An archived row (``ROW_COLUMNS`` order, or ``EVENT_COLUMNS``) as the event it was."""
    ts, seq, pid, typ, sev, peer, msg, error, meta, trunc = row[:10]
    return DiagnosticEvent(event_type=typ, message=msg, severity=_SEV.get(sev, Severity.INFO), peer_id=peer,
                           metadata=None if meta is None else orjson.loads(meta), error=error,
                           timestamp=_EPOCH + timedelta(microseconds=ts // 1000), pid=pid, seq=seq,
                           truncated=bool(trunc))

