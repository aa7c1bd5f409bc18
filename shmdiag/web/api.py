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
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from aiohttp import web

from shmdiag.core.filter import EventFilter
from shmdiag.core.models import DiagnosticEvent, PeerDiagnostic, Severity
from shmdiag.export import dicts
from shmdiag.inspector import event_filter, parse_when

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


def time_param(request: web.Request, name: str, now: datetime) -> datetime | None:
    """``since``/``until``: as tail's --since/--until (``inspector.parse_when``: ISO 8601, UTC
    without a zone, or a duration back from now: 10m, 1h30m, 2d), or seconds since the epoch."""
    v = param(request, name)
    if v is None or v == "":
        return None
    try:
        return datetime.fromtimestamp(float(v), timezone.utc)
    except (ValueError, OverflowError, OSError):
        pass
    try:
        return parse_when(v, name, now)
    except ValueError as e:
        raise BadRequest(f"{e} (or seconds since the epoch)") from None


def _many(request: web.Request, name: str) -> list[str]:
    vals = request.query.getall(name, [])
    if len(vals) > 64 or any(len(v) > MAX_PARAM for v in vals):
        raise BadRequest(f"{name}: at most 64 values of at most {MAX_PARAM} characters")
    return [v for v in vals if v]


@dataclasses.dataclass(frozen=True)
class EventQuery:
    """What /api/events and /api/events/stream take, as tail's flags: ``min_severity``,
    ``type``, ``peer``, ``pid`` (each repeatable: any of them), ``since``, ``until``, ``grep``
    (a Python regex on message or error). ``filt`` is the Inspector's filter
    (``inspector.event_filter``), applied on the stored records before anything is decoded."""

    filt: EventFilter

    @classmethod
    def from_request(cls, request: web.Request) -> EventQuery:
        now = datetime.now(timezone.utc)
        since, until = time_param(request, "since", now), time_param(request, "until", now)
        if since is not None and since > now + timedelta(seconds=1):
            raise BadRequest(f"since: {param(request, 'since')!r} is in the future ({since.isoformat()})")
        if since is not None and until is not None and until < since:
            raise BadRequest("until: before since")
        pids = []
        for v in _many(request, "pid"):
            try:
                pid = int(v)
            except ValueError:
                raise BadRequest(f"pid: {v!r} is not a process id") from None
            if not 0 < pid < 1 << 32:
                raise BadRequest(f"pid: {pid} is not a process id")
            pids.append(pid)
        grep = param(request, "grep") or None
        try:
            filt = event_filter(severity_param(request), event_type=_many(request, "type") or None,
                                peer_id=_many(request, "peer") or None, since=since, until=until,
                                pid=pids or None, grep=grep)
        except ValueError as e:  # a bad regex
            raise BadRequest(str(e)) from None
        return cls(filt)

    @property
    def min_severity(self) -> Severity:
        return Severity(self.filt.min_severity)

    def takes(self, e: DiagnosticEvent) -> bool:
        """The whole filter on a decoded event (what the live stream already decoded)."""
        return self.filt.event(e)


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
        from shmdiag.alerts import health_summary, live_state

        doc = live_state(self.insp.name, h["collector_pid"], h["collector_alive"])
        if doc is not None:  # as `shmdiag health`: the collector's alerts and failed deliveries
            h = {**h, "alerts": health_summary(doc)}
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
                return {**dicts.doc_head("alerts"), "ring": self.insp.name, "evaluated": False, "alerts": []}
            return {**dicts.doc_head("alerts"), **doc, "evaluated": True}

        return self.cached(("alerts",), compute)

    def latency(self) -> dict:
        """``{"schema_version", "kind": "latency", "operations": {op: {count, errors, mean, ...}}}``."""
        return self.cached(("latency",), lambda: {**dicts.doc_head("latency"),
                                                  "operations": dicts.latency_to_dict(self.insp.get_latency_stats())})

    def writers(self) -> dict:
        def compute() -> dict:
            return {**dicts.doc_head("writers"), "writers": [dicts.writer_to_dict(w) for w in self.insp.get_writers()]}

        return self.cached(("writers",), compute)

    def ring(self) -> dict:
        insp = self.insp
        return {**dicts.doc_head("ring"), "name": insp.name, "capacity": insp.capacity,
                "creator_pid": insp.creator_pid, "created_ns": insp.created_ns,
                "created_at": datetime.fromtimestamp(insp.created_ns // 1000 / 1e6, timezone.utc)}

    def events(self, request: web.Request) -> dict:
        limit = int_param(request, "limit", 100, 1, MAX_EVENTS)
        q = EventQuery.from_request(request)

        def compute() -> dict:
            evs = self.insp.get_events(limit, filt=q.filt)  # filtered on the stored records (core/filter.py)
            return {**dicts.doc_head("events"), "events": [dicts.event_to_dict(e) for e in evs], "limit": limit,
                    "min_severity": str(q.min_severity)}

        return self.cached(("events", limit, q), compute)
