"""The writes to a ring that are not events: a clear (a new era), and retention (retiring old records).

Both are the collector's or the Recorder's to call, never an Inspector's. Nothing here waits for
a writer: a clear changes the head word with one CAS, and retention retires each record with a
CAS of its slot word, so a record a writer rewrote in the meantime is left alone.
"""

from __future__ import annotations

import os
import time

from shmdiag.core import layout as L
from shmdiag.core import reader as _reader
from shmdiag.core.procs import own_start_ms, same_process
from shmdiag.core.segment import Segment

CLEAR_LOCK_TIMEOUT = 10.0  # seconds a live clearer is waited for (a clear takes microseconds)


def clear(seg: Segment) -> None:
    """Forget every retained event and zero the stats, for every process.

    A clear starts a new generation in the head word, whose first sequence number is the head
    at that moment: records and shard counters of earlier sequence numbers stop counting
    everywhere at once, and each writer zeroes its own counters at its next event (sync_era in
    _native.c). The generation's base is published before the CAS that starts it, so a writer
    that claims a sequence number in the new generation always finds its base.
    """
    with _ClearLock(seg):
        # Only a clear changes the generation, and clears are serialised: the bank the next
        # generation will use is idle (its last writers were two clears ago), so it is zeroed
        # here and published by new_era's CAS on the head word.
        # Its gen word says BANK_ZEROING while it is zeroed and names the new generation before
        # that starts: a writer stalled since two clears ago finds another generation there and
        # adds nothing (see extras_plan in _native.c).
        gen = (L.head_gen(seg.load("head")) + 1) & ((1 << (64 - L.SEQ_BITS)) - 1)
        nxt = L.op_bank(gen)
        for j in range(L.OP_SLOTS):
            seg.native.store(seg.bank_word(j, nxt, "gen"), L.BANK_ZEROING)
        seg.native.fence()
        banks = seg.ops["banks"][:, nxt]
        for f in ("count", "errors", "sum_ns", "max_ns", "buckets"):
            banks[f] = 0
        seg.native.fence()
        for j in range(L.OP_SLOTS):
            seg.native.store(seg.bank_word(j, nxt, "gen"), gen)
        seg.native.new_era()
        seg.native.store(seg.header_word("peers_untracked"), 0)
        seg.native.store(seg.header_word("peer_events_untracked"), 0)


def expire_before(seg: Segment, cutoff_ns: int) -> int:
    """Retire every retained record stamped before ``cutoff_ns`` (wall clock); return how many.

    The retired ones are counted as expired in this process's shard (taken if it has none), which
    keeps the books (recorded = retained + overwritten + lost + abandoned + expired) balanced.
    """
    idx, w = _reader.retained_slots(seg)
    seg.native.fence()
    old = seg.slots["ts_ns"][idx] < cutoff_ns
    if not old.any():
        return 0
    n = int(seg.native.retire(idx[old].astype("<u8"), w[old].astype("<u8"), L.ST_DELETED))
    if n:
        seg.native.add_expired(n)
    return n


class _ClearLock:
    """Serialise clears across processes with a header word naming the clearer: its pid and the
    low bits of its start time, so a dead holder whose pid was reused is still seen to be dead
    and taken over. A live holder is waited for."""

    def __init__(self, seg: Segment) -> None:
        self._seg = seg
        self._off = seg.header_word("clear_lock")

    def __enter__(self) -> None:
        nat = self._seg.native
        me = L.clear_make(os.getpid(), own_start_ms())
        deadline = time.monotonic() + CLEAR_LOCK_TIMEOUT
        while True:
            cur = nat.load(self._off)
            holder_alive = cur != 0 and same_process(L.clear_pid(cur), L.clear_start(cur), bits=L.CLEAR_START_BITS)
            if cur == 0 or (cur != me and not holder_alive):
                if nat.cas(self._off, cur, me):
                    return
            elif time.monotonic() > deadline:
                raise TimeoutError(f"ring {self._seg.name!r}: process {L.clear_pid(cur)} has been clearing it "
                                   f"for {CLEAR_LOCK_TIMEOUT:g} s")
            else:
                time.sleep(0.0005)

    def __exit__(self, *exc: object) -> None:
        self._seg.native.store(self._off, 0)
