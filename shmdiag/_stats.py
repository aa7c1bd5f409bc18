"""Stats: the sum of every writer shard of the current era, plus the shared peer table.

Stats never scan the ring, so they cover overwritten events too and cost the same on a ring of
a thousand events or a million.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _layout as L
from ._models import DiagnosticStats, Severity
from ._peers import connected_peers
from ._reader import ns_to_datetime
from ._segment import Segment


@dataclass
class Accounting:
    """Where every recorded event went: recorded = retained + overwritten + lost + abandoned + expired."""

    recorded: int
    overwritten: int
    lost: int
    abandoned: int
    expired: int
    in_flight: int = 0  # live writers inside a record right now: the books close when this is 0


def _era_shards(seg: Segment) -> np.ndarray:
    _, base = seg.era()
    seg.native.fence()
    shards = seg.shards.copy()
    used = (shards["owner"] & 0xFF) != L.SH_FREE
    return shards[used & (shards["base"] == base)]


def accounting(seg: Segment) -> Accounting:
    s = _era_shards(seg)
    busy = int(((s["journal"] != 0) & ((s["owner"] & 0xFF) == L.SH_ACTIVE)).sum())
    return Accounting(*(int(s[f].sum()) for f in ("recorded", "overwritten", "lost", "abandoned", "expired")), busy)


def compute(seg: Segment) -> DiagnosticStats:
    shards = _era_shards(seg)
    total = int(shards["recorded"].sum())
    stats = DiagnosticStats(total_events=total)
    if not seg.metrics:
        stats.events_by_severity = {s: 0 for s in Severity}
        return stats
    sev = shards["sev"].sum(axis=0)
    stats.events_by_severity = {s: int(sev[s]) for s in Severity}
    by_type: dict[str, int] = {}
    for sh in shards:
        n = min(int(sh["ntypes"]), L.TYPE_SLOTS)
        counts = sh["type_count"]
        for j in np.flatnonzero(counts[:n]):
            name = bytes(sh["type_name"][j])[: int(sh["type_len"][j])].decode("utf-8", "replace")
            by_type[name] = by_type.get(name, 0) + int(counts[j])
    stats.events_by_type = by_type
    counted = shards[shards["recorded"] > 0]
    if len(counted):
        stats.first_event = ns_to_datetime(int(counted["first_ts"].min()))
        stats.last_event = ns_to_datetime(int(counted["last_ts"].max()))
    stats.active_peers = len(connected_peers(seg))
    stats.error_rate = (int(sev[Severity.ERROR]) + int(sev[Severity.CRITICAL])) / total if total else 0.0
    return stats
