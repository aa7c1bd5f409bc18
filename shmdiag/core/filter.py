"""Which records an event filter selects, answered on the stored fields, for many records at once.

``tail``, ``get_events``, ``export`` and the follower take the same :class:`EventFilter`: event
types, peers, a minimum severity, writer pids and a time range are tested with numpy on the slot
words and record fields *before* anything is decoded, so a filter that selects little costs little
on a ring of millions. Only ``grep`` (a regex over the message and the error, which are rendered
at read time from a kind's template) needs the decoded event, and it is tested last, on what the
other conditions left.

A record's event type is its kind's (``core/kinds.py``) for the helpers' kinds, and the text it
stores for ``record_event`` (kind ``event``); its peer is its second text field. Continuation
slots (``kinds.KIND_CONTINUATION``, the rest of an event longer than one slot) are never events:
every mask here leaves them out.

Whether a type or a peer was ever recorded is told without reading a slot (:func:`unrecorded`):
from the writers' per-type counters and the peer table, when they are complete (no type counted
as "(other)", no peer beyond the table, no peer entry recycled, metrics kept).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from shmdiag.core import kinds as K
from shmdiag.core import layout as L
from shmdiag.core import snapshot
from shmdiag.core.models import DiagnosticEvent
from shmdiag.core.segment import Segment

# kind code -> the event type it fixes (kinds that store their own: absent)
_FIXED = {k.code: k.event_type for k in K.KINDS if k.event_type is not None}
# kind codes whose event type is the stored text (record_event, and codes decode() reads as events)
_GENERIC = np.ones(256, dtype=bool)
_GENERIC[list(_FIXED)] = False
_GENERIC[K.KIND_MAX + 1:] = False
_TEXT_OFF = L.offset(L.SLOT, "text")
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1

# col(name, rows=None) -> that field of every record (or of those rows); text(rows, start, m) ->
# (len(rows), m) uint8: m bytes of each of those records' text areas from ``start`` (one per row).
Col = Callable[..., np.ndarray]
Text = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class EventFilter:
    """What to select: every condition given must hold (types: any of them; peers, pids: likewise).

    ``since_ns``/``until_ns`` bound the event's timestamp (ns since the epoch), both inclusive.
    ``grep`` is searched (``re.search``) in the message and in the error.
    """

    types: frozenset[str] = frozenset()
    peers: frozenset[str] = frozenset()
    min_severity: int = 0
    pids: frozenset[int] = frozenset()
    since_ns: int | None = None
    until_ns: int | None = None
    grep: re.Pattern[str] | None = None
    _types_b: tuple[bytes, ...] = field(init=False, repr=False, compare=False)
    _peers_b: tuple[bytes, ...] = field(init=False, repr=False, compare=False)
    _by_kind: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "types", frozenset(self.types))
        object.__setattr__(self, "peers", frozenset(self.peers))
        object.__setattr__(self, "pids", frozenset(self.pids))
        if not 0 <= self.min_severity <= 4:
            raise ValueError(f"min_severity must be 0-4, got {self.min_severity!r}")
        object.__setattr__(self, "_types_b", tuple(t.encode() for t in self.types))
        object.__setattr__(self, "_peers_b", tuple(p.encode() for p in self.peers))
        by_kind = np.zeros(256, dtype=bool)  # kinds whose fixed type is wanted
        for code, t in _FIXED.items():
            by_kind[code] = t in self.types
        object.__setattr__(self, "_by_kind", by_kind)

    @classmethod
    def of(cls, *, event_type: str | Iterable[str] | None = None, peer_id: str | Iterable[str] | None = None,
           min_severity: int = 0, pid: int | Iterable[int] | None = None, since: int | None = None,
           until: int | None = None, grep: re.Pattern[str] | None = None) -> EventFilter:
        """A filter from the API's keyword arguments (a single value or several for each)."""
        def several(v: object, what: str, typ: type) -> frozenset:
            if v is None:
                return frozenset()
            items = [v] if isinstance(v, typ) else list(v)  # type: ignore[call-overload]
            for x in items:
                if not isinstance(x, typ) or isinstance(x, bool):
                    raise TypeError(f"{what} must be a {typ.__name__} or several, not {type(x).__name__}")
            return frozenset(items)
        return cls(types=several(event_type, "event_type", str), peers=several(peer_id, "peer_id", str),
                   min_severity=min_severity, pids=several(pid, "pid", int), since_ns=since, until_ns=until,
                   grep=grep)

    @property
    def selects_all(self) -> bool:
        return not self.narrows_records and self.min_severity == 0 and self.grep is None

    @property
    def narrows_records(self) -> bool:
        """Whether a condition needs more than the slot word (type, peer, pid, time)."""
        return bool(self.types or self.peers or self.pids) or self.since_ns is not None or self.until_ns is not None

    @property
    def severity_only(self) -> bool:
        return not self.narrows_records and self.grep is None

    def words(self, w: np.ndarray) -> np.ndarray:
        """The condition on slot words alone (severity)."""
        if self.min_severity == 0:
            return np.ones(len(w), dtype=bool)
        return L.w_severity(w) >= np.uint64(self.min_severity)

    def fields(self, n: int, col: Col, text: Text) -> np.ndarray:
        """Every condition but severity and grep, on ``n`` records' fields (see Col, Text), with
        continuation slots left out."""
        kind = col("kind")
        ok = kind != K.KIND_CONTINUATION
        if self.pids:
            ok &= np.isin(col("pid"), np.fromiter(self.pids, dtype=np.int64, count=len(self.pids)))
        if self.since_ns is not None or self.until_ns is not None:
            us = col("ts_ns") // 1000  # events read back carry microseconds: compare at that precision
            if self.since_ns is not None:
                ok &= us >= np.int64(max(_I64_MIN, self.since_ns) // 1000)
            if self.until_ns is not None:
                ok &= us <= np.int64(min(_I64_MAX, self.until_ns) // 1000)
        if not (self.types or self.peers):
            return ok
        if self.types:
            hit = self._by_kind[kind]
            generic = ok & _GENERIC[kind]
            if generic.any() and self._types_b:  # the stored type is read only where it decides
                rows = np.flatnonzero(generic)
                len0 = col("lens", rows)[:, 0]
                for t in self._types_b:
                    hit[rows] |= _equal(np.ones(len(rows), dtype=bool), len0, np.zeros(len(rows), dtype=np.intp), t,
                                        _sub(text, rows))
            ok &= hit
        if self.peers and ok.any():
            rows = np.flatnonzero(ok)
            lens = col("lens", rows)
            start = lens[:, 0].astype(np.intp)
            hit = np.zeros(len(rows), dtype=bool)
            for p in self._peers_b:
                hit |= _equal(np.ones(len(rows), dtype=bool), lens[:, 1], start, p, _sub(text, rows))
            ok[rows] = hit
        return ok

    def records(self, recs: np.ndarray) -> np.ndarray:
        """Every condition but grep, on copied records (a SLOT array)."""
        ok = self.words(recs["w"]) if self.min_severity else np.ones(len(recs), dtype=bool)
        return ok & self.fields(len(recs), lambda f, rows=None: recs[f] if rows is None else recs[f][rows],
                                _records_text(recs))  # never a continuation

    def event(self, e: DiagnosticEvent) -> bool:
        """The whole filter on a decoded event (the reference the masks are tested against)."""
        if self.types and e.event_type not in self.types:
            return False
        if self.peers and e.peer_id not in self.peers:
            return False
        if int(e.severity) < self.min_severity:
            return False
        if self.pids and e.pid not in self.pids:
            return False
        if self.since_ns is not None or self.until_ns is not None:
            from shmdiag.core.reader import datetime_to_ns

            us = (datetime_to_ns(e.timestamp) if e.timestamp is not None else 0) // 1000
            if self.since_ns is not None and us < self.since_ns // 1000:
                return False
            if self.until_ns is not None and us > self.until_ns // 1000:
                return False
        return self.greps(e)

    def greps(self, e: DiagnosticEvent) -> bool:
        """The grep condition alone."""
        g = self.grep
        return g is None or g.search(e.message) is not None or (e.error is not None and g.search(e.error) is not None)


_PLAIN = tuple(EventFilter(min_severity=s) for s in range(5))


def severity_filter(min_severity: int) -> EventFilter:
    """The filter of a minimum severity alone, built once (a filter is frozen, so it is shared):
    ``get_events(100)`` should not pay for building one on every call."""
    if not 0 <= min_severity <= 4:
        raise ValueError(f"min_severity must be 0-4, got {min_severity!r}")
    return _PLAIN[min_severity]


def _equal(rows_ok: np.ndarray, length: np.ndarray, start: np.ndarray, needle: bytes, text: Text) -> np.ndarray:
    """Which records hold ``needle`` exactly as the field of ``length`` bytes at ``start``."""
    m = len(needle)
    out = np.zeros(len(rows_ok), dtype=bool)
    if m > L.TEXT_SIZE:
        return out
    cand = np.flatnonzero(rows_ok & (length == m))
    if not len(cand):
        return out
    if m == 0:
        out[cand] = True
        return out
    got = text(cand, start[cand], m)
    out[cand[(got == np.frombuffer(needle, dtype=np.uint8)).all(axis=1)]] = True
    return out


def _sub(text: Text, rows: np.ndarray) -> Text:
    """``text`` for a subset ``rows`` of the records: row indices relative to the subset."""
    return lambda r, start, m: text(rows[r], start, m)


def _records_text(recs: np.ndarray) -> Text:
    def text(rows: np.ndarray, start: np.ndarray, m: int) -> np.ndarray:
        cols = np.minimum(start[:, None] + np.arange(m), L.TEXT_SIZE - 1)
        return np.asarray(recs["text"][rows[:, None], cols])
    return text


def slot_fields(seg: Segment, pos: np.ndarray, w: np.ndarray, filt: EventFilter) -> np.ndarray:
    """Which of the records in slots ``pos`` (slot words ``w``) ``filt``'s fields select, of
    those whose word did not change while they were read (see :func:`slot_fields_checked`)."""
    ok, steady = slot_fields_checked(seg, pos, w, filt)
    return ok & steady


def slot_fields_checked(seg: Segment, pos: np.ndarray, w: np.ndarray,
                        filt: EventFilter) -> tuple[np.ndarray, np.ndarray]:
    """(selected, steady): :meth:`EventFilter.fields` on the records in slots ``pos`` as they
    are in the ring, read between two reads of their slot words, and which words are still
    ``w`` after it (the same committed record all along, so its fields did not change under the
    read; for the others ``selected`` means nothing). The caller copies and checks what passes
    (``reader.copy_records``), so a record changed after this look is never delivered for what
    it was."""
    flat = seg.slots.reshape(-1).view(np.uint8) if seg.slots.flags.c_contiguous else None
    slots = seg.slots

    def col(name: str, rows: np.ndarray | None = None) -> np.ndarray:
        return slots[name][pos if rows is None else pos[rows]]

    def text(rows: np.ndarray, start: np.ndarray, m: int) -> np.ndarray:
        at = pos[rows].astype(np.intp) * L.SLOT_SIZE + _TEXT_OFF + np.minimum(start, L.TEXT_SIZE - m)
        if flat is None:  # pragma: no cover - the segment's slots are always one contiguous array
            return np.stack([slots["text"][p, s: s + m] for p, s in zip(pos[rows], start, strict=True)])
        return flat[at[:, None] + np.arange(m)]

    seg.native.fence()
    ok = filt.fields(len(pos), col, text)
    seg.native.fence()
    return ok, slots["w"][pos] == w


# -- what was ever recorded ---------------------------------------------------------------------

def recorded_types(seg: Segment) -> tuple[dict[str, int], bool]:
    """(event type -> events recorded since creation or the last clear, complete): from the
    writers' per-type counters. ``complete`` is False when those cannot tell that a type is
    missing: some writer counted types as "(other)" (more than it has counters for), a writer's
    counters are damaged, or the ring keeps no metrics."""
    if not snapshot.metrics_enabled(seg):
        return {}, False
    out: dict[str, int] = {}
    complete = True
    for sh in snapshot.era_shards(seg):
        n = min(int(sh["ntypes"]), L.TYPE_SLOTS)
        counts = sh["type_count"]
        for j in np.flatnonzero(counts[:n]).tolist():
            tlen = min(int(sh["type_len"][j]), L.TYPE_NAME_SIZE)
            name = bytes(sh["type_name"][j])[:tlen].decode("utf-8", "replace")
            if j == L.TYPE_SLOTS - 1 and name == L.OTHER_TYPE:
                complete = False
            out[name] = out.get(name, 0) + int(counts[j])
    return out, complete


def recorded_peers(seg: Segment) -> tuple[set[str], bool]:
    """(peer ids in the peer table, complete): ``complete`` is False when a peer's events may be
    retained without its entry (the table was full, an entry was recycled, no metrics kept)."""
    if not snapshot.metrics_enabled(seg):
        return set(), False
    _, rows = snapshot.peer_rows(seg)
    keys = {bytes(r["key"])[: min(int(r["key_len"]), L.PEER_CAP)].decode("utf-8", "replace") for r in rows}
    complete = snapshot.untracked(seg)[1] == 0 and snapshot.recycled(seg)["peers"] == 0
    return keys, complete


def unrecorded(seg: Segment, filt: EventFilter) -> str | None:
    """Why ``filt`` can select no event of the ring, told without reading a slot (None when it may
    select some): none of its types, or none of its peers, was ever recorded."""
    if filt.types:
        types, complete = recorded_types(seg)
        if complete and not filt.types & types.keys():
            known = ", ".join(sorted(types)) or "none"
            want = ", ".join(map(repr, sorted(filt.types)))
            return f"no event of type {want} was recorded in ring {seg.name!r} (types recorded: {known})"
    if filt.peers and "" not in filt.peers:  # events without a peer have no entry in the table
        peers, complete = recorded_peers(seg)
        if complete and not filt.peers & peers:
            want = ", ".join(map(repr, sorted(filt.peers)))
            some = sorted(peers)
            shown = ", ".join(some[:10]) + (f", ... ({len(some)} in all)" if len(some) > 10 else "") if some else "none"
            return f"no event of peer {want} was recorded in ring {seg.name!r} (peers recorded: {shown})"
    return None
