"""Who keeps a ring: its creator, and the collector named in its header.

A ring has a creator (header ``creator_pid``, ``created_ns``: static) and, while one runs, a
collector (header word ``collector``: the pid and low 32 bits of the start time of the process
running it, as the clear lock; 0 when none). The collector sets the word when it starts and
clears it when it stops cleanly, so:

* word 0: no collector runs, and none was killed (a library ``Recorder(collector=False)``, or
  one whose collector stopped cleanly): nothing is expected of one;
* the word names a live process: that process collects the ring;
* the word names a process that is gone: the collector was killed (SIGKILL, the OOM killer)
  and the ring outlived it; ``health`` reports it as an error, ``shmdiag serve`` adopts it.

A ring is **in use** while its collector or its creator runs (see core/procs.py for how a
reused pid is told apart): the creator counts whatever the collector word says, since that word
is live and unchecksummed, and one damaged word must not make a ring in use look stale.
``shmdiag rm`` refuses such a ring without ``--force``; ``shmdiag serve`` refuses to adopt it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from shmdiag.core import layout as L
from shmdiag.core.errors import RingInUseError
from shmdiag.core.procs import own_start_ms, same_process, started_by
from shmdiag.core.segment import Segment


@dataclass(frozen=True)
class Collector:
    """The collector a ring's header names."""

    pid: int
    alive: bool


def _word(seg: Segment) -> int:
    return seg.load("collector")


def collector_of(seg: Segment) -> Collector | None:
    """The ring's collector, or None if none is set (none runs, and none was killed)."""
    w = _word(seg)
    if w == 0:
        return None
    return Collector(int(L.clear_pid(w)), same_process(L.clear_pid(w), L.clear_start(w), bits=L.CLEAR_START_BITS))


def in_use(seg: Segment) -> tuple[str, int] | None:
    """``("collector", pid)`` or ``("creator", pid)`` of the live process that keeps the ring,
    or None if the ring is stale: its collector (if the header names one) and its creator are
    both dead. The creator counts even when a collector is named: the collector word is a live,
    unchecksummed word, and one damaged word must not let ``rm`` remove a ring in use."""
    c = collector_of(seg)
    if c is not None and c.alive:
        return "collector", c.pid
    if started_by(seg.creator_pid, seg.created_ns):
        return "creator", seg.creator_pid
    return None


def claim_collector(seg: Segment) -> None:
    """Name this process the ring's collector. Takes the word when it is 0 or names a dead
    process (with one CAS, so of two processes adopting a ring at once one wins); raises
    RingInUseError if another live process holds it. Idempotent for the holder."""
    me = L.clear_make(os.getpid(), own_start_ms())
    off = seg.header_word("collector")
    while True:
        cur = seg.native.load(off)
        if cur == me:
            return
        if cur != 0 and same_process(L.clear_pid(cur), L.clear_start(cur), bits=L.CLEAR_START_BITS):
            raise RingInUseError(f"ring {seg.name!r} already has a collector: pid {L.clear_pid(cur)}, still running")
        if seg.native.cas(off, cur, me):
            return


def release_collector(seg: Segment) -> None:
    """Clear the collector word if this process holds it (a clean stop)."""
    if seg.native.closed:  # unmapped already: nothing to clear through this mapping
        return
    me = L.clear_make(os.getpid(), own_start_ms())
    seg.native.cas(seg.header_word("collector"), me, 0)
