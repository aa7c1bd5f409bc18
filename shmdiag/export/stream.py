"""JSON export through orjson: quotes, newlines and any Unicode round-trip; nothing is dropped.

``write_export`` streams an export (json or ndjson) a chunk of records at a time, rendered with
numpy (over 1,000,000 events/s); ``event_to_dict``/``export_json`` are the per-event path, kept
as the reference the fast path is tested against."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from datetime import datetime, timezone
from typing import BinaryIO

import numpy as np
import orjson

from shmdiag.core import layout as L

from shmdiag.core import reader as _reader
from shmdiag.core.models import DiagnosticEvent, DiagnosticStats, HealthStatus, Severity

_OPTS = orjson.OPT_UTC_Z

Progress = Callable[[int, int], None]  # progress(done, total)


def event_to_dict(e: DiagnosticEvent) -> dict:
    return {
        "timestamp": e.timestamp,
        "event_type": e.event_type,
        "peer_id": e.peer_id,
        "message": e.message,
        "severity": str(e.severity),
        "metadata": e.metadata,
        "error": e.error,
        "pid": e.pid,
        "seq": e.seq,
        "truncated": e.truncated,
    }


def stats_to_dict(s: DiagnosticStats) -> dict:
    d = dataclasses.asdict(s)
    d["events_by_severity"] = {str(k): v for k, v in s.events_by_severity.items()}
    return d


def health_to_dict(h: HealthStatus) -> dict:
    return dataclasses.asdict(h)


def export_json(name: str, stats: DiagnosticStats, health: HealthStatus, events: list[DiagnosticEvent]) -> bytes:
    return orjson.dumps(
        {
            "name": name,
            "exported_at": datetime.now(timezone.utc),
            "stats": stats_to_dict(stats),
            "health": health_to_dict(health),
            "events": [event_to_dict(e) for e in events],
        },
        option=_OPTS,
    )


# -- streaming export ---------------------------------------------------------------------------
#
# Events are rendered a chunk of records at a time with numpy, never one Python object per
# event. An event is a sequence of pieces: literal JSON text (keys, punctuation) and "cells",
# each made for all rows of the chunk at once: timestamps (date and time-of-day tables),
# field text gathered from the records' text areas, decimal digits, words picked from small
# tables (severity, direction, true/false). Row lengths give every row its place in the
# output buffer; each piece is then written for every row by one numpy scatter of w-byte
# items (see render_events). Rows are grouped by kind (and by whether an error is present),
# since each kind has its own sequence of pieces; the groups' rows keep their places, so the
# output is in sequence order.
#
# Text is copied as is where every byte is printable ASCII other than '"' and '\'; any other
# field (control characters, quotes, backslashes, non-ASCII, invalid UTF-8, NUL) is decoded as
# decode() does (invalid UTF-8 becomes U+FFFD) and escaped by orjson, in Python, for that
# field only (remembered: the same texts recur). Metadata (JSON stored by record_event) is
# parsed and re-serialised by orjson per event, as the per-event path does, so a foreign record
# can never put invalid JSON into an export. Latency figures (float formatting) are also made
# per event. The result means exactly what ``orjson.dumps(event_to_dict(decode(record)),
# option=OPT_UTC_Z)`` means for every record (tests/test_export_fast.py compares the two,
# parsed); only insignificant details such as float spelling may differ.

CHUNK = 16384  # records per chunk: a few MB of working memory, whatever the ring's size

_TEXT_OFF = L.SLOT.fields["text"][1]
_U8 = np.uint8
_ARANGE = np.arange(256, dtype=np.intp)

# Bytes that make a text field take the escaping path. 0 is left out: it is what the gather
# leaves beyond a field's end; a NUL inside a field is caught by counting non-zero bytes.
_SPECIAL = np.zeros(256, dtype=bool)
_SPECIAL[1:0x20] = True
_SPECIAL[[0x22, 0x5C]] = True
_SPECIAL[0x80:] = True
_POW10 = [10 ** k for k in range(21)]


def _v(block: np.ndarray) -> np.ndarray:
    """A C-contiguous (m, w) uint8 block as (m,) items of w bytes (copied, indexed, assigned as one)."""
    return block.view(f"V{block.shape[1]}")[:, 0]


def _u(items: np.ndarray, w: int) -> np.ndarray:
    return items.view(_U8).reshape(len(items), w)


def _window(buf: np.ndarray, w: int, stride: int = 1, offset: int = 0, count: int | None = None) -> np.ndarray:
    """Items of ``w`` bytes of the 1-d uint8 ``buf``: one starting at every ``stride``-th byte from
    ``offset`` (stride 1: every window of w bytes). A view: assigning to it writes ``buf``."""
    if count is None:
        count = (len(buf) - offset - w) // stride + 1
    return np.ndarray((count,), dtype=f"V{w}", buffer=buf, offset=offset, strides=(stride,))


def _cols(out: np.ndarray, col: int, w: int) -> np.ndarray:
    """Columns [col, col + w) of the C-contiguous (n, W) uint8 ``out``, one item per row."""
    return _window(out.reshape(-1), w, out.shape[1], col, out.shape[0])


def _strings(words: list[bytes]) -> np.ndarray:
    w = max(1, max(map(len, words)))
    return np.array(words, dtype=f"S{w}").view(f"V{w}")


_DIGITS = {k: _strings([b"%0*d" % (k, i) for i in range(10 ** k)]) for k in (1, 2, 3)}  # "0".."999"


class _Table:
    """Words picked per row by an index: severity names, directions, booleans."""

    def __init__(self, words: list[bytes]) -> None:
        self.items = _strings(words)
        self.width = self.items.dtype.itemsize
        self.lens = np.array([len(x) for x in words], dtype=np.intp)

    def __call__(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _u(self.items.take(index), self.width), self.lens.take(index)


_SEV = _Table([str(s).encode() for s in Severity])
_DIR = _Table([b"inbound", b"outbound"])
_BOOL = _Table([b"false", b"true"])

# A "cell" is one variable piece of every row of a group: (block, lens), block a C-contiguous
# (m, w) uint8 array whose row i holds its text in its first lens[i] bytes (what follows is
# never read).


def _cell_of(values: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Per-row byte strings as a cell."""
    a = np.array(values, dtype=bytes)
    return _u(a.view(f"V{a.dtype.itemsize}"), a.dtype.itemsize), np.fromiter(map(len, values), np.intp, len(values))


def _put_digits(out: np.ndarray, col: int, width: int, v: np.ndarray) -> None:
    """Decimal digits of non-negative ``v`` (each < 10**width) into columns [col, col + width)
    of every row of ``out``, zero-filled on the left."""
    end = col + width
    while end - col >= 3:
        q = v // 1000
        _cols(out, end - 3, 3)[...] = _DIGITS[3].take(v - q * 1000)
        v = q
        end -= 3
    if end > col:
        _cols(out, col, end - col)[...] = _DIGITS[end - col].take(v)


def _digits(mag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative integers as a cell of decimal digits."""
    m = len(mag)
    top = int(mag.max()) if m else 0
    mag = mag.astype(np.int64 if top < 1 << 63 else np.uint64, copy=False)
    d = len(str(top))
    right = np.empty((m + 1, d), dtype=_U8)  # right-aligned; the spare row lets windows run past the last
    _put_digits(right[:m], 0, d, mag)
    ndig = np.full(m, d, dtype=np.intp)
    if m and d > 1 and int(mag.min()) < _POW10[d - 1]:
        ndig = np.ones(m, dtype=np.intp)
        for k in range(1, d):
            ndig += mag >= _POW10[k]
        # left-align: row i starts d - ndig[i] bytes into its right-aligned digits
        start = np.arange(m, dtype=np.intp) * d + (d - ndig)
        return _u(_window(right.reshape(-1), d)[start], d), ndig
    return right[:m], ndig


def _signed(v: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """int64 values as cells: [digits], or [sign, digits] when some are negative."""
    neg = v < 0
    if not neg.any():
        return [_digits(v)]
    mag = v.astype(np.uint64)  # two's complement: -x is ~x + 1, INT64_MIN included
    mag = np.where(neg, ~mag + np.uint64(1), mag)
    return [(np.full((len(v), 1), 45, dtype=_U8), neg.astype(np.intp)), _digits(mag)]


_DAY_US = 86_400_000_000


def _civil(days: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Days since 1970-01-01 -> (year, month, day), Howard Hinnant's algorithm."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = np.where(mp < 10, mp + 3, mp - 9)
    return yoe + era * 400 + (month <= 2), month, day


def _dates(days: np.ndarray) -> np.ndarray:
    """'YYYY-MM-DDT' of each day number, as (m, 11) uint8 (years 1677..2262: four digits)."""
    out = np.empty((len(days), 11), dtype=_U8)
    y, mo, d = _civil(days)
    _put_digits(out, 0, 4, y)
    out[:, 4] = out[:, 7] = 45  # "-"
    _put_digits(out, 5, 2, mo)
    _put_digits(out, 8, 2, d)
    out[:, 10] = 84  # "T"
    return out


_HMS: list[np.ndarray] = []


def _hms() -> np.ndarray:
    """'HH:MM:SS.' for every second of a day, as 9-byte items (778 KB, made on first use)."""
    if not _HMS:
        sec = np.arange(86_400, dtype=np.int64)
        t = np.empty((86_400, 9), dtype=_U8)
        _put_digits(t, 0, 2, sec // 3600)
        t[:, 2] = t[:, 5] = 58  # ":"
        _put_digits(t, 3, 2, sec // 60 % 60)
        _put_digits(t, 6, 2, sec % 60)
        t[:, 8] = 46  # "."
        _HMS.append(_v(t))
    return _HMS[0]


def _timestamps(ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int64 nanoseconds as orjson writes a UTC datetime with OPT_UTC_Z, as a cell: microseconds,
    floored as ns_to_datetime does, and no fraction at all when it is zero."""
    n = len(ns)
    us = ns.astype(np.int64) // 1000
    days = us // _DAY_US
    tod = us - days * _DAY_US
    sec = tod // 1_000_000
    frac = tod - sec * 1_000_000
    out = np.empty((n, 27), dtype=_U8)
    lo, hi = int(days.min()), int(days.max())
    if hi - lo < 4096:  # the usual case: a few distinct days, each rendered once
        _cols(out, 0, 11)[...] = _v(_dates(np.arange(lo, hi + 1, dtype=np.int64))).take(days - lo)
    else:
        out[:, :11] = _dates(days)
    _cols(out, 11, 9)[...] = _hms().take(sec)
    _put_digits(out, 20, 6, frac)
    out[:, 26] = 90  # "Z"
    lens = np.full(n, 27, dtype=np.intp)
    zero = frac == 0
    if zero.any():
        out[zero, 19] = 90
        lens[zero] = 20
    return out, lens


class _Escaper(dict):
    """Field bytes -> their JSON string contents (as decode() reads them: invalid UTF-8 becomes
    U+FFFD), remembered: a node repeats the same few texts many times."""

    def __missing__(self, raw: bytes) -> bytes:
        esc = orjson.dumps(raw.decode("utf-8", "replace"))[1:-1]
        if len(self) >= 65_536:  # bounded, whatever the texts
            self.clear()
        self[raw] = esc
        return esc


_ESCAPED = _Escaper()


class _Chunk:
    """One chunk of validated records and the pieces made from it."""

    def __init__(self, raw: np.ndarray) -> None:
        n = len(raw)
        self.n = n
        self.flat = raw.reshape(-1)
        self.buf = memoryview(self.flat)
        self.recs = recs = raw.view(L.SLOT).reshape(n)
        self.lens = lens = recs["lens"].astype(np.intp)
        starts = np.zeros_like(lens)
        np.cumsum(lens[:, :4], axis=1, out=starts[:, 1:])
        starts += (np.arange(n, dtype=np.intp) * L.SLOT_SIZE + _TEXT_OFF)[:, None]
        self.starts = starts  # absolute offset in flat of each of the five text fields
        self.flags = recs["flags"]
        self.trunc = (self.flags & L.F_TRUNCATED) != 0

    def text(self, rows, field: int) -> tuple[np.ndarray, np.ndarray]:
        """Text field ``field`` of ``rows``, JSON-escaped, as a cell."""
        start = self.starts[rows, field]
        length = self.lens[rows, field]
        m = len(start)
        cap = int(length.max()) if m else 0
        if cap == 0:
            return np.zeros((m, 0), dtype=_U8), length
        flat = self.flat
        limit = len(flat) - cap
        over = start > limit  # a window this wide would run past the chunk (its last record only)
        block = _u(_window(flat, cap)[np.minimum(start, limit) if over.any() else start], cap)
        block *= _ARANGE[:cap] < length[:, None]
        for r in np.flatnonzero(over).tolist():
            s, n = int(start[r]), int(length[r])
            block[r] = 0
            block[r, :n] = flat[s: s + n]
        # Bytes that need escaping, or a NUL inside the field (zero bytes are the padding):
        # looked for in the whole block first, per row only if something is there.
        if _SPECIAL[block].any() or np.count_nonzero(block) != int(length.sum()):
            special = _SPECIAL[block].any(axis=1) | (np.count_nonzero(block, axis=1) != length)
            sp = np.flatnonzero(special)
            buf = self.buf
            esc = _ESCAPED
            esc, esc_lens = _cell_of([esc[bytes(buf[s: s + n])] for s, n in zip(start[sp].tolist(), length[sp].tolist())])
            if esc.shape[1] > cap:
                block = np.concatenate([block, np.zeros((m, esc.shape[1] - cap), dtype=_U8)], axis=1)
            block[sp, : esc.shape[1]] = esc
            length = length.copy()
            length[sp] = esc_lens
        return block, length

    def severity(self, rows) -> tuple[np.ndarray, np.ndarray]:
        return _SEV(self.recs["severity"][rows])

    def value(self, rows) -> list[tuple[np.ndarray, np.ndarray]]:
        return _signed(self.recs["value"][rows])


class _Parts:
    """The pieces of one group's rows, in order: literal bytes, or cells."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list = []

    def lit(self, b: bytes) -> None:
        if self.parts and isinstance(self.parts[-1], bytes):
            self.parts[-1] += b
        else:
            self.parts.append(b)

    def add(self, cell: tuple[np.ndarray, np.ndarray]) -> None:
        if cell[0].shape[1]:
            self.parts.append(cell)


def _g_event(c: _Chunk, rows, has_err: bool, k: _Parts) -> None:
    k.add(c.text(rows, 0))
    k.lit(b'","peer_id":"')
    k.add(c.text(rows, 1))
    k.lit(b'","message":"')
    k.add(c.text(rows, 4))
    k.lit(b'","severity":"')
    k.add(c.severity(rows))
    k.lit(b'","metadata":')
    flags = c.flags[rows]
    has_meta = (flags & L.F_HAS_METADATA) != 0
    if has_meta.any():
        where = np.flatnonzero(has_meta)
        metas = [b"null"] * len(flags)
        buf, loads, dumps = c.buf, orjson.loads, orjson.dumps
        starts, lens = c.starts[rows, 2][where].tolist(), c.lens[rows, 2][where].tolist()
        for i, s, n in zip(where.tolist(), starts, lens):
            try:
                metas[i] = dumps(loads(buf[s: s + n]))
            except orjson.JSONDecodeError:  # as decode(): cannot happen for what the writer stores
                c.trunc[np.arange(c.n)[rows][i]] = True
        k.add(_cell_of(metas))
    else:
        k.lit(b"null")
    if has_err:
        k.lit(b',"error":"')
        k.add(c.text(rows, 3))
        k.lit(b'"')
    else:
        k.lit(b',"error":null')


def _g_connect(c: _Chunk, rows, has_err: bool, k: _Parts) -> None:
    addr = c.text(rows, 2)
    k.lit(b'peer_connected","peer_id":"')
    k.add(c.text(rows, 1))
    k.lit(b'","message":"Peer connected: ')
    k.add(addr)
    k.lit(b'","severity":"')
    k.add(c.severity(rows))
    k.lit(b'","metadata":{"address":"')
    k.add(addr)
    k.lit(b'"},"error":null')


def _g_disconnect(c: _Chunk, rows, has_err: bool, k: _Parts) -> None:
    addr, reason = c.text(rows, 2), c.text(rows, 3)
    k.lit(b'peer_disconnected","peer_id":"')
    k.add(c.text(rows, 1))
    k.lit(b'","message":"Peer disconnected: ')
    k.add(addr)
    k.lit(b" (")
    k.add(reason)
    k.lit(b')","severity":"')
    k.add(c.severity(rows))
    k.lit(b'","metadata":{"address":"')
    k.add(addr)
    k.lit(b'","reason":"')
    k.add(reason)
    k.lit(b'"},"error":null')


def _g_message(c: _Chunk, rows, has_err: bool, k: _Parts) -> None:
    mtype = c.text(rows, 2)
    direction = _DIR(((c.flags[rows] & L.F_OUTBOUND) != 0).astype(np.intp))
    size = c.value(rows)
    k.lit(b'message","peer_id":"')
    k.add(c.text(rows, 1))
    k.lit(b'","message":"Message ')
    k.add(direction)
    k.lit(b": ")
    k.add(mtype)
    k.lit(b" (")
    for cell in size:
        k.add(cell)
    k.lit(b' bytes)","severity":"')
    k.add(c.severity(rows))
    k.lit(b'","metadata":{"message_type":"')
    k.add(mtype)
    k.lit(b'","direction":"')
    k.add(direction)
    k.lit(b'","size":')
    for cell in size:
        k.add(cell)
    k.lit(b'},"error":null')


def _g_error(c: _Chunk, rows, has_err: bool, k: _Parts) -> None:
    op = c.text(rows, 2)
    k.lit(b'error","peer_id":"')
    k.add(c.text(rows, 1))
    k.lit(b'","message":"Error in ')
    k.add(op)
    k.lit(b'","severity":"')
    k.add(c.severity(rows))
    k.lit(b'","metadata":{"operation":"')
    k.add(op)
    k.lit(b'"},"error":"')
    k.add(c.text(rows, 3))
    k.lit(b'"')


def _g_latency(c: _Chunk, rows, has_err: bool, k: _Parts) -> None:
    op = c.text(rows, 2)
    seconds = [v / 1e9 for v in c.recs["value"][rows].tolist()]  # as decode(): int(value) / 1e9
    took = _cell_of([b" took %.3f ms" % (s * 1e3) for s in seconds])
    secs = _cell_of(orjson.dumps(seconds)[1:-1].split(b","))
    k.lit(b'latency","peer_id":"')
    k.add(c.text(rows, 1))
    k.lit(b'","message":"')
    k.add(op)
    k.add(took)
    k.lit(b'","severity":"')
    k.add(c.severity(rows))
    k.lit(b'","metadata":{"op":"')
    k.add(op)
    k.lit(b'","seconds":')
    k.add(secs)
    if has_err:
        k.lit(b'},"error":"')
        k.add(c.text(rows, 3))
        k.lit(b'"')
    else:
        k.lit(b'},"error":null')


# by kind; kinds past KIND_LATENCY never get here (copy_records rejects them), and decode()
# renders any other kind as a generic event
_GROUPS = {L.KIND_EVENT: _g_event, L.KIND_CONNECT: _g_connect, L.KIND_DISCONNECT: _g_disconnect,
           L.KIND_MESSAGE: _g_message, L.KIND_ERROR: _g_error, L.KIND_LATENCY: _g_latency}
_ERR_MATTERS = np.zeros(256, dtype=np.intp)
_ERR_MATTERS[[L.KIND_EVENT, L.KIND_LATENCY]] = 1


def _rows_of(cell: tuple[np.ndarray, np.ndarray], rows) -> tuple[np.ndarray, np.ndarray]:
    block, lens = cell
    if isinstance(rows, slice):
        return block[rows], lens[rows]
    return _u(_v(block).take(rows), block.shape[1]), lens.take(rows)


def render_events(raw: np.ndarray, lead: bytes = b"", trail: bytes = b"\n") -> np.ndarray:
    """The JSON objects of validated records ``raw`` ((n, SLOT_SIZE) uint8, for example from
    ``_reader.export_chunks``), in row order, each preceded by ``lead`` and followed by
    ``trail``, as one uint8 array of UTF-8 bytes.

    Every event is the sequence of its pieces: literal JSON text (keys, punctuation) and cells
    (timestamps, field text, digits, words from tables), all made for the whole chunk at once.
    Row lengths give each row's place in the output; then each piece is written for every row
    at once, w bytes per row at that row's running offset. A cell is as wide as its widest row:
    writing it also writes up to w - len bytes past a row's text, which the row's next pieces
    (written after it, the last piece of a row is always a literal) overwrite; for the few rows
    where that would run past the row's end, the cell is written at its exact length instead.
    """
    n = len(raw)
    if n == 0:
        return np.zeros(0, dtype=_U8)
    c = _Chunk(np.ascontiguousarray(raw, dtype=_U8))
    kind = c.recs["kind"].astype(np.intp)
    key = kind * 2 + (_ERR_MATTERS[kind] & ((c.flags & L.F_HAS_ERROR) != 0))
    counts = np.bincount(key)
    groups = []
    for g in np.flatnonzero(counts).tolist():
        rows = slice(None) if counts[g] == n else np.flatnonzero(key == g)
        mid = _Parts()
        _GROUPS.get(g >> 1, _g_event)(c, rows, bool(g & 1), mid)
        groups.append((rows, mid))
    ts = _timestamps(c.recs["ts_ns"])
    pid = _digits(c.recs["pid"])
    seq = _digits(L.w_seq(c.recs["w"]))
    trunc = _BOOL(c.trunc.astype(np.intp))  # after the groups: bad metadata sets it
    rowlen = np.empty(n, dtype=np.intp)
    plans = []
    widest = 0
    for rows, mid in groups:
        k = _Parts()
        k.lit(lead + b'{"timestamp":"')
        k.add(_rows_of(ts, rows))
        k.lit(b'","event_type":"')
        for p in mid.parts:
            k.lit(p) if isinstance(p, bytes) else k.add(p)
        k.lit(b',"pid":')
        k.add(_rows_of(pid, rows))
        k.lit(b',"seq":')
        k.add(_rows_of(seq, rows))
        k.lit(b',"truncated":')
        k.add(_rows_of(trunc, rows))
        k.lit(b"}" + trail)
        total = sum(len(p) for p in k.parts if isinstance(p, bytes))
        for p in k.parts:
            if not isinstance(p, bytes):
                total = total + p[1]
                widest = max(widest, p[0].shape[1])
        rowlen[rows] = total
        plans.append((rows, k.parts))
    ends = np.cumsum(rowlen)
    size = int(ends[-1])
    out = np.empty(size + widest, dtype=_U8)
    for rows, parts in plans:
        end = ends[rows]
        off = end - rowlen[rows]
        tail = sum(len(p) for p in parts if isinstance(p, bytes))  # literal bytes from here to the row's end
        for p in parts:
            if isinstance(p, bytes):
                w = len(p)
                _window(out, w)[off] = np.frombuffer(p, dtype=f"V{w}")
                off += w
                tail -= w
                continue
            block, lens = p
            w = block.shape[1]
            items = _v(block)
            if w <= tail:  # what it writes past a row's text is inside that row, whatever the lengths
                _window(out, w)[off] = items
                off += lens
                continue
            past = off + w > end
            if not past.any():
                _window(out, w)[off] = items
            else:  # these rows get their exact length, one length at a time
                ok = np.flatnonzero(~past)
                _window(out, w)[off.take(ok)] = items.take(ok)
                bad = np.flatnonzero(past)
                bad_lens = lens.take(bad)
                for ln in np.unique(bad_lens).tolist():
                    if ln:
                        r = bad[bad_lens == ln]
                        _window(out, ln)[off.take(r)] = _window(block.reshape(-1), ln, w, 0, len(block))[r]
            off += lens
    return out[:size]


class ExportCount(int):
    """Events written by an export (the int value), with ``skipped``: records of the starting
    snapshot that were overwritten (or being rewritten) before the export could copy them."""

    skipped: int

    def __new__(cls, written: int, skipped: int = 0) -> ExportCount:
        self = super().__new__(cls, written)
        self.skipped = skipped
        return self

    def __repr__(self) -> str:
        return f"ExportCount(written={int(self)}, skipped={self.skipped})"


def _write_all(fp: BinaryIO, data) -> None:
    """fp.write until all of ``data`` is written (a raw, unbuffered file may take part of it)."""
    view = memoryview(data)
    while len(view):
        n = fp.write(view)
        if n is None or n >= len(view):  # a file-like whose write() returns None took it all
            return
        view = view[n:]


def write_export(seg, fp: BinaryIO, fmt: str, head: dict, progress: Progress | None = None, *,
                 chunk: int = CHUNK) -> ExportCount:
    """Write every retained event of ``seg`` to the binary file ``fp``, streaming; return the
    number of events written (an :class:`ExportCount`, whose ``.skipped`` counts records lost
    to writers during the export).

    ``fmt``:

    * ``"json"``: one document, ``head``'s keys in order (name, exported_at, stats, health, ...)
      then ``"events": [...]``, written as the chunks are rendered;
    * ``"ndjson"``: the first line is ``head`` as one JSON object (no ``"events"`` key); every
      further line is one event object, exactly as in the json document's ``events``.

    ``head`` is serialised by orjson (datetimes as UTC with a Z); it must not hold "events".
    Events are written oldest first (by sequence number). The set of events is a snapshot taken
    when the export starts (16 bytes per retained record); the records are then copied and
    rendered ``chunk`` at a time, so memory stays bounded by the chunk, whatever the ring's
    size. A record that a writer overwrites before its chunk is copied is gone: it is skipped
    and counted in ``.skipped``, never waited for, never replaced by the newer event.
    ``progress(done, total)`` is called after every chunk with the snapshot entries handled so
    far (written + skipped) and the snapshot's size, ending with ``done == total`` (once with
    ``(0, 0)`` for an empty ring).
    """
    check_format(fmt)
    if "events" in head:
        raise ValueError("the export head must not contain 'events'")
    idx, w = _reader.export_snapshot(seg)
    total = len(idx)
    head_b = orjson.dumps(head, option=_OPTS)
    if fmt == "json":
        _write_all(fp, head_b[:-1] + (b',"events":[' if len(head_b) > 2 else b'"events":['))
        lead, trail = b",", b""
    else:
        _write_all(fp, head_b + b"\n")
        lead, trail = b"", b"\n"
    written = skipped = 0
    for raw, lost, done in _reader.export_chunks(seg, idx, w, chunk):
        data = render_events(raw, lead, trail)
        if len(data):
            _write_all(fp, memoryview(data)[1:] if lead and not written else memoryview(data))
        written += len(raw)
        skipped += lost
        del data
        if progress is not None:
            progress(done, total)
    if total == 0 and progress is not None:
        progress(0, 0)
    if fmt == "json":
        _write_all(fp, b"]}")
    return ExportCount(written, skipped)


def check_format(fmt: object) -> str:
    """``fmt`` if it is an export format; ValueError naming it otherwise."""
    if not isinstance(fmt, str) or fmt not in L.EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: expected one of {', '.join(map(repr, L.EXPORT_FORMATS))}")
    return fmt


def export_head(name: str, stats: DiagnosticStats, health: HealthStatus, **sections: object) -> dict:
    """What an export carries besides its events, in order: name, exported_at, stats, health,
    then any further ``sections`` (each any orjson-serialisable value)."""
    head = {"name": name, "exported_at": datetime.now(timezone.utc), "stats": stats_to_dict(stats),
            "health": health_to_dict(health)}
    head.update(sections)
    return head


def export_bytes(seg, fmt: str, head: dict) -> bytes:
    """:func:`write_export` into one bytes object (the whole export in memory: for small rings
    and for ``Recorder.export_events``; stream large ones with ``write_export``). A BytesIO
    copies each chunk once and hands its buffer over without another copy."""
    sink = io.BytesIO()
    write_export(seg, sink, fmt, head)
    return sink.getvalue()
