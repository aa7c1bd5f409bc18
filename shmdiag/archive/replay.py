"""Replaying archived events into a ring, so the live tools (top, tail, the dashboard) show an
incident after the fact.

Each event is recorded with ``record_event`` and its original timestamp, type, severity, peer,
message, metadata and error; a replayed peer connect or disconnect moves that peer's state as
the original did. The per-peer message and byte counters are not rebuilt (the archive holds the
rendered events, not the helper calls that made them).
"""

from __future__ import annotations

import time

from shmdiag.archive.query import Filter, query
from shmdiag.archive.rows import row_event
from shmdiag.recorder import Recorder


def replay(directory: str, rec: Recorder, filt: Filter | None = None, *, speed: float = 0.0, limit: int = 0) -> int:
    """Record the events of the archive in ``directory`` that pass ``filt`` into ``rec``, oldest
    first, at ``speed`` times their original pace (0: as fast as possible). Returns how many."""
    if speed < 0:
        raise ValueError(f"speed must be >= 0, got {speed!r}")
    n = 0
    t0 = first = 0.0
    for row in query(directory, filt, limit):
        if speed:
            ts = row[0] / 1e9
            if not n:
                t0, first = time.monotonic(), ts
            else:
                delay = (ts - first) / speed - (time.monotonic() - t0)
                if delay > 0:
                    time.sleep(delay)
        rec.record_event(row_event(row), log=False)
        n += 1
    return n
