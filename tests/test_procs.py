"""Process identity (core/procs.py) with real processes: a live child, a dead one, a zombie, a
reused pid (a live pid with the wrong start time), and the clear lock's 32-bit start times."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from shmdiag.core import layout as L
from shmdiag.core import procs
from shmdiag.core.rings import creator_alive

_SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.fixture
def child():
    """A live child process and its start time (ms)."""
    p = subprocess.Popen(_SLEEPER)
    try:
        yield p, procs.start_ms(psutil.Process(p.pid))
    finally:
        p.kill()
        p.wait()


def test_a_live_child_is_the_process_that_started_then(child):
    p, start = child
    assert procs.same_process(p.pid, start)
    assert procs.same_process(p.pid, start + procs.START_TOLERANCE_MS)  # a tick apart: the same
    assert procs.same_process(p.pid, start - procs.START_TOLERANCE_MS)
    assert procs.same_process(p.pid, 0)  # start unknown: any live process with the pid
    assert procs.started_by(p.pid, time.time_ns())


def test_a_reused_pid_is_another_process(child):
    """The pid runs, but not the process that started at the stored time."""
    p, start = child
    assert not procs.same_process(p.pid, start - 5_000)  # the stored one started 5 s earlier
    assert not procs.same_process(p.pid, start + procs.START_TOLERANCE_MS + 1)
    # It started after the time in question (a ring's creation), so it cannot have done it.
    assert not procs.started_by(p.pid, (start - procs.START_SLACK_MS - 1000) * 1_000_000)
    assert procs.started_by(p.pid, start * 1_000_000)  # the slack covers psutil's whole-second boot time


def test_a_dead_child_is_dead(child):
    p, start = child
    p.kill()
    p.wait()  # reaped: the pid no longer exists
    assert not procs.same_process(p.pid, start)
    assert not procs.same_process(p.pid, 0)
    assert not procs.started_by(p.pid, time.time_ns())


def test_a_zombie_is_dead(child):
    p, start = child
    os.kill(p.pid, 9)
    deadline = time.monotonic() + 10
    while psutil.Process(p.pid).status() != psutil.STATUS_ZOMBIE:  # not waited for: a zombie
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not procs.same_process(p.pid, start)
    assert not procs.same_process(p.pid, 0)
    assert not procs.started_by(p.pid, time.time_ns())


def test_no_pid_is_no_process():
    assert not procs.same_process(0, 0)
    assert not procs.same_process(-1, 0)
    assert not procs.same_process(1 << 40, 0)  # a garbage pid from a damaged word
    assert not procs.started_by(0, time.time_ns())


def test_this_process_is_itself_without_asking_psutil(monkeypatch):
    me, start = os.getpid(), procs.own_start_ms()
    assert start == procs.start_ms(psutil.Process(me))
    monkeypatch.setattr(procs.psutil, "Process", None)  # would fail if called
    assert procs.same_process(me, start)
    assert not procs.same_process(me, start - 60_000)  # our pid, an earlier process's start time
    assert procs.started_by(me, time.time_ns())


def test_a_process_we_may_not_look_at_counts_as_alive(monkeypatch, child):
    """Another user's process: the cautious answer (keep its shard, wait for its lock, keep its ring)."""
    p, start = child

    def denied(pid: int) -> psutil.Process:
        raise psutil.AccessDenied(pid)

    monkeypatch.setattr(procs.psutil, "Process", denied)
    assert procs.same_process(p.pid, start - 5_000)
    assert procs.started_by(p.pid, 0)


def test_the_clear_locks_32_bit_start_times(child):
    p, start = child
    lo = L.clear_start(L.clear_make(p.pid, start))
    assert lo == start & 0xFFFFFFFF and L.clear_pid(L.clear_make(p.pid, start)) == p.pid
    assert procs.same_process(p.pid, lo, bits=L.CLEAR_START_BITS)
    assert not procs.same_process(p.pid, (lo - 5_000) % (1 << 32), bits=L.CLEAR_START_BITS)
    assert not procs.same_process(p.pid, lo)  # compared as a full start time, the low bits are decades off


def test_32_bit_start_times_compare_across_the_wrap(monkeypatch):
    me = os.getpid()
    monkeypatch.setitem(procs._own_start, me, (7 << 32) + 3)  # started just after the low bits wrapped
    assert procs.same_process(me, (1 << 32) - 4, bits=32)      # stored just before: 7 ms apart
    assert not procs.same_process(me, (1 << 32) - 400, bits=32)


def test_the_three_callers_agree(child, make_recorder):
    """The shard reaper, the clear lock and `shmdiag rm` ask the same module: the same child is
    alive to all three, a reused pid (wrong start time) is not, and once killed it is dead to all."""
    p, start = child
    rec = make_recorder(100)
    seg = rec._seg
    shard = seg.max_shards - 1  # a shard nobody uses, made the child's
    own, lock = seg.shard_word(shard, "owner"), seg.header_word("clear_lock")

    def child_holds_shard(start_ms: int) -> bool:
        seg.native.store(seg.shard_word(shard, "start_time"), start_ms)
        seg.native.store(own, L.owner_make(p.pid, L.SH_ACTIVE))
        rec._shards.reap(shard)
        return L.owner_state(seg.native.load(own)) == L.SH_ACTIVE

    assert creator_alive(p.pid, time.time_ns()) and child_holds_shard(start)
    assert not creator_alive(p.pid, (start - 10_000) * 1_000_000) and not child_holds_shard(start - 10_000)
    seg.native.store(lock, L.clear_make(p.pid, start - 10_000))
    rec.clear_events()  # the lock of a reused pid is taken over at once
    assert seg.native.load(lock) == 0
    p.kill()
    p.wait()
    assert not creator_alive(p.pid, time.time_ns()) and not child_holds_shard(start)
    seg.native.store(lock, L.clear_make(p.pid, start))
    rec.clear_events()
    assert seg.native.load(lock) == 0
