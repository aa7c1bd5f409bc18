"""Read models as plain dicts, for orjson: the one place the JSON names are chosen.

Every JSON shape shmdiag writes is made here (the fast exporter, ``export/templates.py``,
renders exactly :func:`event_to_dict`'s shape), so the vocabulary is the same everywhere
(``docs/json.md``, ``shmdiag/schemas``):

* every object a command writes on its own starts with ``schema_version`` and ``kind``
  (``export/schema.py``); an export's ``stats``/``health``/``peers`` sections are those same
  objects, so a section cut out of an export is what the command prints;
* one name per concept: ``retained``, ``capacity``, ``total_events``, ``overwritten``,
  ``lost``, ``abandoned``, ``expired``, ``in_flight``, ``writers_alive``, ``untracked_peers``...;
  the dataclasses keep their Python attribute names (the public API), renamed here;
* times are ISO-8601 UTC with a ``Z`` (orjson's ``OPT_UTC_Z``), durations numbers of seconds.

``export_json`` (every event through ``decode()`` and :func:`event_to_dict`) is the reference
the fast exporter is tested against, and what ``bench/`` compares it with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import orjson

from shmdiag.core.follow import Gap
from shmdiag.core.models import (
    DiagnosticEvent,
    DiagnosticStats,
    HealthStatus,
    LatencyStats,
    NetworkDiagnostic,
    PeerDiagnostic,
    WriterInfo,
)
from shmdiag.export.schema import SCHEMA_VERSION

if TYPE_CHECKING:
    from shmdiag.core.rings import RingInfo

OPTS = orjson.OPT_UTC_Z  # datetimes as UTC with a Z, as every export writes them


def dumps(obj: object) -> bytes:
    """``obj`` (any of this module's dicts) as JSON bytes, datetimes as UTC with a Z: what the
    CLI prints and what an HTTP endpoint should serve."""
    return orjson.dumps(obj, option=OPTS | orjson.OPT_NON_STR_KEYS)


def doc_head(kind: str) -> dict:
    """``{"schema_version": 1, "kind": kind}``: how every top-level object starts (the web API's
    own documents too: ``events``, ``writers``, ``latency``, ``ring``, ``alerts``, ``end``)."""
    return _doc(kind)


def _doc(kind: str) -> dict:
    """The start of every top-level object: its version and what it is."""
    return {"schema_version": SCHEMA_VERSION, "kind": kind}


def _renamed(d: dict, names: Mapping[str, str]) -> dict:
    """``d`` with the keys of ``names`` renamed, in order; other keys unchanged."""
    return {names.get(k, k): v for k, v in d.items()}


def _utc(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc)


def event_to_dict(e: DiagnosticEvent) -> dict:
    return {
        **_doc("event"),
        "timestamp": e.timestamp,
        "event_type": e.event_type,
        "peer_id": e.peer_id,
        "message": e.message,
        "severity": str(e.severity),
        "metadata": e.metadata,
        "error": e.error,
        "pid": e.pid,
        "seq": e.seq,
        "truncated": e.truncated,
    }


def gap_to_dict(g: Gap) -> dict:
    """Events a follower could not deliver (``tail -f --json``), told from events by ``kind``.
    A filtering follower's gap also says how many of them the filter would have taken
    (``matched``) and of how many that cannot be told (``unknown``)."""
    d = {**_doc("gap"), "skipped": g.skipped, "overwritten": g.overwritten, "unreadable": g.unreadable}
    for key in ("matched", "unknown"):
        if hasattr(g, key):
            d[key] = getattr(g, key)
    d["first_seq"], d["last_seq"] = g.first_seq, g.last_seq
    return d


def lag_to_dict(behind: int, lag_seconds: float) -> dict:
    """How far a follower is behind the writers (``tail -f --json``, while catching up): events
    recorded and not yet read, and the age of the newest event read, in seconds."""
    return {**_doc("lag"), "behind": behind, "lag_seconds": lag_seconds}


def stats_to_dict(s: DiagnosticStats) -> dict:
    d = {**_doc("stats"), **dataclasses.asdict(s)}
    d["events_by_severity"] = {str(k): v for k, v in s.events_by_severity.items()}
    return d


# HealthStatus attribute -> JSON name (the names ls, writers and the accounting use)
HEALTH_NAMES = {
    "event_count": "retained",
    "max_events": "capacity",
    "events_overwritten": "overwritten",
    "events_lost": "lost",
    "events_abandoned": "abandoned",
    "events_expired": "expired",
    "events_in_flight": "in_flight",
    "peers_untracked": "untracked_peers",
    # the health probe's recent window (where HealthStatus has them)
    "window_events": "window_total_events",
    "window_events_lost": "window_lost",
    "window_events_abandoned": "window_abandoned",
    "window_peers_untracked": "window_untracked_peers",
}


def health_to_dict(h: HealthStatus) -> dict:
    d = {**_doc("health"), **_renamed(dataclasses.asdict(h), HEALTH_NAMES)}
    if isinstance(d.get("dead_writers"), list):  # writers in the writers' names
        d["dead_writers"] = [_renamed(w, WRITER_NAMES) for w in d["dead_writers"]]
    return d


def ring_to_dict(r: RingInfo) -> dict:
    """One row of ``ls --json``. Fields are None when the ring could not be read (see ``note``)."""
    return {
        "name": r.name,
        "size": r.size,
        "creator_pid": r.owner_pid,
        "creator_alive": r.owner_alive,
        "capacity": r.capacity,
        "retained": r.retained,
        "total_events": r.total_events,
        "writers_alive": r.live_writers,
        "created_at": _utc(r.created),
        "uptime": r.age,
        "collector_pid": r.collector_pid,
        "collector_alive": r.collector_alive,
        "note": r.note,
    }


def rings_to_dict(rings: Iterable[RingInfo]) -> dict:
    """``ls --json``: every ring on this machine."""
    return {**_doc("rings"), "rings": [ring_to_dict(r) for r in rings]}


# PeerDiagnostic attribute -> JSON name
PEER_NAMES = {"error_count": "errors", "bytes_recv_per_msg": "bytes_received_per_msg"}


def peer_to_dict(p: PeerDiagnostic) -> dict:
    return _renamed(dataclasses.asdict(p), PEER_NAMES)


def busiest_first(peers: Iterable[PeerDiagnostic]) -> list[PeerDiagnostic]:
    """Peers by bytes in and out, most first (ties by id): the order ``peers`` shows and limits."""
    return sorted(peers, key=lambda p: (-(p.bytes_sent + p.bytes_received), p.peer_id))


def network_to_dict(nd: NetworkDiagnostic, limit: int = 0) -> dict:
    """``peers --json``: the totals, then the ``limit`` busiest peers (0: all); ``omitted_peers``
    counts those left out."""
    d = {**_doc("peers"), **{f.name: getattr(nd, f.name) for f in dataclasses.fields(nd)
                             if f.name != "peer_diagnostics"}}
    peers = busiest_first(nd.peer_diagnostics)
    shown = peers[:limit] if limit > 0 else peers
    d["omitted_peers"] = len(peers) - len(shown)
    d["peers"] = [peer_to_dict(p) for p in shown]
    return d


# WriterInfo attribute -> JSON name
WRITER_NAMES = {"recorded": "total_events"}


def writer_to_dict(w: WriterInfo) -> dict:
    return _renamed(dataclasses.asdict(w), WRITER_NAMES)


def latency_to_dict(latency: Mapping[str, LatencyStats]) -> dict:
    """Per timed operation: count, errors, mean, p50, p90, p99, max (seconds)."""
    return {op: dataclasses.asdict(st) for op, st in latency.items()}


def export_head(name: str, stats: DiagnosticStats, health: HealthStatus, *,
                latency: Mapping[str, LatencyStats] | None = None, network: NetworkDiagnostic | None = None,
                writers: Iterable[WriterInfo] | None = None) -> dict:
    """What an export carries before its events, in order: schema_version, kind, name,
    exported_at, stats, health, latency, then (``--with-peers``) peers and writers."""
    head = {**_doc("export"), "name": name, "exported_at": datetime.now(timezone.utc),
            "stats": stats_to_dict(stats), "health": health_to_dict(health)}
    if latency is not None:
        head["latency"] = latency_to_dict(latency)
    if network is not None:
        head["peers"] = network_to_dict(network)
    if writers is not None:
        head["writers"] = [writer_to_dict(w) for w in writers]
    return head


def export_json(name: str, stats: DiagnosticStats, health: HealthStatus, events: list[DiagnosticEvent]) -> bytes:
    """A whole json export from events already read (the per-event path)."""
    doc = export_head(name, stats, health)
    doc["events"] = [event_to_dict(e) for e in events]
    doc["exported"], doc["skipped"] = len(events), 0
    return orjson.dumps(doc, option=OPTS)
