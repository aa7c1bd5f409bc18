"""The retained events of a recent window, counted by severity: what a one-shot health check,
which has no earlier sample of the counters, judges a window's error rate from.

Timestamps are taken at record time and sequence numbers claimed a run at a time, so along the
ring's sequence numbers timestamps are ordered up to a writer's pause (``RUN_TTL_NS``) or an
event recorded with an explicit timestamp. A binary search over sequence numbers, with a second
of slack, finds where the window starts; only the slots from there on are read, and each is
then taken or not by its own timestamp. The cost is that of the window's events, not the ring's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shmdiag.core import kinds as K
from shmdiag.core import layout as L
from shmdiag.core.segment import Segment

SLACK_NS = 1_000_000_000  # how far out of order timestamps may be along sequence numbers


@dataclass(frozen=True)
class RecentCounts:
    """Retained events stamped at or after ``since_ns``, by severity (DEBUG..CRITICAL).

    ``complete``: every event recorded since ``since_ns`` that was not lost is among them (the
    ring has overwritten or retired nothing that recent); otherwise they cover only from
    ``from_ns``, the oldest retained event's timestamp."""

    since_ns: int
    from_ns: int
    complete: bool
    by_severity: tuple[int, ...]


def severities_since(seg: Segment, since_ns: int) -> RecentCounts:
    """Count the retained events stamped at or after ``since_ns`` by severity (see the module
    docstring). Reads the slots of the window only; every word is validated as untrusted."""
    head, base = seg.era()
    cap = seg.capacity
    lo = max(base, head - cap)
    seg.native.fence()
    if head <= lo:
        return RecentCounts(since_ns, since_ns, True, (0,) * 5)
    ts_col = seg.slots["ts_ns"]
    # First sequence number whose slot is stamped at or after since_ns - slack (the slots may
    # be mid-write or garbage: a wrong step only reads a few more or fewer slots below).
    target = since_ns - SLACK_NS
    a, b = lo, head
    while a < b:
        mid = (a + b) // 2
        if int(ts_col[mid % cap]) < target:
            a = mid + 1
        else:
            b = mid
    start = a
    counts = np.zeros(5, dtype=np.int64)
    oldest = None
    # [start, head) as at most two contiguous slot ranges
    s = start
    while s < head:
        i0 = s % cap
        n = min(head - s, cap - i0)
        w = seg.slots["w"][i0: i0 + n].copy()
        ts = ts_col[i0: i0 + n].copy()
        kind = seg.slots["kind"][i0: i0 + n].copy()
        seg.native.fence()
        w_after = seg.slots["w"][i0: i0 + n]
        seq = L.w_seq(w)
        sev = L.w_severity(w)
        ok = ((w != 0) & (w == w_after) & (L.w_state(w) == L.ST_COMMITTED) & (sev <= 4)
              & (seq == np.arange(s, s + n, dtype=np.uint64)) & (kind != K.KIND_CONTINUATION))
        if ok.any():
            t = ts[ok]
            o = int(t.min())
            oldest = o if oldest is None else min(oldest, o)
            counts += np.bincount(sev[ok & (ts >= since_ns)].astype(np.int64), minlength=5)[:5]
        s += n
    # Complete when the ring still holds what was recorded around since_ns: the search did not
    # stop at the oldest retained seq (or that one is older than since_ns).
    first_ts = int(ts_col[lo % cap])
    complete = start > lo or first_ts <= since_ns or lo == base
    from_ns = since_ns if complete else max(since_ns, oldest if oldest is not None else since_ns)
    return RecentCounts(since_ns, from_ns, complete, tuple(int(c) for c in counts))
