"""Latency percentiles per timed operation, from the ring-wide histograms.

Each operation has a log-bucketed histogram (DDSketch's idea, see core/layout.py) that every
process adds to with atomic increments, so percentiles cover every span ever recorded since
the last clear, however many of their events the ring has overwritten, in fixed memory.
"""

from __future__ import annotations

import numpy as np

from shmdiag.core import layout as L
from shmdiag.core import snapshot
from shmdiag.core.models import LatencyStats
from shmdiag.core.segment import Segment

_VALUES = np.array([L.latency_value(b) for b in range(L.OP_BUCKETS)])


def quantile(buckets: np.ndarray, q: float, max_ns: int) -> float:
    """The q-quantile (ns) of a histogram: the bucket holding the element of rank
    floor(q * (n - 1)), as numpy's percentile(method="lower") picks it."""
    cum = np.cumsum(buckets, dtype=np.uint64)
    n = int(cum[-1])
    if n == 0:
        return 0.0
    rank = int(q * (n - 1))
    b = int(np.searchsorted(cum, rank, side="right"))
    return min(float(_VALUES[b]), float(max_ns))


def read(seg: Segment) -> dict[str, LatencyStats]:
    gen, ops = snapshot.op_table(seg)
    bank = L.op_bank(gen)
    merged: dict[str, list] = {}
    for j in range(L.OP_SLOTS):
        st = int(ops["name_state"][j])
        if j == L.OP_SLOTS - 1:
            name = L.OTHER_OP
        elif L.name_ready(st):
            name = bytes(ops["name"][j])[: L.name_len(st)].decode("utf-8", "replace")
        else:
            continue
        b = ops["banks"][j, bank]
        if int(b["gen"]) != gen:  # being zeroed for the next generation (a clear in progress)
            continue
        if not int(b["count"]) and not int(b["errors"]):
            continue
        m = merged.setdefault(name, [np.zeros(L.OP_BUCKETS, np.uint64), 0, 0, 0])
        m[0] += b["buckets"]
        m[1] += int(b["errors"])
        m[2] += int(b["sum_ns"])
        m[3] = max(m[3], int(b["max_ns"]))
    out: dict[str, LatencyStats] = {}
    for name, (buckets, errors, total_ns, max_ns) in sorted(merged.items()):
        n = int(buckets.sum())  # the buckets, not the count word: a writer adds its bucket first
        out[name] = LatencyStats(
            count=n, errors=errors, mean=total_ns / n / 1e9 if n else 0.0,
            p50=quantile(buckets, 0.50, max_ns) / 1e9, p90=quantile(buckets, 0.90, max_ns) / 1e9,
            p99=quantile(buckets, 0.99, max_ns) / 1e9, max=max_ns / 1e9,
        )
    return out
