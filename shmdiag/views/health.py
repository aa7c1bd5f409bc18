"""Health: what an operator of a node wants to know, with thresholds they can reason about.

Overwriting the oldest events is how a ring works in steady state and is never a problem by
itself. What is (each condition is one ``HealthReason``; the status is the worst of them):

====================  =====================================================================
condition             status
====================  =====================================================================
``detached``          ``error``: the ring's name was removed or now leads to another segment
                      (this process records into an orphan nobody else can see)
``collector_dead``    ``error``: the ring's collector was killed (named in the header, no
                      longer running)
``error_rate``        over the window, errors (ERROR + CRITICAL) / events at or above
                      ``error_rate_min_severity`` (INFO by default, so DEBUG volume does not
                      move it): ``warning`` >= 5%, ``degraded`` >= 20%, ``error`` >= 50%
``events_lost``       over the window, events lost or abandoned: ``warning`` if any,
                      ``degraded`` >= 1% of those recorded in the window, ``error`` >= 10%
``writers_died``      ``warning``: a writer process died without detaching within the window
``stalled``           ``warning``: no event for ``stall_after`` seconds (300) while writer
                      processes are alive
``peer_table_full``   ``warning``: more peers connected than ``max_peers`` now, or a connect
                      found no entry within the window
``writers_inconsistent``  ``warning``: a writer's counters do not add up (damaged memory)
``seqs_unused``       ``warning``: sequence numbers left unused within the window reach 1% of
                      the events recorded in it (see Capacity below)
====================  =====================================================================

``healthy`` when none applies; ``stopped`` when the recorder or inspector is closed.

The window. Loss, deaths, errors, unused sequence numbers and untracked peers are judged over
the last ``window`` seconds (300 by default), so an incident stops counting once it is older
than that; the since-creation totals stay in the status (``events_lost``, ``writers_dead``,
``error_rate``, ...) and in its message. The figures of the window come from a *baseline*, the
ring's counters as they were ``window`` seconds ago (``window_source`` says which):

* ``"history"``: a sample taken by this process at least ``window`` seconds ago. Every
  ``health_check()`` of an Inspector or Recorder adds a sample to its :class:`History`, so a
  collector (``shmdiag serve`` checks every 5 s), ``top`` or a dashboard gets exact figures once
  it has run for a window;
* ``"creation"``: the ring (or its current era) is younger than the window: everything since
  creation is in it, exactly;
* ``"timestamps"``: otherwise (a one-shot ``shmdiag health``), from the writers' own
  timestamps: a writer shard whose last event is older than the window counted everything
  before it, one that recorded within it is taken whole into the window (an upper bound, so a
  writer still recording keeps its older losses and errors in a one-shot window). A dead
  writer whose last event is within the window died within it; one that recorded nothing for
  a whole window before dying is taken to have died before it. Without metrics
  (``enable_metrics=False``) writers keep no timestamps: every figure is taken into the window.

The evaluation itself, :func:`evaluate`, is a pure function of counter samples
(:class:`Sample`), a baseline and a :class:`Policy`, for anything that wants to judge samples
it keeps itself (alert rules).

A ring without a collector (a library ``Recorder(collector=False)``, or whose collector stopped
cleanly) expects none: that is not a problem; one whose collector was killed gets no retention
cleanup and no reaping until ``shmdiag serve`` adopts it. The peer table has 2 x ``max_peers``
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

import dataclasses
import math
import time
from collections import deque
from dataclasses import dataclass

from shmdiag.core import layout as L
from shmdiag.core import snapshot
from shmdiag.core.models import DeadWriter, HealthReason, HealthStatus, Severity
from shmdiag.core.reader import ns_to_datetime
from shmdiag.core.recent import RecentCounts
from shmdiag.core.segment import Segment
from shmdiag.core.shards import writer_alive
from shmdiag.views.stats import consistent

ERROR_RATE_WARNING = 0.05
ERROR_RATE_DEGRADED = 0.20
ERROR_RATE_ERROR = 0.50
LOSS_DEGRADED = 0.01
LOSS_ERROR = 0.10
UNUSED_WARNING = 0.01
DEFAULT_WINDOW = 300.0       # seconds: the recent window conditions are judged over
DEFAULT_STALL_AFTER = 300.0  # seconds without an event, writers alive, before "stalled" (0: never)
DEFAULT_ERROR_RATE_MIN_SEVERITY = Severity.INFO  # error rate = errors / events at or above this

STATUS_ORDER = ("healthy", "warning", "degraded", "error")
# Nagios/Icinga plugin exit codes: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (the ring cannot be read).
EXIT_OK, EXIT_WARNING, EXIT_CRITICAL, EXIT_UNKNOWN = 0, 1, 2, 3
_EXIT = {"healthy": EXIT_OK, "warning": EXIT_WARNING}  # degraded, error, stopped: CRITICAL
NAGIOS_LABEL = {EXIT_OK: "OK", EXIT_WARNING: "WARNING", EXIT_CRITICAL: "CRITICAL", EXIT_UNKNOWN: "UNKNOWN"}


def exit_code(status: str) -> int:
    """The Nagios plugin exit code of a health status: 0 healthy, 1 warning, 2 otherwise."""
    return _EXIT.get(status, EXIT_CRITICAL)


@dataclass(frozen=True)
class Policy:
    """How health is judged: the window, the stall threshold and the error rate's denominator."""

    window: float = DEFAULT_WINDOW
    stall_after: float = DEFAULT_STALL_AFTER
    error_rate_min_severity: Severity = DEFAULT_ERROR_RATE_MIN_SEVERITY

    def __post_init__(self) -> None:
        for f, positive in (("window", True), ("stall_after", False)):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"{f} must be a number of seconds, not {type(v).__name__}")
            if not math.isfinite(v) or (v <= 0 if positive else v < 0):
                raise ValueError(f"{f} must be {'positive' if positive else '>= 0 (0: off)'} seconds, got {v!r}")
            object.__setattr__(self, f, float(v))
        sev = self.error_rate_min_severity
        try:
            if isinstance(sev, bool):
                raise ValueError
            if isinstance(sev, str):
                sev = Severity[sev.upper()]
            object.__setattr__(self, "error_rate_min_severity", Severity(sev))
        except (KeyError, ValueError, TypeError):
            raise ValueError(f"error_rate_min_severity must be a Severity (0-4 or a name), got {sev!r}") from None


# -- samples: the ring's counters at one moment --------------------------------------------------
@dataclass(frozen=True)
class WriterSample:
    """One writer shard's counters (those of the current era; zeros for a cleared era's)."""

    pid: int
    start_time: int      # the owner's process start time (ms): with pid, who it is
    state: str           # "active", "exited" or "dead" (died without detaching)
    believed: bool       # its severity breakdown adds up (else left out of error rates)
    recorded: int = 0
    lost: int = 0
    abandoned: int = 0
    unused: int = 0
    sev: tuple[int, ...] = (0, 0, 0, 0, 0)
    last_ts: int = 0     # ns of its newest event; 0: none, or no metrics


@dataclass(frozen=True)
class Sample:
    """The counters health needs, read at ``taken_ns`` (wall clock ns)."""

    taken_ns: int
    created_ns: int
    era: int             # the base of the current era: samples of different eras do not compare
    metrics: bool        # writers keep timestamps and severity counts
    writers: tuple[WriterSample, ...]
    peers_untracked: int = 0

    @property
    def last_event_ns(self) -> int:
        return max((w.last_ts for w in self.writers), default=0)


def take_sample(seg: Segment, now_ns: int | None = None) -> Sample:
    """A :class:`Sample` of ``seg`` from one copy of its shard table (never a slot)."""
    base, table = snapshot.shards(seg)
    metrics = snapshot.metrics_enabled(seg)
    t = table[L.owner_state(table["owner"]) != L.SH_FREE]
    ok = consistent(t).tolist()
    col = {f: t[f].tolist() for f in ("owner", "start_time", "base", "recorded", "lost", "abandoned", "unused",
                                      "last_ts")}
    sevs = t["sev"].tolist()
    writers = []
    for k, w in enumerate(col["owner"]):
        start = col["start_time"][k]
        alive = writer_alive(w, start)
        state = "active" if alive else "exited" if L.owner_state(w) == L.SH_EXITED else "dead"
        if col["base"][k] != base:  # a cleared era's counters: none of this era's
            writers.append(WriterSample(L.owner_pid(w), start, state, True))
            continue
        writers.append(WriterSample(
            pid=L.owner_pid(w), start_time=start, state=state, believed=bool(ok[k]),
            recorded=col["recorded"][k], lost=col["lost"][k], abandoned=col["abandoned"][k],
            unused=col["unused"][k], sev=tuple(sevs[k]), last_ts=col["last_ts"][k] if metrics else 0))
    untracked = snapshot.untracked(seg)[0] if metrics else 0
    return Sample(taken_ns=time.time_ns() if now_ns is None else now_ns, created_ns=seg.created_ns, era=base,
                  metrics=metrics, writers=tuple(writers), peers_untracked=untracked)


class History:
    """Recent samples of one ring, for windowed figures: thinned so that it holds a few hundred
    at most whatever the check rate, and none older than needed for the longest window asked."""

    def __init__(self, keep: int = 240) -> None:
        self._samples: deque[Sample] = deque()
        self._keep = keep
        self._span = 0.0  # the longest window asked so far: how far back samples are kept

    def add(self, s: Sample, window: float) -> None:
        self._span = max(window, self._span)
        q = self._samples
        if q and (q[-1].era != s.era or q[-1].created_ns != s.created_ns or q[-1].taken_ns > s.taken_ns):
            q.clear()  # a clear or another ring (or the clock went back): the old ones do not compare
        # Thinning: a new sample replaces the newest if that one is closer than span/keep to the
        # one before it, so samples stay about span/keep apart.
        if len(q) >= 2 and q[-1].taken_ns - q[-2].taken_ns < self._span * 1e9 / self._keep:
            q.pop()
        q.append(s)
        # Keep one sample older than the span (the baseline of the longest window), none older.
        horizon = s.taken_ns - self._span * 1e9
        while len(q) >= 2 and q[1].taken_ns <= horizon:
            q.popleft()

    def baseline(self, now_ns: int, window: float) -> Sample | None:
        """The newest sample at least ``window`` seconds old, if any."""
        cutoff = now_ns - window * 1e9
        best = None
        for s in self._samples:
            if s.taken_ns <= cutoff:
                best = s
            else:
                break
        return best

    def __len__(self) -> int:
        return len(self._samples)


# -- evaluation ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Totals:
    recorded: int = 0
    lost: int = 0
    abandoned: int = 0
    unused: int = 0
    errors: int = 0   # ERROR + CRITICAL, of shards whose breakdown adds up
    rated: int = 0    # events at or above the error rate's minimum severity, same shards

    def __sub__(self, o: Totals) -> Totals:
        return Totals(*(max(0, a - b) for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(o),
                                                         strict=True)))


def totals(writers: tuple[WriterSample, ...] | list[WriterSample], min_sev: int) -> Totals:
    rec = lost = ab = un = err = rated = 0
    for w in writers:
        rec, lost, ab, un = rec + w.recorded, lost + w.lost, ab + w.abandoned, un + w.unused
        if w.believed:
            err += w.sev[Severity.ERROR] + w.sev[Severity.CRITICAL]
            rated += sum(w.sev[min_sev:])
    return Totals(rec, lost, ab, un, err, rated)


def _dead(s: Sample) -> dict[tuple[int, int], WriterSample]:
    return {(w.pid, w.start_time): w for w in s.writers if w.state == "dead"}


def _secs(v: float) -> str:
    """A short human duration: 1.5s, 90s, 5m, 2h30m."""
    if v < 100:
        return f"{v:.3g}s"
    m = round(v / 60)
    if m < 120:
        return f"{m}m" if abs(v - 60 * m) < 1 else f"{v:.0f}s"
    return f"{m // 60}h{m % 60:02d}m" if m % 60 else f"{m // 60}h"


def _usable(current: Sample, baseline: Sample | None) -> bool:
    return baseline is not None and baseline.era == current.era and baseline.created_ns == current.created_ns


def recent_needed(current: Sample, baseline: Sample | None, policy: Policy) -> int | None:
    """The cutoff (wall ns) from which :func:`evaluate` wants the retained events counted by
    severity (``core.recent.severities_since``), or None: only when the window is judged from
    timestamps and a writer recorded both before and within it (its counters cannot be split)."""
    cutoff = current.taken_ns - int(policy.window * 1e9)
    if _usable(current, baseline) or current.created_ns >= cutoff or not current.metrics:
        return None
    return cutoff if any(w.last_ts >= cutoff for w in current.writers) else None


def evaluate(h: HealthStatus, current: Sample, baseline: Sample | None, policy: Policy = Policy(),
             recent: RecentCounts | None = None) -> HealthStatus:
    """``h`` (its since-creation figures and current state filled in: collector, detached,
    peers, writers_inconsistent, ...) with its window figures, ``reasons``, ``status`` and
    ``message`` computed from ``current`` and ``baseline`` (a sample at least ``policy.window``
    old, from a :class:`History`, or None: then from creation or the writers' timestamps, see
    the module docstring). ``recent``: the retained events of the window by severity, when
    :func:`recent_needed` asked for them; the window's error rate is then theirs. Pure: reads
    nothing but its arguments."""
    now = current.taken_ns
    window = policy.window
    min_sev = int(policy.error_rate_min_severity)
    cutoff = now - int(window * 1e9)
    rc = recent if recent is not None and recent.since_ns == cutoff else None
    cur = totals(current.writers, min_sev)
    dead_now = _dead(current)
    rate_covered = None  # seconds the window's error rate covers, when less than the window
    if baseline is not None and _usable(current, baseline):
        source, covered = "history", (now - baseline.taken_ns) / 1e9
        win = cur - totals(baseline.writers, min_sev)
        dead_then = _dead(baseline)
        died = [w for k, w in dead_now.items() if k not in dead_then]
        untracked = max(0, current.peers_untracked - baseline.peers_untracked)
    elif current.created_ns >= cutoff:
        source, covered = "creation", max(0.0, (now - current.created_ns) / 1e9)
        win, died, untracked = cur, list(dead_now.values()), current.peers_untracked
    else:
        source, covered = "timestamps", window
        active = [w for w in current.writers if not current.metrics or w.last_ts >= cutoff]
        win = totals(active, min_sev)
        died = [w for w in active if w.state == "dead"]
        untracked = 0  # the header's counter has no timestamp: only the current state counts
        if rc is not None:  # errors and rated events from the retained events themselves
            win = dataclasses.replace(win, errors=rc.by_severity[Severity.ERROR] + rc.by_severity[Severity.CRITICAL],
                                      rated=sum(rc.by_severity[min_sev:]))
            if not rc.complete:
                rate_covered = max(0.0, (now - rc.from_ns) / 1e9)
    died_keys = {(w.pid, w.start_time) for w in died}
    rate = win.errors / win.rated if win.rated else 0.0
    since = totals(current.writers, min_sev)
    last = current.last_event_ns
    idle = max(0.0, (now - last) / 1e9) if last else None
    h = dataclasses.replace(
        h,
        window=window, window_source=source, window_covered=round(covered, 3),
        window_error_rate_covered=round(covered if rate_covered is None else min(covered, rate_covered), 3),
        window_events=win.recorded, window_events_lost=win.lost, window_events_abandoned=win.abandoned,
        window_errors=win.errors, window_rated_events=win.rated, window_error_rate=min(1.0, rate),
        window_writers_died=len(died), window_seqs_unused=win.unused, window_peers_untracked=untracked,
        error_rate_min_severity=policy.error_rate_min_severity.name,
        error_rate=min(1.0, since.errors / since.rated) if since.rated else 0.0,
        errors=since.errors, rated_events=since.rated,
        last_event=ns_to_datetime(last) if last else None,
        idle_seconds=None if idle is None else round(idle, 3), stall_after=policy.stall_after,
        dead_writers=[DeadWriter(pid=w.pid, recorded=w.recorded, lost=w.lost, abandoned=w.abandoned,
                                 last_event=ns_to_datetime(w.last_ts) if w.last_ts else None,
                                 in_window=(w.pid, w.start_time) in died_keys)
                      for w in dead_now.values()],
    )
    span = f"in the last {_secs(window)}" if source != "creation" else "since creation"
    over = f"over {policy.error_rate_min_severity.name}+ events"
    reasons: list[HealthReason] = []

    def add(level: int, condition: str, text: str) -> None:
        reasons.append(HealthReason(condition=condition, status=STATUS_ORDER[level], message=text))

    if h.detached:
        add(3, "detached", h.detached)
    if h.collector_alive is False:
        add(3, "collector_dead", f"collector (pid {h.collector_pid}) is not running")
    if win.rated:
        lvl = sum(rate >= x for x in (ERROR_RATE_WARNING, ERROR_RATE_DEGRADED, ERROR_RATE_ERROR))
        if lvl:
            limit = (ERROR_RATE_WARNING, ERROR_RATE_DEGRADED, ERROR_RATE_ERROR)[lvl - 1]
            rspan = span if rate_covered is None else f"in the last {_secs(rate_covered)} the ring retains"
            add(lvl, "error_rate", f"error rate {rate:.1%} >= {limit:.0%} {rspan} ({win.errors} errors of "
                                   f"{win.rated} events at {policy.error_rate_min_severity.name} and above)")
    loss = win.lost + win.abandoned
    if loss:
        lr = loss / win.recorded if win.recorded else 1.0
        lvl = 3 if lr >= LOSS_ERROR else 2 if lr >= LOSS_DEGRADED else 1
        add(lvl, "events_lost", f"{loss} events lost or abandoned {span} ({lr:.2%} of {win.recorded} recorded)")
    # A killed collector that had recorded (its alert events) is also a dead writer: said once,
    # by collector_dead, not again here.
    if h.collector_alive is False:
        died = [w for w in died if w.pid != h.collector_pid]
    if died:
        pids = ", ".join(str(w.pid) for w in died[:5]) + (", ..." if len(died) > 5 else "")
        add(1, "writers_died", f"{len(died)} writer process(es) died without detaching {span} (pid {pids})")
    if policy.stall_after and h.writers_alive and idle is not None and idle >= policy.stall_after:
        add(1, "stalled", f"no event for {_secs(idle)} (>= {_secs(policy.stall_after)}) while "
                          f"{h.writers_alive} writer process(es) are alive")
    if h.writers_inconsistent:
        add(1, "writers_inconsistent",
            f"{h.writers_inconsistent} writer shard(s) with counters that do not add up (damaged)")
    if win.unused and win.unused >= UNUSED_WARNING * max(win.recorded, 1):
        add(1, "seqs_unused", f"{win.unused} sequence numbers left unused by writers paused mid-run {span} "
                              f"(the ring holds up to {h.seqs_unused} fewer than {h.max_events} events)")
    if untracked or (h.max_peers and h.active_peers > h.max_peers):
        add(1, "peer_table_full", f"peer table full: {h.active_peers} peers connected (max_peers {h.max_peers}), "
                                  f"{untracked} connects untracked {span}")
    reasons.sort(key=lambda r: -STATUS_ORDER.index(r.status))
    h.reasons = reasons
    h.status = reasons[0].status if reasons else "healthy"
    # Since creation: what the window no longer judges, still said.
    past = []
    if h.events_lost or h.events_abandoned:
        past.append(f"{h.events_lost + h.events_abandoned} lost or abandoned")
    if h.writers_dead:
        past.append(f"{h.writers_dead} writer(s) dead")
    if since.rated:
        past.append(f"error rate {h.error_rate:.1%}")
    if h.peers_untracked:
        past.append(f"{h.peers_untracked} peer connects untracked")
    # (when the window covers the ring's whole life, the totals are its figures: not repeated)
    tail = "" if source == "creation" else (
        f" (since creation: {h.total_events} events" + (", " + ", ".join(past) if past else "") + ")")
    if reasons:
        h.message = "; ".join(r.message for r in reasons) + tail
    elif h.total_events == 0:
        h.message = "no events recorded yet"
    else:
        h.message = f"{win.recorded} events {span}, error rate {rate:.1%} {over}{tail}"
    if h.seqs_unused and not any(r.condition == "seqs_unused" for r in reasons):
        # not a problem at this level, but what the ring's capacity is short by: always said
        h.message += (f"; {h.seqs_unused} sequence numbers left unused by writers paused mid-run since creation "
                      f"(the ring holds up to that many fewer than {h.max_events} events)")
    return h
