"""Recorder: the Go original's API, over a ring that many processes share."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing.util
import os
import threading
import time
from collections.abc import Mapping as _MappingABC

import orjson
import psutil

from shmdiag.export import stream as _export

from shmdiag.views import health as _health

from shmdiag.views import latency as _latency

from shmdiag.core import layout as L

from shmdiag.views import peers as _peers

from shmdiag.core import reader as _reader

from shmdiag.views import stats as _stats
from shmdiag.core.config import RecorderConfig
from shmdiag.core.errors import RecorderClosedError
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
from shmdiag.core._native import set_closed_error
from shmdiag.core.segment import Segment
from shmdiag.core.shards import ShardManager, _fit_utf8, own_start_ms, process_alive

set_closed_error(RecorderClosedError)

_HEALTH_PERIOD = 30.0  # the creator's background health check, when enabled
_LIFECYCLE = {"peer_connected": L.F_LIFE_CONNECT, "peer_disconnected": L.F_LIFE_DISCONNECT}
_TYPE_MESSAGE = L.BUILTIN_TYPES.index("message")
_TYPE_CONNECTED = L.BUILTIN_TYPES.index("peer_connected")
_TYPE_DISCONNECTED = L.BUILTIN_TYPES.index("peer_disconnected")
_TYPE_ERROR = L.BUILTIN_TYPES.index("error")
_TYPE_LATENCY = L.BUILTIN_TYPES.index("latency")
_MAX_NS = (1 << 63) - 1
_LOG_CAP = L.TEXT_SIZE + 64  # characters of a log line's message: the ring's text and a template


def _need_str(value: object, what: str, *, nonempty: bool = False) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if nonempty and not value:
        raise ValueError(f"{what} must not be empty")
    return value


def _severity(value: object) -> Severity:
    try:
        if isinstance(value, bool):
            raise ValueError
        return Severity(value)
    except ValueError:
        raise ValueError(f"severity must be a Severity (0-4), got {value!r}") from None


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

    ``Recorder(...)`` and ``Recorder.with_config(...)`` create a ring (and unlink it on close);
    ``Recorder.attach(name)`` joins one from any process, to write and to read.
    """

    def __init__(self, max_events: int = 1000, logger: logging.Logger | None = None, *, name: str | None = None):
        self._open(Segment.create(RecorderConfig(max_events=max_events, name=name)), logger)

    @classmethod
    def with_config(cls, config: RecorderConfig, logger: logging.Logger | None = None) -> Recorder:
        if not isinstance(config, RecorderConfig):
            raise TypeError(f"config must be a RecorderConfig, not {type(config).__name__}")
        config.validate()
        self = cls.__new__(cls)
        self._open(Segment.create(config), logger)
        return self

    @classmethod
    def attach(cls, name: str, logger: logging.Logger | None = None) -> Recorder:
        self = cls.__new__(cls)
        self._open(Segment.attach(name), logger)
        return self

    def _open(self, seg: Segment, logger: logging.Logger | None) -> None:
        self._seg = seg
        self._config = seg.config
        self._name = seg.name
        self._is_creator = seg.owner
        self._lock = threading.RLock()  # reads and close; writes are serialised by the GIL
        self._closed = False
        self._shards = ShardManager(seg, self._lock)
        seg.native.set_provider(self._shards.ensure)
        self._write = seg.native.write
        self._logger = logger if logger is not None else logging.getLogger("shmdiag")
        self._log_min = L.LOG_LEVELS.index(self._config.log_level.lower())
        self._log_debug = self._log_min == 0
        self._last_health: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._finalizer = multiprocessing.util.Finalize(self, _finalize, args=(seg, self._shards), exitpriority=100)
        if self._is_creator:
            self._thread = threading.Thread(target=self._maintain, name=f"shmdiag-maintain-{seg.name}", daemon=True)
            self._thread.start()

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
    def record_event(self, event: DiagnosticEvent) -> None:
        """Record any event. The caller's object is not modified."""
        self._record_event(event, log=True)

    def _record_event(self, event: DiagnosticEvent, log: bool) -> None:
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
            room = L.TEXT_SIZE - len(_fit_utf8(etype.encode(), L.TYPE_CAP)) - len(_fit_utf8(peer.encode(), L.PEER_CAP))
            meta, cut = _encode_metadata(event.metadata, room)
            flags |= L.F_HAS_METADATA | (L.F_TRUNCATED if cut else 0)
        if error is not None:
            flags |= L.F_HAS_ERROR
        ts = 0 if event.timestamp is None else (_reader.datetime_to_ns(event.timestamp) or 1)
        tidx = self._shards.type_index(etype)
        self._write(L.KIND_EVENT, sev, flags, tidx, ts, 0, etype, peer, meta, error or "", message)
        if log and sev >= self._log_min and self._logger.isEnabledFor((sev + 1) * 10):
            self._log(sev, etype, peer, message)

    def record_peer_connection(self, peer_id: str, address: str) -> None:
        _need_str(peer_id, "peer_id", nonempty=True)
        _need_str(address, "address")
        self._write(L.KIND_CONNECT, 1, L.F_LIFE_CONNECT, _TYPE_CONNECTED, 0, 0, "", peer_id, address, "", "")
        if self._log_min <= 1 and self._logger.isEnabledFor(logging.INFO):
            self._log(1, "peer_connected", peer_id, f"Peer connected: {address}")

    def record_peer_disconnection(self, peer_id: str, address: str, reason: str) -> None:
        _need_str(peer_id, "peer_id", nonempty=True)
        _need_str(address, "address")
        _need_str(reason, "reason")
        self._write(L.KIND_DISCONNECT, 2, L.F_LIFE_DISCONNECT, _TYPE_DISCONNECTED, 0, 0, "", peer_id, address, reason, "")
        if self._log_min <= 2 and self._logger.isEnabledFor(logging.WARNING):
            self._log(2, "peer_disconnected", peer_id, f"Peer disconnected: {address} ({reason})")

    def record_message(self, peer_id: str, msg_type: str, direction: str, size: int) -> None:
        """The hot path: about a dozen bytecodes and one native call."""
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
            self._log(0, "message", peer_id, f"Message {direction}: {msg_type} ({size} bytes)")

    def record_error(self, peer_id: str, err: BaseException | str, operation: str) -> None:
        """ERROR for a peer's error; CRITICAL when no peer id is given (a node-wide failure)."""
        _need_str(peer_id, "peer_id")
        _need_str(operation, "operation")
        if err is None:
            raise TypeError("err must be an exception or a str, not None")
        text = err if isinstance(err, str) else str(err) or type(err).__name__
        sev = 3 if peer_id else 4
        self._write(L.KIND_ERROR, sev, L.F_HAS_ERROR, _TYPE_ERROR, 0, 0, "", peer_id, operation, text, "")
        if sev >= self._log_min and self._logger.isEnabledFor((sev + 1) * 10):
            self._log(sev, "error", peer_id, f"Error in {operation}: {text}")

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
        _need_str(op, "op", nonempty=True)
        _need_str(peer_id, "peer_id")
        self._check_open()
        return _Span(self, op, peer_id)

    def _write_latency(self, op: str, ns: int, peer_id: str, error: BaseException | None) -> None:
        if error is None:
            self._write(L.KIND_LATENCY, 0, 0, _TYPE_LATENCY, 0, ns, "", peer_id, op, "", "")
            return
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        self._write(L.KIND_LATENCY, 3, L.F_HAS_ERROR, _TYPE_LATENCY, 0, ns, "", peer_id, op, text, "")
        if self._log_min <= 3 and self._logger.isEnabledFor(logging.ERROR):
            self._log(3, "latency", peer_id, f"{op} failed: {text}")

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

    # -- reading ---------------------------------------------------------------------------
    def get_events(self, limit: int = 100, min_severity: Severity | int = Severity.DEBUG) -> list[DiagnosticEvent]:
        """The most recent ``limit`` retained events at or above ``min_severity``, oldest first;
        ``limit <= 0`` means all retained."""
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError(f"limit must be an int, not {type(limit).__name__}")
        sev = _severity(min_severity)
        with self._lock:
            self._check_open()
            return _reader.read_events(self._seg, limit, int(sev))

    def get_stats(self) -> DiagnosticStats:
        """Exact counts since creation or the last clear, from every process, overwritten events included."""
        with self._lock:
            self._check_open()
            return _stats.compute(self._seg)

    def accounting(self) -> _stats.Accounting:
        """Where every recorded event went; with ``retained`` from health_check().event_count,
        recorded == retained + overwritten + lost + abandoned + expired."""
        with self._lock:
            self._check_open()
            return _stats.accounting(self._seg)

    def health_check(self) -> HealthStatus:
        """Never raises: a closed recorder reports ``stopped``."""
        with self._lock:
            if self._closed:
                return HealthStatus(status="stopped", message="recorder is closed", max_events=self._config.max_events)
            seg = self._seg
            self._shards.reap_all()
            acct = _stats.accounting(seg)
            stats = _stats.compute(seg)
            alive, dead = self._writer_counts()
            h = HealthStatus(
                status="", message="", event_count=_reader.count_retained(seg), max_events=seg.capacity,
                total_events=acct.recorded, uptime=(time.time_ns() - seg.created_ns) / 1e9,
                writers_alive=alive, writers_dead=dead, events_overwritten=acct.overwritten,
                events_lost=acct.lost, events_abandoned=acct.abandoned, events_expired=acct.expired,
                error_rate=stats.error_rate, writers_inconsistent=stats.writers_inconsistent,
            )
            h.status, h.message = _health.classify(h)
            return h

    def _writer_counts(self) -> tuple[int, int]:
        owners = self._seg.shards["owner"].copy()
        starts = self._seg.shards["start_time"].copy()
        alive = dead = 0
        for w, start in zip(owners, starts):
            state, pid = int(w) & 0xFF, int(w) >> 8
            if state == L.SH_ACTIVE:
                if process_alive(pid, int(start)):
                    alive += 1
                else:
                    dead += 1
            elif state in (L.SH_DEAD, L.SH_REAPING):
                dead += 1
        return alive, dead

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
        """Every process that has written to the ring, with its counts since the last clear."""
        with self._lock:
            self._check_open()
            seg = self._seg
            _, base = seg.era()
            seg.native.fence()
            shards = seg.shards.copy()
        out = []
        for sh in shards:
            w = int(sh["owner"])
            state, pid = w & 0xFF, w >> 8
            if state == L.SH_FREE:
                continue
            alive = state == L.SH_ACTIVE and process_alive(pid, int(sh["start_time"]))
            name = "active" if alive else "exited" if state == L.SH_EXITED else "dead"
            cur = int(sh["base"]) == base
            out.append(WriterInfo(pid=pid, state=name, alive=alive,
                                  **{f: int(sh[f]) if cur else 0 for f in ("recorded", "overwritten", "lost", "abandoned")}))
        return out

    def export_events(self, format: str = "json") -> bytes:
        """All retained events, oldest first, with name, stats and health, as bytes.

        ``"json"``: one document {name, exported_at, stats, health, latency, events: [...]}.
        ``"ndjson"``: a first line {name, exported_at, stats, health, latency}, then one event per line.
        The whole export is built in memory: for large rings use :meth:`write_export`.
        """
        _export.check_format(format)
        with self._lock:
            self._check_open()
            return _export.export_bytes(self._seg, format, self._export_head())

    def write_export(self, fp: _export.BinaryIO, format: str = "json",
                     progress: _export.Progress | None = None) -> int:
        """Stream the export of :meth:`export_events` into the binary file ``fp`` a chunk at a
        time (memory stays bounded whatever the ring's size); return the number of events written.

        ``progress(done, total)``, if given, is called after every chunk. The events are those
        retained when the export starts, oldest first; one that a writer overwrites before the
        export reaches it is skipped, never waited for: the returned count's ``.skipped`` says how
        many (see ``_export.write_export``). Other threads of this process wait for the export
        to finish before reading or closing this Recorder; writers never wait.
        """
        _export.check_format(format)
        if progress is not None and not callable(progress):
            raise TypeError(f"progress must be callable, not {type(progress).__name__}")
        with self._lock:
            self._check_open()
            return _export.write_export(self._seg, fp, format, self._export_head(), progress)

    def _export_head(self) -> dict:
        """Everything an export carries besides its events."""
        latency = {op: dataclasses.asdict(st) for op, st in _latency.read(self._seg).items()}
        return _export.export_head(self._name, self.get_stats(), self.health_check(), latency=latency)

    # -- maintenance -----------------------------------------------------------------------
    def clear_events(self) -> None:
        """Forget every retained event and zero the stats, for every process.

        A clear starts a new generation in the head word, whose first sequence number is the
        head at that moment: records and shard counters of earlier sequence numbers stop counting
        everywhere at once, and each writer zeroes its own counters at its next event (sync_era
        in core/_native.c). The generation's base is published before the CAS that starts it, so a
        writer that claims a sequence number in the new generation always finds its base.
        Nothing waits for writers.
        """
        with self._lock:
            self._check_open()
            seg = self._seg
            with _clear_lock(seg):
                # Only a clear changes the generation, and clears are serialised: the bank the
                # next generation will use is idle (its last writers were two clears ago), so it
                # is zeroed here and published by new_era's CAS on the head word.
                nxt = ((seg.load("head") >> L.SEQ_BITS) + 1) & 1
                seg.ops["banks"][:, nxt] = 0
                seg.native.new_era()
                seg.native.store(seg.header_word("peers_untracked"), 0)
                seg.native.store(seg.header_word("peer_events_untracked"), 0)

    def cleanup_old_events(self) -> int:
        """Drop retained events older than ``retention_period``; returns how many."""
        with self._lock:
            self._check_open()
            seg = self._seg
            idx, w = _reader.retained_slots(seg)
            seg.native.fence()
            ts = seg.slots["ts_ns"][idx]
            cutoff = time.time_ns() - int(self._config.retention_period * 1e9)
            old = ts < cutoff
            if not old.any():
                return 0
            n = seg.native.retire(idx[old].astype("<u8"), w[old].astype("<u8"), L.ST_DELETED)
            if n:
                seg.native.add_expired(n)
            return n

    def _maintain(self) -> None:
        """The creator's background thread: retention cleanup every cleanup_interval, dead-writer
        reaping and (when enabled) health checks whose transitions are logged."""
        cfg = self._config
        period = min(cfg.cleanup_interval, _HEALTH_PERIOD) if cfg.enable_health_check else cfg.cleanup_interval
        next_cleanup = time.monotonic() + cfg.cleanup_interval
        while not self._stop.wait(period):
            try:
                if time.monotonic() >= next_cleanup:
                    n = self.cleanup_old_events()
                    next_cleanup = time.monotonic() + cfg.cleanup_interval
                    if n:
                        self._logger.info("shmdiag %s: retention cleanup dropped %d events", self._name, n)
                if cfg.enable_health_check:
                    h = self.health_check()
                    if h.status != self._last_health:
                        level = logging.INFO if h.status == "healthy" else logging.WARNING
                        self._logger.log(level, "shmdiag %s health: %s (%s)", self._name, h.status, h.message)
                        self._last_health = h.status
                else:
                    with self._lock:
                        if not self._closed:
                            self._shards.reap_all()
            except RecorderClosedError:
                return
            except Exception:  # keep maintaining; a bug here must not stop cleanup for good
                self._logger.exception("shmdiag %s: maintenance failed", self._name)

    def close(self) -> None:
        """Detach (and, for the creating recorder, unlink the ring). Idempotent, any thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            self._finalizer()


class _Span:
    """The context manager of Recorder.span: a plain class, cheaper than a generator."""

    __slots__ = ("_rec", "_op", "_peer", "_t0")

    def __init__(self, rec: Recorder, op: str, peer: str) -> None:
        self._rec, self._op, self._peer = rec, op, peer

    def __enter__(self) -> _Span:
        self._t0 = time.perf_counter_ns()
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> bool:
        ns = time.perf_counter_ns() - self._t0
        if exc_type is None:
            self._rec._write_latency(self._op, ns, self._peer, None)
        elif issubclass(exc_type, Exception):  # not KeyboardInterrupt, SystemExit, GeneratorExit
            self._rec._write_latency(self._op, ns, self._peer, exc)
        return False


def _duration_ns(seconds: object) -> int:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"seconds must be a number, not {type(seconds).__name__}")
    if not 0 <= seconds < 9.2e9:  # also refuses NaN
        raise ValueError(f"seconds must be a duration from 0 to 9.2e9, got {seconds!r}")
    return min(round(seconds * 1e9), _MAX_NS)


class _clear_lock:
    """Serialise clears across processes with a header word naming the clearer: its pid and the
    low 32 bits of its start time (ms), so a dead holder whose pid was reused is still seen to
    be dead and taken over. A live holder is waited for (a clear takes microseconds)."""

    def __init__(self, seg: Segment) -> None:
        self._seg = seg
        self._off = seg.header_word("clear_lock")

    def __enter__(self) -> None:
        nat = self._seg.native
        me = (os.getpid() << 32) | (own_start_ms() & 0xFFFFFFFF)
        deadline = time.monotonic() + 10.0
        while True:
            cur = nat.load(self._off)
            if cur == 0 or (cur != me and not _holder_alive(cur)):
                if nat.cas(self._off, cur, me):
                    return
            elif time.monotonic() > deadline:
                raise TimeoutError(f"ring {self._seg.name!r}: process {cur >> 32} has been clearing it for 10 s")
            else:
                time.sleep(0.0005)

    def __exit__(self, *exc: object) -> None:
        self._seg.native.store(self._off, 0)


def _holder_alive(word: int) -> bool:
    pid, start_lo = word >> 32, word & 0xFFFFFFFF
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        d = (round(proc.create_time() * 1000) - start_lo) & 0xFFFFFFFF
        return min(d, (1 << 32) - d) <= 20  # create_time has jiffy resolution
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True


def _finalize(seg: Segment, shards: ShardManager) -> None:
    """Release this process's shard, unmap, and unlink if this process created the ring.
    Also runs at interpreter exit and in multiprocessing children, for recorders never closed."""
    shards.release()
    if seg.owner and os.getpid() == seg.creator_pid:
        seg.unlink()
    seg.close()


def _bad_message_args(peer_id: object, msg_type: object, size: object) -> None:
    _need_str(peer_id, "peer_id", nonempty=True)
    _need_str(msg_type, "msg_type")
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"size must be an int, not {type(size).__name__}")
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
