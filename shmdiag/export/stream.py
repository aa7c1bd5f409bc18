"""The streaming export driver: a snapshot of what is retained, then chunk after chunk.

``write_export`` streams an export (json or ndjson) to a binary file, ``CHUNK`` records at a
time, rendered with numpy by ``export/templates.py`` (over 1,000,000 events/s), so memory stays
bounded whatever the ring's size; ``export_bytes`` is the same into memory. Quotes, newlines and
any Unicode round-trip; nothing is dropped.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import BinaryIO

import numpy as np
import orjson

from shmdiag.core import layout as L
from shmdiag.core import reader as _reader
from shmdiag.core.filter import EventFilter, unrecorded
from shmdiag.core.segment import Segment
from shmdiag.export.dicts import OPTS, event_to_dict, export_head
from shmdiag.export.templates import render_events

__all__ = ["CHUNK", "BinaryIO", "ExportCount", "Progress", "check_format", "export_bytes", "export_head",
           "render_chunk", "write_export"]

CHUNK = 16384  # records per chunk: a few MB of working memory, whatever the ring's size

Progress = Callable[[int, int], None]  # progress(done, total)


class ExportCount(int):
    """Events written by an export (the int value), with ``skipped``: records of the starting
    snapshot that were overwritten (or being rewritten) before the export could copy them, or
    that failed validation when copied (a damaged record)."""

    skipped: int

    def __new__(cls, written: int, skipped: int = 0) -> ExportCount:
        self = super().__new__(cls, written)
        self.skipped = skipped
        return self

    def __repr__(self) -> str:
        return f"ExportCount(written={int(self)}, skipped={self.skipped})"


def _write_all(fp: BinaryIO, data: bytes | memoryview) -> None:
    """fp.write until all of ``data`` is written (a raw, unbuffered file may take part of it)."""
    view = memoryview(data)
    while len(view):
        n = fp.write(view)
        if n is None or n >= len(view):  # a file-like whose write() returns None took it all
            return
        view = view[n:]


def write_export(seg: Segment, fp: BinaryIO, fmt: str, head: dict, progress: Progress | None = None, *,
                 chunk: int = CHUNK, meta: BinaryIO | None = None,
                 filt: EventFilter | None = None) -> ExportCount:
    """Write every retained event of ``seg`` to the binary file ``fp``, streaming; return the
    number of events written (an :class:`ExportCount`, whose ``.skipped`` counts records lost
    to writers during the export).

    ``fmt``:

    * ``"json"``: one document, ``head``'s keys in order (schema_version, kind, name,
      exported_at, stats, health, ...), then ``"events": [...]``, written as the chunks are
      rendered, then ``"exported"`` (events written) and ``"skipped"`` (``.skipped``);
    * ``"ndjson"``: events only, one JSON object per line, exactly as in the json document's
      ``events`` (no header line: every line is an event, for jq, pandas, DuckDB).

    ``meta``, if given, receives the json document without ``"events"`` (``head`` with
    ``exported`` and ``skipped``) as one line once the events are written: an NDJSON export's
    metadata (``shmdiag export --meta FILE``).

    ``head`` is serialised by orjson (datetimes as UTC with a Z); it must not hold "events".
    Events are written oldest first (by sequence number). The set of events is a snapshot taken
    when the export starts (16 bytes per retained record); the records are then copied and
    rendered ``chunk`` at a time, so memory stays bounded by the chunk, whatever the ring's
    size. A record that a writer overwrites before its chunk is copied is gone: it is skipped
    and counted in ``.skipped``, never waited for, never replaced by the newer event.
    ``progress(done, total)`` is called after every chunk with the snapshot entries handled so
    far (written, filtered out or skipped) and the snapshot's size, ending with ``done == total``
    (once with ``(0, 0)`` for an empty ring).

    ``filt`` (``core.filter.EventFilter``) keeps only the events it selects, tested on the
    records before they are copied or rendered; a type or peer never recorded costs no scan.
    """
    check_format(fmt)
    for key in ("events", "exported", "skipped"):
        if key in head:
            raise ValueError(f"the export head must not contain {key!r}")
    if filt is not None and unrecorded(seg, filt) is not None:
        idx, w = np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.uint64)
    else:
        idx, w = _reader.export_snapshot(seg, 0 if filt is None else filt.min_severity)
    total = len(idx)
    if fmt == "json":
        head_b = orjson.dumps(head, option=OPTS)
        _write_all(fp, head_b[:-1] + (b',"events":[' if len(head_b) > 2 else b'"events":['))
        lead, trail = b",", b""
    else:
        lead, trail = b"", b"\n"
    written = skipped = 0
    for raw, lost, done in _reader.export_chunks(seg, idx, w, chunk, filt):
        data = render_chunk(seg, raw, lead, trail)
        if len(data):
            _write_all(fp, data.data[1:] if lead and not written else data.data)
        written += len(raw)
        skipped += lost
        del data
        if progress is not None:
            progress(done, total)
    if total == 0 and progress is not None:
        progress(0, 0)
    if fmt == "json":
        _write_all(fp, b'],"exported":%d,"skipped":%d}' % (written, skipped))
    if meta is not None:
        _write_all(meta, orjson.dumps({**head, "exported": written, "skipped": skipped}, option=OPTS) + b"\n")
    return ExportCount(written, skipped)


_FLAGS_AT = L.offset(L.SLOT, "flags")


def render_chunk(seg: Segment, raw: np.ndarray, lead: bytes = b"", trail: bytes = b"\n") -> np.ndarray:
    """render_events for a chunk, with events of several slots read whole: their continuations
    are copied now (``reader.continuations``) and each such event is rendered by the reference
    path, in its place between the vectorised runs of one-slot events (they are few)."""
    if not len(raw):
        return render_events(raw, lead, trail)
    rows = np.flatnonzero(raw[:, _FLAGS_AT] & L.F_CONTINUED)
    if not len(rows):
        return render_events(raw, lead, trail)
    recs = raw.view(L.SLOT).reshape(len(raw))
    more = _reader.continuations(seg, recs)
    parts, prev = [], 0
    for r in rows.tolist():
        if r > prev:
            parts.append(render_events(raw[prev:r], lead, trail))
        e = _reader.decode(recs[r], more.get(r))
        parts.append(np.frombuffer(lead + orjson.dumps(event_to_dict(e), option=OPTS) + trail, dtype=np.uint8))
        prev = r + 1
    if prev < len(raw):
        parts.append(render_events(raw[prev:], lead, trail))
    return np.concatenate(parts)


def check_format(fmt: object) -> str:
    """``fmt`` if it is an export format; ValueError naming it otherwise."""
    if not isinstance(fmt, str) or fmt not in L.EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: expected one of {', '.join(map(repr, L.EXPORT_FORMATS))}")
    return fmt


def export_bytes(seg: Segment, fmt: str, head: dict, *, meta: BinaryIO | None = None,
                 filt: EventFilter | None = None) -> bytes:
    """:func:`write_export` into one bytes object (the whole export in memory: for small rings
    and for ``Recorder.export_events``; stream large ones with ``write_export``). A BytesIO
    copies each chunk once and hands its buffer over without another copy."""
    sink = io.BytesIO()
    write_export(seg, sink, fmt, head, meta=meta, filt=filt)
    return sink.getvalue()
