"""Evaluating alert rules from a ring's shared counters and tables, never by scanning events.

Every ``interval`` the engine takes one :class:`Sample` of the counters (events by type and by
severity, lost and abandoned) and keeps the samples of the longest window, so a rate over a window
is a difference of two samples divided by the window. A counter that went down was reset by a
clear: the difference is then the new value, as Prometheus' ``rate()`` treats a counter reset.

Each rule's alert moves ``inactive -> pending -> firing -> inactive`` (pending only while
``for`` has not yet passed); the firing and resolved transitions are handed to the notifier
(``alerts.notify``), which logs them, records them into the ring and sends them out.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol

from shmdiag.alerts.rules import HEALTH_ORDER, AlertingConfig, AlertRule
from shmdiag.core.models import DiagnosticStats, HealthStatus, PeerDiagnostic, Severity, WriterInfo
from shmdiag.views.stats import Accounting

INFO_AND_ABOVE = tuple(s for s in Severity if s >= Severity.INFO)
ERRORS = (Severity.ERROR, Severity.CRITICAL)


class Source(Protocol):
    """What the engine reads: an ``Inspector`` or a ``Recorder``."""

    def get_stats(self) -> DiagnosticStats: ...
    def accounting(self) -> Accounting: ...
    def health_check(self) -> HealthStatus: ...
    def get_writers(self) -> list[WriterInfo]: ...
    def get_peer_diagnostics(self) -> list[PeerDiagnostic]: ...


@dataclass(frozen=True)
class Sample:
    """The counters at one evaluation (``t``: time.monotonic() seconds)."""

    t: float
    total: int
    by_type: dict[str, int]
    by_severity: dict[int, int]
    loss: int  # lost + abandoned


@dataclass
class AlertState:
    """Where one rule's alert stands. ``since``: when it entered its state (UTC)."""

    rule: AlertRule
    state: str = "inactive"  # inactive, pending, firing
    since: datetime | None = None
    value: float | None = None    # the condition's last measured value (rate, count, seconds, rank)
    active_since: float = 0.0     # monotonic time the condition started to hold
    fired_at: datetime | None = None
    last_sent: float = 0.0        # monotonic time of the last send to Alertmanager
    text: str = ""                # what the last evaluation found, in words

    def to_dict(self) -> dict:
        r = self.rule
        return {"name": r.name, "condition": r.condition, "severity": r.severity, "state": self.state,
                "since": _iso(self.since), "value": self.value, "for_seconds": r.for_,
                "description": r.describe(), "summary": r.summary or r.describe(), "found": self.text,
                "labels": dict(r.labels)}


@dataclass(frozen=True)
class Transition:
    """An alert that fired or resolved (``state``: "firing" or "resolved")."""

    alert: AlertState
    state: str
    at: datetime
    started: datetime


def _iso(d: datetime | None) -> str | None:
    return d.isoformat(timespec="milliseconds").replace("+00:00", "Z") if d is not None else None


def _delta(new: int, old: int) -> int:
    return new - old if new >= old else new  # a clear reset the counter


def _take(source: Source, t: float) -> Sample:
    st, acct = source.get_stats(), source.accounting()
    return Sample(t=t, total=st.total_events, by_type=dict(st.events_by_type),
                  by_severity={int(k): v for k, v in st.events_by_severity.items()}, loss=acct.lost + acct.abandoned)


@dataclass
class AlertEngine:
    """Evaluates ``config.rules`` against ``source`` at each :meth:`evaluate` (the collector calls
    it every ``config.interval`` seconds) and returns the transitions."""

    source: Source
    config: AlertingConfig
    clock: Callable[[], float] = time.monotonic
    states: dict[str, AlertState] = field(init=False)
    _samples: collections.deque[Sample] = field(init=False)
    _peer_samples: collections.deque[tuple[float, dict[str, int]]] = field(init=False)
    _dead_seen: dict[int, float] = field(init=False)
    _last_change: float = field(init=False)

    def __post_init__(self) -> None:
        self.states = {r.name: AlertState(r) for r in self.config.rules}
        self._samples = collections.deque()
        self._peer_samples = collections.deque()
        self._dead_seen = {}
        self._last_change = self.clock()
        windows = [r.window for r in self.config.rules if r.condition in ("rate", "events_lost", "error_rate")]
        self._keep = max(windows, default=0.0)
        self._peer_window = max((r.window for r in self.config.rules if r.condition == "peer_errors"), default=0.0)
        # The first sample now, not at the first evaluation: events recorded in between (a ring
        # that serve has just created is attachable at once) count in the first rates.
        self._sample(self._last_change)

    # -- sampling ------------------------------------------------------------------------------
    def _at(self, window: float, now: float) -> Sample:
        """The newest sample at least ``window`` old, or the oldest there is."""
        best = self._samples[0]
        for s in self._samples:
            if now - s.t >= window - 1e-9:
                best = s
            else:
                break
        return best

    def _sample(self, now: float) -> Sample:
        s = _take(self.source, now)
        if self._samples and s.total != self._samples[-1].total:
            self._last_change = now
        self._samples.append(s)
        while len(self._samples) > 2 and now - self._samples[1].t >= self._keep:
            self._samples.popleft()  # the second is old enough to measure every window from
        return s

    # -- conditions: (holds, value, what was found) ----------------------------------------------
    def _rate(self, r: AlertRule, now: float, cur: Sample) -> tuple[bool, float, str]:
        old = self._at(r.window, now)
        if r.event_type is not None:
            n = _delta(cur.by_type.get(r.event_type, 0), old.by_type.get(r.event_type, 0))
        else:
            assert r.min_severity is not None
            n = sum(_delta(cur.by_severity.get(s, 0), old.by_severity.get(s, 0))
                    for s in Severity if s >= r.min_severity)
        rate = n / r.window
        assert r.rate_above is not None
        return rate > r.rate_above, rate, f"{n} events in {r.window:g}s ({rate:.3g}/s)"

    def _error_rate(self, r: AlertRule, now: float, cur: Sample) -> tuple[bool, float, str]:
        old = self._at(r.window, now)
        d = {s: _delta(cur.by_severity.get(s, 0), old.by_severity.get(s, 0)) for s in INFO_AND_ABOVE}
        denom = sum(d.values())
        errs = sum(d[s] for s in ERRORS)
        rate = errs / denom if denom else 0.0
        assert r.above is not None
        return rate > r.above, rate, f"{errs} errors of {denom} events at INFO and above ({rate:.1%})"

    def _events_lost(self, r: AlertRule, now: float, cur: Sample) -> tuple[bool, float, str]:
        n = _delta(cur.loss, self._at(r.window, now).loss)
        assert r.above is not None
        return n > r.above, float(n), f"{n} events lost or abandoned in {r.window:g}s"

    def _writer_died(self, r: AlertRule, now: float, writers: list[WriterInfo]) -> tuple[bool, float, str]:
        recent = [pid for pid, t in self._dead_seen.items() if now - t < r.window]
        return bool(recent), float(len(recent)), (f"writer pid {', '.join(map(str, sorted(recent)))} died"
                                                  if recent else "no writer died")

    def _idle(self, r: AlertRule, now: float, writers: list[WriterInfo]) -> tuple[bool, float, str]:
        alive = sum(w.alive for w in writers)
        quiet = now - self._last_change
        assert r.seconds is not None
        return (alive > 0 and quiet >= r.seconds, quiet,
                f"no event for {quiet:.0f}s, {alive} writer(s) alive")

    def _peer_errors(self, r: AlertRule, now: float, peers: list[PeerDiagnostic]) -> tuple[bool, float, str]:
        cur = {p.peer_id: p.error_count for p in peers}
        # the newest sample at least a window old, or the oldest there is (samples are taken every
        # window/10, so "the last window" is measured to within a tenth of it)
        old: dict[str, int] = self._peer_samples[0][1] if self._peer_samples else {}
        for t, snap in self._peer_samples:
            if now - t < r.window - 1e-9:
                break
            old = snap
        worst, who = 0, ""
        for pid, n in cur.items():
            d = _delta(n, old.get(pid, 0))
            if d > worst:
                worst, who = d, pid
        assert r.above is not None
        return worst > r.above, float(worst), (f"peer {who!r}: {worst} errors in {r.window:g}s" if who
                                               else "no peer errors")

    def _peer_ping(self, r: AlertRule, peers: list[PeerDiagnostic]) -> tuple[bool, float, str]:
        pings = [(p.latency, p.peer_id) for p in peers if p.status == "connected" and p.latency is not None]
        if not pings:
            return False, 0.0, "no ping measured"
        worst, who = max(pings)
        assert r.above is not None
        return worst > r.above, worst, f"peer {who!r}: ping {worst * 1e3:.0f} ms"

    # -- one round -----------------------------------------------------------------------------
    def evaluate(self) -> list[Transition]:
        """Evaluate every rule once; the alerts that fired or resolved."""
        now = self.clock()
        conds = {r.condition for r in self.config.rules}
        cur = self._sample(now)
        writers = self.source.get_writers() if conds & {"writer_died", "idle"} else []
        for w in writers:
            if w.state == "dead":
                self._dead_seen.setdefault(w.pid, now)
        peers = self.source.get_peer_diagnostics() if conds & {"peer_errors", "peer_ping"} else []
        health = self.source.health_check() if conds & {"health", "peer_table_full"} else None
        out: list[Transition] = []
        for st in self.states.values():
            r = st.rule
            c = r.condition
            if c == "rate":
                holds, value, text = self._rate(r, now, cur)
            elif c == "error_rate":
                holds, value, text = self._error_rate(r, now, cur)
            elif c == "events_lost":
                holds, value, text = self._events_lost(r, now, cur)
            elif c == "writer_died":
                holds, value, text = self._writer_died(r, now, writers)
            elif c == "idle":
                holds, value, text = self._idle(r, now, writers)
            elif c == "peer_errors":
                holds, value, text = self._peer_errors(r, now, peers)
            elif c == "peer_ping":
                holds, value, text = self._peer_ping(r, peers)
            elif c == "health":
                assert health is not None and r.at_least is not None
                rank = HEALTH_ORDER.index(health.status) if health.status in HEALTH_ORDER else 0
                holds, value, text = (rank >= HEALTH_ORDER.index(r.at_least), float(rank),
                                      f"{health.status}: {health.message}")
            else:  # peer_table_full
                assert health is not None
                holds = bool(health.peers_untracked) or bool(health.max_peers and
                                                              health.active_peers > health.max_peers)
                value = float(health.peers_untracked)
                text = f"{health.active_peers} peers connected, {health.peers_untracked} connects untracked"
            st.value, st.text = value, text
            t = self._step(st, holds, now)
            if t is not None:
                out.append(t)
        if self._peer_window:
            if not self._peer_samples or now - self._peer_samples[-1][0] >= self._peer_window / 10:
                self._peer_samples.append((now, {p.peer_id: p.error_count for p in peers}))
            while len(self._peer_samples) > 2 and now - self._peer_samples[1][0] >= self._peer_window:
                self._peer_samples.popleft()
        return out

    def _step(self, st: AlertState, holds: bool, now: float) -> Transition | None:
        wall = datetime.now(timezone.utc)
        if not holds:
            if st.state == "firing":
                started = st.fired_at or wall
                st.state, st.since, st.fired_at = "inactive", wall, None
                return Transition(st, "resolved", wall, started)
            if st.state == "pending":
                st.state, st.since = "inactive", wall
            return None
        if st.state == "inactive":
            st.state, st.since, st.active_since = "pending", wall, now
        if st.state == "pending" and now - st.active_since >= st.rule.for_:
            st.state, st.since, st.fired_at = "firing", wall, wall
            return Transition(st, "firing", wall, wall)
        return None

    def snapshot(self) -> list[dict]:
        """Every rule's state, as ``shmdiag alerts --json`` and ``/api/alerts`` show it."""
        return [dataclasses.replace(st).to_dict() for st in self.states.values()]
