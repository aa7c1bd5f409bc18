"""The JSON of every kind of record, for a whole chunk at once, derived from ``core/kinds.py``.

An event is a sequence of pieces: literal JSON text (keys, punctuation, a template's literal
text) and cells (``export/rowtext.py``) made for all rows of a group at once: timestamps, field
text gathered from the records' text areas, decimal digits, words picked from small tables
(severity, direction, true/false). Rows are grouped by kind (and by whether an optional error
is present), since each kind has its own sequence of pieces; :func:`render_events` assembles
the groups' rows in their places, so the output is in sequence order.

Each kind's pieces come from its entry in :data:`shmdiag.core.kinds.KINDS`: its event type, its
message template cut into literal text and fields, its metadata keys and its error field, each
field gathered from where the table says the record stores it. Text, integer and flag fields
are made for the whole group at once; a field with a format spec or a converted value (latency's
``{ms:.3f}``, its ``seconds``) is formatted per event in Python, as ``decode()`` formats it.
Metadata stored as JSON (``record_event``) is parsed and re-serialised by orjson per event, as
the per-event path does, so a foreign record can never put invalid JSON into an export.

The result means exactly what ``orjson.dumps(event_to_dict(decode(record)), option=OPT_UTC_Z)``
means for every record (tests/test_export_fast.py compares the two, parsed; tests/test_kinds.py
the messages and metadata kind by kind); only insignificant details such as float spelling may
differ.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import numpy as np
import orjson

from shmdiag.core import kinds as K
from shmdiag.core import layout as L
from shmdiag.core.models import Severity
from shmdiag.export.rowtext import (
    Cell,
    Chunk,
    Parts,
    Rows,
    WordTable,
    assemble,
    cell_of,
    digits,
    json_str,
    rows_of,
    signed,
    timestamps,
)
from shmdiag.export.schema import SCHEMA_VERSION

# Every event object starts so (export/dicts.py's event_to_dict: version and kind first).
EVENT_OPEN = b'{"schema_version":%d,"kind":"event","timestamp":"' % SCHEMA_VERSION
SEVERITY = WordTable([str(s).encode() for s in Severity])
BOOL = WordTable([b"false", b"true"])

Group = Callable[[Chunk, Rows, Parts], None]
_SAFE_SPEC = frozenset("0123456789.,_+- <>=^#%eEfFgGn")  # a number formatted so needs no escaping
_PRINTF_SPEC = re.compile(r"[-+ ]?#?0?\d*(\.\d+)?[eEfFgG]")


@functools.cache
def _printf(spec: str) -> Callable[[object], bytes] | None:
    """``spec`` as a bytes %-format when it means the same for floats (twice as fast as format())."""
    if not _PRINTF_SPEC.fullmatch(spec):
        return None
    fmt = b"%" + spec.encode()
    samples = (0.0, -0.0, 1.5, -2.25, 0.0005, 123456.789, 1e22, -3e-9, float("inf"), float("nan"))
    if any(fmt % v != format(v, spec).encode() for v in samples):
        return None
    return fmt.__mod__


class _Fields:
    """The cells of one group's fields, each made once however often its kind's JSON names it."""

    def __init__(self, c: Chunk, rows: Rows) -> None:
        self.c, self.rows = c, rows
        self.made: dict[tuple[str, str], list[Cell]] = {}

    def values(self, f: K.Field) -> list:
        """The Python values of field ``f`` for every row, as decode() reads them."""
        c, rows = self.c, self.rows
        if f.is_text:
            return [raw.decode("utf-8", "replace") for raw in c.raw_text(rows, f.text_index)]
        if f.stored == K.VALUE:
            vals = c.recs["value"][rows].tolist()
            return vals if f.convert is None else list(map(f.convert, vals))
        return [f.words[bool(b)] for b in (c.flags[rows] & f.flag).tolist()]

    def cells(self, f: K.Field, spec: str = "") -> list[Cell]:
        """Field ``f`` formatted as a template formats it (``spec``), as JSON string contents:
        an integer value field without spec is also its JSON number."""
        key = (f.name, spec)
        got = self.made.get(key)
        if got is None:
            c, rows = self.c, self.rows
            if spec or f.convert is not None:
                vals = self.values(f)
                printf = _printf(spec) if f.convert is not None else None
                if printf is not None:  # a float, as decode()'s template formats it
                    got = [cell_of(list(map(printf, vals)))]
                else:
                    text = [format(v, spec) for v in vals]
                    safe = f.stored == K.VALUE and set(spec) <= _SAFE_SPEC
                    got = [cell_of([t.encode() for t in text] if safe else list(map(json_str, text)))]
            elif f.is_text:
                got = [c.text(rows, f.text_index)]
            elif f.stored == K.VALUE:
                got = signed(c.recs["value"][rows])
            else:
                got = [flag_words(c, rows, f)]
            self.made[key] = got
        return got

    def floats(self, f: K.Field) -> list[Cell]:
        """A converted value field as JSON numbers (orjson's spelling, as the per-event path)."""
        return [cell_of(orjson.dumps(self.values(f))[1:-1].split(b","))]


@functools.cache
def _word_table(words: tuple[str, str]) -> WordTable:
    return WordTable([w.encode() for w in words])


def flag_words(c: Chunk, rows: Rows, f: K.Field) -> Cell:
    """A flag field (``f.stored == "flags"``) of ``rows``: ``f.words[0]`` where its bit is
    clear, ``f.words[1]`` where set, as a cell."""
    return _word_table(f.words)(((c.flags[rows] & f.flag) != 0).astype(np.intp))


def _stored_metadata(c: Chunk, rows: Rows, f: K.Field, k: Parts) -> None:
    """Metadata stored as JSON, present where flag ``f.when`` is set: re-serialised per event."""
    flags = c.flags[rows]
    has_meta = (flags & f.when) != 0 if f.when else np.ones(len(flags), dtype=bool)
    if not has_meta.any():
        k.lit(b"null")
        return
    where = np.flatnonzero(has_meta)
    metas = [b"null"] * len(flags)
    buf, loads, dumps = c.buf, orjson.loads, orjson.dumps
    i_text = f.text_index
    starts, lens = c.starts[rows, i_text][where].tolist(), c.lens[rows, i_text][where].tolist()
    for i, s, n in zip(where.tolist(), starts, lens, strict=True):
        try:
            metas[i] = dumps(loads(buf[s: s + n]))
        except orjson.JSONDecodeError:  # as decode(): cannot happen for what the writer stores
            c.trunc[np.arange(c.n)[rows][i]] = True
    k.add(cell_of(metas))


def _check(kind: K.Kind) -> None:
    """Refuse, at import, what this exporter cannot render as decode() does."""
    for _, name, _ in kind.pieces:
        if name is not None and kind.field_named(name).json:
            raise ValueError(f"kind {kind.name!r}: a JSON field cannot be part of the message")
    for key in kind.metadata or ():
        f = kind.field_named(key)
        if f.when or f.json:
            raise ValueError(f"kind {kind.name!r}: metadata key {key!r} is optional or JSON: not supported")
    if kind.error is not None and not kind.field_named(kind.error).is_text:
        raise ValueError(f"kind {kind.name!r}: the error field must be a text field")


def group_of(kind: K.Kind, has_err: bool) -> Group:
    """The pieces of ``kind``'s rows from ``"event_type":"`` (its value) to its ``error`` (with
    the error when ``has_err`` or when the kind's error is always present)."""
    _check(kind)
    message = [(json_str(lit), None if name is None else kind.field_named(name), spec)
               for lit, name, spec in kind.pieces]
    meta_fields = [(json_str(key), kind.field_named(key)) for key in kind.metadata or ()]
    err = None if kind.error is None else kind.field_named(kind.error)
    show_err = err is not None and (not err.when or has_err)
    etype = None if kind.event_type is not None else kind.field_named("event_type")
    lead = (b"" if kind.event_type is None else json_str(kind.event_type)) + b'","peer_id":"'

    def render(c: Chunk, rows: Rows, k: Parts) -> None:
        fields = _Fields(c, rows)
        if etype is not None:
            k.add(c.text(rows, etype.text_index))
        k.lit(lead)
        k.add(c.text(rows, 1))
        k.lit(b'","message":"')
        for lit, f, spec in message:
            k.lit(lit)
            if f is not None:
                for cell in fields.cells(f, spec):
                    k.add(cell)
        k.lit(b'","severity":"')
        k.add(SEVERITY(c.recs["severity"][rows]))
        k.lit(b'","metadata":')
        if kind.metadata is None:
            _stored_metadata(c, rows, kind.field_named("metadata"), k)
        else:
            sep = b"{"
            for key, f in meta_fields:
                k.lit(sep + b'"' + key + b'":')
                sep = b","
                if f.is_text or f.stored == K.FLAGS:
                    k.lit(b'"')
                    for cell in fields.cells(f):
                        k.add(cell)
                    k.lit(b'"')
                else:
                    for cell in (fields.floats(f) if f.convert is not None else fields.cells(f)):
                        k.add(cell)
            k.lit(b"}" if meta_fields else b"{}")
        if show_err:
            assert err is not None
            k.lit(b',"error":"')
            k.add(c.text(rows, err.text_index))
            k.lit(b'"')
        else:
            k.lit(b',"error":null')

    return render


# (kind code << 1 | error present) -> the group's pieces; kinds past KIND_MAX never get here
# (copy_records rejects them) and would be rendered as generic events, as decode() reads them.
_GROUPS: dict[int, Group] = {k.code << 1 | e: group_of(k, bool(e)) for k in K.KINDS for e in (0, 1)}


def _err_when(kind: K.Kind) -> int:
    """The flag that says a record of ``kind`` has its error (0: always, or no error field)."""
    return kind.field_named(kind.error).when if kind.error else 0


# Per kind code, the same (unknown codes as generic events).
_ERR_WHEN = np.full(256, _err_when(K.EVENT), dtype=np.uint8)
for _k in K.KINDS:
    _ERR_WHEN[_k.code] = _err_when(_k)


def render_events(raw: np.ndarray, lead: bytes = b"", trail: bytes = b"\n") -> np.ndarray:
    """The JSON objects of validated records ``raw`` ((n, SLOT_SIZE) uint8, for example from
    ``reader.export_chunks``), in row order, each preceded by ``lead`` and followed by
    ``trail``, as one uint8 array of UTF-8 bytes."""
    n = len(raw)
    if n == 0:
        return np.zeros(0, dtype=np.uint8)
    c = Chunk(np.ascontiguousarray(raw, dtype=np.uint8))
    kind = c.recs["kind"].astype(np.intp)
    key = kind * 2 + ((c.flags & _ERR_WHEN.take(kind)) != 0)
    counts = np.bincount(key)
    groups = []
    for g in np.flatnonzero(counts).tolist():
        rows: Rows = slice(None) if counts[g] == n else np.flatnonzero(key == g)
        mid = Parts()
        _GROUPS.get(g, _GROUPS[(K.KIND_EVENT << 1) | (g & 1)])(c, rows, mid)
        groups.append((rows, mid))
    ts = timestamps(c.recs["ts_ns"])
    pid = digits(c.recs["pid"])
    seq = digits(L.w_seq(c.recs["w"]))
    trunc = BOOL(c.trunc.astype(np.intp))  # after the groups: bad metadata sets it
    plans: list[tuple[Rows, Parts]] = []
    for rows, mid in groups:
        k = Parts()
        k.lit(lead + EVENT_OPEN)
        k.add(rows_of(ts, rows))
        k.lit(b'","event_type":"')
        k.extend(mid)
        k.lit(b',"pid":')
        k.add(rows_of(pid, rows))
        k.lit(b',"seq":')
        k.add(rows_of(seq, rows))
        k.lit(b',"truncated":')
        k.add(rows_of(trunc, rows))
        k.lit(b"}" + trail)
        plans.append((rows, k))
    return assemble(n, plans)
