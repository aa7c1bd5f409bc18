"""``shmdiag loadgen`` / ``tools/loadgen.py``: many writer processes recording a P2P node's traffic
into one ring, and a report of what the ring made of it.

Writers are real processes (multiprocessing *spawn*: they find the ring by name only) that
``Recorder.attach`` and record through the public API, following ``_profile``. Writer ``i``
simulates peers ``w{i}-p{j}``: connect and handshake, steady traffic, pings with their round
trips (``record_latency``), errors, disconnects and reconnects; no other process records those
peers' lifecycle. A writer that stops cleanly disconnects its peers ("shutdown"); a killed one
leaves them connected in the ring's peer table, as a crashed node would.

What is compared at the end, and why it is honest:

* each writer publishes its own event count in shared memory after every batch of steps, and
  its exact final count when it stops. A SIGKILLed writer (``--chaos``) cannot say what it did
  after its last publish, so its count is a lower bound;
* the ring's own accounting is the source of truth: ``recorded`` grows by exactly the events the
  writers recorded (when nobody else writes to the ring). Without kills the writers' total must
  equal that growth; with kills the difference is reported and must lie within
  ``kills x (most events a writer records between two publishes)``;
* the ring also counts per writer process (``get_writers()``: each process's shard), so a killed
  writer's exact total is known as long as no shard changed hands (a process takes a never-used
  shard first; reuse starts only when ``max_writers`` of them have been used): the report gives both counts per writer;
* after the writers stop, ``recorded == retained + overwritten + lost + abandoned + expired``
  (``retained`` from ``health_check().event_count``) must hold exactly; a killed writer's event
  in flight is settled by the health check's reaping and counted once, as abandoned or recorded.

``--events N`` is the total over all writers (split evenly). With ``--chaos`` a replacement
takes over what its killed predecessor had not reported, so the ring may record a few more
than N. ``--rate R`` is per writer, in events per second, paced by sleeping between batches.

Writers run with logging switched off: the load measures the ring, not ``logging``.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import math
import multiprocessing as mp
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

import orjson
import psutil

from shmdiag.cli.format import human_bytes
from shmdiag.core.config import RecorderConfig
from shmdiag.core.errors import ShmDiagError
from shmdiag.core.models import DiagnosticEvent, HealthStatus
from shmdiag.export import dicts as _dicts
from shmdiag.export.schema import SCHEMA_VERSION
from shmdiag.loadgen import profile as P
from shmdiag.recorder import Recorder

if TYPE_CHECKING:
    from shmdiag.views.stats import Accounting

    # The shared arrays below (multiprocessing RawArrays) as the writers and the parent see them.
    _Doubles = ctypes.Array[ctypes.c_double]
    _Chars = ctypes.Array[ctypes.c_char]

MAX_WRITERS = 64
DEFAULT_DURATION = 5.0
DEFAULT_MAX_EVENTS = 100_000
DEFAULT_PEERS = 8
BATCH = 256  # steps between two looks at the clock, the stop flag and the published count
TAPE_LEN = 1 << 14  # steps drawn from the profile per writer, then replayed (peers picked apart)
PEER_TAPE_LEN = 16381  # prime, so step and peer sequences repeat together only after 2.7e8 steps
PUBLISH_PERIOD = 0.25  # seconds between a writer's CPU/RSS publishes
PROGRESS_PERIOD = 0.5
START_TIMEOUT = 60.0
# The most events one step records: a full connection (connect + handshake).
MAX_STEP = 1 + len(P.HANDSHAKE)

# Per-writer shared array (doubles: exact for counts up to 2**53).
_STATE, _EVENTS, _T_FIRST, _T_LAST, _CPU, _RSS, _PINGS = range(7)
_OUT_LEN = 8
_STARTING, _READY, _RUNNING, _DONE, _FAILED = 0.0, 1.0, 2.0, 3.0, 4.0
# Control array, written by the parent only.
_GO, _STOP, _DEADLINE = range(3)
_ERR_LEN = 240


# == the simulation (runs in a writer) ==========================================================
def _weighted(table: dict) -> tuple[list, list]:
    keys = list(table)
    weights = [v if isinstance(v, (int, float)) else v.weight for v in table.values()]
    return keys, weights


def build_tape(rng: random.Random, n: int = TAPE_LEN, step_mix: dict[str, float] | None = None) -> list[tuple]:
    """``n`` steps drawn from the profile, as tuples the step loop dispatches on:
    (0, type, direction, size) a message; (1, type, direction, sizes) an addr burst;
    (2, operation, text, disconnect reason or None) an error; (3, reason) a disconnect;
    (4, event_type, message, severity, metadata) a generic event."""
    steps, sw = _weighted(P.STEP_MIX if step_mix is None else step_mix)
    msgs, mw = _weighted(P.MESSAGE_MIX)
    errs, ew = _weighted(P.ERRORS)
    reasons, rw = _weighted(P.DISCONNECT_REASONS)
    ev_weights = [e.weight for e in P.NODE_EVENTS]
    height = 870_000 + rng.randrange(10_000)
    tape: list[tuple] = []
    types = iter(rng.choices(msgs, mw, k=n))
    for kind in rng.choices(steps, sw, k=n):
        if kind == "message":
            t = next(types)
            m = P.MESSAGE_MIX[t]
            d = "inbound" if rng.random() < m.inbound else "outbound"
            k = rng.randint(*m.burst)
            if k == 1:
                tape.append((0, t, d, P.draw_size(t, rng)))
            else:
                tape.append((1, t, d, tuple(P.draw_size(t, rng) for _ in range(k))))
        elif kind == "error":
            e = P.ERRORS[rng.choices(errs, ew)[0]]
            tape.append((2, e.operation, e.text, e.disconnect))
        elif kind == "disconnect":
            tape.append((3, rng.choices(reasons, rw)[0]))
        else:
            ev = rng.choices(P.NODE_EVENTS, ev_weights)[0]
            height += 1
            tape.append((4, ev.event_type, ev.message.format(height=height), ev.severity, {"height": height}))
    return tape


class RecordSink(Protocol):
    """What a Simulation records through: Recorder's record_* methods (the tests count with a fake)."""

    def record_event(self, event: DiagnosticEvent) -> None: ...
    def record_peer_connection(self, peer_id: str, address: str) -> None: ...
    def record_peer_disconnection(self, peer_id: str, address: str, reason: str) -> None: ...
    def record_message(self, peer_id: str, msg_type: str, direction: str, size: int) -> None: ...
    def record_error(self, peer_id: str, err: str, operation: str) -> None: ...
    def record_latency(self, op: str, seconds: float, peer_id: str = "") -> None: ...


class Simulation:
    """One writer's peers, driven by a tape of steps. ``rec`` is a Recorder, or anything with its
    record_* methods (the tests count with a fake)."""

    def __init__(self, rec: RecordSink, wid: int, peers: int, rng: random.Random, tape_len: int = TAPE_LEN,
                 step_mix: dict[str, float] | None = None) -> None:
        self.rec, self.rng = rec, rng
        self.ids = [f"w{wid}-p{j}" for j in range(peers)]
        self.addrs = [P.draw_address(rng) for _ in range(peers)]
        self.up = [False] * peers
        self.next_ping = [0.0] * peers
        self.tape = build_tape(rng, tape_len, step_mix)
        self.ptape = [rng.randrange(peers) for _ in range(min(PEER_TAPE_LEN, max(tape_len - 1, 1)))]
        self.rtts = [P.draw_rtt(rng) for _ in range(1024)]
        self.i = rng.randrange(len(self.tape))
        self.j = 0
        self.pings = 0

    def connect(self, s: int) -> int:
        """A connection attempt to peer slot ``s``: refused, dropped after version, or up."""
        rec, pid, roll = self.rec, self.ids[s], self.rng.random()
        if roll < P.CONNECT_REFUSED_SHARE:
            rec.record_error(pid, P.CONNECT_ERROR[1], P.CONNECT_ERROR[0])
            return 1
        rec.record_peer_connection(pid, self.addrs[s])
        if roll < P.CONNECT_REFUSED_SHARE + P.HANDSHAKE_FAIL_SHARE:
            op, text, reason = P.HANDSHAKE_ERROR
            rec.record_message(pid, "version", "outbound", P.draw_size("version", self.rng))
            rec.record_message(pid, "version", "inbound", P.draw_size("version", self.rng))
            rec.record_error(pid, text, op)
            rec.record_peer_disconnection(pid, self.addrs[s], reason)
            return 5
        msg = rec.record_message
        for direction, t in P.HANDSHAKE:
            msg(pid, t, direction, P.SIZES[t].lo if P.SIZES[t].dist == "fixed" else P.draw_size(t, self.rng))
        self.up[s] = True
        self.next_ping[s] = 0.0  # ping right after the handshake, as Bitcoin Core does
        return 1 + len(P.HANDSHAKE)

    def steps(self, k: int) -> int:
        """Run ``k`` steps; returns the events recorded (each step records 1 to MAX_STEP)."""
        rec = self.rec
        msg, err, disc = rec.record_message, rec.record_error, rec.record_peer_disconnection
        tape, ptape, up, ids = self.tape, self.ptape, self.up, self.ids
        nt, np_ = len(tape), len(ptape)
        i, j, n = self.i, self.j, 0
        for _ in range(k):
            a = tape[i]
            i += 1
            if i == nt:
                i = 0
            s = ptape[j]
            j += 1
            if j == np_:
                j = 0
            if not up[s]:
                n += self.connect(s)
                continue
            code = a[0]
            if code == 0:
                msg(ids[s], a[1], a[2], a[3])
                n += 1
            elif code == 1:
                pid = ids[s]
                for size in a[3]:
                    msg(pid, a[1], a[2], size)
                n += len(a[3])
            elif code == 2:
                err(ids[s], a[2], a[1])
                n += 1
                if a[3] is not None:
                    disc(ids[s], self.addrs[s], a[3])
                    up[s] = False
                    n += 1
            elif code == 3:
                disc(ids[s], self.addrs[s], a[1])
                up[s] = False
                n += 1
            else:
                rec.record_event(DiagnosticEvent(a[1], a[2], a[3], peer_id=ids[s], metadata=a[4]))
                n += 1
        self.i, self.j = i, j
        return n

    def ping_due(self, now: float, budget: int) -> int:
        """Ping every connected peer whose interval is up (ping out, pong in, the round trip);
        at most ``budget`` events. Returns the events recorded."""
        n = 0
        rec = self.rec
        for s, is_up in enumerate(self.up):
            if is_up and now >= self.next_ping[s] and budget - n >= 3:
                pid = self.ids[s]
                rec.record_message(pid, "ping", "outbound", 8)
                rec.record_message(pid, "pong", "inbound", 8)
                rec.record_latency("ping", self.rtts[self.pings & 1023], peer_id=pid)
                self.pings += 1
                self.next_ping[s] = now + self.rng.uniform(*P.PING_INTERVAL)
                n += 3
        return n

    def shutdown(self) -> int:
        """Disconnect every connected peer, as a node does when it stops; returns how many."""
        n = 0
        for s, is_up in enumerate(self.up):
            if is_up:
                self.rec.record_peer_disconnection(self.ids[s], self.addrs[s], P.SHUTDOWN_REASON)
                self.up[s] = False
                n += 1
        return n

    def single(self, k: int) -> int:
        """``k`` one-event steps, to end exactly on an event quota."""
        for _ in range(k):
            live = [s for s, u in enumerate(self.up) if u]
            if live:
                self.rec.record_message(self.ids[live[0]], "inv", "inbound", 37)
            else:
                self.rec.record_error(self.ids[0], P.CONNECT_ERROR[1], P.CONNECT_ERROR[0])
        return k


def _quiet_logger() -> logging.Logger:
    log = logging.getLogger("shmdiag.loadgen.writer")
    log.setLevel(logging.CRITICAL + 10)
    log.propagate = False
    return log


def _writer_main(name: str, wid: int, seed: int, peers: int, quota: int, rate: float, ctl: _Doubles, out: _Doubles,
                 err: _Chars) -> None:
    """A writer process: attach, wait for the start, record until told (or the quota is met)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us through ctl[_STOP]
    try:
        _write(name, wid, seed, peers, quota, rate, ctl, out)
    except BaseException as e:  # reported through `err`; the parent prints it
        err.value = f"{type(e).__name__}: {e}".encode("utf-8", "replace")[: _ERR_LEN - 1]
        out[_STATE] = _FAILED


def _write(name: str, wid: int, seed: int, peers: int, quota: int, rate: float, ctl: _Doubles,
           out: _Doubles) -> None:
    me = psutil.Process()
    with Recorder.attach(name, logger=_quiet_logger()) as rec:
        sim = Simulation(rec, wid, peers, random.Random(seed))
        out[_STATE] = _READY
        while ctl[_GO] == 0.0 and ctl[_STOP] == 0.0:
            time.sleep(0.005)
        batch = BATCH if not rate else max(1, min(BATCH, int(rate / 20)))
        deadline = ctl[_DEADLINE]
        t0 = time.monotonic()
        if ctl[_STOP] != 0.0 or (deadline and t0 >= deadline):  # a replacement that came too late
            out[_STATE] = _DONE
            return
        cpu0 = sum(me.cpu_times()[:2])
        out[_T_FIRST] = out[_T_LAST] = t0
        out[_STATE] = _RUNNING
        n = 0
        next_pub = t0 + PUBLISH_PERIOD
        # With a quota, keep one event per peer for the disconnections at the end.
        budget = quota - peers if quota else 1 << 62
        while ctl[_STOP] == 0.0:
            now = time.monotonic()
            if deadline and now >= deadline:
                break
            if n >= budget:
                break
            n += sim.ping_due(now, budget - n)
            k = min(batch, (budget - n) // MAX_STEP)
            if k > 0:
                n += sim.steps(k)
            else:
                n += sim.single(max(0, budget - n))
            out[_EVENTS] = n
            out[_T_LAST] = time.monotonic()
            if rate:
                _pace(t0 + n / rate, deadline, ctl)
            if now >= next_pub:
                out[_CPU] = sum(me.cpu_times()[:2]) - cpu0
                out[_RSS] = me.memory_info().rss
                out[_PINGS] = sim.pings
                next_pub = now + PUBLISH_PERIOD
        if quota and ctl[_STOP] == 0.0:
            n += sim.single(max(0, quota - n - sum(sim.up)))  # exactly `quota`, with the disconnections
        n += sim.shutdown()
        out[_EVENTS] = n
        out[_T_LAST] = time.monotonic()
        out[_CPU] = sum(me.cpu_times()[:2]) - cpu0
        out[_RSS] = me.memory_info().rss
        out[_PINGS] = sim.pings
        out[_STATE] = _DONE


def _pace(target: float, deadline: float, ctl: _Doubles) -> None:
    """Sleep until ``target`` (monotonic), in slices, so a stop or the deadline cuts it short."""
    while ctl[_STOP] == 0.0:
        now = time.monotonic()
        wait = target - now
        if deadline:
            wait = min(wait, deadline - now)
        if wait <= 0:
            return
        time.sleep(min(wait, 0.1))


# == the report ==================================================================================
class ProcessCpu(TypedDict):
    """CPU and RSS of the ring's creator or of loadgen itself (None when psutil cannot see it)."""

    pid: int
    role: str
    cpu_s: float | None
    cpu_pct: float | None
    rss_bytes: int | None


class _WriterRowBase(TypedDict):
    writer: int
    pid: int
    status: str  # running | exited | killed | failed
    events: int
    seconds: float
    events_per_s: int
    cpu_s: float
    cpu_pct: float
    rss_bytes: int | None
    pings: int
    ring_recorded: int | None  # the ring's count for the writer's process (its shard), None if unknown


class WriterRow(_WriterRowBase, total=False):
    """One writer process in the report; ``replaces`` and ``error`` only when they apply."""

    replaces: int
    error: str


class Settings(TypedDict):
    writers: int
    duration: float | None
    events: int | None
    rate_per_writer: float | None
    peers_per_writer: int
    chaos: float | None
    seed: int


class AccountingReport(TypedDict):
    recorded: int
    retained: int
    overwritten: int
    lost: int
    abandoned: int
    expired: int
    in_flight: int


class RingPerWriter(TypedDict):
    """The ring's own per-process counts; all but ``exact`` are None when a shard changed hands."""

    exact: bool
    sum: int | None
    sum_equals_delta: bool | None
    clean_exits_equal: bool | None
    killed_unreported: list[int] | None


class CpuReport(TypedDict):
    writers_cpu_s: float
    writers_cpu_pct: float
    writers_rss_bytes: int
    collector: ProcessCpu
    loadgen: ProcessCpu


class LoadReport(TypedDict):
    """What ``run_load`` returns (and ``--json`` prints): see the module docstring."""

    schema_version: int  # export.schema.SCHEMA_VERSION; kind "loadgen" (its other fields: the module docstring)
    kind: str
    ring: str
    created: bool
    capacity: int
    settings: Settings
    interrupted: bool
    duration_s: float
    events: int
    events_per_s: int
    writers: list[WriterRow]
    kills: int
    failed_writers: int
    accounting: AccountingReport
    reconciles: bool
    ring_recorded_before: int
    ring_recorded_delta: int  # recorded during the run by our writers' processes (others' events taken out)
    ring_recorded_by_others: int  # recorded during the run by other processes (e.g. a collector's alerts)
    writers_total: int
    writers_match_ring: bool | None  # None when writers were killed: see unreported_by_killed
    unreported_by_killed: int
    unreported_bound: int
    writers_within_bound: bool
    ring_per_writer: RingPerWriter
    cpu: CpuReport
    stats: dict[str, Any]  # export.dicts.stats_to_dict
    health: dict[str, Any]  # export.dicts.health_to_dict


# == the parent ==================================================================================
@dataclass
class _Writer:
    wid: int
    proc: mp.process.BaseProcess
    out: _Doubles
    err: _Chars
    quota: int
    status: str = "running"  # running | exited | killed | failed
    error: str = ""
    replaces: int | None = None

    @property
    def pid(self) -> int:
        """The process id: spawn() starts the process before it makes the _Writer."""
        pid = self.proc.pid
        assert pid is not None
        return pid

    def value(self, i: int) -> float:
        return float(self.out[i])


@dataclass
class _Cpu:
    """CPU seconds and RSS of one process, between start() and stop()."""

    pid: int
    role: str
    cpu0: float = 0.0
    t0: float = 0.0
    result: dict = field(default_factory=dict)

    def start(self) -> None:
        try:
            self.cpu0 = sum(psutil.Process(self.pid).cpu_times()[:2])
        except psutil.Error:
            self.cpu0 = math.nan
        self.t0 = time.monotonic()

    def stop(self) -> ProcessCpu:
        wall = max(time.monotonic() - self.t0, 1e-9)
        try:
            p = psutil.Process(self.pid)
            used = sum(p.cpu_times()[:2]) - self.cpu0
            rss = p.memory_info().rss
        except psutil.Error:
            return {"pid": self.pid, "role": self.role, "cpu_s": None, "cpu_pct": None, "rss_bytes": None}
        cpu = None if math.isnan(used) else round(used, 3)
        return {"pid": self.pid, "role": self.role, "cpu_s": cpu,
                "cpu_pct": None if cpu is None else round(100 * cpu / wall, 1), "rss_bytes": rss}


def _check(writers: int, duration: float | None, events: int | None, rate: float | None, max_events: int | None,
           peers: int, chaos: float | None, ring: str | None) -> None:
    """Raise ValueError naming the first bad argument (CLI spelling)."""
    if isinstance(writers, bool) or not isinstance(writers, int) or not 1 <= writers <= MAX_WRITERS:
        raise ValueError(f"--writers must be from 1 to {MAX_WRITERS}, got {writers!r}")
    if duration is not None and events is not None:
        raise ValueError("give --duration or --events, not both")
    if duration is not None and not (isinstance(duration, (int, float)) and math.isfinite(duration) and duration > 0):
        raise ValueError(f"--duration must be a positive number of seconds, got {duration!r}")
    if events is not None and (isinstance(events, bool) or not isinstance(events, int) or events < writers):
        raise ValueError(f"--events must be an integer of at least --writers ({writers}), got {events!r}")
    if rate is not None and not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
        raise ValueError(f"--rate must be a positive number of events per second, got {rate!r}")
    if max_events is not None:
        if ring is not None:
            raise ValueError("--max-events sizes a ring loadgen creates; it does not apply with --ring")
        RecorderConfig(max_events=max_events)  # its own ValueError names the limits
    if isinstance(peers, bool) or not isinstance(peers, int) or not 1 <= peers <= 1000:
        raise ValueError(f"--peers must be from 1 to 1000, got {peers!r}")
    if chaos is not None and not (isinstance(chaos, (int, float)) and math.isfinite(chaos) and chaos >= 0.2):
        raise ValueError(f"--chaos must be at least 0.2 seconds between kills, got {chaos!r}")
    if ring is not None:
        RecorderConfig(name=ring)


def run_load(*, writers: int = 2, duration: float | None = None, events: int | None = None,
             rate: float | None = None, ring: str | None = None, max_events: int | None = None,
             peers: int = DEFAULT_PEERS, chaos: float | None = None, seed: int | None = None,
             progress: Callable[[str], None] | None = None) -> LoadReport:
    """Run a load and return the report (see the module docstring for what it compares).

    Raises ValueError for bad arguments and ShmDiagError (e.g. RingNotFoundError) when the ring
    cannot be opened; a writer that fails is reported, not raised. ``progress`` receives a status
    line about twice a second.
    """
    if duration is None and events is None:
        duration = DEFAULT_DURATION
    _check(writers, duration, events, rate, max_events, peers, chaos, ring)
    if ring is not None:
        rec = Recorder.attach(ring, logger=_quiet_logger())
    else:
        rec = Recorder.with_config(RecorderConfig(max_events=max_events or DEFAULT_MAX_EVENTS), _quiet_logger())
    try:
        return _Run(rec, ring is None, writers, duration, events, rate, peers, chaos, seed, progress).go()
    finally:
        rec.close()


class _Run:
    """One load run against an open recorder: start, watch, stop, report."""

    def __init__(self, rec: Recorder, created: bool, writers: int, duration: float | None, events: int | None,
                 rate: float | None, peers: int, chaos: float | None, seed: int | None,
                 progress: Callable[[str], None] | None) -> None:
        self.rec, self.created = rec, created
        self.nwriters, self.duration, self.events, self.rate = writers, duration, events, rate
        self.peers, self.chaos, self.progress = peers, chaos, progress
        self.seed = seed if seed is not None else random.SystemRandom().randrange(1 << 31)
        self.rng = random.Random(self.seed)
        self.ctx = mp.get_context("spawn")  # unrelated processes: they find the ring by name only
        self.ctl = self.ctx.RawArray(ctypes.c_double, 3)
        self.writers: list[_Writer] = []
        self.next_wid = 0
        self.kills = 0
        self.interrupted = False
        self.t_go = 0.0
        self.shards_before: set[int] = set()
        self.others_before: dict[int, int] = {}  # events per writer pid in the ring before the run
        creator = rec.creator_pid if not created else os.getpid()
        self.collector = _Cpu(creator or os.getpid(), "loadgen (ring creator)" if created else "ring creator")
        self.self_cpu = _Cpu(os.getpid(), "loadgen")

    def spawn(self, quota: int, replaces: int | None = None) -> _Writer:
        wid = self.next_wid
        self.next_wid += 1
        out = self.ctx.RawArray(ctypes.c_double, _OUT_LEN)
        err = self.ctx.RawArray(ctypes.c_char, _ERR_LEN)
        seed = self.rng.randrange(1 << 62)
        proc = self.ctx.Process(target=_writer_main, name=f"shmdiag-loadgen-w{wid}", daemon=True,
                                args=(self.rec.name, wid, seed, self.peers, quota, self.rate or 0.0,
                                      self.ctl, out, err))
        proc.start()
        w = _Writer(wid, proc, out, err, quota, replaces=replaces)
        self.writers.append(w)
        return w

    def go(self) -> LoadReport:
        try:
            return self._go()
        finally:
            self._stop_all()

    def _go(self) -> LoadReport:
        n, ev = self.nwriters, self.events
        quotas = [0] * n if ev is None else [ev // n + (1 if i < ev % n else 0) for i in range(n)]
        for q in quotas:
            self.spawn(q)
        self._wait_ready()
        before = self.rec.accounting().recorded
        writers_before = self.rec.get_writers()
        self.shards_before = {w.pid for w in writers_before}
        self.others_before = {w.pid: w.recorded for w in writers_before}
        self.collector.start()
        self.self_cpu.start()
        self.t_go = time.monotonic()
        if self.duration:
            self.ctl[_DEADLINE] = self.t_go + self.duration
        self.ctl[_GO] = self.t_go
        try:
            self._watch()
        except KeyboardInterrupt:
            self.interrupted = True
        self.ctl[_STOP] = 1.0
        self._join()
        t_end = time.monotonic()
        collector, own = self.collector.stop(), self.self_cpu.stop()
        if self.progress:
            self.progress("")
        return self._report(before, t_end, collector, own)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            self._reap_exits()
            if all(w.value(_STATE) >= _READY or w.status != "running" for w in self.writers):
                return
            time.sleep(0.01)
        raise ShmDiagError(f"writers did not start within {START_TIMEOUT:g} s")

    def _reap_exits(self) -> None:
        for w in self.writers:
            if w.status == "running" and not w.proc.is_alive():
                w.proc.join()
                if w.value(_STATE) == _DONE and w.proc.exitcode == 0:
                    w.status = "exited"
                else:
                    w.status = "failed"
                    w.error = w.err.value.decode("utf-8", "replace") or f"exit code {w.proc.exitcode}"

    def _watch(self) -> None:
        chaos = self.chaos
        next_kill = self.t_go + chaos if chaos else math.inf
        next_progress = self.t_go + PROGRESS_PERIOD
        last_events, last_t = 0, self.t_go
        while True:
            now = time.monotonic()
            self._reap_exits()
            if self.duration and now >= self.t_go + self.duration:
                return
            if not any(w.status == "running" for w in self.writers):
                return
            if chaos and now >= next_kill:
                self._kill_one()
                next_kill += chaos
            if self.progress and now >= next_progress:
                total = self._published()
                rate = (total - last_events) / max(now - last_t, 1e-9)
                last_events, last_t = total, now
                self.progress(self._progress_line(now, total, rate))
                next_progress = now + PROGRESS_PERIOD
            time.sleep(0.05)

    def _published(self) -> int:
        return sum(int(w.value(_EVENTS)) for w in self.writers)

    def _progress_line(self, now: float, total: int, rate: float) -> str:
        acct = self.rec.accounting()
        alive = sum(1 for w in self.writers if w.status == "running")
        line = (f"loadgen {now - self.t_go:6.1f}s  {total:>12,} events  {rate:>11,.0f} ev/s  "
                f"writers {alive}/{self.nwriters}  overwritten {acct.overwritten:,}  lost {acct.lost:,}")
        if self.chaos:
            line += f"  kills {self.kills}"
        return line

    def _kill_one(self) -> None:
        """SIGKILL a random recording writer and start its replacement."""
        live = [w for w in self.writers if w.status == "running" and w.value(_STATE) == _RUNNING]
        if not live:
            return
        w = self.rng.choice(live)
        try:
            os.kill(w.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        w.proc.join(10)
        w.status = "killed"
        self.kills += 1
        quota = 0
        if self.duration and time.monotonic() + 0.5 >= self.t_go + self.duration:
            return  # a replacement would only start after the end
        if self.events is not None:
            quota = max(0, w.quota - int(w.value(_EVENTS)))
            if quota == 0:
                return
        self.spawn(quota, replaces=w.wid)

    def _join(self) -> None:
        deadline = time.monotonic() + 30
        for w in self.writers:
            w.proc.join(max(0.1, deadline - time.monotonic()))
        self._reap_exits()
        for w in self.writers:
            if w.proc.is_alive():  # hung: do not leave it behind
                w.proc.kill()
                w.proc.join(5)
                w.status, w.error = "failed", "did not stop within 30 s (killed)"

    def _stop_all(self) -> None:
        self.ctl[_STOP] = 1.0
        for w in self.writers:
            if w.proc.is_alive():
                w.proc.join(5)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(5)

    def _settle(self) -> tuple[HealthStatus, Accounting, int, bool]:
        """Health (which reaps killed writers, settling their last event), then the books, once
        no writer is inside a record."""
        for _ in range(50):
            health = self.rec.health_check()
            acct = self.rec.accounting()
            retained = health.event_count
            ok = acct.recorded == retained + acct.overwritten + acct.lost + acct.abandoned + acct.expired
            if ok and acct.in_flight == 0:
                break
            time.sleep(0.02)  # a writer of someone else's still inside a record: look again
        return health, acct, retained, ok

    def _report(self, before: int, t_end: float, collector: ProcessCpu, own: ProcessCpu) -> LoadReport:
        health, acct, retained, ok = self._settle()
        stats = self.rec.get_stats()
        by_pid = {i.pid: i.recorded for i in self.rec.get_writers()}
        wall = max((w.value(_T_LAST) for w in self.writers if w.value(_T_LAST) > 0), default=t_end) - self.t_go
        wall = max(wall, 1e-9)
        rows: list[WriterRow] = []
        for w in self.writers:
            n = int(w.value(_EVENTS))
            secs = max(w.value(_T_LAST) - w.value(_T_FIRST), 0.0) if w.value(_T_FIRST) else 0.0
            cpu = w.value(_CPU)
            row: WriterRow = {
                "writer": w.wid, "pid": w.pid, "status": w.status, "events": n,
                "seconds": round(secs, 3), "events_per_s": round(n / secs) if secs > 0 else 0,
                "cpu_s": round(cpu, 3), "cpu_pct": round(100 * cpu / secs, 1) if secs > 0 else 0.0,
                "rss_bytes": int(w.value(_RSS)) or None, "pings": int(w.value(_PINGS)),
                "ring_recorded": by_pid.get(w.pid),
            }
            if w.replaces is not None:
                row["replaces"] = w.replaces
            if w.error:
                row["error"] = w.error
            rows.append(row)
        total = sum(r["events"] for r in rows)
        # What other processes recorded meanwhile (a collector's alert events, another program)
        # is theirs, not ours: the ring's delta is compared with our writers' after taking it out.
        ours_pids = {w.pid for w in self.writers}
        others = max(0, sum(n for pid, n in by_pid.items() if pid not in ours_pids)
                     - sum(n for pid, n in self.others_before.items() if pid not in ours_pids))
        delta = acct.recorded - before - others
        killed = sum(1 for w in self.writers if w.status == "killed")
        failed = [r for r in rows if r["status"] == "failed"]
        bound = killed * (BATCH * MAX_STEP + 3 * self.peers)
        if killed:
            match = None
            unreported = delta - total
            within = 0 <= unreported <= bound
        else:
            match = total == delta
            unreported, within = 0, match
        writers_cpu = sum(r["cpu_s"] for r in rows)
        # The ring's count per writer process (its shard): exact, killed writers included, as long
        # as no shard changed hands (a shard is adopted only when no never-used one is left).
        ours = [r for r in rows if r["events"] or r["ring_recorded"]]
        exact = self.shards_before <= by_pid.keys() and all(r["ring_recorded"] is not None for r in ours)
        ring_sum = sum(r["ring_recorded"] or 0 for r in ours)
        # (With `exact`, every row in `ours` has its ring_recorded: the `is not None` below only tells mypy.)
        per_writer: RingPerWriter = {
            "exact": exact,
            "sum": ring_sum if exact else None,
            "sum_equals_delta": ring_sum == delta if exact else None,
            "clean_exits_equal": all(r["ring_recorded"] == r["events"] for r in ours if r["status"] == "exited")
            if exact else None,
            "killed_unreported": [rr - r["events"] for r in ours
                                  if r["status"] == "killed" and (rr := r["ring_recorded"]) is not None]
            if exact else None,
        }
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "loadgen",
            "ring": self.rec.name,
            "created": self.created,
            "capacity": self.rec.config.max_events,
            "settings": {"writers": self.nwriters, "duration": self.duration, "events": self.events,
                         "rate_per_writer": self.rate, "peers_per_writer": self.peers, "chaos": self.chaos,
                         "seed": self.seed},
            "interrupted": self.interrupted,
            "duration_s": round(wall, 3),
            "events": total,
            "events_per_s": round(total / wall),
            "writers": rows,
            "kills": self.kills,
            "failed_writers": len(failed),
            "accounting": {"recorded": acct.recorded, "retained": retained, "overwritten": acct.overwritten,
                           "lost": acct.lost, "abandoned": acct.abandoned, "expired": acct.expired,
                           "in_flight": acct.in_flight},
            "reconciles": ok,
            "ring_recorded_before": before,
            "ring_recorded_delta": delta,
            "ring_recorded_by_others": others,
            "writers_total": total,
            "writers_match_ring": match,
            "unreported_by_killed": unreported,
            "unreported_bound": bound,
            "writers_within_bound": within,
            "ring_per_writer": per_writer,
            "cpu": {
                "writers_cpu_s": round(writers_cpu, 3),
                "writers_cpu_pct": round(100 * writers_cpu / wall, 1),
                "writers_rss_bytes": sum(r["rss_bytes"] or 0 for r in rows if r["status"] != "killed"),
                "collector": collector,
                "loadgen": own,
            },
            "stats": _dicts.stats_to_dict(stats),
            "health": _dicts.health_to_dict(health),
        }


# == the command =================================================================================
def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add loadgen's options to ``parser`` (``shmdiag loadgen`` and ``tools/loadgen.py``)."""
    if not parser.description:
        parser.description = ("Start writer processes that record a Bitcoin node's P2P traffic into a ring, "
                              "then report throughput, CPU/RSS and whether the ring's accounting reconciles.")
    parser.set_defaults(loadgen_prog=parser.prog)  # errors name the command as the user typed it
    parser.add_argument("--ring", metavar="NAME", help="attach to this existing ring (e.g. a running "
                        "`shmdiag serve`); default: create one, and remove it at the end")
    parser.add_argument("--max-events", type=int, metavar="N",
                        help=f"capacity of the ring loadgen creates (default {DEFAULT_MAX_EVENTS})")
    parser.add_argument("--writers", type=int, default=2, metavar="N",
                        help=f"writer processes, 1-{MAX_WRITERS} (default 2)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--duration", type=float, metavar="SECONDS",
                       help=f"record for this long (default {DEFAULT_DURATION:g} s)")
    group.add_argument("--events", type=int, metavar="N",
                       help="record this many events in total, split evenly over the writers")
    parser.add_argument("--rate", type=float, metavar="R", help="events per second per writer (default: full speed)")
    parser.add_argument("--peers", type=int, default=DEFAULT_PEERS, metavar="N",
                        help=f"simulated peers per writer (default {DEFAULT_PEERS})")
    parser.add_argument("--chaos", type=float, metavar="K",
                        help="SIGKILL a random writer every K seconds and start a replacement")
    parser.add_argument("--seed", type=int, help="random seed (default: random; the report says which)")
    parser.add_argument("--json", action="store_true", help="print the final report as JSON on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress line, and no text report")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    """The command: 0 when the run reconciles, 1 when it does not (or a writer failed, or the
    ring cannot be opened), 2 for bad arguments, 130 when interrupted."""
    prog = getattr(args, "loadgen_prog", None) or "loadgen"
    live = not args.quiet and sys.stderr.isatty()
    for sig in (signal.SIGTERM, signal.SIGHUP):  # stop as Ctrl-C does: writers stopped, our ring removed
        signal.signal(sig, _interrupt)
    try:
        report = run_load(writers=args.writers, duration=args.duration, events=args.events, rate=args.rate,
                          ring=args.ring, max_events=args.max_events, peers=args.peers, chaos=args.chaos,
                          seed=args.seed, progress=_terminal_line if live else None)
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except (ShmDiagError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    try:
        if args.json:
            sys.stdout.buffer.write(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_UTC_Z) + b"\n")
            sys.stdout.flush()
        elif not args.quiet:
            print(format_report(report), flush=True)
    except BrokenPipeError:  # `loadgen | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if report["interrupted"]:
        return 130
    pw = report["ring_per_writer"]
    good = (report["reconciles"] and report["writers_within_bound"] and not report["failed_writers"]
            and pw["sum_equals_delta"] is not False and pw["clean_exits_equal"] is not False)
    return 0 if good else 1


def _terminal_line(text: str) -> None:
    """Rewrite the progress line in place; an empty text clears it."""
    sys.stderr.write("\r\x1b[K" + text)
    sys.stderr.flush()


def format_report(r: LoadReport) -> str:
    """The report as text for a person."""
    a, c = r["accounting"], r["cpu"]
    lines = [
        f"ring {r['ring']!r} ({r['capacity']:,} events, {'created by loadgen' if r['created'] else 'attached'}), "
        f"seed {r['settings']['seed']}" + ("  [interrupted]" if r["interrupted"] else ""),
        f"{r['events']:,} events in {r['duration_s']:.2f} s: {r['events_per_s']:,} events/s "
        f"from {r['settings']['writers']} writers" + (f", {r['kills']} killed and replaced" if r["kills"] else ""),
        "",
        f"  {'writer':<8} {'pid':>8} {'status':<8} {'events':>12} {'events/s':>11} {'CPU s':>7} {'CPU%':>6} {'RSS':>9}",
    ]
    for w in r["writers"]:
        lines.append(f"  w{w['writer']:<7} {w['pid']:>8} {w['status']:<8} {w['events']:>12,} {w['events_per_s']:>11,} "
                     f"{w['cpu_s']:>7.2f} {w['cpu_pct']:>6.1f} {human_bytes(w['rss_bytes']):>9}"
                     + (f"  {w['error']}" if w.get("error") else ""))
    for role, p in (("collector", c["collector"]), ("loadgen", c["loadgen"])):
        if role == "loadgen" and p["pid"] == c["collector"]["pid"]:
            continue
        cpu = "-" if p["cpu_s"] is None else f"{p['cpu_s']:.2f} s ({p['cpu_pct']:.1f}%)"
        lines.append(f"  {role} pid {p['pid']} ({p['role']}): CPU {cpu}, RSS {human_bytes(p['rss_bytes'])}")
    lines.append(f"  writers: CPU {c['writers_cpu_s']:.2f} s ({c['writers_cpu_pct']:.1f}% of one core)")
    if r["kills"]:
        lines.append("  (a killed writer's figures are its last report: events every batch, CPU/RSS every "
                     f"{PUBLISH_PERIOD:g} s)")
    lines += [
        "",
        f"ring accounting: recorded {a['recorded']:,} = retained {a['retained']:,} + overwritten {a['overwritten']:,}"
        f" + lost {a['lost']:,} + abandoned {a['abandoned']:,} + expired {a['expired']:,}: "
        + ("reconciles" if r["reconciles"] else "DOES NOT RECONCILE"),
    ]
    if r["writers_match_ring"] is None:
        lines.append(f"writers reported {r['writers_total']:,}; the ring recorded {r['ring_recorded_delta']:,} "
                     f"(+{r['unreported_by_killed']:,} by killed writers after their last report, bound "
                     f"{r['unreported_bound']:,}: {'ok' if r['writers_within_bound'] else 'OUT OF BOUND'})")
    else:
        lines.append(f"writers reported {r['writers_total']:,}; the ring recorded {r['ring_recorded_delta']:,}: "
                     + ("equal" if r["writers_match_ring"] else "DIFFERENT"))
    if r["ring_recorded_by_others"]:
        lines.append(f"(other processes recorded {r['ring_recorded_by_others']:,} events meanwhile: not counted above)")
    pw = r["ring_per_writer"]
    if pw["exact"]:
        lines.append(f"the ring's count per writer: sum {pw['sum']:,} "
                     + ("= recorded" if pw["sum_equals_delta"] else "!= RECORDED")
                     + ("; clean exits equal their own count" if pw["clean_exits_equal"] else "; a clean exit DIFFERS")
                     + (f"; killed writers recorded {', '.join(f'+{k:,}' for k in pw['killed_unreported'])} "
                        "after their last report" if pw["killed_unreported"] else ""))
    s, h = r["stats"], r["health"]
    lines += [
        f"stats: {s['total_events']:,} events, {s['active_peers']} peers connected, error rate {s['error_rate']:.2%}",
        f"health: {h['status']} - {h['message']}",
    ]
    top = sorted(s["events_by_type"].items(), key=lambda kv: -kv[1])[:8]
    lines.append("  " + "  ".join(f"{t}={n:,}" for t, n in top))
    return "\n".join(lines)
