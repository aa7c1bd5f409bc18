"""``shmdiag tail``: the last events of a ring, and following it without missing or repeating one.

The follower keeps a cursor: the next sequence number to deliver. Writers claim sequence
numbers in runs (one fetch_add on the head per run, see ``_layout.RUN_MAX``) and each names its
slot (``seq % capacity``), so at each poll every sequence number in [cursor, head) is in exactly
one of these states, read from its slot word (``_layout.w_seq``/``w_state``) and the writers'
shards:

* the slot holds it, committed: deliver it (copied and validated as the reader path does:
  words, fence, records, fence, words again, checksum);
* the slot holds a newer sequence number: the ring went round and overwrote it before we read
  it (or its writer found the slot taken and dropped it): counted, reported as *overwritten*;
* the slot holds it as a continuation (``ST_CONT``, or busy with severity bits ``SEV_CONT``):
  part of the event before it (delivered whole with that one, or counted with it), not an event:
  skipped without a word;
* the slot holds it, deleted: retention cleanup expired it, or a reaper freed the slot of a
  writer that died inside the record: counted, reported as *unreadable*;
* the slot holds it, busy: its writer is inside the record right now. Delivery stops there,
  to keep sequence order, and looks again at the next poll. Writers finish a record in
  microseconds, so one that has not within ``pending_timeout`` of the claim was stopped or
  died: the follower gives up on it and counts it as *unreadable* rather than stall forever;
* the slot holds an older sequence number (or nothing), and a writer's current run, claimed
  less than ``RUN_TTL_NS`` (plus the writers' clock resolution) ago, holds it: it may still be
  written. Delivery stops there too;
* the slot holds an older sequence number and no such run holds it, and a *published* record
  (committed, or expired or overwritten after being committed) sits above it: it never will be
  written (the unused end of a run, a writer that died or dropped the event). Not an event:
  skipped without a word. A writer checks its run's age after taking a slot and gives the slot
  back if the run is older than ``RUN_TTL_NS``, so this cannot change after the follower has
  looked;
* the same, with no published record above it (the unwritten top of the head): delivery waits
  there, with no timeout and nothing counted. A writer that gives up the rest of its run gives
  it back to the head when nobody claimed after it (``drop_run`` in ``core/_native.c``), and
  those seqs are claimed and written again. A give-back never lowers the head to or below a
  published seq, so it never takes back a seq the follower has passed; if the head is ever below
  the cursor (a follower that started past it), the seqs between were never written and the
  cursor goes back to the head.

A follower more than two laps behind counts the older part of its lag as overwritten in one
step (see ``_LAPS``); it may count there a few never-written sequence numbers as overwritten.
Nothing here writes to the ring. A clear (``clear_events``) does not touch slots or sequence
numbers, so a follower goes on as if nothing happened.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from shmdiag.core import _native
from shmdiag.core import kinds as K
from shmdiag.core import layout as L
from shmdiag.core.filter import EventFilter, slot_fields_checked
from shmdiag.core.models import DiagnosticEvent
from shmdiag.core.reader import Accept, copy_records, decode_many, decode_records, newest_events, seq_words
from shmdiag.core.segment import Segment

_DELIVER, _OVERWRITTEN, _UNREADABLE, _QUIET = 0, 1, 2, 3  # _QUIET: filtered out, or never written
_START_WINDOW = 4096  # how far below the head to look for records still being written at start
# Writers time their runs with a coarse clock that lags CLOCK_MONOTONIC by up to its resolution
# (see mono_ns in core/_native.c): a run is done with once RUN_TTL_NS plus twice that has passed.
_RUN_DONE_NS = L.RUN_TTL_NS + 2 * _native.run_clock_slack_ns()
# A sequence number two laps below the head is counted as overwritten without reading its slot:
# the next claimant of its slot overwrites a committed record, so it can still be there only if
# the claimants of both later laps are stuck between claiming and writing.
_LAPS = 2


@dataclass
class Gap:
    """Events the follower could not deliver, between two it did (or at the end of a poll).

    ``matched``: how many of them the follower's filter is known to select (read from what is
    left of them: the slot word and, for an expired record still intact, its fields);
    ``unknown``: how many cannot be told (overwritten by a newer record, or never completed).
    Without a filter every skipped event matched. Under a filter, a gap that holds no known match
    is not reported on its own at once: it is held and reported (summed) at most once a
    ``Follower.gap_interval``, so ``first_seq``..``last_seq`` may then span events delivered
    meanwhile; skipped events known not to match are only counted.
    """

    overwritten: int = 0  # the ring overwrote them before the follower read them
    unreadable: int = 0   # never completed in time (writer stopped, died or dropped them) or expired
    first_seq: int = -1
    last_seq: int = -1
    matched: int = 0
    unknown: int = 0

    @property
    def skipped(self) -> int:
        return self.overwritten + self.unreadable

    def add(self, kind: int, first: int, last: int, matched: int | None = None, unknown: int = 0) -> None:
        n = last - first + 1
        if kind == _OVERWRITTEN:
            self.overwritten += n
        else:
            self.unreadable += n
        self.matched += n if matched is None else matched
        self.unknown += unknown
        if self.first_seq < 0:
            self.first_seq = first
        self.last_seq = last


@dataclass
class Batch:
    """Events the follower delivers, in sequence order, as their validated records: ``raw`` is a
    C-contiguous ``(k, SLOT_SIZE)`` uint8 array of first slots, ready for
    ``export.stream.render_chunk(seg, raw)`` (JSON for the whole batch at once, events of several
    slots read whole; ``Following.render``) or :meth:`events` (decoded)."""

    raw: np.ndarray
    seg: Segment | None = field(default=None, repr=False)  # where an event's continuation slots are read

    def __len__(self) -> int:
        return len(self.raw)

    def records(self) -> np.ndarray:
        return self.raw.view(L.SLOT).reshape(len(self.raw))

    def events(self) -> list[DiagnosticEvent]:
        """Decoded, events of several slots whole (their continuations read now)."""
        if self.seg is None:
            return decode_many(self.records())
        return decode_records(self.seg, self.records())

    @property
    def last_ts_ns(self) -> int:
        return int(self.records()["ts_ns"][-1]) if len(self.raw) else 0


def _words(seg: Segment, seqs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slot positions of ``seqs`` (consecutive), their words, and the sequence number each word holds
    (garbage where the word is 0: callers mask with ``w != 0``)."""
    pos, w = seq_words(seg, int(seqs[0]), int(seqs[-1]) + 1) if len(seqs) else (
        np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.uint64))
    return pos, w, L.w_seq(w)


class _Runs:
    """The runs of sequence numbers writers may still write into, read after the head and
    before any slot word (the order ``claim_run`` in ``core/_native.c`` relies on)."""

    def __init__(self, seg: Segment, now_ns: int | None = None) -> None:
        # Read before the slot words: a run older than _RUN_DONE_NS at this moment is done with.
        now = time.monotonic_ns() if now_ns is None else now_ns
        seg.native.fence()
        run = seg.shards["run"].copy()
        seg.native.fence()
        t0 = seg.shards["run_t0"].astype(np.int64)
        seg.native.fence()
        age = now - t0
        fresh = (age >= 0) & (age <= _RUN_DONE_NS) & (run != L.RUN_NONE)  # a time ahead of now: foreign bytes
        self.claiming = bool((fresh & (run == L.RUN_CLAIMING)).any())
        # Sorting the words sorts the runs by first seq, which sits in their high bits. Runs can
        # overlap (a run given back, still fresh by the clock, and the one that reused its seqs),
        # so a seq is pending if below the furthest end of the runs that start at or before it.
        self.first, end = L.run_span(np.sort(run[fresh & (run > L.RUN_CLAIMING)]))
        self.end = np.maximum.accumulate(end) if len(end) else end

    def pending(self, seqs: np.ndarray) -> np.ndarray:
        """Which of ``seqs`` (not yet written) a writer may still write."""
        if self.claiming:  # a writer between its fetch_add and saying which run it got
            return np.ones(len(seqs), dtype=bool)
        k = np.searchsorted(self.first, seqs, side="right") - 1
        return (k >= 0) & (seqs < self.end[np.maximum(k, 0)]) if len(self.first) else np.zeros(len(seqs), dtype=bool)


def _continuation(seg: Segment, pos: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Which of these slots (words ``w``, unchanged across the read) hold a continuation slot."""
    seg.native.fence()
    kind = seg.slots["kind"][pos]
    seg.native.fence()
    return (kind == K.KIND_CONTINUATION) & (seg.slots["w"][pos] == w)


def _unwritten(w: np.ndarray, ws: np.ndarray, seqs: np.ndarray) -> np.ndarray:
    """The slot holds an older sequence number, or nothing: these seqs were never written (yet)."""
    return (w == 0) | (ws < seqs)


def _published(w: np.ndarray, ws: np.ndarray, seqs: np.ndarray, head: int) -> np.ndarray:
    """The slot holds a record published at or after this seq (committed, or since retired or
    overwritten by a committed one): the head never again drops to or below such a seq."""
    return (w != 0) & (ws >= seqs) & (ws < head) & (L.w_state(w) != L.ST_BUSY)


def _top_published(seg: Segment, lo: int, head: int) -> int:
    """The highest seq in [lo, head) whose slot shows it published (see _published), or lo - 1.
    Looks back from the head, 4096 seqs at a time: the top is almost always within a run of it."""
    hi = head
    while hi > lo:
        a = max(lo, hi - 4096)
        seqs = np.arange(a, hi, dtype=np.uint64)
        _, w, ws = _words(seg, seqs)
        ok = np.flatnonzero(_published(w, ws, seqs, head))
        if len(ok):
            return a + int(ok[-1])
        hi = a
    return lo - 1


def _in_flight(w: np.ndarray, ws: np.ndarray, seqs: np.ndarray, runs: _Runs) -> np.ndarray:
    """Claimed but not yet written: the slot holds this one, busy, or an older sequence number
    (or nothing) while a writer's run may still write it."""
    busy = (w != 0) & (ws == seqs) & (L.w_state(w) == L.ST_BUSY)
    return busy | (_unwritten(w, ws, seqs) & runs.pending(seqs))


def history(seg: Segment, n: int, min_severity: int = 0, accept: Accept | None = None, *,
            follow: bool = True, filt: EventFilter | None = None,
            below: int | None = None) -> tuple[list[DiagnosticEvent], int]:
    """The last ``n`` retained events at or above ``min_severity`` that ``accept`` takes, oldest
    first (with sequence numbers below ``below``, when given), and the sequence number a
    follower should start from.

    With ``follow``, the events end below the oldest record still being written, and the
    follower starts there: it delivers that record and everything after it, so nothing is
    missed or repeated. Without, the events are simply the newest ones (a record in flight, or
    one whose writer died, must not hide newer ones from a one-off look).

    Looks at the newest sequence numbers first, widening the window, so a filter that matches
    often costs little on a large ring.
    """
    head, base = seg.era()
    runs = _Runs(seg)
    lo = max(base, head - min(seg.capacity, _START_WINDOW))
    seqs = np.arange(lo, head, dtype=np.uint64)
    _, w, ws = _words(seg, seqs)
    busy = np.flatnonzero(_in_flight(w, ws, seqs, runs))
    top = np.flatnonzero(_published(w, ws, seqs, head))
    # Never past the unwritten top of the head: it may be given back and written again.
    cursor = min(lo + int(busy[0]) if len(busy) else head, lo + int(top[-1]) + 1 if len(top) else lo)
    if n <= 0:
        return [], cursor
    upto = cursor if follow else head
    if below is not None:
        upto = min(upto, below)
    return newest_events(seg, n, min_severity, accept, below=upto, filt=filt), cursor


class Follower:
    """Delivers every event from ``cursor`` on that ``filt`` selects, in sequence order, exactly
    once, and a Gap for every run of events it could not. Call ``poll_raw()`` (records, for the
    fast path) or ``poll()`` (decoded events) every few tens of milliseconds.

    The filter is applied with numpy on the slot words and fields before anything is copied or
    decoded (``core/filter.py``); ``accept``, a Python predicate on decoded events, is applied by
    ``poll()`` only. ``poll_raw(max_seqs)`` handles at most ``max_seqs`` sequence numbers, so a
    follower far behind delivers as it goes; ``behind`` and ``lag_seconds`` say how far.
    """

    def __init__(self, seg: Segment, cursor: int, *, min_severity: int = 0, accept: Accept | None = None,
                 pending_timeout: float = 2.0, batch: int = 1 << 16, filt: EventFilter | None = None,
                 gap_interval: float = 1.0) -> None:
        self.seg = seg
        self.cursor = cursor
        if filt is None:
            filt = EventFilter(min_severity=min_severity)
        elif min_severity > filt.min_severity:
            filt = dataclasses.replace(filt, min_severity=min_severity)
        self.filt = filt
        self.min_severity = filt.min_severity
        self.accept = accept
        self.pending_timeout = pending_timeout
        self.batch = batch
        self.gap_interval = gap_interval
        self.delivered = 0
        self.overwritten = 0
        self.unreadable = 0
        self.head = cursor  # the head at the last poll
        self.last_ts_ns = 0  # timestamp of the last event delivered
        # (head, time) at each poll where the head moved: a sequence number below head_i was
        # claimed no later than time_i, which bounds how long a record has been in flight.
        self._heads: list[int] = []
        self._times: list[float] = []
        self._gap = Gap()
        self._gap_shown = -1e18  # monotonic time a held gap was last reported
        self._blocked = False  # the last poll stopped at a record still in flight
        self._published_end = cursor  # 1 + the newest published seq seen at the last poll

    @property
    def behind(self) -> int:
        """Sequence numbers between the cursor and the newest published record at the last poll
        (its slot seen committed, expired or overwritten): how far behind."""
        return max(0, self._published_end - self.cursor)

    @property
    def waiting(self) -> bool:
        """Whether the last poll went as far as it could: it stopped at the head or at a record
        still being written (so ``behind`` may stay above 0), not at ``max_seqs``."""
        return self._blocked or self.cursor >= self.head

    @property
    def lag_seconds(self) -> float:
        """How old the last event delivered is, when behind (0.0 when caught up)."""
        if not self.behind or not self.last_ts_ns:
            return 0.0
        return max(0.0, (time.time_ns() - self.last_ts_ns) / 1e9)

    def _note_head(self, head: int, now: float) -> None:
        while self._heads and self._heads[-1] > head:  # seqs given back: no longer claimed
            self._heads.pop()
            self._times.pop()
        if not self._heads or head > self._heads[-1]:
            self._heads.append(head)
            self._times.append(now)
        # Forget checkpoints no sequence number at or past the cursor needs.
        drop = 0
        while drop < len(self._heads) - 1 and self._heads[drop] <= self.cursor:
            drop += 1
        if drop:
            del self._heads[:drop], self._times[:drop]

    def _claimed_at(self, seqs: np.ndarray) -> np.ndarray:
        k = np.searchsorted(np.asarray(self._heads, dtype=np.uint64), seqs, side="right")
        return np.asarray(self._times)[np.minimum(k, len(self._times) - 1)]

    def _gap_due(self, now: float) -> bool:
        g = self._gap
        if not g.skipped:
            return False
        if self.filt.selects_all and self.accept is None or g.matched:
            return True
        return g.unknown > 0 and now - self._gap_shown >= self.gap_interval

    def _flush_gap(self, out: list, now: float, force: bool = False) -> None:
        if force and self._gap.skipped or self._gap_due(now):
            out.append(self._gap)
            self._gap = Gap()
            self._gap_shown = now

    def flush(self) -> list[Gap]:
        """The gap held back under a filter (see :class:`Gap`), if any: call when stopping."""
        out: list = []
        self._flush_gap(out, time.monotonic(), force=True)
        return out

    def poll(self, now: float | None = None) -> list[DiagnosticEvent | Gap]:
        """Everything that became deliverable since the last poll, decoded: events, and Gaps
        before the event they precede (or at the end)."""
        out: list[DiagnosticEvent | Gap] = []
        accept = self.accept
        target = self.seg.era()[0]  # a poll ends: writers faster than decoding must not keep it going
        while True:
            for item in self.poll_raw(now):
                if isinstance(item, Gap):
                    out.append(item)
                    continue
                events = item.events()
                if accept is not None:
                    events = [e for e in events if accept(e)]
                    self.delivered -= len(item) - len(events)
                out.extend(events)
            if self.cursor >= target or self._blocked:
                return out

    def poll_raw(self, now: float | None = None, max_seqs: int | None = None) -> list[Batch | Gap]:
        """What became deliverable since the last poll, up to ``max_seqs`` sequence numbers
        (``batch`` by default): Batches of records and Gaps, in sequence order."""
        seg = self.seg
        head, _ = seg.era()
        now_ns = time.monotonic_ns() if now is None else int(now * 1e9)
        now = now_ns / 1e9 if now is None else now
        runs = _Runs(seg, now_ns)
        if self.cursor > head:  # given back (see the module's docstring): never written
            self.cursor = head
        self.head = head
        self._note_head(head, now)
        out: list[Batch | Gap] = []
        pending: list[np.ndarray] = []
        self._blocked = False
        far = head - _LAPS * seg.capacity
        if self.cursor < far:
            # Too far behind to read one by one (and a corrupt head must not make a poll spin).
            self._gap.add(_OVERWRITTEN, self.cursor, far - 1, *self._unknown(far - self.cursor))
            self.overwritten += far - self.cursor
            self.cursor = far
        top = _top_published(seg, self.cursor, head) if self.cursor < head else head
        # what "behind" counts: up to the newest published record (the unused rest of a writer's
        # run above it is not an event, and is waited at without a word)
        self._published_end = top + 1 if self.cursor < head else head
        end = min(head, self.cursor + (self.batch if max_seqs is None else max(1, max_seqs)))
        filt = self.filt
        while self.cursor < end:
            start = self.cursor
            seqs = np.arange(start, min(end, start + self.batch), dtype=np.uint64)
            pos, w, ws = _words(seg, seqs)
            nz = w != 0
            state = L.w_state(w)
            same = nz & (ws == seqs)
            committed = same & (state == L.ST_COMMITTED)
            gone = nz & (ws > seqs)
            deleted = same & (state == L.ST_DELETED)
            # Part of the event before it, published or still being written: never an event, never a gap.
            cont = same & ((state == L.ST_CONT) | ((state == L.ST_BUSY) & (L.w_severity(w) == L.SEV_CONT)))
            if deleted.any():  # an expired continuation slot is not an event either
                di = np.flatnonzero(deleted)
                gone_cont = _continuation(seg, pos[di], w[di])
                deleted[di[gone_cont]] = False
                cont[di[gone_cont]] = True
            cls = np.full(len(seqs), -1, dtype=np.int8)  # -1: still in flight
            cls[cont] = _QUIET
            unwritten = _unwritten(w, ws, seqs)
            tail = unwritten & (seqs > np.uint64(top)) if top >= 0 else unwritten  # the unwritten top
            cls[unwritten & ~tail & ~runs.pending(seqs)] = _QUIET  # never will be: not an event
            cls[gone] = _OVERWRITTEN
            cls[deleted] = _UNREADABLE
            cls[same & (state == L.ST_DELETED) & ~deleted] = _QUIET
            sev_ok = filt.words(w)
            cls[committed & ~sev_ok] = _QUIET
            cand = np.flatnonzero(committed & sev_ok)
            # The fields, read between two reads of the words: a record that changed meanwhile
            # stays in flight and the next poll sees what it became.
            fields_ok, steady = slot_fields_checked(seg, pos[cand], w[cand], filt)
            cls[cand[steady & ~fields_ok]] = _QUIET  # not selected, or a continuation slot
            want = cand[steady & fields_ok]
            recs, valid = copy_records(seg, pos[want], w[want])
            # A record that changed under the copy was overwritten meanwhile, or holds bad bytes:
            # it stays in flight and the next poll sees which.
            if filt.grep is not None and valid.any():
                vi = np.flatnonzero(valid)
                hit = np.array([filt.greps(e) for e in decode_records(seg, recs[vi])], dtype=bool)
                cls[want[vi[~hit]]] = _QUIET
                valid[vi[~hit]] = False
                cls[want[valid]] = _DELIVER
            else:
                cls[want[valid]] = _DELIVER
            rec_of = np.full(len(seqs), -1, dtype=np.intp)
            rec_of[want] = np.arange(len(want))
            flying = np.flatnonzero(cls < 0)
            if len(flying):
                stale = (now - self._claimed_at(seqs[flying]) > self.pending_timeout) & ~tail[flying]
                cls[flying[stale]] = _UNREADABLE
                blocking = flying[~stale]
                stop = int(blocking[0]) if len(blocking) else len(seqs)
            else:
                stop = len(seqs)
            match = self._matches(cls[:stop], deleted[:stop], pos[:stop], w[:stop])
            self._emit(cls[:stop], match, recs, rec_of, start, out, pending, now)
            self.cursor = start + stop
            if stop < len(seqs):
                self._blocked = True
                break
        self._flush_batch(out, pending)
        self._flush_gap(out, now)
        return out

    def _unknown(self, n: int) -> tuple[int, int]:
        """(matched, unknown) of ``n`` skipped events nothing is left of."""
        return (n, 0) if self.filt.selects_all else (0, n)

    def _matches(self, cls: np.ndarray, deleted: np.ndarray, pos: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Per skipped seq: 1 the filter selects it, 0 it does not, -1 cannot be told. Only an
        expired record whose copy still checks out can be told (under a filter)."""
        m = np.full(len(cls), 1 if self.filt.selects_all else -1, dtype=np.int8)
        if self.filt.selects_all:
            return m
        exp = np.flatnonzero((cls == _UNREADABLE) & deleted)
        if len(exp):
            recs, valid = copy_records(self.seg, pos[exp], w[exp])
            ok = self.filt.records(recs)
            if self.filt.grep is not None and len(recs):
                ok &= np.array([self.filt.greps(e) for e in decode_records(self.seg, recs)], dtype=bool)
            m[exp[valid]] = ok[valid].astype(np.int8)
        return m

    def _flush_batch(self, out: list, pending: list[np.ndarray]) -> None:
        if pending:
            raw = np.ascontiguousarray(np.concatenate(pending) if len(pending) > 1 else pending[0])
            pending.clear()
            b = Batch(raw, self.seg)
            self.delivered += len(b)
            self.last_ts_ns = b.last_ts_ns
            out.append(b)

    def _emit(self, cls: np.ndarray, match: np.ndarray, recs: np.ndarray, rec_of: np.ndarray, start: int,
              out: list, pending: list[np.ndarray], now: float) -> None:
        if not len(cls):
            return
        edges = np.flatnonzero(np.diff(cls)) + 1
        bounds = [0, *edges.tolist(), len(cls)]
        raw = recs.view(np.uint8).reshape(len(recs), L.SLOT_SIZE)
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            kind = int(cls[a])
            if kind == _DELIVER:
                lo, hi = int(rec_of[a]), int(rec_of[b - 1]) + 1
                # usually every record copied is delivered, in order: a view, not another copy
                pending.append(raw[lo:hi] if hi - lo == b - a else raw[rec_of[a:b]])
            elif kind in (_OVERWRITTEN, _UNREADABLE):
                mm = match[a:b]
                self._gap.add(kind, start + a, start + b - 1, int(np.count_nonzero(mm == 1)),
                              int(np.count_nonzero(mm < 0)))
                if kind == _OVERWRITTEN:
                    self.overwritten += b - a
                else:
                    self.unreadable += b - a
                if self._gap_due(now):
                    self._flush_batch(out, pending)
                    self._flush_gap(out, now)
