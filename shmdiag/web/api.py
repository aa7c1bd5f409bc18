"""The JSON API's handlers: read through the Inspector, shaped by ``export.dicts`` (the dicts the
CLI's ``--json`` prints), never a byte written to the ring.

Each handler parses its query with the ``_int``/``_choice`` helpers below: anything malformed is
a ``BadRequest`` (400 with a one-line JSON error), never an exception that reaches aiohttp.
Figures are cached for ``CACHE_TTL`` seconds per query, so 50 dashboards polling cost the ring's
reader what one does.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from aiohttp import web

from shmdiag.core.models import DiagnosticEvent, PeerDiagnostic, Severity
from shmdiag.export import dicts

if TYPE_CHECKING:
    from shmdiag.inspector import Inspector

CACHE_TTL = 0.5      # seconds a computed answer is served again
MAX_EVENTS = 10_000  # /api/events?limit= at most this
MAX_PARAM = 256      # characters of any one query parameter
HEALTHY_STATUSES = ("healthy", "warning")  # /api/health answers 200 for these, 503 for the rest
PEER_SORTS: dict[str, Callable[[PeerDiagnostic], Any]] = {
    "bytes": lambda p: -(p.bytes_sent + p.bytes_received),
    "bytes_sent": lambda p: -p.bytes_sent,
    "bytes_received": lambda p: -p.bytes_received,
    "messages": lambda p: -(p.messages_sent + p.messages_received),
    "errors": lambda p: -p.error_count,
    "latency": lambda p: (p.latency is None, p.latency or 0.0),
    "last_activity": lambda p: -(p.last_activity.timestamp() if p.last_activity else 0.0),
    "peer_id": lambda p: p.peer_id,
    "status": lambda p: p.status,
}


class BadRequest(ValueError):
    """A malformed query: 400, with this message."""


def param(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise BadRequest(f"{name}: given {len(values)} times")
    if not values:
        return None
    v = values[0]
    if len(v) > MAX_PARAM:
        raise BadRequest(f"{name}: longer than {MAX_PARAM} characters")
    return v


def int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    v = param(request, name)
    if v is None or v == "":
        return default
    try:
        n = int(v)
    except ValueError:
        raise BadRequest(f"{name}: {v!r} is not a whole number") from None
    if not lo <= n <= hi:
        raise BadRequest(f"{name}: must be between {lo} and {hi}, got {n}")
    return n


def severity_param(request: web.Request, name: str = "min_severity") -> Severity:
    v = param(request, name)
    if v is None or v == "":
        return Severity.DEBUG
    t = v.strip()
    if t.isdigit() and int(t) in Severity._value2member_map_:
        return Severity(int(t))
    try:
        return Severity[t.upper()]
    except KeyError:
        raise BadRequest(f"{name}: {v!r} is not a severity (debug, info, warning, error, critical or 0-4)") from None


def since_param(request: web.Request) -> datetime | None:
    """``since``: ISO 8601 (naive = UTC) or seconds since the epoch."""
    v = param(request, "since")
    if v is None or v == "":
        return None
    try:
        return datetime.fromtimestamp(float(v), timezone.utc)
    except (ValueError, OverflowError, OSError):
        pass
    try:
        ts = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"since: {v!r} is neither ISO 8601 nor seconds since the epoch") from None
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


@dataclasses.dataclass(frozen=True)
class EventFilter:
    """What /api/events and /api/events/stream take: types, peers (repeatable), since."""

    min_severity: Severity = Severity.DEBUG
    types: frozenset[str] = frozenset()
    peers: frozenset[str] = frozenset()
    since: datetime | None = None

    @classmethod
    def from_request(cls, request: web.Request) -> EventFilter:
        def many(name: str) -> frozenset[str]:
            vals = request.query.getall(name, [])
            if len(vals) > 64 or any(len(v) > MAX_PARAM for v in vals):
                raise BadRequest(f"{name}: at most 64 values of at most {MAX_PARAM} characters")
            return frozenset(v for v in vals if v)

        return cls(severity_param(request), many("type"), many("peer"), since_param(request))

    @property
    def narrows(self) -> bool:
        return bool(self.types or self.peers or self.since)

    def __call__(self, e: DiagnosticEvent) -> bool:
        # TODO(i12-tail): get_events(event_type=, peer_id=, since=) will do this in the reader.
        return ((not self.types or e.event_type in self.types) and (not self.peers or e.peer_id in self.peers)
                and (self.since is None or (e.timestamp is not None and e.timestamp >= self.since)))

    def takes(self, e: DiagnosticEvent) -> bool:
        """Severity and the rest: for events that were not read with ``min_severity`` applied."""
        return e.severity >= self.min_severity and self(e)


class Api:
    """The handlers over one open Inspector (the caller closes it)."""

    def __init__(self, inspector: Inspector) -> None:
        self.insp = inspector
        self._cache: dict[tuple, tuple[float, Any]] = {}

    def cached(self, key: tuple, compute: Callable[[], Any]) -> Any:
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < CACHE_TTL:
            return hit[1]
        if len(self._cache) > 256:  # distinct queries are bounded by what clients ask: keep it small
            self._cache = {k: v for k, v in self._cache.items() if now - v[0] < CACHE_TTL}
        value = compute()
        self._cache[key] = (time.monotonic(), value)
        return value

    def stats_health(self) -> tuple[dict, dict]:
        def compute() -> tuple[dict, dict]:
            s, h = self.insp.stats_and_health()
            return dicts.stats_to_dict(s), dicts.health_to_dict(h)

        return self.cached(("stats_health",), compute)

    def stats(self) -> dict:
        return self.stats_health()[0]

    def health(self) -> tuple[int, dict]:
        h = self.stats_health()[1]
        from shmdiag.archive.archiver import live_reasons

        extra = live_reasons(self.insp.name)  # this process's archive/NATS losses, if it runs them
        if extra:
            h = {**h, "reasons": [*h.get("reasons", []), *extra]}
            if h["status"] == "healthy":
                h["status"] = "warning"
                h["message"] = "; ".join(r["message"] for r in extra)
        return (200 if h["status"] in HEALTHY_STATUSES else 503), h

    def peers(self, request: web.Request) -> dict:
        sort = param(request, "sort") or "bytes"
        if sort not in PEER_SORTS:
            raise BadRequest(f"sort: {sort!r} is not one of {', '.join(PEER_SORTS)}")
        limit = int_param(request, "limit", 50, 0, 1 << 20)

        def compute() -> dict:
            nd = self.insp.get_network_diagnostic()
            peers = sorted(nd.peer_diagnostics, key=lambda p: (PEER_SORTS[sort](p), p.peer_id))
            shown = peers[:limit] if limit > 0 else peers
            d = dicts.network_to_dict(dataclasses.replace(nd, peer_diagnostics=[]))
            d["sort"] = sort
            d["omitted_peers"] = len(peers) - len(shown)
            d["peers"] = [dicts.peer_to_dict(p) for p in shown]
            return d

        return self.cached(("peers", sort, limit), compute)

    def alerts(self) -> dict:
        """The collector's alert rules and states, as ``shmdiag alerts --json``; with no collector
        evaluating them, an empty list and ``"evaluated": false``."""
        from shmdiag.alerts import live_state

        def compute() -> dict:
            h = self.stats_health()[1]
            doc = live_state(self.insp.name, h["collector_pid"], h["collector_alive"])
            if doc is None:
                return {"ring": self.insp.name, "evaluated": False, "alerts": []}
            return {**doc, "evaluated": True}

        return self.cached(("alerts",), compute)

    def latency(self) -> dict:
        return self.cached(("latency",), lambda: dicts.latency_to_dict(self.insp.get_latency_stats()))

    def writers(self) -> list:
        return self.cached(("writers",), lambda: [dicts.writer_to_dict(w) for w in self.insp.get_writers()])

    def events(self, request: web.Request) -> dict:
        limit = int_param(request, "limit", 100, 1, MAX_EVENTS)
        f = EventFilter.from_request(request)

        def compute() -> dict:
            if f.narrows:
                evs, _ = self.insp.history(limit, f.min_severity, f, follow=False)
            else:
                evs = self.insp.get_events(limit, f.min_severity)
            return {"events": [dicts.event_to_dict(e) for e in evs], "limit": limit,
                    "min_severity": str(f.min_severity)}

        key = ("events", limit, f)
        return self.cached(key, compute)
