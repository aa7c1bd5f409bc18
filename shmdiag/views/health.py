"""Health: what an operator of a node wants to know, with thresholds they can reason about.

Overwriting the oldest events is how a ring works in steady state and is never a problem by
itself. What is:

================  ============================================================================
status            when (the first that applies, worst first)
================  ============================================================================
``stopped``       the recorder is closed
``error``         error rate >= 50%, or >= 10% of recorded events lost or abandoned
``degraded``      error rate >= 20%, or >= 1% of recorded events lost or abandoned
``warning``       error rate >= 5%, any event lost or abandoned, a writer process died
                  without detaching, a writer's counters do not add up (damaged memory), or
                  the peer table is full: more peers connected than ``max_peers``, or a
                  connect since the last clear found no entry (``peers_untracked``)
``healthy``       otherwise
================  ============================================================================

Error rate is (ERROR + CRITICAL) / total, as in the Go original. "Lost" events were dropped
because their slot was still being written by a slower (or stopped) writer a lap behind;
"abandoned" ones belonged to a writer that died mid-record. The peer table has 2 x ``max_peers``
entries and recycles those of disconnected peers, so it tracks every connected peer up to
``max_peers`` of them at once; beyond that, per-peer figures become incomplete.
"""

from __future__ import annotations

from shmdiag.core.models import HealthStatus

ERROR_RATE_WARNING = 0.05
ERROR_RATE_DEGRADED = 0.20
ERROR_RATE_ERROR = 0.50
LOSS_DEGRADED = 0.01
LOSS_ERROR = 0.10


def classify(h: HealthStatus) -> tuple[str, str]:
    """(status, message) for the figures in ``h``."""
    loss = h.events_lost + h.events_abandoned
    loss_rate = loss / h.total_events if h.total_events else 0.0
    reasons: list[tuple[int, str]] = []
    er = h.error_rate
    if er >= ERROR_RATE_ERROR:
        reasons.append((3, f"error rate {er:.1%} >= {ERROR_RATE_ERROR:.0%}"))
    elif er >= ERROR_RATE_DEGRADED:
        reasons.append((2, f"error rate {er:.1%} >= {ERROR_RATE_DEGRADED:.0%}"))
    elif er >= ERROR_RATE_WARNING:
        reasons.append((1, f"error rate {er:.1%} >= {ERROR_RATE_WARNING:.0%}"))
    if loss:
        level = 3 if loss_rate >= LOSS_ERROR else 2 if loss_rate >= LOSS_DEGRADED else 1
        reasons.append((level, f"{loss} events lost or abandoned ({loss_rate:.2%} of recorded)"))
    if h.writers_inconsistent:
        reasons.append((1, f"{h.writers_inconsistent} writer shard(s) with counters that do not add up (damaged)"))
    if h.writers_dead:
        reasons.append((1, f"{h.writers_dead} writer process(es) died without detaching"))
    if h.peers_untracked or (h.max_peers and h.active_peers > h.max_peers):
        reasons.append((1, f"peer table full: {h.active_peers} peers connected (max_peers {h.max_peers}), "
                           f"{h.peers_untracked} connects untracked"))
    if not reasons:
        if h.total_events == 0:
            return "healthy", "no events recorded yet"
        return "healthy", f"{h.total_events} events recorded, error rate {er:.1%}"
    worst = max(level for level, _ in reasons)
    reasons.sort(key=lambda r: -r[0])
    return ("warning", "degraded", "error")[worst - 1], "; ".join(text for _, text in reasons)
