"""Recorder: the Go original's API, over a ring that many processes share."""

from __future__ import annotations

import logging
import multiprocessing.util
import os
import re
import threading
import time
import weakref
from collections.abc import Iterable
from collections.abc import Mapping as _MappingABC
from datetime import datetime, timedelta
from typing import BinaryIO, Literal

import orjson

from shmdiag.collector import Collector
from shmdiag.core import kinds as K
from shmdiag.core import layout as L
from shmdiag.core import maintenance
from shmdiag.core import owners as _owners
from shmdiag.core import reader as _reader
from shmdiag.core.config import RecorderConfig
from shmdiag.core.errors import RecorderClosedError, ShmDiagError
from shmdiag.core.filter import EventFilter
from shmdiag.core.models import (
    DiagnosticEvent,
    DiagnosticStats,
    HealthStatus,
    LatencyStats,
    NetworkDiagnostic,
    PeerDiagnostic,
    Severity,
    WriterInfo,
)
from shmdiag.core.segment import Segment
from shmdiag.core.shards import ShardManager, _fit_utf8
from shmdiag.export import stream as _export
from shmdiag.inspector import Inspector, _severity
from shmdiag.views import stats as _stats
from shmdiag.views.health import DEFAULT_ERROR_RATE_MIN_SEVERITY, DEFAULT_STALL_AFTER, DEFAULT_WINDOW

# record_event of a lifecycle kind's type updates the peer as that kind does
_LIFECYCLE = {k.name: k.flags & (L.F_LIFE_CONNECT | L.F_LIFE_DISCONNECT) for k in K.KINDS
              if k.flags & (L.F_LIFE_CONNECT | L.F_LIFE_DISCONNECT)}
_TYPE_MESSAGE = L.BUILTIN_TYPES.index("message")
_TYPE_CONNECTED = L.BUILTIN_TYPES.index("peer_connected")
_TYPE_DISCONNECTED = L.BUILTIN_TYPES.index("peer_disconnected")
_TYPE_ERROR = L.BUILTIN_TYPES.index("error")
_TYPE_LATENCY = L.BUILTIN_TYPES.index("latency")
assert (K.MESSAGE.code, _TYPE_MESSAGE) == (3, 2)  # record_message writes them as literals
_MAX_NS = (1 << 63) - 1
_LOG_CAP = L.TEXT_MAX + 64  # characters of a log line's message: the ring's text and a template


def _error_text(err: BaseException) -> str:
    """An exception as its traceback's last line says it: ``KeyError: 'feefilter'``, or the
    type alone when it has no text."""
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _need_str(value: object, what: str, *, nonempty: bool = False) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if nonempty and not value:
        raise ValueError(f"{what} must not be empty")
    return value


def _encode_metadata(metadata: object, room: int) -> tuple[bytes, bool]:
    """Metadata as JSON within ``room`` bytes. Whole keys that do not fit are dropped, in order,
    so what is stored always parses; the second value says whether anything was dropped."""
    if not isinstance(metadata, _MappingABC):
        raise TypeError(f"metadata must be a dict, not {type(metadata).__name__}")
    try:
        raw = orjson.dumps(metadata)
    except TypeError:
        for k, v in metadata.items():
            if not isinstance(k, str):
                raise TypeError(f"metadata key {k!r} is not a str") from None
            try:
                orjson.dumps(v)
            except TypeError:
                raise TypeError(f"metadata[{k!r}] is not JSON-serialisable ({type(v).__name__})") from None
        raise
    if len(raw) <= room:
        return raw, False
    kept: dict = {}
    for k, v in metadata.items():
        trial = {**kept, k: v}
        if len(orjson.dumps(trial)) <= room:
            kept = trial
    return orjson.dumps(kept), True


class Recorder:
    """A diagnostics recorder on a named shared-memory ring.

    ``Recorder(...)`` and ``Recorder.with_config(...)`` create a ring; ``Recorder.attach(name)``
    joins one from any process, to write and to read. Its reading methods are those of an
    :class:`~shmdiag.Inspector` over the same ring (which a process that only reads should use
    instead: it maps the ring read-only).

    **Who removes the ring.** By default the creating recorder does, when it is closed (or
    garbage-collected, or at interpreter exit), and if its process is killed the resource
    tracker does: a ring made by a short script leaves nothing behind. With ``persist=True``
    the ring outlives its creator, closed or killed (``shmdiag serve`` creates its ring so, and
    removes it itself on a clean stop): remove it with ``close(remove=True)`` or
    ``shmdiag rm NAME``. An attached recorder never removes the ring unless asked
    (``close(remove=True)``).

    A creating recorder runs the ring's collector (``shmdiag.collector``) in a thread until it
    is closed; ``collector=False`` leaves that to the caller (``shmdiag serve`` runs its own).

    ``health_check()`` (and the collector's rounds) notice when the ring's name was removed or
    now leads to another segment -- this process then records into a ring nobody else can
    see -- and say so (status ``error``); the first time, a WARNING is logged.
    """

    def __init__(self, max_events: int = 1000, logger: logging.Logger | None = None, *, name: str | None = None,
                 collector: bool = True, persist: bool = False):
        """Create a ring (RingTooLargeError if its memory cannot be reserved, RingExistsError if
        the name is taken). ``persist``: the ring outlives this recorder (see the class docstring)."""
        self._open(Segment.create(RecorderConfig(max_events=max_events, name=name), persist=bool(persist)), logger,
                   collector)

    @classmethod
    def with_config(cls, config: RecorderConfig, logger: logging.Logger | None = None, *,
                    collector: bool = True, persist: bool = False) -> Recorder:
        """Create a ring configured by ``config``; ``collector`` and ``persist`` as for ``Recorder()``."""
        if not isinstance(config, RecorderConfig):
            raise TypeError(f"config must be a RecorderConfig, not {type(config).__name__}")
        config.validate()
        self = cls.__new__(cls)
        self._open(Segment.create(config, persist=bool(persist)), logger, collector)
        return self

    @classmethod
    def attach(cls, name: str, logger: logging.Logger | None = None) -> Recorder:
        self = cls.__new__(cls)
        self._open(Segment.attach(name), logger, False)
        return self

    def _open(self, seg: Segment, logger: logging.Logger | None, collector: bool) -> None:
        self._seg = seg
        self._config = seg.config
        self._name = seg.name
        self._is_creator = seg.owner
        self._lock = threading.RLock()  # reads and close; writes are serialised by the GIL
        self._closed = False
        self._detached_logged = False
        self._insp = Inspector._over(seg, self._lock, "recorder")  # the reading methods
        self._shards = ShardManager(seg, self._lock)
        self._write = self._shards.writer()
        self._logger = logger if logger is not None else logging.getLogger("shmdiag")
        self._log_min = L.LOG_LEVELS.index(self._config.log_level.lower())
        self._log_debug = self._log_min == 0
        self._finalizer = multiprocessing.util.Finalize(self, _finalize, args=(seg, self._shards), exitpriority=100)
        self._bind_native_routes()
        self._collector: Collector | None = None
        self._flusher: threading.Event | None = None  # set_batch's flusher thread runs until it is set
        if self._is_creator and collector:
            self._collector = Collector(self, self._logger)
            self._collector.start()

    def _bind_native_routes(self) -> None:
        """``record_message`` (when nothing is logged at DEBUG) and ``span`` as native calls for
        the common case (core/shards.py: message_writer, span_writer); the rest goes to the
        methods below, which record or raise as ever. The routes reach this recorder through a
        weak reference, so the mapping does not keep it alive (and unfinalized)."""
        me = weakref.ref(self)

        def live(what: str) -> Recorder:
            rec = me()
            if rec is None:
                raise RecorderClosedError(f"the recorder of this {what} is gone")
            return rec

        def message_slow(*args: object, **kwargs: object) -> None:
            Recorder.record_message(live("record_message"), *args, **kwargs)  # type: ignore[arg-type]

        def span_slow(*args: object, **kwargs: object) -> object:
            return Recorder.span(live("span"), *args, **kwargs)  # type: ignore[arg-type]

        def span_failed(op: str, ns: int, peer: str, exc_type: type, exc: BaseException) -> None:
            rec = me()
            if rec is not None and issubclass(exc_type, Exception):  # as _Span.__exit__
                rec._write_latency(op, ns, peer, exc)

        cls = type(self)
        if not self._log_debug and cls.record_message is Recorder.record_message:
            self.__dict__["record_message"] = self._shards.message_writer(message_slow)
        # span at any log level: a clean span logs nothing, and a failed one goes to _write_latency
        if cls.span is Recorder.span and cls._write_latency is Recorder._write_latency:
            self.__dict__["span"] = self._shards.span_writer(span_slow, span_failed)

    # -- identity --------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The ring's name: hand it to other processes for ``Recorder.attach``."""
        return self._name

    @property
    def config(self) -> RecorderConfig:
        return self._config

    @property
    def creator_pid(self) -> int:
        """The process that created the ring (the collector, for ``shmdiag serve``)."""
        return self._seg.creator_pid

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Recorder {self._name!r} max_events={self._config.max_events} {state}>"

    def _check_open(self) -> None:
        if self._closed:
            raise RecorderClosedError(f"recorder {self._name!r} is closed")

    # -- writing ---------------------------------------------------------------------------
    def record_event(self, event: DiagnosticEvent, *, log: bool = True) -> None:
        """Record any event. The caller's object is not modified. ``log=False`` records it
        without logging it too (the LoggingHandler's events came from a log record already)."""
        if not isinstance(event, DiagnosticEvent):
            raise TypeError(f"record_event() needs a DiagnosticEvent, not {type(event).__name__}")
        self._check_open()
        etype = _need_str(event.event_type, "event_type", nonempty=True)
        peer = _need_str(event.peer_id, "peer_id")
        message = _need_str(event.message, "message")
        sev = _severity(event.severity)
        error = event.error
        if error is not None and not isinstance(error, str):
            error = str(error)  # an exception object is welcome: its text is recorded
        flags = _LIFECYCLE.get(etype, 0) if peer else 0
        meta = b""
        if event.metadata is not None:
            # Metadata gets what the message and the error leave (the writer's priority: see
            # layout.text_budget), so whole keys are dropped here rather than the JSON cut there.
            room = self.text_budget(etype, peer) - len(message.encode("utf-8", "surrogatepass")) + (
                len(error.encode("utf-8", "surrogatepass")) if error is not None else 0)
            meta, cut = _encode_metadata(event.metadata, max(0, room))
            if len(meta) > room:  # not even "{}": none kept, as if there were none (still truncated)
                meta, flags = b"", flags | L.F_TRUNCATED
            else:
                flags |= L.F_HAS_METADATA | (L.F_TRUNCATED if cut else 0)
        if error is not None:
            flags |= L.F_HAS_ERROR
        ts = 0 if event.timestamp is None else (_reader.datetime_to_ns(event.timestamp) or 1)
        tidx = self._shards.type_index(etype)
        self._write(L.KIND_EVENT, sev, flags, tidx, ts, 0, etype, peer, meta, error or "", message)
        if log and sev >= self._log_min and self._logger.isEnabledFor((sev + 1) * 10):
            self._log(sev, etype, peer, message)

    def text_budget(self, event_type: str = "", peer_id: str = "") -> int:
        """Bytes (UTF-8) of message, error and metadata together that one event of this type and
        peer keeps whole on this ring (``layout.TEXT_MAX`` on rings of 512 events and more).
        Beyond it the message keeps priority over the error, and the error over the metadata;
        the event says ``truncated``."""
        return L.text_budget(self._seg.capacity, len(_fit_utf8(event_type.encode(), L.TYPE_CAP)),
                             len(_fit_utf8(peer_id.encode(), L.PEER_CAP)))

    def record_peer_connection(self, peer_id: str, address: str) -> None:
        if type(peer_id) is not str or not peer_id or type(address) is not str:  # a crawler's hot path: checks inline
            _need_str(peer_id, "peer_id", nonempty=True)
            _need_str(address, "address")
        self._write(L.KIND_CONNECT, 1, L.F_LIFE_CONNECT, _TYPE_CONNECTED, 0, 0, "", peer_id, address, "", "")
        if self._log_min <= 1 and self._logger.isEnabledFor(logging.INFO):
            self._log(1, K.CONNECT.name, peer_id, K.CONNECT.log_line(address=address))

    def record_peer_disconnection(self, peer_id: str, address: str, reason: str) -> None:
        _need_str(peer_id, "peer_id", nonempty=True)
        _need_str(address, "address")
        _need_str(reason, "reason")
        self._write(L.KIND_DISCONNECT, 2, L.F_LIFE_DISCONNECT, _TYPE_DISCONNECTED, 0, 0, "", peer_id, address,
                    reason, "")
        if self._log_min <= 2 and self._logger.isEnabledFor(logging.WARNING):
            self._log(2, K.DISCONNECT.name, peer_id,
                      K.DISCONNECT.log_line(address=address, reason=reason))

    def record_message(self, peer_id: str, msg_type: str, direction: str, size: int) -> None:
        """The hot path: about a dozen bytecodes and one native call (and with nothing to log at
        DEBUG, a recorder's record_message is that native call alone: see _open)."""
        if direction == "inbound":
            flags = 0
        elif direction == "outbound":
            flags = L.F_OUTBOUND
        else:
            raise ValueError(f"direction must be 'inbound' or 'outbound', got {direction!r}")
        if type(size) is not int or size < 0 or type(peer_id) is not str or not peer_id or type(msg_type) is not str:
            _bad_message_args(peer_id, msg_type, size)
        try:
            self._write(3, 0, flags, 2, 0, size, "", peer_id, msg_type, "", "")
        except OverflowError:  # raised before anything is claimed: nothing recorded
            raise ValueError(f"size is too large: {size}") from None
        if self._log_debug and self._logger.isEnabledFor(logging.DEBUG):
            self._log(0, K.MESSAGE.name, peer_id,
                      K.MESSAGE.log_line(direction=direction, message_type=msg_type, size=size))

    def record_error(self, peer_id: str, err: BaseException | str, operation: str) -> None:
        """ERROR for a peer's error; CRITICAL when no peer id is given (a node-wide failure)."""
        _need_str(peer_id, "peer_id")
        _need_str(operation, "operation")
        if err is None:
            raise TypeError("err must be an exception or a str, not None")
        text = err if isinstance(err, str) else _error_text(err)
        sev = 3 if peer_id else 4
        self._write(L.KIND_ERROR, sev, L.F_HAS_ERROR, _TYPE_ERROR, 0, 0, "", peer_id, operation, text, "")
        if sev >= self._log_min and self._logger.isEnabledFor((sev + 1) * 10):
            self._log(sev, K.ERROR.name, peer_id, K.ERROR.log_line(operation=operation, error=text))

    def record_latency(self, op: str, seconds: float, peer_id: str = "") -> None:
        """Record a measured duration of ``op``. It feeds the operation's percentiles
        (get_latency_stats) and, for "ping" or "pong" with a peer, that peer's latency."""
        if type(op) is str and op and type(peer_id) is str and type(seconds) is float and 0.0 <= seconds < 9.2e9:
            ns = int(seconds * 1e9 + 0.5)  # the common case, checked in one expression
        else:
            _need_str(op, "op", nonempty=True)
            _need_str(peer_id, "peer_id")
            ns = _duration_ns(seconds)
        self._write(L.KIND_LATENCY, 0, 0, _TYPE_LATENCY, 0, ns, "", peer_id, op, "", "")

    def span(self, op: str, peer_id: str = "") -> _Span:
        """``with rec.span("handshake", peer_id="p1"):`` times the block and records it as
        record_latency does. An exception inside is recorded as an error of ``op`` (counted in
        its ``errors``, not in its percentiles) and re-raised."""
        if type(op) is not str or not op or type(peer_id) is not str:  # a crawler's per-ping path: checks inline
            _need_str(op, "op", nonempty=True)
            _need_str(peer_id, "peer_id")
        if self._closed:
            self._check_open()
        return _Span(self, op, peer_id)

    def _write_latency(self, op: str, ns: int, peer_id: str, error: BaseException | None) -> None:
        if error is None:
            self._write(L.KIND_LATENCY, 0, 0, _TYPE_LATENCY, 0, ns, "", peer_id, op, "", "")
            return
        text = _error_text(error)
        self._write(L.KIND_LATENCY, 3, L.F_HAS_ERROR, _TYPE_LATENCY, 0, ns, "", peer_id, op, text, "")
        if self._log_min <= 3 and self._logger.isEnabledFor(logging.ERROR):
            self._log(3, K.LATENCY.name, peer_id, K.LATENCY.log_line(op=op, error=text))

    def _log(self, sev: int, etype: str, peer: str, message: str) -> None:
        # Callers check log_level and isEnabledFor first, so no text is built for a silent logger.
        # CRITICAL is logged like everything else: recording an event never ends the process.
        # The ring keeps a bounded text; so does the log (a 10 MB error must not be a 10 MB line).
        if len(message) > _LOG_CAP:
            message = f"{message[:_LOG_CAP]}... ({len(message) - _LOG_CAP} more characters)"
        if peer:
            self._logger.log((sev + 1) * 10, "%s [%s] %s", etype, peer, message)
        else:
            self._logger.log((sev + 1) * 10, "%s %s", etype, message)

    # -- reading: the Inspector's, over this recorder's segment -----------------------------
    def get_events(self, limit: int = 100, min_severity: Severity | int = Severity.DEBUG, *,
                   event_type: str | Iterable[str] | None = None, peer_id: str | Iterable[str] | None = None,
                   since: datetime | timedelta | None = None, until: datetime | timedelta | None = None,
                   pid: int | Iterable[int] | None = None,
                   grep: str | re.Pattern[str] | None = None,
                   filt: EventFilter | None = None) -> list[DiagnosticEvent]:
        """The most recent ``limit`` retained events that match, oldest first; ``limit <= 0``
        means all that match. The filters are ``Inspector.get_events``'s."""
        return self._insp.get_events(limit, min_severity, event_type=event_type, peer_id=peer_id, since=since,
                                     until=until, pid=pid, grep=grep, filt=filt)

    def count_retained(self) -> int:
        """How many events the ring retains right now."""
        return self._insp.count_retained()

    def get_stats(self) -> DiagnosticStats:
        """Exact counts since creation or the last clear, from every process, overwritten events included."""
        return self._insp.get_stats()

    def accounting(self) -> _stats.Accounting:
        """Where every recorded event went: recorded == retained + overwritten + lost + abandoned
        + expired, exactly, with ``in_flight`` alongside (see :meth:`Inspector.accounting`)."""
        return self._insp.accounting()

    def health_check(self, window: float = DEFAULT_WINDOW, *, stall_after: float = DEFAULT_STALL_AFTER,
                     error_rate_min_severity: Severity | int | str = DEFAULT_ERROR_RATE_MIN_SEVERITY,
                     ) -> HealthStatus:
        """Reap dead writers, then report health (see :meth:`Inspector.health_check` for the
        window and the parameters). Raises ValueError/TypeError for a bad parameter, nothing
        else: a closed recorder reports ``stopped``. A ring whose name was removed or replaced
        is an ``error`` (logged once: see check_ring)."""
        with self._lock:
            self.reap_dead_writers()
            h = self._insp.health_check(window, stall_after=stall_after,
                                        error_rate_min_severity=error_rate_min_severity)
            if h.detached:
                self._warn_detached(h.detached)
            return h

    def check_ring(self) -> str:
        """"" while the ring's name still leads to this recorder's ring; else "ring removed" or
        "replaced by another segment" (logged as a WARNING the first time). Two stat calls, off
        the recording path: health_check() and the collector's rounds call it."""
        with self._lock:
            if self._closed:
                return ""
            state = self._seg.link_state()
            if state:
                self._warn_detached(state)
            return state

    def _warn_detached(self, state: str) -> None:
        if not self._detached_logged:
            self._detached_logged = True
            self._logger.warning("shmdiag %s: %s: this process records into a ring that no other process can "
                                 "attach to any more", self._name, state)

    def claim_collector(self) -> None:
        """Name this process the ring's collector in its header (a ``Collector`` does, when it
        starts): RingInUseError if another live process collects it."""
        with self._lock:
            self._check_open()
            _owners.claim_collector(self._seg)

    def release_collector(self) -> None:
        """Clear the ring's collector word if this process holds it (a collector's clean stop)."""
        with self._lock:
            _owners.release_collector(self._seg)

    def set_batch(self, events: int = 256, max_delay: float = 0.25) -> None:
        """Write this process's ``record_message`` and ``span`` events in batches of up to
        ``events`` (1-1024; 0 turns batching off), each written at most ``max_delay`` seconds after
        it was recorded. Why: inside a busy program a write's cost is its cold cache lines, and
        events written in a row share them (in the crawler benchmark shmdiag's cost falls from
        +3.8%..+4.7% of the crawler's CPU to +1.7%..+2.7%). Hence the default of 256: written with
        cold caches, a batch of 32 cost 195 ns an event against 110 ns warm, one of 256 103 ns
        against 93 (``bench/batch_write.py``). What it changes: other processes see an event
        only once it is written; this process's events keep their order (anything else it
        records writes the batch first); a process killed with a batch pending loses it, counted
        by the reaper as recorded and lost. ``flush()`` writes the batch now; ``close()`` does
        too. A forked child does not batch (it writes each event at once; it may call
        ``set_batch`` itself)."""
        if isinstance(events, bool) or not isinstance(events, int):
            raise TypeError(f"events must be an int, not {type(events).__name__}")
        if isinstance(max_delay, bool) or not isinstance(max_delay, int | float):
            raise TypeError(f"max_delay must be a number of seconds, not {type(max_delay).__name__}")
        if not 0 <= events <= 1024:
            raise ValueError(f"events must be from 0 to 1024, got {events}")
        if not 0 < max_delay <= 60:
            raise ValueError(f"max_delay must be in (0, 60] seconds, got {max_delay}")
        delay_ns = int(max_delay * 1e9)
        with self._lock:
            self._check_open()
            self._shards.set_batch(events, delay_ns)
            if self._flusher is not None:
                self._flusher.set()
                self._flusher = None
            if events:
                # A process that goes quiet still writes its batch within max_delay. (Each wake
                # costs ~0.1 ms of CPU on a VM: at the default, 8 a second, ~0.1% of a core.)
                self._flusher = stop = threading.Event()
                me = weakref.ref(self)

                def flusher() -> None:
                    while not stop.wait(max_delay / 2):
                        rec = me()
                        if rec is None or rec._closed:
                            return
                        try:
                            rec._shards.flush_older(delay_ns)
                        except ShmDiagError:
                            return
                        del rec

                threading.Thread(target=flusher, name=f"shmdiag-flush-{self._name}", daemon=True).start()

    def flush(self) -> None:
        """Write this process's batch now (``set_batch``); nothing to do without one."""
        with self._lock:
            self._check_open()
            self._shards.flush()

    def reap_dead_writers(self) -> int:
        """Settle the shards of writers that died without detaching, so their last event is
        counted once (the collector's job, and this recorder's before a health check or an
        export); returns how many were reaped."""
        with self._lock:
            return 0 if self._closed else self._shards.reap_all()

    def get_latency_stats(self) -> dict[str, LatencyStats]:
        """Per timed operation, across all processes since the last clear: count, errors, mean,
        p50, p90, p99 and max, in seconds."""
        return self._insp.get_latency_stats()

    def get_peer_diagnostics(self) -> list[PeerDiagnostic]:
        """Every tracked peer with an event since the last clear, or connected now."""
        return self._insp.get_peer_diagnostics()

    def get_network_diagnostic(self) -> NetworkDiagnostic:
        """The peers, and how many events and connects concerned peers beyond ``max_peers``."""
        return self._insp.get_network_diagnostic()

    def get_writers(self) -> list[WriterInfo]:
        """Every process that has written to the ring, with its counts since the last clear."""
        return self._insp.get_writers()

    def export_events(self, format: str = "json", *, with_peers: bool = False,
                      filt: EventFilter | None = None) -> bytes:
        """All retained events, oldest first, with name, stats and health (dead writers reaped
        first), as bytes: see :meth:`Inspector.export_events`. For large rings use :meth:`write_export`."""
        _export.check_format(format)
        with self._lock:
            self.reap_dead_writers()
            return self._insp.export_events(format, with_peers=with_peers, filt=filt)

    def write_export(self, fp: BinaryIO, format: str = "json", progress: _export.Progress | None = None, *,
                     with_peers: bool = False, meta: BinaryIO | None = None,
                     filt: EventFilter | None = None) -> int:
        """Stream the export of :meth:`export_events` into the binary file ``fp``; return the
        number of events written (``.skipped``: overwritten during the export). See
        :meth:`Inspector.write_export`. Other threads of this process wait for the export to
        finish before reading or closing this Recorder; writers never wait."""
        _export.check_format(format)
        with self._lock:
            self.reap_dead_writers()
            return self._insp.write_export(fp, format, progress, with_peers=with_peers, meta=meta, filt=filt)

    def _export_head(self, *, with_peers: bool = False) -> dict:
        """Everything an export carries besides its events."""
        with self._lock:
            self.reap_dead_writers()
            return self._insp._export_head(with_peers=with_peers)

    # -- maintenance -----------------------------------------------------------------------
    def clear_events(self) -> None:
        """Forget every retained event and zero the stats, for every process, at once and
        without waiting for writers (see ``core.maintenance.clear``)."""
        with self._lock:
            self._check_open()
            maintenance.clear(self._seg)

    def cleanup_old_events(self) -> int:
        """Drop retained events older than ``retention_period``; returns how many. The collector
        does this every ``cleanup_interval``."""
        with self._lock:
            self._check_open()
            return maintenance.expire_before(self._seg, time.time_ns() - int(self._config.retention_period * 1e9))

    def close(self, *, remove: bool | None = None) -> None:
        """Detach. ``remove``: None (default) removes the ring if this recorder created it
        without ``persist``; True removes it whoever created it (if its name still leads to this
        ring); False never does. Idempotent, any thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._flusher is not None:
                self._flusher.set()
            self._insp.close()  # marks it closed; the segment is this recorder's to unmap
        if self._collector is not None:
            self._collector.stop()
        with self._lock:
            if remove:
                self._seg.unlink()
            elif remove is False:
                self._seg.keep()
            self._finalizer()


class _Span:
    """The context manager of Recorder.span: a plain class, cheaper than a generator."""

    __slots__ = ("_rec", "_op", "_peer", "_t0")

    def __init__(self, rec: Recorder, op: str, peer: str) -> None:
        self._rec, self._op, self._peer = rec, op, peer

    def __enter__(self) -> _Span:
        self._t0 = time.perf_counter_ns()
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> Literal[False]:
        ns = time.perf_counter_ns() - self._t0
        if exc_type is None:  # the common case, written directly as record_latency writes it
            self._rec._write(L.KIND_LATENCY, 0, 0, _TYPE_LATENCY, 0, ns, "", self._peer, self._op, "", "")
        elif issubclass(exc_type, Exception):  # not KeyboardInterrupt, SystemExit, GeneratorExit
            self._rec._write_latency(self._op, ns, self._peer, exc)
        return False


def _duration_ns(seconds: object) -> int:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"seconds must be a number, not {type(seconds).__name__}")
    if not 0 <= seconds < 9.2e9:  # also refuses NaN
        raise ValueError(f"seconds must be a duration from 0 to 9.2e9, got {seconds!r}")
    return min(round(seconds * 1e9), _MAX_NS)


def _finalize(seg: Segment, shards: ShardManager) -> None:
    """Release this process's shard and collector word, unmap, and unlink if this process
    created the ring without ``persist``. Also runs at interpreter exit and in multiprocessing
    children, for recorders never closed."""
    shards.release()
    _owners.release_collector(seg)  # only if this process holds it
    if seg.owner and not seg.persist and os.getpid() == seg.creator_pid:
        seg.unlink()
    seg.close()


def _bad_message_args(peer_id: object, msg_type: object, size: object) -> None:
    _need_str(peer_id, "peer_id", nonempty=True)
    _need_str(msg_type, "msg_type")
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"size must be an int, not {type(size).__name__}")
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
