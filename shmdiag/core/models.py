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
    writers_inconsistent: int = 0  # writer shards whose counters do not add up (damaged): left out of the breakdowns


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
    writers_inconsistent: int = 0
    collector_pid: int = 0                # the process the ring's header names as its collector; 0: none
    collector_alive: bool | None = None   # None when the ring has no collector (none expected)
    detached: str = ""  # "" while /dev/shm/<name> is this ring; "ring removed" or "replaced by another segment"
    # claimed by a writer still inside its record (or dead there, not yet reaped): in none of
    # event_count, events_overwritten, ... ; total_events = event_count + overwritten + lost + abandoned + expired
    events_in_flight: int = 0
    seqs_unused: int = 0  # sequence numbers claimed and never used: up to this many fewer events retained
    active_peers: int = 0     # connected peers, as get_stats().active_peers
    max_peers: int = 0        # the peer table's guaranteed capacity for connected peers
    peers_untracked: int = 0  # connects since the last clear that found no entry (the table was full)


@dataclass
class PeerDiagnostic:
    """One peer, over everything recorded since creation or the last clear (overwritten events
    included). The per-message dicts are keyed by message type, as Bitcoin Core's getpeerinfo.

    ``status`` is one of:

    * ``"connected"``: its latest lifecycle event is a connect, by a writer still alive (or not
      yet reaped);
    * ``"disconnected"``: its latest lifecycle event is a disconnect, or its connect's writer
      died and was reaped (``status_reason`` ``"writer died"``);
    * ``"never_connected"``: no connect was ever recorded for it (only traffic, errors or a
      disconnect: a failed connection attempt), ``status_reason`` ``"no connect recorded"``.
    """

    peer_id: str
    address: str = ""
    connected_at: datetime | None = None
    last_activity: datetime | None = None
    messages_sent: int = 0
    messages_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    bytes_sent_per_msg: dict[str, int] = field(default_factory=dict)
    bytes_recv_per_msg: dict[str, int] = field(default_factory=dict)
    latency: float | None = None  # seconds: the latest ping round trip, None before the first
    error_count: int = 0
    status: str = "never_connected"  # "connected", "disconnected" or "never_connected" (above)
    status_reason: str = ""  # why it is not connected, when known: "writer died", "no connect recorded"


@dataclass
class NetworkDiagnostic:
    """All tracked peers, what recycled entries had counted, and how many events found the table full.

    Entries of peers that are not connected are recycled, oldest disconnect first, when a new
    peer needs one; what they had counted since the last clear stays in the ``recycled_*``
    totals, so tracked + recycled figures add up to everything recorded for peers."""

    total_peers: int = 0
    active_peers: int = 0
    disconnected_peers: int = 0
    network_latency: float | None = None  # seconds: mean ping round trip over all peers
    peer_diagnostics: list[PeerDiagnostic] = field(default_factory=list)
    untracked_peers: int = 0   # connects of peers that found the table full
    untracked_events: int = 0  # events of any kind for such peers
    recycled_peers: int = 0    # entries recycled since the last clear
    recycled_messages_sent: int = 0
    recycled_messages_received: int = 0
    recycled_bytes_sent: int = 0
    recycled_bytes_received: int = 0
    recycled_errors: int = 0
    recycled_events: int = 0


@dataclass
class LatencyStats:
    """One timed operation, in seconds. Percentiles are within 1% of the exact ones (a
    log-bucketed histogram); count, mean and max are exact. ``errors``: spans that raised."""

    count: int = 0
    errors: int = 0
    mean: float = 0.0
    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0
    max: float = 0.0


@dataclass
class WriterInfo:
    """A process that has written to the ring, with its counts since the last clear."""

    pid: int
    state: str  # "active", "exited" (released its shard) or "dead" (died holding it)
    alive: bool
    recorded: int = 0
    overwritten: int = 0
    lost: int = 0
    abandoned: int = 0
