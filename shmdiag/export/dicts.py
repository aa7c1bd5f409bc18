"""Read models as plain dicts, for orjson: events, stats, health; and the per-event export.

``export_json`` (every event through ``decode()`` and :func:`event_to_dict`) is the reference
the fast exporter (``export/templates.py``) is tested against, and what ``bench/`` compares
it with.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import orjson

from shmdiag.core.models import DiagnosticEvent, DiagnosticStats, HealthStatus

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
