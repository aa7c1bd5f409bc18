"""The reader path: find, copy and decode records without ever waiting for a writer.

A seqlock-style read, after the Linux perf ring: acquire-copy the slot words, fence, copy the
records, fence, copy the words again. A record is returned only if its word was COMMITTED and
unchanged across the copy, its payload names the same sequence number, its checksum holds and
every length in it is in bounds. Anything else (a writer mid-record, a stopped or dead writer,
a record overwritten during the copy, foreign bytes) is skipped, never waited for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import cast

import numpy as np
import orjson

from shmdiag.core import _native
from shmdiag.core import kinds as K
from shmdiag.core import layout as L
from shmdiag.core.filter import EventFilter, severity_filter, slot_fields, slot_fields_checked, unrecorded
from shmdiag.core.models import DiagnosticEvent, Severity
from shmdiag.core.segment import Segment

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_KEYS = L.CHECKSUM_KEYS
_SEVERITIES = list(Severity)
_CHUNK = 1 << 14  # records copied at once by a full scan
# The C fast paths (core/_native.c: read_newest, decode_slots); False: numpy and Python only, the
# reference tests/test_decode_fast.py compares them with
_NATIVE = True
Accept = Callable[[DiagnosticEvent], bool]
_LENS_WORD, _LENS_SHIFT = divmod(L.offset(L.SLOT, "lens"), 8)
_LENS_SHIFT *= 8
assert _LENS_SHIFT + 40 <= 64  # the five length bytes sit in one word


def ns_to_datetime(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


def datetime_to_ns(ts: datetime) -> int:
    if not isinstance(ts, datetime):
        raise TypeError(f"timestamp must be a datetime, not {type(ts).__name__}")
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError("timestamp must be timezone-aware (for example datetime.now(timezone.utc))")
    ns = (ts - _EPOCH) // timedelta(microseconds=1) * 1000
    if not -(1 << 63) < ns < 1 << 63:
        raise ValueError(f"timestamp {ts.isoformat()} is outside 1677-09-21..2262-04-11 (int64 nanoseconds)")
    return ns


def retained_slots(seg: Segment, min_severity: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Slot indices of retained records at or above ``min_severity``, with their slot words.

    Retained: committed, in the current era (seq >= base), claimed (seq < head) and in the slot
    its sequence number maps to. Validated here because the words are untrusted input.
    """
    head, base = seg.era()
    seg.native.fence()
    w = seg.slots["w"].copy()
    seq = L.w_seq(w)
    sev = L.w_severity(w)
    ok = (w != 0) & (L.w_state(w) == L.ST_COMMITTED) & (seq >= base) & (seq < head) & (sev <= 4)
    ok &= seq % np.uint64(seg.capacity) == np.arange(seg.capacity, dtype=np.uint64)
    if min_severity > 0:
        ok &= sev >= min_severity
    idx = np.flatnonzero(ok)
    return idx, w[idx]


def newest(idx: np.ndarray, w: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``limit`` highest-sequence entries (all if limit <= 0), oldest first."""
    seq = L.w_seq(w)
    if 0 < limit < len(idx):
        top = np.argpartition(seq, len(seq) - limit)[len(seq) - limit:]
        idx, w, seq = idx[top], w[top], seq[top]
    order = np.argsort(seq, kind="stable")
    return idx[order], w[order]


def seq_words(seg: Segment, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Slot positions of sequence numbers [lo, hi) and a copy of their slot words (read after a
    fence). A slice of the slot array where the range does not wrap round the ring."""
    cap = seg.capacity
    a = lo % cap
    seg.native.fence()
    if a + (hi - lo) <= cap:
        return np.arange(a, a + hi - lo, dtype=np.intp), seg.slots["w"][a: a + hi - lo].copy()
    pos = (np.arange(lo, hi, dtype=np.uint64) % np.uint64(cap)).astype(np.intp)
    return pos, seg.slots["w"][pos]


def copy_records(seg: Segment, idx: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Copy the records at ``idx`` whose words still equal ``w``; return them and a valid mask."""
    words = seg.slot_words[idx]    # fancy indexing copies, padding included
    seg.native.fence()
    w_after = seg.slots["w"][idx]
    recs = words.view(L.SLOT).reshape(len(idx))
    # The word copied with the record must be the one seen before and after, too: a writer that
    # took the slot and put it back (a stale run, see core/_native.c) leaves the rest untouched.
    valid = (w_after == w) & (recs["w"] == w) & (recs["severity"] == L.w_severity(w))
    # integer arithmetic wraps mod 2**64, as the writer's sum; einsum is faster than matmul here
    valid &= np.einsum("ij,j->i", words, _KEYS) == recs["checksum"]
    # The five lengths are bytes of one word: shifts are cheaper than a (n, 5) field copy.
    lw = words[:, _LENS_WORD] >> np.uint64(_LENS_SHIFT)
    lens = [(lw >> np.uint64(8 * k)) & np.uint64(0xFF) for k in range(5)]
    valid &= (lens[0] <= L.TYPE_CAP) & (lens[1] <= L.PEER_CAP) & (sum(lens) <= L.TEXT_SIZE)
    valid &= recs["kind"] <= L.KIND_MAX
    return recs, valid


def newest_events(seg: Segment, n: int, min_severity: int = 0, accept: Accept | None = None,
                  below: int | None = None, filt: EventFilter | None = None, *,
                  as_records: bool = False) -> list[DiagnosticEvent]:
    """The ``n`` newest retained events at or above ``min_severity`` that ``filt`` selects and
    ``accept`` takes, with sequence numbers below ``below`` (the head by default), oldest first.

    Looks at the slots of the newest sequence numbers first, widening the window, so asking for
    a few events costs the same on a ring of a thousand or a million. The filter is applied with
    numpy on the slot words and the records' fields before anything is decoded (core/filter.py);
    only ``grep`` and ``accept`` see decoded events, of what the rest selected. A record that
    fails its checks (being rewritten, damaged) is skipped and the search goes further back, so
    the answer holds ``n`` events whenever ``n`` intact ones are retained. Correct because a slot
    outside the window [lo, hi) can only hold a sequence number below lo (or a foreign one, refused).

    The window stops at head - capacity; a record older than that is still retained when the
    later sequence numbers of its slot were never written (the unused end of a run), so a
    last full scan finds those: this and :func:`retained_slots` agree on what is retained.
    """
    if filt is None:
        filt = severity_filter(min_severity)
    elif min_severity > filt.min_severity:
        filt = dataclasses.replace(filt, min_severity=min_severity)
    head, base = seg.era()
    hi = head if below is None else max(base, min(below, head))
    floor = max(base, head - seg.capacity)
    if _NATIVE and accept is None and filt.severity_only and n > 0:
        # The common case in C (core/_native.c read_newest): the same checks as look() and
        # copy_records, slot by slot, newest first. It looks at [floor, hi) only; when that holds
        # fewer than n events and older ones may be retained, the numpy path below answers.
        raw = seg.native.read_newest(n, filt.min_severity, hi, floor, K.KIND_MAX)
        if len(raw) == n * L.SLOT_SIZE or floor <= base:
            if as_records:
                return np.frombuffer(raw, dtype=L.SLOT).copy()
            return _decode_raw(seg, raw)
    parts: list[np.ndarray] = []  # record arrays, newest part first (no per-event check left)
    found: list[DiagnosticEvent] = []  # decoded, newest first (grep or accept)
    have = 0
    per_event = filt.grep is not None or accept is not None

    def take(recs: np.ndarray) -> bool:
        nonlocal have
        recs = recs[filt.records(recs)]
        if not per_event:
            part = recs[max(0, len(recs) - (n - have)):]
            parts.append(part)
            have += len(part)
            return have == n
        for e in reversed(decode_records(seg, recs)):  # newest first
            if filt.greps(e) and (accept is None or accept(e)):
                found.append(e)
                have += 1
                if have == n:
                    return True
        return False

    def look(pos: np.ndarray, w: np.ndarray) -> np.ndarray:
        """The records at ``pos`` (words ``w``) that the filter's fields select, copied and checked."""
        sel = np.flatnonzero(slot_fields(seg, pos, w, filt))  # the kind byte at least: no continuation
        pos, w = pos[sel], w[sel]
        recs, valid = copy_records(seg, pos, w)
        return recs[valid]

    k = min(max(4 * n, 256), 1 << 16)
    while hi > floor and have < n:
        lo = max(floor, hi - k)
        seqs = np.arange(lo, hi, dtype=np.uint64)
        pos, w = seq_words(seg, lo, hi)
        sev = L.w_severity(w)
        ok = (w != 0) & (L.w_seq(w) == seqs) & (L.w_state(w) == L.ST_COMMITTED) & (sev <= 4)
        ok &= sev >= filt.min_severity
        idx = np.flatnonzero(ok)
        if take(look(pos[idx], w[idx])):
            break
        hi, k = lo, min(k * 4, 1 << 20)
    if have < n and floor > base:
        idx, w = retained_slots(seg, filt.min_severity)
        older = L.w_seq(w) < min(floor, hi)
        idx, w = newest(idx[older], w[older], 0)
        for stop in range(len(idx), 0, -_CHUNK):  # newest chunk first
            a = max(0, stop - _CHUNK)
            if take(look(idx[a: stop], w[a: stop])):
                break
    if per_event:
        found.reverse()
        return found
    recs = np.concatenate(parts[::-1]) if parts else np.zeros(0, dtype=L.SLOT)
    return recs if as_records else decode_records(seg, recs)  # type: ignore[return-value]


def newest_records(seg: Segment, n: int, filt: EventFilter | None = None, below: int | None = None) -> np.ndarray:
    """:func:`newest_events` without the decoding (and without ``grep``): the records, a SLOT
    array, oldest first. For callers that render many at once (``export.templates``)."""
    if filt is not None and filt.grep is not None:
        raise ValueError("newest_records cannot grep: it decodes nothing")
    return newest_events(seg, n, 0, None, below, filt, as_records=True)  # type: ignore[return-value]


def read_events(seg: Segment, limit: int, min_severity: int, filt: EventFilter | None = None) -> list[DiagnosticEvent]:
    """Most recent ``limit`` retained events at or above ``min_severity`` that ``filt`` selects,
    oldest first; ``limit <= 0``: all of them."""
    if filt is not None and unrecorded(seg, filt) is not None:
        return []  # a type or peer never recorded: known without reading a slot
    if limit > 0:
        return newest_events(seg, limit, min_severity, filt=filt)
    if filt is None:
        filt = severity_filter(min_severity)
    elif min_severity > filt.min_severity:
        filt = dataclasses.replace(filt, min_severity=min_severity)
    idx, w = newest(*retained_slots(seg, filt.min_severity), 0)
    out: list[DiagnosticEvent] = []
    for a in range(0, len(idx), _CHUNK):
        pos, ws = idx[a: a + _CHUNK], w[a: a + _CHUNK]
        sel = np.flatnonzero(slot_fields(seg, pos, ws, filt))
        recs, valid = copy_records(seg, pos[sel], ws[sel])
        recs = recs[valid]
        events = decode_records(seg, recs[filt.records(recs)])
        out.extend(events if filt.grep is None else [e for e in events if filt.greps(e)])
    return out


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


_BAD_JSON = object()


def _load_json(raw: bytes) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:  # cannot happen for what the writer stores; never trust it
        return _BAD_JSON


def _getter(f: K.Field) -> Callable[[list[bytes], int, int], object]:
    """How decode() reads field ``f`` from a record's texts, value and flags (core/kinds.py)."""
    if f.is_text:
        i = f.text_index
        if f.json:
            return lambda parts, value, flags: _load_json(parts[i])
        return lambda parts, value, flags: parts[i].decode("utf-8", "replace")
    if f.stored == K.VALUE:
        conv = f.convert
        return (lambda parts, value, flags: value) if conv is None else (lambda parts, value, flags: conv(value))
    bit, words = f.flag, f.words
    return lambda parts, value, flags: words[1] if flags & bit else words[0]


# per kind code: (kind, [(field name, presence flag, getter)])
_DECODERS = {k.code: (k, [(f.name, f.when, _getter(f)) for f in k.fields]) for k in K.KINDS}
_GENERIC = _DECODERS[K.KIND_EVENT]  # copy_records refuses other codes; decode() reads them as events


More = tuple[bytes, bytes, bytes]  # what an event's continuation slots hold of f1, f2, f3


def _copy_conts(seg: Segment, seqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Copy the slots of ``seqs`` as continuation slots (layout.CONT), as copy_records copies
    records; valid: the word said ST_CONT of that very seq before and after, the copy holds the
    same word, the checksum holds and the kind byte is KIND_CONTINUATION."""
    pos = (seqs % np.uint64(seg.capacity)).astype(np.intp)
    seg.native.fence()
    w = seg.slots["w"][pos]
    seg.native.fence()
    words = seg.slot_words[pos]
    seg.native.fence()
    w_after = seg.slots["w"][pos]
    recs = words.view(L.CONT).reshape(len(pos))
    valid = (w != 0) & (L.w_seq(w) == seqs) & (L.w_state(w) == L.ST_CONT) & (w_after == w) & (recs["w"] == w)
    valid &= words @ _KEYS == recs["checksum"]
    valid &= recs["kind"] == L.KIND_CONTINUATION
    return recs, valid


def continuations(seg: Segment, recs: np.ndarray, valid: np.ndarray | None = None) -> dict[int, More | None]:
    """For each record of ``recs`` (validated records, from copy_records; only those where
    ``valid`` says so) that says F_CONTINUED: the rest of its f1, f2, f3 from its continuation
    slots, or None when any of them is gone (overwritten since, being rewritten, never
    published by a writer that died) or fails a check: the event then reads from its first slot
    alone, truncated. Keyed by row. Two gathers: every first continuation (which says how many
    follow), then the others; a continuation is taken only if it names this record's sequence
    number, its own index and the same count and lengths as the first."""
    flags = recs["flags"] & np.uint8(L.F_CONTINUED)
    sel = flags != 0 if valid is None else (flags != 0) & valid
    rows = np.flatnonzero(sel)
    if not len(rows):
        return {}
    out: dict[int, More | None] = {int(r): None for r in rows.tolist()}
    first = L.w_seq(recs["w"][rows])
    c1, ok1 = _copy_conts(seg, first + np.uint64(1))
    count = c1["count"].astype(np.int64)
    ok1 &= (c1["first"] == first) & (c1["index"] == 1) & (count >= 1) & (count < L.EVENT_SLOTS_MAX)
    more = c1["more"].astype(np.int64)
    ok1 &= more.sum(axis=1) <= count * L.CONT_TEXT
    keep = np.flatnonzero(ok1)
    if not len(keep):
        return out
    n = count[keep]
    owner = np.repeat(keep, n)                        # position in rows, per continuation
    k = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n) + 1   # 1..count per event
    seqs = first[owner] + k.astype(np.uint64)
    cs, ok = _copy_conts(seg, seqs)
    ok &= (cs["first"] == first[owner]) & (cs["index"] == k) & (cs["count"] == count[owner])
    ok &= (cs["more"] == c1["more"][owner]).all(axis=1)
    bad = np.zeros(len(rows), dtype=bool)
    bad[owner[~ok]] = True
    texts = cs["text"]
    start = 0
    for j, m in zip(keep.tolist(), n.tolist(), strict=True):
        if not bad[j]:
            blob = texts[start: start + m].tobytes()
            a, b, c = (int(x) for x in more[j])
            out[int(rows[j])] = (blob[:a], blob[a: a + b], blob[a + b: a + b + c])
        start += m
    return out


def decode_records(seg: Segment, recs: np.ndarray) -> list[DiagnosticEvent]:
    """Decode validated records (from copy_records), events of several slots whole (their
    continuations read now: see :func:`continuations`)."""
    return decode_many(recs, continuations(seg, recs))


def decode(rec: np.void, more: More | None = None) -> DiagnosticEvent:
    """Turn one validated record into an event, rendering its text now, not at write time, as
    its kind's entry in core/kinds.py says. A record that says F_CONTINUED needs ``more``, what
    its continuation slots hold (:func:`continuations`); without it the event is its first
    slot's text alone, marked truncated."""
    return _decode_row([int(x) for x in rec["lens"]], rec["text"].tobytes(), int(rec["kind"]), int(rec["flags"]),
                       int(rec["value"]), int(rec["severity"]), int(rec["ts_ns"]), int(rec["pid"]),
                       int(L.w_seq(rec["w"])), more)


def decode_many(recs: np.ndarray, more: dict[int, More | None] | None = None) -> list[DiagnosticEvent]:
    """:func:`decode` of every record of a SLOT array, its columns read once for all of them
    (a numpy scalar's field access costs more than the decoding itself); ``more``: row ->
    continuation text (:func:`continuations`; :func:`decode_records` reads it).

    Decoded in C (``_native.decode_slots``, from the table :func:`_native_table` takes from
    core/kinds.py); :func:`decode_many_py` is the same in Python. A row with continuation text
    takes :func:`_decode_row`."""
    if not _NATIVE:
        return decode_many_py(recs, more)
    if not len(recs):
        return []
    out: list[DiagnosticEvent] = _native.decode_slots(np.ascontiguousarray(recs))
    if more:
        for i, m in more.items():
            if m is not None:
                r = recs[i]
                out[i] = _decode_row([int(x) for x in r["lens"]], r["text"].tobytes(), int(r["kind"]), int(r["flags"]),
                                     int(r["value"]), int(r["severity"]), int(r["ts_ns"]), int(r["pid"]),
                                     int(L.w_seq(r["w"])), m)
    return out


def _decode_raw(seg: Segment, raw: bytes) -> list[DiagnosticEvent]:
    """:func:`decode_records` of validated records given as bytes (``read_newest``): decoded in
    C; only records that say F_CONTINUED become a SLOT array, for :func:`continuations`."""
    out: list[DiagnosticEvent | None] = _native.decode_slots(raw, True)
    if None in out:
        recs = np.frombuffer(raw, dtype=L.SLOT)
        rows = [i for i, e in enumerate(out) if e is None]
        sub = recs[rows]
        for i, e in zip(rows, decode_records(seg, sub), strict=True):
            out[i] = e
    return cast("list[DiagnosticEvent]", out)


def decode_many_py(recs: np.ndarray, more: dict[int, More | None] | None = None) -> list[DiagnosticEvent]:
    """:func:`decode_many` in Python (the generated per-kind decoders): the reference the native
    decoder is tested against (tests/test_decode_fast.py), with :func:`_decode_row`."""
    n = len(recs)
    if n == 0:
        return []
    text = recs["text"].tobytes()
    ts_size = L.TEXT_SIZE
    offs = np.empty((n, 6), dtype=np.int64)
    offs[:, 0] = np.arange(0, n * ts_size, ts_size, dtype=np.int64)
    np.cumsum(recs["lens"], axis=1, dtype=np.int64, out=offs[:, 1:])
    offs[:, 1:] += offs[:, :1]
    us = recs["ts_ns"] // 1000
    if n and int(us.min()) >= 0 and int(us.max()) < _FTS_MAX_US:
        # exact: below 2**32 s a float's rounding error is under 0.25 us, and fromtimestamp rounds
        # to the nearest us (tests/test_decode_fast.py compares with _EPOCH + timedelta)
        stamps = [_fts(u / 1e6, _UTC) for u in us.tolist()]
    else:
        stamps = [_EPOCH + timedelta(0, 0, u) for u in us.tolist()]
    seqs = L.w_seq(recs["w"]).tolist()
    cols = zip(offs.tolist(), recs["kind"].tolist(), recs["flags"].tolist(), recs["value"].tolist(),
               recs["severity"].tolist(), stamps, recs["pid"].tolist(), seqs, strict=True)
    fast = _FAST
    out = [fast[kind](text, o, flags, value, sev, t, pid, seq)
           for o, kind, flags, value, sev, t, pid, seq in cols]
    if more:
        lens = recs["lens"]
        ts = recs["ts_ns"]
        for i, m in more.items():
            if m is not None:
                e = out[i]
                out[i] = _decode_row([int(x) for x in lens[i]], text[i * ts_size: (i + 1) * ts_size],
                                     int(recs["kind"][i]), int(recs["flags"][i]), int(recs["value"][i]),
                                     int(recs["severity"][i]), int(ts[i]), cast(int, e.pid), cast(int, e.seq), m)
    return out


_UTC = timezone.utc
_fts = datetime.fromtimestamp
_FTS_MAX_US = (1 << 32) * 1_000_000


def _fast_decoder(kind: K.Kind) -> Callable[..., DiagnosticEvent]:
    """Generate ``kind``'s row decoder: ``(text, offsets, flags, value, sev, timestamp, pid, seq)``
    -> the same event :func:`_decode_row` builds without continuation text (a continued record
    reads truncated). ``offsets``: the row's start in ``text`` and the ends of its five text
    fields. The message is the kind's template as an f-string (the same ``format(value, spec)``
    calls as ``str.format``)."""
    ns: dict[str, object] = {"_DE": DiagnosticEvent, "_SEV": _SEVERITIES, "_load_json": _load_json,
                             "_BAD": _BAD_JSON}
    body = ["    b = text"]
    checks_json = []
    for f in kind.fields:
        v = f"v_{f.name}"
        if f.is_text:
            i = f.text_index
            raw = f"b[o[{i}]:o[{i + 1}]]"
            expr = f"_load_json({raw})" if f.json else f"{raw}.decode('utf-8', 'replace')"
            if f.json:
                checks_json.append(v)
        elif f.stored == K.VALUE:
            if f.convert is None:
                expr = "value"
            else:
                ns[f"c_{f.name}"] = f.convert
                expr = f"c_{f.name}(value)"
        else:
            ns[f"w0_{f.name}"], ns[f"w1_{f.name}"] = f.words
            expr = f"w1_{f.name} if flags & {f.flag} else w0_{f.name}"
        if f.when:
            expr = f"({expr}) if flags & {f.when} else None"
        body.append(f"    {v} = {expr}")
    body.append(f"    trunc = (flags & {L.F_TRUNCATED | L.F_CONTINUED}) != 0")
    for v in checks_json:
        body.append(f"    if {v} is _BAD:\n        {v} = None\n        trunc = True")
    tpl = ""
    for lit, name, spec in kind.pieces:
        tpl += lit.replace("{", "{{").replace("}", "}}")
        if name is not None:
            if "{" in spec or "}" in spec:
                raise ValueError(f"kind {kind.name!r}: nested format specs are not supported")
            tpl += "{v_" + name + (":" + spec if spec else "") + "}"
    message = "f" + repr(tpl)
    etype = repr(kind.event_type) if kind.event_type else "v_event_type"
    meta = ("v_metadata" if kind.metadata is None
            else "{" + ", ".join(f"{k!r}: v_{k}" for k in kind.metadata) + "}")
    error = f"v_{kind.error}" if kind.error else "None"
    body.append(f"    return _DE({etype}, {message}, _SEV[sev], b[o[1]:o[2]].decode('utf-8', 'replace'), "
                f"{meta}, {error}, t, pid, seq, trunc)")
    src = "def dec(text, o, flags, value, sev, t, pid, seq):\n" + "\n".join(body) + "\n"
    exec(compile(src, f"<shmdiag decoder {kind.name}>", "exec"), ns)  # noqa: S102 (our own table)
    return cast("Callable[..., DiagnosticEvent]", ns["dec"])


# per kind code: its generated decoder; codes that are no kind read as events (as decode() does)
_FAST: list[Callable[..., DiagnosticEvent]] = [_fast_decoder(K.EVENT)] * 256
for _k in K.KINDS:
    _FAST[_k.code] = _fast_decoder(_k)


_EVENT_ATTRS = ("event_type", "message", "severity", "peer_id", "metadata", "error", "timestamp", "pid", "seq",
                "truncated")
_SRC_VALUE, _SRC_FLAGS = 5, 6


def _native_table() -> tuple:
    """What ``_native.decode_slots`` needs to decode records as :func:`_decode_row` does: the
    event class and its field names, the severities, the JSON loader, slot offsets (layout.py)
    and, per kind code (core/kinds.py; codes that are no kind read as events), its event type,
    fields ``(source, when, flag, json, convert, word if clear, word if set)`` (source: text
    field index, 5 value, 6 flag), template pieces ``(literal, field index or -1, spec)``,
    metadata ``((key, field index), ...)`` or None, and the indices of the fields that are the
    event type, the metadata and the error (-1: none)."""
    names = tuple(f.name for f in dataclasses.fields(DiagnosticEvent))
    if names != _EVENT_ATTRS or hasattr(DiagnosticEvent, "__post_init__") or "__slots__" in vars(DiagnosticEvent):
        raise AssertionError("DiagnosticEvent changed: update reader._native_table and decode_slot in _native.c")

    def kind_entry(k: K.Kind) -> tuple:
        pos = {f.name: i for i, f in enumerate(k.fields)}
        fields = []
        for f in k.fields:
            src = f.text_index if f.is_text else _SRC_VALUE if f.stored == K.VALUE else _SRC_FLAGS
            fields.append((src, f.when, f.flag, f.json, f.convert, *f.words))
        pieces = []
        for lit, name, spec in k.pieces:
            if "{" in spec or "}" in spec:
                raise ValueError(f"kind {k.name!r}: nested format specs are not supported")
            pieces.append((lit, -1 if name is None else pos[name], spec))
        meta = None if k.metadata is None else tuple((key, pos[key]) for key in k.metadata)
        return (k.event_type, tuple(fields), tuple(pieces), meta, pos.get("event_type", -1) if k.event_type is None
                else -1, pos.get("metadata", -1) if k.metadata is None else -1,
                -1 if k.error is None else pos[k.error])

    entries = {k.code: kind_entry(k) for k in K.KINDS}
    offs = (L.SLOT_SIZE, L.TEXT_SIZE, *(L.offset(L.SLOT, f) for f in ("w", "ts_ns", "value", "lens", "severity", "kind",
                                                                       "flags", "pid", "text")))
    return (DiagnosticEvent, _EVENT_ATTRS, tuple(_SEVERITIES), _load_json, _BAD_JSON, offs, L.W_SEQ_SHIFT,
            L.F_TRUNCATED | L.F_CONTINUED, L.F_CONTINUED,
            tuple(entries.get(code, entries[K.KIND_EVENT]) for code in range(256)))


_native.set_decoder(_native_table())


def _decode_row(lens: list[int], text: bytes, code: int, flags: int, value: int, sev: int, ts_ns: int, pid: int,
                seq: int, more: More | None = None) -> DiagnosticEvent:
    parts, pos = [], 0
    for n in lens:
        parts.append(text[pos: pos + n])
        pos += n
    kind, getters = _DECODERS.get(code, _GENERIC)
    truncated = bool(flags & L.F_TRUNCATED)
    if flags & L.F_CONTINUED:
        if more is None:
            truncated = True
        else:
            parts[2:] = [parts[2] + more[0], parts[3] + more[1], parts[4] + more[2]]
    values: dict[str, object] = {}
    for name, when, get in getters:
        v = None if when and not flags & when else get(parts, value, flags)
        if v is _BAD_JSON:
            v, truncated = None, True
        values[name] = v
    return DiagnosticEvent(
        event_type=kind.event_type or cast(str, values["event_type"]), message=kind.message(values),
        severity=_SEVERITIES[sev], peer_id=_text(parts[1]),
        metadata=cast(dict, values["metadata"]) if kind.metadata is None else {k: values[k] for k in kind.metadata},
        error=cast("str | None", values[kind.error]) if kind.error else None,
        timestamp=_EPOCH + timedelta(0, 0, ts_ns // 1000), pid=pid, seq=seq,
        truncated=truncated,
    )


def scan_retained(seg: Segment) -> int:
    """How many records a scan of every slot word finds retained. Touches the whole slot area:
    for checks and tests only; the read models take ``core.snapshot.counters(seg).retained``,
    which reads the writers' counters alone."""
    return len(retained_slots(seg)[0])


# -- export: a snapshot of what is retained, then copies of it chunk by chunk ----------------

def export_snapshot(seg: Segment, min_severity: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Slot indices and slot words of every retained record (at or above ``min_severity``),
    oldest first (by sequence number): the records an export will write. 16 bytes per record;
    the records themselves are copied later, chunk by chunk (:func:`export_chunks`)."""
    return newest(*retained_slots(seg, min_severity), 0)


def export_chunks(seg: Segment, idx: np.ndarray, w: np.ndarray, chunk: int,
                  filt: EventFilter | None = None) -> Iterator[tuple[np.ndarray, int, int]]:
    """Copy the snapshot ``(idx, w)`` ``chunk`` records at a time, in its order, keeping the
    events ``filt`` selects (tested on the records' fields in the ring first, so what it drops is
    never copied; continuation slots are never events).

    Yields ``(raw, skipped, done)``: ``raw`` is a C-contiguous ``(k, SLOT_SIZE)`` uint8 array of
    the records that passed every check of :func:`copy_records`; ``skipped`` how many of this
    chunk's records did not (overwritten by a newer record since the snapshot, or being rewritten
    during the copy: they are gone, and never waited for); ``done`` the snapshot entries handled
    so far. A record is only ever returned if its slot word still equals the snapshot's, so no
    record is returned twice and every one is the event the snapshot named.
    """
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    if filt is None:
        filt = EventFilter()
    total = len(idx)
    for lo in range(0, total, chunk):
        hi = min(lo + chunk, total)
        pos, ws = idx[lo:hi], w[lo:hi]
        ok, steady = slot_fields_checked(seg, pos, ws, filt)
        gone = int(np.count_nonzero(~steady))
        sel = np.flatnonzero(ok & steady)
        recs, valid = copy_records(seg, pos[sel], ws[sel])
        gone += len(sel) - int(np.count_nonzero(valid))
        keep = valid & filt.records(recs)
        if filt.grep is not None and keep.any():
            ki = np.flatnonzero(keep)
            keep[ki] = [filt.greps(e) for e in decode_records(seg, recs[ki])]
        raw = recs.view(np.uint8).reshape(len(sel), L.SLOT_SIZE)
        if not keep.all():
            raw = raw[keep]
        yield raw, gone, hi
