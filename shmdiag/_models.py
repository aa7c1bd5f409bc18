"""The values the public API takes and returns."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class Severity(enum.IntEnum):
    """Event severity, with the Go original's numbering."""

    DEBUG = 0
    INFO = 1
    WARNING = 2
    ERROR = 3
    CRITICAL = 4

    def __str__(self) -> str:
        return self.name


@dataclass
class DiagnosticEvent:
    """One recorded event.

    ``timestamp`` is set at record time when None (the caller's object is never mutated).
    Events read back also carry ``pid`` (the writer process), ``seq`` (the ring-wide sequence
    number, which orders events across processes) and ``truncated`` (a field was cut to fit).
    """

    event_type: str
    message: str = ""
    severity: Severity = Severity.INFO
    peer_id: str = ""
    metadata: dict | None = None
    error: str | None = None
    timestamp: datetime | None = None
    pid: int | None = None
    seq: int | None = None
    truncated: bool = False


@dataclass
class DiagnosticStats:
    """Counts over everything recorded since creation or the last clear, overwritten events included."""

    total_events: int = 0
    events_by_type: dict[str, int] = field(default_factory=dict)
    events_by_severity: dict[Severity, int] = field(default_factory=dict)
    first_event: datetime | None = None
    last_event: datetime | None = None
    active_peers: int = 0
    error_rate: float = 0.0


@dataclass
class HealthStatus:
    """What an operator needs to decide whether the recorder, and the node feeding it, are well."""

    status: str
    message: str
    event_count: int = 0
    max_events: int = 0
    total_events: int = 0
    uptime: float = 0.0
    writers_alive: int = 0
    writers_dead: int = 0
    events_overwritten: int = 0
    events_lost: int = 0
    events_abandoned: int = 0
    events_expired: int = 0
    error_rate: float = 0.0
