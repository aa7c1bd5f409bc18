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
class HealthReason:
    """One condition that makes a ring less than healthy (see ``shmdiag.views.health``)."""

    condition: str  # "error_rate", "events_lost", "writers_died", "stalled", "collector_dead", ...
    status: str     # what it alone makes the ring: "warning", "degraded" or "error"
    message: str


@dataclass
class DeadWriter:
    """A writer process that died without detaching. Counts are its shard's since the last
    clear (a shard taken over from an earlier, exited, process keeps that process's counts)."""

    pid: int
    recorded: int = 0
    lost: int = 0
    abandoned: int = 0  # events it was writing when it died
    last_event: datetime | None = None  # its newest event: it died after this
    in_window: bool = False  # it died within the health window


@dataclass
class HealthStatus:
    """What an operator needs to decide whether the recorder, and the node feeding it, are well.

    ``status`` is decided by the ``reasons`` (the worst of them), which are judged over the
    last ``window`` seconds (the ``window_*`` figures); the other figures are since creation or
    the last clear. See ``shmdiag.views.health`` for every threshold.
    """

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
    reasons: list[HealthReason] = field(default_factory=list)  # worst first; empty when healthy
    # error_rate above is errors / rated_events: events at or above error_rate_min_severity
    error_rate_min_severity: str = "INFO"
    errors: int = 0         # events at ERROR or CRITICAL since creation or the last clear
    rated_events: int = 0   # events at or above error_rate_min_severity since creation or the last clear
    # The recent window the reasons are judged over (seconds), what its figures cover, and how
    # they were found: "history" (samples this process took), "creation" (the ring is younger
    # than the window) or "timestamps" (the writers' last-event times; an upper bound).
    window: float = 0.0
    window_covered: float = 0.0
    window_source: str = ""
    window_events: int = 0
    window_events_lost: int = 0
    window_events_abandoned: int = 0
    window_errors: int = 0
    window_rated_events: int = 0
    window_error_rate: float = 0.0
    window_error_rate_covered: float = 0.0  # seconds it covers: less than window_covered when a one-shot
    #                                         check judges it from a ring that retains less than the window
    window_writers_died: int = 0
    window_seqs_unused: int = 0
    window_peers_untracked: int = 0
    last_event: datetime | None = None   # the newest event recorded (None: none, or no metrics)
    idle_seconds: float | None = None    # seconds since last_event
    stall_after: float = 0.0             # "stalled" after this many idle seconds with writers alive (0: off)
    dead_writers: list[DeadWriter] = field(default_factory=list)


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
