"""Archive rows for a whole batch of validated records at once: the fast path of ``rows.read_batch``.

Decoding event by event (``DiagnosticEvent`` objects, then a tuple each) bounds an archive at
tens of thousands of events/s. Here the numeric columns come from the records as numpy columns
(``tolist()``), and the five text columns (type, peer, message, error, metadata JSON) are built
for every row of a kind at once with the exporter's toolkit (``export/rowtext.py``): each kind's
message template and metadata keys from ``core/kinds.py``, cut into literal text and cells, one
NUL between the columns of a row. The whole batch is then decoded once and split once (C speed).

A row takes the reference path (``reader.decode_many`` + ``rows.event_row``) when this one would
not say the same: an event of several slots (its text is read from its continuations), a text
field holding a NUL (it would cut the split), stored metadata that is not JSON (decode marks it
truncated). ``tests/test_archive_columns.py`` compares both paths on every kind.
"""

from __future__ import annotations

import gc
import itertools

import numpy as np
import orjson

from shmdiag.core import kinds as K
from shmdiag.core import layout as L
from shmdiag.export.rowtext import (
    Cell,
    Chunk,
    Parts,
    Rows,
    assemble,
    cell_of,
    json_str,
    signed,
)
from shmdiag.export.templates import flag_words

_SEP = b"\x00"
_TEXT_OFF = L.offset(L.SLOT, "text")
_U8 = np.uint8


def raw_cell(c: Chunk, rows: Rows, field: int, nul: list[np.ndarray] | None = None) -> Cell:
    """Text field ``field`` of ``rows`` as stored (not escaped), as a cell. Rows (indices into
    ``rows``) whose field holds a NUL byte are appended to ``nul``."""
    block, length = c.raw(rows, field)
    if nul is not None and np.count_nonzero(block) != int(length.sum()):  # zero bytes past the end are padding
        nul.append(np.flatnonzero(np.count_nonzero(block, axis=1) != length))
    return block, length




def _values(c: Chunk, rows: Rows, f: K.Field) -> list:
    """Field ``f``'s Python values, as decode() reads them."""
    if f.is_text:
        return [raw.decode("utf-8", "replace") for raw in c.raw_text(rows, f.text_index)]
    if f.stored == K.VALUE:
        vals = c.recs["value"][rows].tolist()
        return vals if f.convert is None else list(map(f.convert, vals))
    return [f.words[bool(b)] for b in (c.flags[rows] & f.flag).tolist()]


def _group(kind: K.Kind):  # type: ignore[no-untyped-def]
    """The renderer of ``kind``'s rows: type, peer, message, error, metadata, each followed by a NUL."""
    message = [(lit.encode(), None if name is None else kind.field_named(name), spec)
               for lit, name, spec in kind.pieces]
    meta = [(b'"' + json_str(key) + b'":', kind.field_named(key)) for key in kind.metadata or ()]
    stored_meta = kind.field_named("metadata") if kind.metadata is None else None
    err = None if kind.error is None else kind.field_named(kind.error)
    etype = None if kind.event_type is not None else kind.field_named("event_type")

    def render(c: Chunk, rows: Rows, k: Parts, nul: list[np.ndarray]) -> None:
        if etype is not None:
            k.add(raw_cell(c, rows, etype.text_index, nul))
            k.lit(_SEP)
        k.add(raw_cell(c, rows, 1, nul))
        k.lit(_SEP)
        for lit, f, spec in message:
            k.lit(lit)
            if f is None:
                continue
            if f.is_text and not spec:
                k.add(raw_cell(c, rows, f.text_index, nul))
            elif f.stored == K.VALUE and f.convert is None and not spec:
                for cell in signed(c.recs["value"][rows]):
                    k.add(cell)
            elif f.stored == K.FLAGS and not spec:
                k.add(flag_words(c, rows, f))
            else:
                k.add(cell_of([format(v, spec).encode() for v in _values(c, rows, f)]))
        k.lit(_SEP)
        if err is not None:
            k.add(raw_cell(c, rows, err.text_index, nul))
            k.lit(_SEP)
        if stored_meta is not None:
            k.add(raw_cell(c, rows, stored_meta.text_index, nul))
        else:
            sep = b"{"
            for key, f in meta:
                k.lit(sep + key)
                sep = b","
                if f.is_text:
                    k.lit(b'"')
                    k.add(c.text(rows, f.text_index))
                    k.lit(b'"')
                elif f.stored == K.FLAGS:
                    k.lit(b'"')
                    k.add(flag_words(c, rows, f))
                    k.lit(b'"')
                elif f.convert is not None:
                    k.add(cell_of(orjson.dumps(_values(c, rows, f))[1:-1].split(b",")))
                else:
                    for cell in signed(c.recs["value"][rows]):
                        k.add(cell)
            k.lit(b"}" if meta else b"{}")
        k.lit(_SEP)

    return render


_GROUPS = {k.code: (_group(k), k) for k in K.KINDS}


def _when_table(get) -> np.ndarray:  # type: ignore[no-untyped-def]
    t = np.zeros(256, dtype=np.int16)
    for k in K.KINDS:
        t[k.code] = get(k)
    return t


# Per kind code: the flag saying the error (or stored metadata) is present; 0 always; -1 never.
_ERR_WHEN = _when_table(lambda k: -1 if k.error is None else k.field_named(k.error).when)
_META_WHEN = _when_table(lambda k: 0 if k.metadata is not None else k.field_named("metadata").when)


def _present(when: np.ndarray, flags: np.ndarray) -> np.ndarray:
    return (when == 0) | ((when > 0) & ((flags.astype(np.int16) & when) != 0))


def _group_columns(c: Chunk, rows: Rows, code: int, nul: list[np.ndarray]) -> list[list] | None:
    """[types, peers, messages, errors, metadata] of ``rows`` (all of one kind), or None when a
    row holds a NUL (listed in ``nul``)."""
    render, kind = _GROUPS[code]
    k = Parts()
    before = len(nul)
    render(c, rows, k, nul)
    if len(nul) > before:
        return None
    m = c.n if isinstance(rows, slice) else len(rows)
    text = assemble(m, [(slice(None), k)]).tobytes().decode("utf-8", "replace").split("\x00")
    ncol = 3 + (kind.event_type is None) + (kind.error is not None)
    cols: list[list] = [text[i: ncol * m: ncol] for i in range(ncol)]
    if kind.event_type is not None:
        cols.insert(0, [kind.event_type] * m)
    if kind.error is None:
        cols.insert(3, [None] * m)
    flags = c.flags[rows]
    for col, when in ((3, _ERR_WHEN[code]), (4, _META_WHEN[code])):
        if when > 0:
            have = (flags & when) != 0
            if not have.all():
                if not have.any():
                    cols[col] = [None] * m
                else:
                    arr = np.array(cols[col], dtype=object)
                    arr[~have] = None
                    cols[col] = arr.tolist()
    return cols


def fast_rows(raw: np.ndarray) -> tuple[list[tuple], np.ndarray]:
    """Archive rows (``store.ROW_COLUMNS``, slots 1) of the one-slot records of ``raw`` that this
    path renders as decode() does, and the indices of the others (the reference path's)."""
    n = len(raw)
    recs = raw.view(L.SLOT).reshape(n)
    flags = recs["flags"]
    odd = (flags & L.F_CONTINUED) != 0
    kind = recs["kind"]
    meta_rows = np.flatnonzero(~odd & (_META_WHEN[kind] > 0) & _present(_META_WHEN[kind], flags))
    if len(meta_rows):  # stored metadata: decode() parses it, and marks the event truncated if it cannot
        c = Chunk(np.ascontiguousarray(raw[meta_rows]))
        loads = orjson.loads
        for i, b in zip(meta_rows.tolist(), c.raw_text(slice(None), 2), strict=True):
            try:
                loads(b)
            except orjson.JSONDecodeError:
                odd[i] = True
    gc_was = gc.isenabled()
    gc.disable()  # a batch makes ~15 objects per event, none of them cyclic: no collections meanwhile
    try:
        while True:
            odd_idx = np.flatnonzero(odd)
            if len(odd_idx) == n:
                return [], odd_idx
            sel = np.flatnonzero(~odd)
            part = raw if not len(odd_idx) else np.ascontiguousarray(raw[sel])
            c = Chunk(part)
            m = len(part)
            code = c.recs["kind"].astype(np.intp)
            counts = np.bincount(code, minlength=256)
            groups = np.flatnonzero(counts).tolist()
            nul: list[np.ndarray] = []
            built = []
            for g in groups:
                rows: Rows = slice(None) if counts[g] == m else np.flatnonzero(code == g)
                cols = _group_columns(c, rows, g, nul)
                if cols is None:  # a NUL inside a text: those rows go the reference way, and again
                    odd[sel[(np.arange(m)[rows])[np.concatenate(nul)]]] = True
                    break
                built.append((rows, cols))
            else:
                break
        if len(built) == 1:
            text_cols = built[0][1]
        else:
            text_cols = []
            for j in range(5):
                arr = np.empty(m, dtype=object)
                for rows, cols in built:
                    arr[rows] = cols[j]
                text_cols.append(arr.tolist())
        r = c.recs
        ts = (r["ts_ns"] // 1000 * 1000).tolist()
        seq = L.w_seq(r["w"]).tolist()
        trunc = ((r["flags"] & L.F_TRUNCATED) != 0).astype(np.int8).tolist()
        types, peers, msgs, errs, metas = text_cols
        out = list(zip(ts, seq, r["pid"].tolist(), types, r["severity"].tolist(), peers, msgs, errs, metas, trunc,
                       itertools.repeat(1, m), strict=False))
    finally:
        if gc_was:
            gc.enable()
    return out, odd_idx
