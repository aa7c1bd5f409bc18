"""Inspector: everything a ring can tell, read without writing a byte of it.

``Inspector.attach(name)`` maps the ring read-only (``shm_open(O_RDONLY)``, ``mmap(PROT_READ)``,
see ``core.segment``): it takes no writer shard, never reaps a dead writer, and a store into
the segment is refused by the native mapping (and would be by the page protection). So any
number of inspectors (the ``shmdiag`` command, dashboards, an HTTP endpoint) can watch a ring
without changing what they watch, and read permission on the ring is enough.

A ``Recorder`` composes one over its own, writable, segment: its reading methods are this
class's, with the recorder's lock and closed state.
"""

from __future__ import annotations

import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import BinaryIO

import numpy as np

from shmdiag.core import layout as L
from shmdiag.core import owners as _owners
from shmdiag.core import reader as _reader
from shmdiag.core import recent as _recent
from shmdiag.core import snapshot as _snapshot
from shmdiag.core.config import RecorderConfig
from shmdiag.core.errors import RecorderClosedError
from shmdiag.core.filter import EventFilter, severity_filter, unrecorded
from shmdiag.core.follow import Batch, Follower, Gap, history
from shmdiag.core.models import (
    DiagnosticEvent,
    DiagnosticStats,
    HealthReason,
    HealthStatus,
    LatencyStats,
    NetworkDiagnostic,
    PeerDiagnostic,
    Severity,
    WriterInfo,
)
from shmdiag.core.reader import datetime_to_ns
from shmdiag.core.segment import Segment
from shmdiag.core.shards import writer_alive
from shmdiag.export import stream as _export
from shmdiag.views import health as _health
from shmdiag.views import latency as _latency
from shmdiag.views import peers as _peers
from shmdiag.views import stats as _stats

Accept = Callable[[DiagnosticEvent], bool]


def _severity(value: object) -> Severity:
    """``value`` as a Severity; ValueError (never anything else) if it is not one."""
    try:
        if isinstance(value, bool):
            raise ValueError
        return Severity(value)  # type: ignore[arg-type]  # anything else is refused below
    except (ValueError, TypeError):
        raise ValueError(f"severity must be a Severity (0-4), got {value!r}") from None


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    return value


def _when(value: object, what: str) -> int | None:
    """``since``/``until`` as ns since the epoch: an aware datetime, or a timedelta back from now."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise ValueError(f"{what} as a timedelta means that long ago and must not be negative, got {value}")
        return time.time_ns() - value // timedelta(microseconds=1) * 1000
    if isinstance(value, datetime):
        return datetime_to_ns(value)  # ValueError for a naive datetime
    raise TypeError(f"{what} must be a timezone-aware datetime or a timedelta, not {type(value).__name__}")


_UNITS = {"ms": 1e-3, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_RELATIVE = re.compile(r"\s*(?:(\d+(?:\.\d+)?)\s*(ms|sec|min|s|m|h|d|w)\s*)+(?:ago)?\s*", re.I)
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|sec|min|s|m|h|d|w)", re.I)


def parse_when(text: str, what: str = "time", now: datetime | None = None) -> datetime:
    """A ``since``/``until`` as people write it (tail's ``--since``, the web API's ``?since=``):
    "now", a duration back from now ("10m", "1h30m", "2d ago", "500ms"), or an ISO-8601 time
    ("2026-11-30T07:00:00Z", "2026-11-30 07:00"; without a zone: UTC). ValueError naming
    ``what`` otherwise."""
    now = now or datetime.now(timezone.utc)
    t = text.strip()
    if t.lower() == "now":
        return now
    if _RELATIVE.fullmatch(t):
        secs = sum(float(n) * _UNITS[u.lower()] for n, u in _PART.findall(t))
        try:
            return now - timedelta(seconds=secs)
        except OverflowError:
            raise ValueError(f"{what}: {text!r} reaches back before year 1") from None
    try:
        ts = datetime.fromisoformat(t.replace("z", "Z").replace("Z", "+00:00") if t.endswith(("Z", "z")) else t)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is neither a time (2026-11-30T07:00:00Z) nor a duration back from now "
                         "(10m, 1h30m, 2d)") from None
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=timezone.utc)


def event_filter(min_severity: object = Severity.DEBUG, *, event_type: str | Iterable[str] | None = None,
                 peer_id: str | Iterable[str] | None = None, since: datetime | timedelta | None = None,
                 until: datetime | timedelta | None = None, pid: int | Iterable[int] | None = None,
                 grep: str | re.Pattern[str] | None = None) -> EventFilter:
    """The filter ``get_events``, ``history``, ``follower`` and ``write_export`` take, from their
    keyword arguments; a precise TypeError or ValueError for anything else (a bad regex: ValueError)."""
    sev = _severity(min_severity)
    if event_type is None and peer_id is None and since is None and until is None and pid is None and grep is None:
        return severity_filter(int(sev))
    if isinstance(grep, str):
        try:
            grep = re.compile(grep)
        except re.error as e:
            raise ValueError(f"grep: bad regular expression {grep!r}: {e}") from None
    elif grep is not None and not isinstance(grep, re.Pattern):
        raise TypeError(f"grep must be a str or a compiled regex, not {type(grep).__name__}")
    lo, hi = _when(since, "since"), _when(until, "until")
    return EventFilter.of(event_type=event_type, peer_id=peer_id, min_severity=int(sev), pid=pid, since=lo,
                          until=hi, grep=grep)


def _accept(value: Accept | None) -> Accept | None:
    if value is not None and not callable(value):
        raise TypeError(f"accept must be callable or None, not {type(value).__name__}")
    return value


class Inspector:
    """A read-only view of a ring: events, stats, health, peers, latency, writers, history,
    following and export, with the same names and types as ``Recorder``'s reading methods.

    Get one with ``Inspector.attach(name)``; close it (or use ``with``) when done. Closing never
    unlinks the ring. Thread-safe: calls are serialised by a lock; after ``close()`` they raise
    ``RecorderClosedError`` (``health_check`` reports ``stopped``).
    """

    _seg: Segment
    _lock: threading.RLock
    _what: str  # "inspector", or "recorder" for a Recorder's own: errors name what was closed
    _closed: bool
    _release: Callable[[], object] | None  # unmaps an attached Inspector's segment
    _history: _health.History  # samples of health_check() calls: the baselines of its windows

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("use Inspector.attach(name) to inspect a ring")

    @classmethod
    def attach(cls, name: str) -> Inspector:
        """Map the ring ``name`` read-only. Raises RingNotFoundError, RingPermissionError,
        NotARingError, LayoutVersionError or CorruptRingError (all ShmDiagError), or ValueError
        for a name that cannot be a ring's."""
        seg = Segment.attach(name, readonly=True)
        self = cls._over(seg, threading.RLock(), "inspector")
        self._release = weakref.finalize(self, seg.close)  # unmapped when dropped unclosed
        return self

    @classmethod
    def _over(cls, seg: Segment, lock: threading.RLock, what: str) -> Inspector:
        """An Inspector over a segment someone else maps and unmaps (the Recorder, with its lock)."""
        self = cls.__new__(cls)
        self._seg = seg
        self._lock = lock
        self._what = what
        self._closed = False
        self._release = None
        self._history = _health.History()
        return self

    # -- identity --------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._seg.name

    @property
    def config(self) -> RecorderConfig:
        """The ring's configuration, as its creator wrote it into the header."""
        return self._seg.config

    @property
    def capacity(self) -> int:
        """How many events the ring retains (``max_events``)."""
        return self._seg.capacity

    @property
    def creator_pid(self) -> int:
        """The process that created the ring (the collector, for ``shmdiag serve``)."""
        return self._seg.creator_pid

    @property
    def created_ns(self) -> int:
        """When the ring was created, wall clock ns since the epoch."""
        return self._seg.created_ns

    @property
    def closed(self) -> bool:
        return self._closed

    def seq_range(self) -> tuple[int, int]:
        """(first, head): the first sequence number of the current era (since creation or the
        last clear) and the next one to be claimed: a :meth:`follower` from ``first`` delivers
        everything the ring still holds of this era."""
        with self._lock:
            self._check_open()
            head, base = self._seg.era()
            return base, head

    def fileno(self) -> int:
        """The ring's file descriptor: its inode tells whether /dev/shm/<name> is still this ring."""
        with self._lock:
            self._check_open()
            return self._seg.fileno()

    def __enter__(self) -> Inspector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Inspector {self._seg.name!r} max_events={self._seg.capacity} {state}>"

    def close(self) -> None:
        """Unmap (an attached Inspector; never unlinks). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._release is not None:
                self._release()

    def _check_open(self) -> None:
        if self._closed:
            raise RecorderClosedError(f"{self._what} {self._seg.name!r} is closed")

    # -- events ----------------------------------------------------------------------------
    def get_events(self, limit: int = 100, min_severity: Severity | int = Severity.DEBUG, *,
                   event_type: str | Iterable[str] | None = None, peer_id: str | Iterable[str] | None = None,
                   since: datetime | timedelta | None = None, until: datetime | timedelta | None = None,
                   pid: int | Iterable[int] | None = None,
                   grep: str | re.Pattern[str] | None = None,
                   filt: EventFilter | None = None) -> list[DiagnosticEvent]:
        """The most recent ``limit`` retained events that match, oldest first; ``limit <= 0``
        means all retained that match.

        Every condition given must hold: severity at least ``min_severity``; ``event_type`` and
        ``peer_id`` one of those given (a str, or several); ``pid`` the writer's (an int, or
        several); timestamp within ``since``..``until`` (inclusive; aware datetimes, or
        timedeltas back from now); ``grep`` (a regex) found in the message or the error. Tested
        with numpy on the stored records before any is decoded (``core/filter.py``), newest
        first, so a few matches cost little on a large ring; a type or peer never recorded is
        answered from the ring's counters without reading a slot. ``filt``: the same conditions
        already built by :func:`event_filter` (then give none of the others).
        """
        limit = _count(limit, "limit")
        if filt is None:
            filt = event_filter(min_severity, event_type=event_type, peer_id=peer_id, since=since, until=until,
                                pid=pid, grep=grep)
        elif not isinstance(filt, EventFilter):
            raise TypeError(f"filt must be an EventFilter (from event_filter()), not {type(filt).__name__}")
        elif (int(_severity(min_severity)), event_type, peer_id, since, until, pid, grep) != (0, *[None] * 6):
            raise ValueError("give either filt or the filter's keyword arguments, not both")
        with self._lock:
            self._check_open()
            return _reader.read_events(self._seg, limit, filt.min_severity, filt)

    def unrecorded(self, filt: EventFilter) -> str | None:
        """Why ``filt`` (from :func:`event_filter`) can match no event of this ring, told from its
        counters without reading a slot (a type or peer never recorded), or None."""
        with self._lock:
            self._check_open()
            return unrecorded(self._seg, filt)

    def count_retained(self) -> int:
        """How many events the ring retains right now (what an export or a clear would cover),
        from the writers' counters: it reads no slot, so it costs the same at any ring size.
        Exact when no writer is inside a record (see :meth:`accounting`)."""
        with self._lock:
            self._check_open()
            return _stats.accounting(self._seg).retained

    def history(self, n: int, min_severity: Severity | int = Severity.DEBUG, accept: Accept | None = None, *,
                follow: bool = True, filt: EventFilter | None = None,
                below: int | None = None) -> tuple[list[DiagnosticEvent], int]:
        """The last ``n`` retained events at or above ``min_severity`` that ``filt`` (from
        :func:`event_filter`) selects and ``accept`` takes, oldest first, and the sequence number
        a :meth:`follower` should start from to deliver everything after them exactly once
        (``core.follow.history``). ``below``: only events with lower sequence numbers (older
        than one already shown)."""
        n = _count(n, "n")
        if below is not None:
            below = _count(below, "below")
        sev = _severity(min_severity)
        accept = _accept(accept)
        filt = _filt(filt)
        with self._lock:
            self._check_open()
            return history(self._seg, n, int(sev), accept, follow=bool(follow), filt=filt, below=below)

    def follower(self, cursor: int, *, min_severity: Severity | int = Severity.DEBUG,
                 accept: Accept | None = None, pending_timeout: float = 2.0,
                 batch: int = 1 << 16, filt: EventFilter | None = None) -> Following:
        """Follow the ring from sequence number ``cursor`` (from :meth:`history`): each
        ``poll()`` returns the events since the last one, in order, and a ``Gap`` for those it
        could not read; ``poll_raw()`` the same as record Batches, bounded, for rendering many at
        once (``core.follow.Follower``). ``filt`` (from :func:`event_filter`) is applied on the
        stored records before anything is decoded; ``accept`` on decoded events, by ``poll()``.
        ``batch`` bounds the sequence numbers one poll looks at: a follower that must not use
        much CPU (a web page's live tail) takes a small one and lets the Gaps say what went by."""
        filt = _filt(filt)
        cursor = _count(cursor, "cursor")
        if cursor < 0:
            raise ValueError(f"cursor must be >= 0, got {cursor}")
        sev = _severity(min_severity)
        accept = _accept(accept)
        if isinstance(pending_timeout, bool) or not isinstance(pending_timeout, (int, float)):
            raise TypeError(f"pending_timeout must be a number, not {type(pending_timeout).__name__}")
        if not pending_timeout > 0:
            raise ValueError(f"pending_timeout must be positive, got {pending_timeout!r}")
        batch = _count(batch, "batch")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        with self._lock:
            self._check_open()
            return Following(self, Follower(self._seg, cursor, min_severity=int(sev), accept=accept,
                                            pending_timeout=float(pending_timeout), batch=batch, filt=filt))

    def clear_generation(self) -> int:
        """How many times the ring was cleared (modulo 2**16 or so): a change between two calls
        means a clear happened in between (the archive records it)."""
        with self._lock:
            self._check_open()
            return _snapshot.clear_generation(self._seg)

    # -- counters --------------------------------------------------------------------------
    def get_stats(self) -> DiagnosticStats:
        """Exact counts since creation or the last clear, from every process, overwritten events included."""
        with self._lock:
            self._check_open()
            return _stats.compute(self._seg)

    def accounting(self) -> _stats.Accounting:
        """Where every recorded event went, from one consistent copy of the writers' counters:
        recorded == retained + overwritten + lost + abandoned + expired, exactly, in every copy;
        ``in_flight`` events are inside a writer's record right now and in none of those terms."""
        with self._lock:
            self._check_open()
            return _stats.accounting(self._seg)

    def health_check(self, window: float = _health.DEFAULT_WINDOW, *,
                     stall_after: float = _health.DEFAULT_STALL_AFTER,
                     error_rate_min_severity: Severity | int | str = _health.DEFAULT_ERROR_RATE_MIN_SEVERITY,
                     ) -> HealthStatus:
        """The ring's health, its conditions judged over the last ``window`` seconds (loss,
        deaths, error rate: an incident older than that no longer counts, its since-creation
        totals stay in the figures). The error rate is over events at or above
        ``error_rate_min_severity`` (INFO: DEBUG volume does not move it); ``stalled`` after
        ``stall_after`` seconds without an event while writers are alive (0: never).

        Each call keeps a sample of the counters, so a long-lived inspector judges the window
        from its own history; a first call judges it from the writers' timestamps (see
        ``shmdiag.views.health``). Raises ValueError/TypeError for a bad parameter, and nothing
        else: a closed inspector reports ``stopped``. Dead writers are reported
        (``writers_dead``, ``dead_writers``), not reaped: that is the collector's and writers'
        job. A killed collector (``collector_alive`` False) and a ring whose name was removed
        or now leads to another segment (``detached``) are errors; a ring without a collector
        (``collector_pid`` 0) expects none."""
        policy = _health.Policy(window, stall_after, error_rate_min_severity)  # type: ignore[arg-type]
        with self._lock:
            if self._closed:
                return HealthStatus(status="stopped", message=f"{self._what} is closed",
                                    max_events=self._seg.config.max_events, window=policy.window,
                                    stall_after=policy.stall_after,
                                    error_rate_min_severity=policy.error_rate_min_severity.name,
                                    reasons=[HealthReason("stopped", "stopped", f"{self._what} is closed")])
            return self._health(_stats.compute(self._seg), policy, keep=True)

    def _health(self, stats: DiagnosticStats, policy: _health.Policy | None = None, *,
                keep: bool = False) -> HealthStatus:
        """Health from ``stats`` (computed once by a caller that needs both) and the books;
        ``keep``: add the counters' sample to this inspector's history.
        The caller holds the lock and has checked the inspector is open."""
        seg = self._seg
        policy = policy or _health.Policy()
        acct = _stats.accounting(seg)
        sample = _health.take_sample(seg)  # its writers' states: one liveness check per shard
        alive = sum(w.state == "active" for w in sample.writers)
        dead = sum(w.state == "dead" for w in sample.writers)
        h = HealthStatus(
            status="", message="", event_count=acct.retained, max_events=seg.capacity,
            total_events=acct.recorded, uptime=(time.time_ns() - seg.created_ns) / 1e9,
            writers_alive=alive, writers_dead=dead, events_overwritten=acct.overwritten,
            events_lost=acct.lost, events_abandoned=acct.abandoned, events_expired=acct.expired,
            error_rate=stats.error_rate, writers_inconsistent=stats.writers_inconsistent,
            detached=seg.link_state(),
            events_in_flight=acct.in_flight,
            seqs_unused=acct.unused,
            active_peers=stats.active_peers, max_peers=seg.max_peers,
            peers_untracked=_snapshot.untracked(seg)[0] if _snapshot.metrics_enabled(seg) else 0,
        )
        collector = _owners.collector_of(seg)
        if collector is not None:
            h.collector_pid, h.collector_alive = collector.pid, collector.alive
        baseline = self._history.baseline(sample.taken_ns, policy.window)
        cutoff = _health.recent_needed(sample, baseline, policy)
        recent = None if cutoff is None else _recent.severities_since(seg, cutoff)
        h = _health.evaluate(h, sample, baseline, policy, recent)
        if keep:
            self._history.add(sample, policy.window)
        return h

    def stats_and_health(self) -> tuple[DiagnosticStats, HealthStatus]:
        """``get_stats()`` and ``health_check()`` from one computation of the stats: what a
        scrape or a dashboard refresh needs, at half the cost of the two calls."""
        with self._lock:
            self._check_open()
            stats = _stats.compute(self._seg)
            return stats, self._health(stats)

    def get_peer_totals(self) -> _peers.PeerTotals:
        """Peers tracked and recycled; messages and bytes each way over all peers since the last
        clear (recycled entries included), and bytes per message type each way, summed without
        building per-peer objects (``views.peers.totals``)."""
        with self._lock:
            self._check_open()
            return _peers.totals(self._seg)

    def get_message_totals(self) -> _stats.MessageTotals:
        """Protocol messages and bytes by message type and direction since the last clear, over
        every writer (``views.stats.MessageTotals``): exact, unlike the per-peer figures, whose
        per-type bytes of recycled entries are kept only as a sum."""
        with self._lock:
            self._check_open()
            return _stats.message_totals(self._seg)

    def get_latency_histograms(self) -> dict[str, _latency.OpHistogram]:
        """Each timed operation's merged log-bucketed histogram (``views.latency.OpHistogram``),
        for exporters that re-bucket it, such as the Prometheus histogram in ``shmdiag.metrics``."""
        with self._lock:
            self._check_open()
            return _latency.histograms(self._seg)

    def get_latency_stats(self) -> dict[str, LatencyStats]:
        """Per timed operation, across all processes since the last clear: count, errors, mean,
        p50, p90, p99 and max, in seconds."""
        with self._lock:
            self._check_open()
            return _latency.read(self._seg)

    def get_peer_diagnostics(self) -> list[PeerDiagnostic]:
        """Every tracked peer with an event since the last clear, or connected now."""
        return self.get_network_diagnostic().peer_diagnostics

    def get_network_diagnostic(self) -> NetworkDiagnostic:
        """The peers, and how many events and connects concerned peers beyond ``max_peers``."""
        with self._lock:
            self._check_open()
            return _peers.read(self._seg)

    def get_writers(self) -> list[WriterInfo]:
        """Every process that has written to the ring, with its counts since the last clear.
        A writer that died without detaching is ``dead`` whether or not it has been reaped."""
        with self._lock:
            self._check_open()
            base, table = _snapshot.shards(self._seg)
        out = []
        for sh in table:
            w = int(sh["owner"])
            state, pid = L.owner_state(w), L.owner_pid(w)
            if state == L.SH_FREE:
                continue
            alive = writer_alive(w, int(sh["start_time"]))
            name = "active" if alive else "exited" if state == L.SH_EXITED else "dead"
            cur = int(sh["base"]) == base
            counts = {f: int(sh[f]) if cur else 0 for f in ("recorded", "overwritten", "lost", "abandoned")}
            out.append(WriterInfo(pid=pid, state=name, alive=alive, **counts))
        return out

    # -- export ----------------------------------------------------------------------------
    def export_events(self, format: str = "json", *, with_peers: bool = False,
                      filt: EventFilter | None = None) -> bytes:
        """All retained events, oldest first, as bytes (``docs/json.md`` has the shapes).

        ``"json"``: one document {schema_version, kind: "export", name, exported_at, stats,
        health, latency, [peers, writers,] events: [...], exported, skipped}.
        ``"ndjson"``: the events only, one object per line (:meth:`write_export`'s ``meta``
        takes the rest). ``with_peers`` adds the peers (as ``get_network_diagnostic``) and the
        writers (as ``get_writers``). The whole export is built in memory: for large rings use
        :meth:`write_export`. ``filt`` (from :func:`event_filter`): only the events it selects.
        """
        _export.check_format(format)
        filt = _filt(filt)
        with self._lock:
            self._check_open()
            return _export.export_bytes(self._seg, format, self._export_head(with_peers=with_peers), filt=filt)

    def write_export(self, fp: BinaryIO, format: str = "json", progress: _export.Progress | None = None, *,
                     with_peers: bool = False, meta: BinaryIO | None = None,
                     filt: EventFilter | None = None) -> int:
        """Stream the export of :meth:`export_events` into the binary file ``fp`` a chunk at a
        time (memory stays bounded whatever the ring's size); return the number of events written.

        ``progress(done, total)``, if given, is called after every chunk. The events are those
        retained when the export starts, oldest first; one that a writer overwrites before the
        export reaches it is skipped, never waited for: the returned count's ``.skipped`` says how
        many (see ``export.stream.write_export``). ``meta``, a binary file, receives the json
        export's document without its events (for an NDJSON export, whose lines are events
        only). Other threads of this process wait for the export to finish before reading or
        closing; writers never wait. ``filt`` (from :func:`event_filter`): only the events it
        selects, tested before anything is copied.
        """
        _export.check_format(format)
        if progress is not None and not callable(progress):
            raise TypeError(f"progress must be callable, not {type(progress).__name__}")
        filt = _filt(filt)
        with self._lock:
            self._check_open()
            return _export.write_export(self._seg, fp, format, self._export_head(with_peers=with_peers), progress,
                                        meta=meta, filt=filt)

    def _render(self, raw: np.ndarray, lead: bytes, trail: bytes) -> np.ndarray:
        """JSON lines of validated records (a follower's Batch), continuations read from this ring."""
        with self._lock:
            self._check_open()
            return _export.render_chunk(self._seg, raw, lead, trail)

    def _export_head(self, *, with_peers: bool = False) -> dict:
        """Everything an export carries besides its events. The caller holds the lock."""
        stats = _stats.compute(self._seg)
        network = _peers.read(self._seg) if with_peers else None
        writers = self.get_writers() if with_peers else None
        return _export.export_head(self._seg.name, stats, self._health(stats), latency=_latency.read(self._seg),
                                   network=network, writers=writers)


def _filt(value: object) -> EventFilter | None:
    if value is not None and not isinstance(value, EventFilter):
        raise TypeError(f"filt must be an EventFilter (see shmdiag.inspector.event_filter), not {type(value).__name__}")
    return value


class Following:
    """A ``core.follow.Follower`` bound to its Inspector: a poll after the Inspector is closed
    raises RecorderClosedError instead of reading an unmapped segment."""

    def __init__(self, inspector: Inspector, follower: Follower) -> None:
        self._insp = inspector
        self._follower = follower

    def poll(self) -> list[DiagnosticEvent | Gap]:
        """Everything that became deliverable since the last poll: events, and Gaps before the
        event they precede (or at the end)."""
        with self._insp._lock:
            self._insp._check_open()
            return self._follower.poll()

    def poll_raw(self, max_seqs: int | None = None) -> list[Batch | Gap]:
        """Up to ``max_seqs`` sequence numbers' worth (64Ki by default) of what became
        deliverable: Batches of validated records (``Batch.raw`` for
        ``export.templates.render_events``, ``Batch.events()`` decoded) and Gaps, in order.
        Call again at once until :attr:`waiting` (caught up, or at a record being written)."""
        with self._insp._lock:
            self._insp._check_open()
            return self._follower.poll_raw(max_seqs=max_seqs)

    def render(self, batch: Batch, lead: bytes = b"", trail: bytes = b"\n") -> np.ndarray:
        """The JSON lines of a Batch (``export.stream.render_chunk``: numpy for the whole batch,
        events of several slots read whole), as one uint8 array; ``.data`` to write it."""
        return self._insp._render(batch.raw, lead, trail)

    def flush(self) -> list[Gap]:
        """The gap a filtered follower holds back (see ``core.follow.Gap``): call when stopping."""
        return self._follower.flush()

    @property
    def behind(self) -> int:
        """Sequence numbers between the cursor and the head at the last poll."""
        return self._follower.behind

    @property
    def lag_seconds(self) -> float:
        """Age of the last event delivered while behind; 0.0 when caught up."""
        return self._follower.lag_seconds

    @property
    def waiting(self) -> bool:
        """The last poll went as far as it could (not stopped by ``max_seqs``): poll later."""
        return self._follower.waiting

    @property
    def cursor(self) -> int:
        """The next sequence number to deliver."""
        return self._follower.cursor

    @property
    def delivered(self) -> int:
        return self._follower.delivered

    @property
    def overwritten(self) -> int:
        return self._follower.overwritten

    @property
    def unreadable(self) -> int:
        return self._follower.unreadable
