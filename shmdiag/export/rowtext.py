"""The numpy byte toolkit of the fast export: text for a whole chunk of rows at once.

A "cell" is one variable piece of every row of a group: ``(block, lens)``, ``block`` a
C-contiguous ``(m, w)`` uint8 array whose row i holds its text in its first ``lens[i]`` bytes
(what follows is never read). This module makes cells (decimal digits, timestamps, words picked
from small tables, text fields gathered from records and JSON-escaped where needed) and
assembles rows from literal bytes and cells (:func:`assemble`). What goes into a row, for each
kind of record, is ``export/templates.py``'s business.

Text is copied as is where every byte is printable ASCII other than '"' and '\\'; any other
field (control characters, quotes, backslashes, non-ASCII, invalid UTF-8, NUL) is decoded as
``decode()`` does (invalid UTF-8 becomes U+FFFD) and escaped by orjson, in Python, for that
field only (remembered: the same texts recur).
"""

from __future__ import annotations

import numpy as np
import orjson

from shmdiag.core import layout as L

Cell = tuple[np.ndarray, np.ndarray]
Rows = slice | np.ndarray  # the rows of a group: all of them, or their indices

_SLOT_FIELDS = L.SLOT.fields
assert _SLOT_FIELDS is not None
_TEXT_OFF: int = _SLOT_FIELDS["text"][1]
_U8 = np.uint8
_ARANGE = np.arange(256, dtype=np.intp)

# Bytes that make a text field take the escaping path. 0 is left out: it is what the gather
# leaves beyond a field's end; a NUL inside a field is caught by counting non-zero bytes.
_SPECIAL = np.zeros(256, dtype=bool)
_SPECIAL[1:0x20] = True
_SPECIAL[[0x22, 0x5C]] = True
_SPECIAL[0x80:] = True
_POW10 = [10 ** k for k in range(21)]


def as_items(block: np.ndarray) -> np.ndarray:
    """A C-contiguous (m, w) uint8 block as (m,) items of w bytes (copied, indexed, assigned as one)."""
    return block.view(f"V{block.shape[1]}")[:, 0]


def as_block(items: np.ndarray, w: int) -> np.ndarray:
    """(m,) items of w bytes as an (m, w) uint8 block."""
    return items.view(_U8).reshape(len(items), w)


def window(buf: np.ndarray, w: int, stride: int = 1, offset: int = 0, count: int | None = None) -> np.ndarray:
    """Items of ``w`` bytes of the 1-d uint8 ``buf``: one starting at every ``stride``-th byte from
    ``offset`` (stride 1: every window of w bytes). A view: assigning to it writes ``buf``."""
    if count is None:
        count = (len(buf) - offset - w) // stride + 1
    items: np.ndarray = np.ndarray((count,), dtype=f"V{w}", buffer=buf, offset=offset, strides=(stride,))
    return items


def columns(out: np.ndarray, col: int, w: int) -> np.ndarray:
    """Columns [col, col + w) of the C-contiguous (n, W) uint8 ``out``, one item per row."""
    return window(out.reshape(-1), w, out.shape[1], col, out.shape[0])


def strings(words: list[bytes]) -> np.ndarray:
    """Byte strings as items as wide as the longest (zero-padded)."""
    w = max(1, max(map(len, words)))
    return np.array(words, dtype=f"S{w}").view(f"V{w}")


_DIGITS = {k: strings([b"%0*d" % (k, i) for i in range(10 ** k)]) for k in (1, 2, 3)}  # "0".."999"


class WordTable:
    """Words picked per row by an index: severity names, directions, booleans."""

    def __init__(self, words: list[bytes]) -> None:
        self.items = strings(words)
        self.width = self.items.dtype.itemsize
        self.lens = np.array([len(x) for x in words], dtype=np.intp)

    def __call__(self, index: np.ndarray) -> Cell:
        return as_block(self.items.take(index), self.width), self.lens.take(index)


def cell_of(values: list[bytes]) -> Cell:
    """Per-row byte strings as a cell."""
    a = np.array(values, dtype=bytes)
    return as_block(a.view(f"V{a.dtype.itemsize}"), a.dtype.itemsize), np.fromiter(map(len, values), np.intp,
                                                                                    len(values))


def put_digits(out: np.ndarray, col: int, width: int, v: np.ndarray) -> None:
    """Decimal digits of non-negative ``v`` (each < 10**width) into columns [col, col + width)
    of every row of ``out``, zero-filled on the left."""
    end = col + width
    while end - col >= 3:
        q = v // 1000
        columns(out, end - 3, 3)[...] = _DIGITS[3].take(v - q * 1000)
        v = q
        end -= 3
    if end > col:
        columns(out, col, end - col)[...] = _DIGITS[end - col].take(v)


def digits(mag: np.ndarray) -> Cell:
    """Non-negative integers as a cell of decimal digits."""
    m = len(mag)
    top = int(mag.max()) if m else 0
    mag = mag.astype(np.int64 if top < 1 << 63 else np.uint64, copy=False)
    d = len(str(top))
    right = np.empty((m + 1, d), dtype=_U8)  # right-aligned; the spare row lets windows run past the last
    put_digits(right[:m], 0, d, mag)
    ndig = np.full(m, d, dtype=np.intp)
    if m and d > 1 and int(mag.min()) < _POW10[d - 1]:
        ndig = np.ones(m, dtype=np.intp)
        for k in range(1, d):
            ndig += mag >= _POW10[k]
        # left-align: row i starts d - ndig[i] bytes into its right-aligned digits
        start = np.arange(m, dtype=np.intp) * d + (d - ndig)
        return as_block(window(right.reshape(-1), d)[start], d), ndig
    return right[:m], ndig


def signed(v: np.ndarray) -> list[Cell]:
    """int64 values as cells: [digits], or [sign, digits] when some are negative."""
    neg = v < 0
    if not neg.any():
        return [digits(v)]
    mag = v.astype(np.uint64)  # two's complement: -x is ~x + 1, INT64_MIN included
    mag = np.where(neg, ~mag + np.uint64(1), mag)
    return [(np.full((len(v), 1), 45, dtype=_U8), neg.astype(np.intp)), digits(mag)]


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
    put_digits(out, 0, 4, y)
    out[:, 4] = out[:, 7] = 45  # "-"
    put_digits(out, 5, 2, mo)
    put_digits(out, 8, 2, d)
    out[:, 10] = 84  # "T"
    return out


_HMS: list[np.ndarray] = []


def _hms() -> np.ndarray:
    """'HH:MM:SS.' for every second of a day, as 9-byte items (778 KB, made on first use)."""
    if not _HMS:
        sec = np.arange(86_400, dtype=np.int64)
        t = np.empty((86_400, 9), dtype=_U8)
        put_digits(t, 0, 2, sec // 3600)
        t[:, 2] = t[:, 5] = 58  # ":"
        put_digits(t, 3, 2, sec // 60 % 60)
        put_digits(t, 6, 2, sec % 60)
        t[:, 8] = 46  # "."
        _HMS.append(as_items(t))
    return _HMS[0]


def timestamps(ns: np.ndarray) -> Cell:
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
        columns(out, 0, 11)[...] = as_items(_dates(np.arange(lo, hi + 1, dtype=np.int64))).take(days - lo)
    else:
        out[:, :11] = _dates(days)
    columns(out, 11, 9)[...] = _hms().take(sec)
    put_digits(out, 20, 6, frac)
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


ESCAPED = _Escaper()


def json_str(text: str) -> bytes:
    """``text`` as the contents of a JSON string (without the quotes)."""
    return orjson.dumps(text)[1:-1]


class Chunk:
    """One chunk of validated records ((n, SLOT_SIZE) uint8), with where each text field lies."""

    def __init__(self, raw: np.ndarray) -> None:
        n = len(raw)
        self.n = n
        self.flat = raw.reshape(-1)
        self.buf = self.flat.data  # a memoryview: slices of it parse without a copy
        self.recs = recs = raw.view(L.SLOT).reshape(n)
        self.lens = lens = recs["lens"].astype(np.intp)
        starts = np.zeros_like(lens)
        np.cumsum(lens[:, :4], axis=1, out=starts[:, 1:])
        starts += (np.arange(n, dtype=np.intp) * L.SLOT_SIZE + _TEXT_OFF)[:, None]
        self.starts = starts  # absolute offset in flat of each of the five text fields
        self.flags = recs["flags"]
        self.trunc = (self.flags & (L.F_TRUNCATED | L.F_CONTINUED)) != 0  # continued: read alone, as decode(rec)

    def raw_text(self, rows: Rows, field: int) -> list[bytes]:
        """Text field ``field`` of ``rows``, as bytes, one per row (the per-row Python path)."""
        buf = self.buf
        starts, lens = self.starts[rows, field].tolist(), self.lens[rows, field].tolist()
        return [bytes(buf[s: s + n]) for s, n in zip(starts, lens, strict=True)]

    def raw(self, rows: Rows, field: int) -> Cell:
        """Text field ``field`` (0..4, the slot's order) of ``rows`` as stored (not escaped), as
        a cell: each row's bytes, zero-padded to the longest."""
        start = self.starts[rows, field]
        length = self.lens[rows, field]
        m = len(start)
        cap = int(length.max()) if m else 0
        if cap == 0:
            return np.zeros((m, 0), dtype=_U8), length
        flat = self.flat
        limit = len(flat) - cap
        over = start > limit  # a window this wide would run past the chunk (its last record only)
        block = as_block(window(flat, cap)[np.minimum(start, limit) if over.any() else start], cap)
        block *= _ARANGE[:cap] < length[:, None]
        for r in np.flatnonzero(over).tolist():
            s, n = int(start[r]), int(length[r])
            block[r] = 0
            block[r, :n] = flat[s: s + n]
        return block, length

    def text(self, rows: Rows, field: int) -> Cell:
        """Text field ``field`` (0..4, the slot's order) of ``rows``, JSON-escaped, as a cell."""
        block, length = self.raw(rows, field)
        m, cap = block.shape
        if cap == 0:
            return block, length
        start = self.starts[rows, field]
        # Bytes that need escaping, or a NUL inside the field (zero bytes are the padding):
        # looked for in the whole block first, per row only if something is there.
        if _SPECIAL[block].any() or np.count_nonzero(block) != int(length.sum()):
            special = _SPECIAL[block].any(axis=1) | (np.count_nonzero(block, axis=1) != length)
            sp = np.flatnonzero(special)
            buf, escaped = self.buf, ESCAPED
            sp_start, sp_len = start[sp].tolist(), length[sp].tolist()
            esc, esc_lens = cell_of([escaped[bytes(buf[s: s + n])] for s, n in zip(sp_start, sp_len, strict=True)])
            if esc.shape[1] > cap:
                block = np.concatenate([block, np.zeros((m, esc.shape[1] - cap), dtype=_U8)], axis=1)
            block[sp, : esc.shape[1]] = esc
            length = length.copy()
            length[sp] = esc_lens
        return block, length


class Parts:
    """The pieces of one group's rows, in order: literal bytes, or cells."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes | Cell] = []

    def lit(self, b: bytes) -> None:
        if not b:
            return
        if self.parts and isinstance(self.parts[-1], bytes):
            self.parts[-1] += b
        else:
            self.parts.append(b)

    def add(self, cell: Cell) -> None:
        if cell[0].shape[1]:
            self.parts.append(cell)

    def extend(self, parts: Parts) -> None:
        for p in parts.parts:
            if isinstance(p, bytes):
                self.lit(p)
            else:
                self.add(p)


def rows_of(cell: Cell, rows: Rows) -> Cell:
    """The rows ``rows`` (a slice or indices) of a cell."""
    block, lens = cell
    if isinstance(rows, slice):
        return block[rows], lens[rows]
    return as_block(as_items(block).take(rows), block.shape[1]), lens.take(rows)


def assemble(n: int, plans: list[tuple[Rows, Parts]]) -> np.ndarray:
    """The bytes of ``n`` rows, as one uint8 array: ``plans`` gives, for groups of rows (together
    every row once), the pieces of those rows, the last piece of a row always a literal.

    Row lengths give each row its place in the output (rows stay in order whatever their group);
    then each piece is written for every row of its group at once, w bytes per row at that row's
    running offset, by one numpy scatter of w-byte items. A cell is as wide as its widest row:
    writing it also writes up to w - len bytes past a row's text, which the row's next pieces
    (written after it) overwrite; for the few rows where that would run past the row's end, the
    cell is written at its exact length instead.
    """
    rowlen = np.empty(n, dtype=np.intp)
    widest = 0
    for rows, k in plans:
        fixed = sum(len(p) for p in k.parts if isinstance(p, bytes))
        total: int | np.ndarray = fixed
        for p in k.parts:
            if not isinstance(p, bytes):
                total = total + p[1]
                widest = max(widest, p[0].shape[1])
        rowlen[rows] = total
    ends = np.cumsum(rowlen)
    size = int(ends[-1]) if n else 0
    out = np.empty(size + widest, dtype=_U8)
    for rows, k in plans:
        parts = k.parts
        end = ends[rows]
        off: np.ndarray = end - rowlen[rows]
        tail = sum(len(p) for p in parts if isinstance(p, bytes))  # literal bytes from here to the row's end
        for p in parts:
            if isinstance(p, bytes):
                w = len(p)
                window(out, w)[off] = np.frombuffer(p, dtype=f"V{w}")
                off += w
                tail -= w
                continue
            block, lens = p
            w = block.shape[1]
            items = as_items(block)
            if w <= tail:  # what it writes past a row's text is inside that row, whatever the lengths
                window(out, w)[off] = items
                off += lens
                continue
            past = off + w > end
            if not past.any():
                window(out, w)[off] = items
            else:  # these rows get their exact length, one length at a time
                ok = np.flatnonzero(~past)
                window(out, w)[off.take(ok)] = items.take(ok)
                bad = np.flatnonzero(past)
                bad_lens = lens.take(bad)
                for ln in np.unique(bad_lens).tolist():
                    if ln:
                        r = bad[bad_lens == ln]
                        window(out, ln)[off.take(r)] = window(block.reshape(-1), ln, w, 0, len(block))[r]
            off += lens
    return out[:size]
