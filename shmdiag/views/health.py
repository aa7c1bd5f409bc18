"""Health: what an operator of a node wants to know, with thresholds they can reason about.

Overwriting the oldest events is how a ring works in steady state and is never a problem by
itself. What is:

================  ============================================================================
status            when (the first that applies, worst first)
================  ============================================================================
``stopped``       the recorder is closed
``error``         the ring's name was removed or now leads to another segment (this process
                  records into an orphan nobody else can see), the ring's collector was
                  killed (it is named in the header but no longer runs), error rate >= 50%,
                  or >= 10% of recorded events lost or abandoned
``degraded``      error rate >= 20%, or >= 1% of recorded events lost or abandoned
``warning``       error rate >= 5%, any event lost or abandoned, a writer process died
                  without detaching, a writer's counters do not add up (damaged memory), or
                  the peer table is full: more peers connected than ``max_peers``, or a
                  connect since the last clear found no entry (``peers_untracked``)
``healthy``       otherwise
================  ============================================================================

Error rate is (ERROR + CRITICAL) / total, as in the Go original. "Lost" events were dropped
because their slot was still being written by a slower (or stopped) writer a lap behind;
"abandoned" ones belonged to a writer that died mid-record. A ring without a collector (a
library ``Recorder(collector=False)``, or whose collector stopped cleanly) expects none: that is
not a problem; one whose collector was killed gets no retention cleanup and no reaping until
``shmdiag serve`` adopts it. The peer table has 2 x ``max_peers``
entries and recycles those of disconnected peers, so it tracks every connected peer up to
``max_peers`` of them at once; beyond that, per-peer figures become incomplete.

Capacity. A ring of N events holds the last N events recorded, exactly, with one writer: the
rest of a run a writer gives up goes back to the head (``drop_run`` in ``core/_native.c``). With
several, a run can be given back only while nobody has claimed after it; otherwise its rest
stays *unused* (``seqs_unused``, reported in the message) and the ring holds up to that many
fewer events. The bound: a writer gives up the rest of a run only when it was paused (stopped,
descheduled) for more than ``RUN_TTL_NS`` (10 ms) in the middle of it, or closes in the middle
of it, and the rest is at most ``run_max(capacity)`` seqs (64 on rings of 64Ki events or more,
fewer below, 1 under 2Ki). So the shortfall is at most ``run_max`` per such pause or close while
another writer was recording, and never more than ``seqs_unused``. It is a warning once it
reaches ``UNUSED_WARNING`` of what was recorded (a machine so overloaded that writers keep
being paused mid-run for 10 ms and more).
"""

from __future__ import annotations

from shmdiag.core.models import HealthStatus

ERROR_RATE_WARNING = 0.05
ERROR_RATE_DEGRADED = 0.20
ERROR_RATE_ERROR = 0.50
LOSS_DEGRADED = 0.01
LOSS_ERROR = 0.10
UNUSED_WARNING = 0.01


def classify(h: HealthStatus) -> tuple[str, str]:
    """(status, message) for the figures in ``h``."""
    loss = h.events_lost + h.events_abandoned
    loss_rate = loss / h.total_events if h.total_events else 0.0
    reasons: list[tuple[int, str]] = []
    if h.detached:
        reasons.append((3, h.detached))
    if h.collector_alive is False:
        reasons.append((3, f"collector (pid {h.collector_pid}) is not running"))
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
    unused = ""
    if h.seqs_unused:
        unused = (f"{h.seqs_unused} sequence numbers left unused by writers paused mid-run "
                  f"(the ring holds up to that many fewer than {h.max_events} events)")
        if h.seqs_unused >= UNUSED_WARNING * max(h.total_events, 1):
            reasons.append((1, unused))
            unused = ""
    if h.peers_untracked or (h.max_peers and h.active_peers > h.max_peers):
        reasons.append((1, f"peer table full: {h.active_peers} peers connected (max_peers {h.max_peers}), "
                           f"{h.peers_untracked} connects untracked"))
    if not reasons:
        if h.total_events == 0:
            return "healthy", "no events recorded yet"
        return "healthy", "; ".join(filter(None, [f"{h.total_events} events recorded, error rate {er:.1%}", unused]))
    worst = max(level for level, _ in reasons)
    reasons.sort(key=lambda r: -r[0])
    texts = [text for _, text in reasons] + ([unused] if unused else [])
    return ("warning", "degraded", "error")[worst - 1], "; ".join(texts)
