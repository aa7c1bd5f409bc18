"""Stats: the sum of every writer shard of the current era, plus the shared peer table.

Stats never scan the ring, so they cover overwritten events too and cost the same on a ring of
a thousand events or a million.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shmdiag.core import layout as L
from shmdiag.core import snapshot
from shmdiag.core.models import DiagnosticStats, Severity
from shmdiag.core.reader import ns_to_datetime
from shmdiag.core.segment import Segment
from shmdiag.views.peers import connected_count


@dataclass
class Accounting:
    """Where every event recorded since creation or the last clear went, from one consistent
    copy of the books (``core.snapshot.Counters``):
    ``recorded == retained + overwritten + lost + abandoned + expired`` exactly, with
    ``0 <= retained <= min(max_events, recorded)``. ``in_flight`` events are claimed by a writer
    still inside a record (or dead there, not yet reaped) and in none of those terms; at rest it
    is 0 and ``retained`` is exactly what ``get_events(0)`` returns."""

    recorded: int
    overwritten: int
    lost: int
    abandoned: int
    expired: int
    in_flight: int = 0  # live writers inside a record right now: the books close when this is 0
    retained: int = 0
    # Sequence numbers claimed and never used (not events): runs given up by writers paused for
    # longer than a run lives while others claimed after them. The ring holds up to this many
    # fewer events than its capacity; see views/health.py for the bound.
    unused: int = 0


def accounting(seg: Segment) -> Accounting:
    """The books from the shard table alone: never a slot, so the same cost at any ring size."""
    c = snapshot.counters(seg)
    return Accounting(recorded=c.recorded, overwritten=c.overwritten, lost=c.lost, abandoned=c.abandoned,
                      expired=c.expired, in_flight=c.in_flight, retained=c.retained, unused=c.unused)


def consistent(shards: np.ndarray) -> np.ndarray:
    """Which shards' breakdowns add up to what they recorded. A writer adds to its severity and
    type counters just before ``recorded`` (see core/_native.c), so a live one may be one ahead;
    anything else is damage, and such a shard's breakdown is not believed."""
    rec = shards["recorded"].astype(np.float64)[:, None]
    ok = np.ones(len(shards), dtype=bool)
    for f in ("sev", "type_count"):
        col = shards[f].astype(np.float64)  # exact below 2**53, and no wrap-around above
        total = col.sum(axis=1)
        ok &= (col <= rec + 1).all(axis=1) & (total >= rec[:, 0]) & (total <= rec[:, 0] + 1)
    return ok


def compute(seg: Segment) -> DiagnosticStats:
    shards = snapshot.era_shards(seg)
    total = snapshot.total(shards["recorded"])
    stats = DiagnosticStats(total_events=total)
    if not snapshot.metrics_enabled(seg):
        stats.events_by_severity = {s: 0 for s in Severity}
        return stats
    good = consistent(shards)
    stats.writers_inconsistent = int((~good).sum())
    counted = shards[good]
    sev = [snapshot.total(counted["sev"][:, s]) for s in Severity]
    stats.events_by_severity = {s: sev[s] for s in Severity}
    by_type: dict[str, int] = {}
    for sh in counted:
        n = min(int(sh["ntypes"]), L.TYPE_SLOTS)
        counts = sh["type_count"]
        for j in np.flatnonzero(counts[:n]):
            tlen = min(int(sh["type_len"][j]), L.TYPE_NAME_SIZE)
            name = bytes(sh["type_name"][j])[:tlen].decode("utf-8", "replace")
            by_type[name] = by_type.get(name, 0) + int(counts[j])
    stats.events_by_type = by_type
    recorded = shards[shards["recorded"] > 0]
    if len(recorded):
        stats.first_event = ns_to_datetime(int(recorded["first_ts"].min()))
        stats.last_event = ns_to_datetime(int(recorded["last_ts"].max()))
    stats.active_peers = connected_count(seg)
    # Over the shards whose breakdown is believed, so the rate stays within 0..1.
    believed = snapshot.total(counted["recorded"])
    errors = sev[Severity.ERROR] + sev[Severity.CRITICAL]
    stats.error_rate = min(1.0, errors / believed) if believed else 0.0
    return stats


@dataclass
class MessageTotals:
    """Protocol messages and their bytes by message type, each way, over every writer of the era
    (since creation or the last clear): exact, from each writer's own counters, whatever
    happened to the peer entries (recycled, untracked, full table). Types are the ring's named
    message types; the rest, and types named while being read, are under ``*other*``.
    ``writers_inconsistent``: shards whose counters exceed what they recorded (damage), left out."""

    messages_sent: dict[str, int] = field(default_factory=dict)
    messages_received: dict[str, int] = field(default_factory=dict)
    bytes_sent: dict[str, int] = field(default_factory=dict)
    bytes_received: dict[str, int] = field(default_factory=dict)
    writers_inconsistent: int = 0


def message_totals(seg: Segment) -> MessageTotals:
    """Messages and bytes by type and direction, summed over the era's writer shards (never a
    slot or a peer entry: the same cost at any ring size and peer count)."""
    out = MessageTotals()
    if not snapshot.metrics_enabled(seg):
        return out
    recorded, counts, nbytes = snapshot.message_counters(seg)
    rec = recorded.astype(np.float64)
    c = counts.astype(np.float64)  # exact below 2**53, and no wrap-around above
    good = c.reshape(len(c), 2 * L.MSG_TYPES).sum(axis=1) <= rec + 1
    out.writers_inconsistent = int((~good).sum())
    names = snapshot.message_types(seg)
    d_out = L.MSG_DIRECTIONS.index("outbound")
    for d, msgs, byts in ((d_out, out.messages_sent, out.bytes_sent),
                          (1 - d_out, out.messages_received, out.bytes_received)):
        for j in range(L.MSG_TYPES):
            n = snapshot.total(counts[good, d, j])
            if not n:
                continue
            name = names[j] or L.OTHER_MSG  # an entry still being named when read
            msgs[name] = msgs.get(name, 0) + n
            byts[name] = min(byts.get(name, 0) + snapshot.total(nbytes[good, d, j]), L.U64_MAX)
    return out
