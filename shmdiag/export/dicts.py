"""Read models as plain dicts, for orjson: events, stats, health; and the per-event export.

``export_json`` (every event through ``decode()`` and :func:`event_to_dict`) is the reference
the fast exporter (``export/templates.py``) is tested against, and what ``bench/`` compares
it with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone

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

OPTS = orjson.OPT_UTC_Z  # datetimes as UTC with a Z, as every export writes them


def event_to_dict(e: DiagnosticEvent) -> dict:
    return {
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


def stats_to_dict(s: DiagnosticStats) -> dict:
    d = dataclasses.asdict(s)
    d["events_by_severity"] = {str(k): v for k, v in s.events_by_severity.items()}
    return d


def health_to_dict(h: HealthStatus) -> dict:
    return dataclasses.asdict(h)


# The functions below have the names and shapes of branch i12-json's (which adds schema_version
# and kind to each top-level object): the HTTP API (shmdiag.web) calls them, so it serves what
# the CLI's --json prints. At merge, i12-json's versions win.
def _renamed(d: dict, names: Mapping[str, str]) -> dict:
    """``d`` with the keys of ``names`` renamed, in order; other keys unchanged."""
    return {names.get(k, k): v for k, v in d.items()}


def gap_to_dict(g: Gap) -> dict:
    """Events a follower could not deliver (``tail -f --json``)."""
    return {"kind": "gap", "skipped": g.skipped, "overwritten": g.overwritten, "unreadable": g.unreadable,
            "first_seq": g.first_seq, "last_seq": g.last_seq}


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
    d = {f.name: getattr(nd, f.name) for f in dataclasses.fields(nd) if f.name != "peer_diagnostics"}
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


def export_json(name: str, stats: DiagnosticStats, health: HealthStatus, events: list[DiagnosticEvent]) -> bytes:
    """A whole json export from events already read (the per-event path)."""
    return orjson.dumps(
        {
            "name": name,
            "exported_at": datetime.now(timezone.utc),
            "stats": stats_to_dict(stats),
            "health": health_to_dict(health),
            "events": [event_to_dict(e) for e in events],
        },
        option=OPTS,
    )
