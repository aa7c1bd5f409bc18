"""Latency percentiles per timed operation, from the ring-wide histograms.

Each operation has a log-bucketed histogram (DDSketch's idea, see core/layout.py) that every
process adds to with atomic increments, so percentiles cover every span ever recorded since
the last clear, however many of their events the ring has overwritten, in fixed memory.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class OpHistogram:
    """One operation's merged histogram (of the current clear generation): ``buckets[i]``
    durations fell in bucket ``i`` (``layout.latency_bucket``: gamma**(i-1) < ns <= gamma**i),
    ``errors`` spans raised, ``sum_ns`` and ``max_ns`` as the writers added them. Read by
    exporters that re-bucket it (``shmdiag.metrics``); ``count`` is the buckets' sum."""

    buckets: np.ndarray
    errors: int = 0
    sum_ns: int = 0
    max_ns: int = 0

    @property
    def count(self) -> int:
        return int(self.buckets.sum())


def upper_bound_ns(bucket: int) -> float:
    """The largest duration (ns) bucket ``bucket`` holds (``layout.latency_bucket``)."""
    return 1.0 if bucket <= 0 else float(L.LATENCY_GAMMA**bucket)


def histograms(seg: Segment) -> dict[str, OpHistogram]:
    """Every operation with a span since the last clear, by name (sorted): one copy of the
    operation table, banks of the current generation only; slots of one name merged."""
    gen, ops = snapshot.op_table(seg)
    bank = L.op_bank(gen)
    merged: dict[str, OpHistogram] = {}
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
        m = merged.setdefault(name, OpHistogram(np.zeros(L.OP_BUCKETS, np.uint64)))
        m.buckets += b["buckets"]
        m.errors += int(b["errors"])
        m.sum_ns += int(b["sum_ns"])
        m.max_ns = max(m.max_ns, int(b["max_ns"]))
    return dict(sorted(merged.items()))


def read(seg: Segment) -> dict[str, LatencyStats]:
    out: dict[str, LatencyStats] = {}
    for name, h in histograms(seg).items():
        n = h.count  # the buckets, not the count word: a writer adds its bucket first
        out[name] = LatencyStats(
            count=n, errors=h.errors, mean=h.sum_ns / n / 1e9 if n else 0.0,
            p50=quantile(h.buckets, 0.50, h.max_ns) / 1e9, p90=quantile(h.buckets, 0.90, h.max_ns) / 1e9,
            p99=quantile(h.buckets, 0.99, h.max_ns) / 1e9, max=h.max_ns / 1e9,
        )
    return out
