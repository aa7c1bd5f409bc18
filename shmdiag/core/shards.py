"""The writer path's slow half: shard ownership, event-type registration, dead-writer reaping.

The fast half is ``_native.Mapping.write``. Each writing process owns one *shard* of the
segment: its counters (recorded, per severity, per type, overwritten, lost, ...) and a one-entry
journal of the event it is writing. Only the owner writes a live shard, so the counters need no
atomics; readers sum the shards. A shard outlives its process: its counts stay in the stats,
and a later process may adopt it and keep adding.

Ownership is one word, ``(pid << 8) | state``, changed only by CAS:

    FREE --acquire--> ACTIVE --close--> EXITED --acquire--> ACTIVE ...
                        |
                        +--owner found dead--> REAPING --journal settled--> DEAD --acquire--> ...

A reaper settles a dead owner's journal so its last event is counted exactly once: as
committed, overwritten, lost or abandoned (see ``core/_native.c`` for the phases).
"""

from __future__ import annotations

import multiprocessing.util
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from shmdiag.core import layout as L
from shmdiag.core.errors import RecorderClosedError, TooManyWritersError
from shmdiag.core.procs import own_start_ms, same_process
from shmdiag.core.segment import Segment


def writer_alive(owner: int, start_ms: int) -> bool:
    """Whether a shard's ``owner`` and ``start_time`` words name a live writer: an active shard
    whose process still runs and is the one that took it (not a reused pid)."""
    return L.owner_state(owner) == L.SH_ACTIVE and same_process(L.owner_pid(owner), start_ms)


def writer_counts(table: np.ndarray) -> tuple[int, int]:
    """(alive, dead) writers in a copy of the shard table: a shard whose process died without
    detaching counts as dead until it is reaped and taken again."""
    alive = dead = 0
    for w, start in zip(table["owner"].tolist(), table["start_time"].tolist(), strict=True):
        if writer_alive(w, start):
            alive += 1
        elif L.owner_state(w) in (L.SH_ACTIVE, L.SH_DEAD, L.SH_REAPING):
            dead += 1
    return alive, dead


class ShardManager:
    """This process's claim on a shard of one segment, and reaping of other processes' shards."""

    def __init__(self, seg: Segment, lock: threading.RLock) -> None:
        self.seg = seg
        self.index: int | None = None
        self.pid: int | None = None
        self.types: dict[str, int] = {}
        self.released = False  # release() ran in this process: no shard is taken again
        self._lock = lock  # the recorder's: no close() while a shard is being taken

    # -- owning a shard --------------------------------------------------------------------
    def writer(self) -> Callable[..., None]:
        """The native write function for this process, which takes a shard (``ensure``) at its
        first event: the hot path is one native call, and the shard a lazy slow path."""
        self.seg.native.set_provider(self.ensure)
        return self.seg.native.write

    def message_writer(self, slow: Callable[[str, str, str, int], None]) -> Callable[[str, str, str, int], None]:
        """``record_message`` as one native call: the common case checked and written in C (no
        Python frame: about 40% less per call, and fewer cold cache lines inside a busy program),
        anything else handed to ``slow``, the Python method, which writes or raises as ever."""
        nat = self.seg.native
        nat.set_message(slow, (L.KIND_MESSAGE, 0, None, L.BUILTIN_TYPES.index("message"), 0, None, "", None, None,
                               "", ""), (0, L.F_OUTBOUND), L.MSG_DIRECTIONS)
        return nat.message

    def span_writer(self, slow: Callable[..., Any], failed: Callable[[str, int, str, type, BaseException], None]
                    ) -> Callable[..., Any]:
        """``span`` as native calls: a native context manager for the common case (a clean exit
        writes the latency event in C), ``slow`` (the Python method) for anything else, and
        ``failed`` for a block that raised (the Python method's own handling)."""
        nat = self.seg.native
        nat.set_span(slow, failed, (L.KIND_LATENCY, 0, 0, L.BUILTIN_TYPES.index("latency"), 0, None, "", "", None,
                                    "", ""))
        return nat.span

    def set_batch(self, events: int, delay_ns: int) -> None:
        """Stage up to ``events`` events of the native routes in this process and write them in
        a row (0: write each at once); see "batches" in _native.c."""
        self.seg.native.set_batch(events, delay_ns)

    def flush(self) -> None:
        """Write what this process has staged."""
        self.seg.native.flush()

    def flush_older(self, delay_ns: int) -> None:
        """Write what is staged if the oldest waited ``delay_ns`` (the flusher's check)."""
        self.seg.native.flush_older(delay_ns)

    def ensure(self) -> int:
        """Bind a shard for the current process (called by the native writer on demand)."""
        with self._lock:
            if self.index is not None and self.pid == os.getpid():
                return self.index
            if self.seg.native.closed or (self.released and self.pid == os.getpid()):
                raise RecorderClosedError(f"recorder {self.seg.name!r} is closed")
            self.index = None
            self.types = {}
            seg, me = self.seg, os.getpid()
            start = own_start_ms()
            # Prefer never-used shards, then cleanly released ones, and only then the shards of
            # dead writers, so a dead writer stays visible to health checks as long as possible.
            for wanted in (L.SH_FREE, L.SH_EXITED, L.SH_DEAD):
                if wanted == L.SH_DEAD:
                    self.reap_all()
                for i in range(seg.max_shards):
                    off = seg.shard_word(i, "owner")
                    cur = seg.native.load(off)
                    if L.owner_state(cur) != wanted:
                        continue
                    if seg.native.cas(off, cur, L.owner_make(me, L.SH_ACTIVE)):
                        seg.native.store(seg.shard_word(i, "start_time"), start)
                        self._load_types(i)
                        seg.native.bind_shard(i)
                        self.index, self.pid = i, me
                        # Give it back when this process exits, including multiprocessing children,
                        # which leave through os._exit after running these finalizers.
                        multiprocessing.util.Finalize(None, self.release, exitpriority=90)
                        return i
            raise TooManyWritersError(
                f"all {seg.max_shards} writer shards of ring {seg.name!r} belong to live processes "
                "(raise max_writers when creating the ring)")

    def release(self) -> None:
        """Give the shard back (its counts stay). Only the process that acquired it may."""
        with self._lock:
            if self.index is None or self.pid != os.getpid() or self.seg.native.closed:
                return
            # From here on this process writes no more: a thread that records after this finds no
            # shard, and ensure() refuses to take another (the ring is being closed).
            self.released = True
            # In one native call, which no other thread can interleave (see give_back): a batch
            # (Recorder.set_batch) pending is written while the shard is ours; the rest of this
            # process's run goes back to the head if nobody claimed after it (else it is counted
            # unused); the shard is marked exited, then unbound.
            off = self.seg.shard_word(self.index, "owner")
            self.seg.native.give_back(off, L.owner_make(self.pid, L.SH_ACTIVE), L.owner_make(self.pid, L.SH_EXITED))
            self.index = None

    def _load_types(self, i: int) -> None:
        shard = self.seg.shards[i]
        n = min(int(shard["ntypes"]), L.TYPE_SLOTS)
        if n == 0:  # a new shard: the helpers' types sit at fixed indices in every shard
            for t in L.BUILTIN_TYPES:
                self._write_type(i, t)
            return
        names = shard["type_name"]
        lens = shard["type_len"]
        for j in range(n):
            name = bytes(names[j])[: int(lens[j])].decode("utf-8", "replace")
            self.types.setdefault(name, j)

    def _write_type(self, i: int, name: str) -> int:
        shard = self.seg.shards[i]
        j = int(shard["ntypes"])
        if j >= L.TYPE_SLOTS - 1:
            j = L.TYPE_SLOTS - 1
            name = L.OTHER_TYPE
            if name in self.types:
                return self.types[name]
        raw = _fit_utf8(name.encode("utf-8"), L.TYPE_NAME_SIZE)
        shard["type_name"][j] = raw
        shard["type_len"][j] = len(raw)
        # Name first, then the count that makes it visible (a release store).
        self.seg.native.store(self.seg.shard_word(i, "ntypes"), max(int(shard["ntypes"]), j + 1))
        self.types[name] = j
        return j

    def type_index(self, event_type: str) -> int:
        """Index of ``event_type`` in this process's shard (registering it if new)."""
        idx = self.types.get(event_type)
        if idx is not None and self.pid == os.getpid():
            return idx
        key = _fit_utf8(event_type.encode("utf-8"), L.TYPE_NAME_SIZE).decode("utf-8")
        with self._lock:
            i = self.ensure()
            idx = self.types.get(key)
            if idx is None:
                idx = self._write_type(i, key)
            self.types[event_type] = idx
            return idx

    # -- dead writers ------------------------------------------------------------------------
    def reap_all(self) -> int:
        """Find shards whose owner died without releasing them; settle them. Returns how many."""
        seg = self.seg
        owners = seg.shards["owner"].copy()
        n = 0
        for i in range(seg.max_shards):
            if L.owner_state(int(owners[i])) == L.SH_ACTIVE:
                n += self.reap(i)
        return n

    def reap(self, i: int) -> bool:
        """Settle shard ``i`` if its writer died without releasing it (one reaper wins the CAS to
        REAPING). A reaper that dies itself before storing DEAD leaves the shard in REAPING for
        good (never adopted again; every counters() copy retries on it). No later reaper takes such
        a shard over, because that cannot be made safe simply:

        - the word names the dead *writer* (``owner_make(pid, REAPING)``), not the reaper, so
          nothing tells a dead reaper from a live one still settling (it would have to name
          itself, and then the writer's pid would need a home of its own);
        - settling is not re-runnable: its counter bumps are ``load + 1``, ``settle_extras`` does
          not record its progress, and whether the event was published is decided by the reaper's
          own CAS of the slot from BUSY to DELETED, which a second reaper would read as
          "published, then expired". A takeover needs the reaper to journal its decision and its
          counters' old values before any of them (turning every phase into an idempotent
          COUNTING with an "abandoned" outcome, which the shard's journal cannot express today).

        The pin release (``settle_pin``) and the peer take-down are already safe to repeat (the
        pin's word is cleared before the unpin; the take-down is a CAS)."""
        seg = self.seg
        off = seg.shard_word(i, "owner")
        cur = seg.native.load(off)
        pid, state = L.owner_pid(cur), L.owner_state(cur)
        if state != L.SH_ACTIVE or pid == os.getpid():
            return False  # this process is alive; its shard may be mid-adoption, start_time not yet written
        if same_process(pid, seg.native.load(seg.shard_word(i, "start_time"))):
            return False
        if not seg.native.cas(off, cur, L.owner_make(pid, L.SH_REAPING)):
            return False
        self._settle_journal(i)
        # Events it had staged (Recorder.set_batch) and not written: recorded, and lost.
        seg.native.settle_staged(i, L.BUILTIN_TYPES.index("message"), L.BUILTIN_TYPES.index("latency"))
        # After its adds are settled (whatever the journal's phase, a cleared era's event
        # included), the peer pin the dead writer still held, if any, and only that one: its
        # shard's "jpin" names it (settle_pin in _native.c says why this order is safe).
        if seg.metrics:
            seg.native.settle_pin(i)
        self._take_down_peers(i)
        seg.native.store(off, L.owner_make(pid, L.SH_DEAD))
        return True

    def _take_down_peers(self, i: int) -> None:
        """Peers whose latest connect the dead writer of shard ``i`` recorded are no longer
        connected: it held their connections. Their life word keeps the connect's sequence number
        and gains "died", by a CAS, so a later lifecycle event (or a recycled entry) wins."""
        seg = self.seg
        if not seg.metrics or not len(seg.peers):
            return
        life = seg.peer_index["life"].copy()
        rows = np.flatnonzero(L.life_connected(life) & (L.life_writer(life) == i + 1))
        for row, w in zip(rows.tolist(), life[rows].tolist(), strict=True):
            seg.native.cas(seg.peer_word(row, "life"), w, L.life_writer_died(w))

    def _settle_journal(self, i: int) -> None:
        seg, nat = self.seg, self.seg.native
        word = lambda f, k=0: seg.shard_word(i, f, k)  # noqa: E731
        j = nat.load(word("journal"))
        if j == 0:
            return
        seq, phase = L.j_seq(j), L.j_phase(j)
        if seq > L.SEQ_MASK or seq >= seg.era()[0]:
            nat.store(word("journal"), 0)  # not a sequence number a writer could hold: corrupt, drop it
            return
        meta = nat.load(word("jmeta"))
        tidx, sev, flags, outcome = L.jmeta_fields(meta)
        tidx, sev = min(tidx, L.TYPE_SLOTS - 1), min(sev, 4)
        # A message: its type (index + 1 in jmeta) and bytes (jx_value, stored before the journal
        # named the event) are counted per direction as the writer would (step 7 in _native.c).
        msg = L.jmeta_msg(meta) if seg.metrics else -1
        if msg >= L.MSG_TYPES:
            msg = L.MSG_TYPES - 1
        mitem = int(bool(flags & L.F_OUTBOUND)) * L.MSG_TYPES + msg  # [direction, type], flat
        mbytes = nat.load(word("jx_value"))
        _, base = seg.era()
        slot = seq % seg.capacity
        woff = seg.slot_word(slot)
        busy = L.w_make(seq, sev, L.ST_BUSY)
        freed = nat.cas(woff, busy, L.w_make(seq, sev, L.ST_DELETED))
        # An event of several slots: continuation slots it took and had not published are made
        # published continuations (ST_CONT), not deleted records, so nothing counts or reads them
        # as events (their first slot is not committed: no reader reaches them).
        ncont, stage, overwrote = L.jmeta_conts(meta)
        conts_freed = {k for k in range(1, ncont + 1)
                       if nat.cas(seg.slot_word((seq + k) % seg.capacity), L.w_make(seq + k, L.SEV_CONT, L.ST_BUSY),
                                  L.w_make(seq + k, L.SEV_CONT, L.ST_CONT))}
        if seq < base or nat.load(word("base")) != base:
            nat.store(word("journal"), 0)  # an event of a cleared era: nothing to count
            return

        def bump(field: str, item: int = 0, to: int | None = None, by: int = 1) -> None:
            off = word(field, item)
            # Wrap as the writer's u64 arithmetic does: a damaged counter at 2**64-1 must not
            # make the reaper raise and leave the shard stuck in REAPING.
            nat.store(off, (nat.load(off) + by if to is None else to) & L.U64_MAX)

        def bump_msg(before: tuple[int, int] | None = None) -> None:
            if msg < 0:
                return
            if before is None:
                bump("msg_count", mitem)
                bump("msg_bytes", mitem, by=mbytes)
            else:
                bump("msg_count", mitem, to=before[0] + 1)
                bump("msg_bytes", mitem, to=before[1] + mbytes)

        if phase == L.PH_EXTRAS:
            # Decided (published, or lost): finish the peer and latency adds from the step the
            # writer reached, then count the event as the writer would have.
            if seg.metrics:
                nat.settle_extras(i, nat.load(word("jstep")))
            bump("recorded")
            if outcome == L.OUT_OVERWROTE:
                bump("overwritten", to=nat.load(word("overwritten")) + overwrote)
            elif outcome == L.OUT_LOST:
                bump("lost")
            if seg.metrics:
                bump("sev", sev)
                bump("type_count", tidx)
                bump_msg()
        elif phase == L.PH_COUNTING:
            # The writer had the outcome and the old counter values: redo "old + 1" (idempotent).
            before = [nat.load(word("jbefore", k)) for k in range(4)]
            bump("recorded", to=before[0] + 1)
            if outcome == L.OUT_OVERWROTE:
                bump("overwritten", to=before[1] + overwrote)
            elif outcome == L.OUT_LOST:
                bump("lost", to=before[1] + 1)
            if seg.metrics:
                bump("sev", sev, to=before[2] + 1)
                bump("type_count", tidx, to=before[3] + 1)
                bump_msg((nat.load(word("jbefore_msg", 0)), nat.load(word("jbefore_msg", 1))))
        else:
            # OWNED: the slot is the writer's and only it moves BUSY(seq) on, to COMMITTED(seq)
            # (others never take a busy slot), so a slot the reaper could not free was published,
            # even if overwritten or expired since. CLAIMED: never published.
            published = phase == L.PH_OWNED and not freed
            if freed or published:  # its CAS took the slot from jprev
                # How many live events its slots replaced: those counted in jmeta, and the one
                # jprev names if the CAS under way (the first slot's, stage 0, or continuation
                # `stage`'s) happened. STAGE_DONE: every CAS done, the count final.
                prev = nat.load(word("jprev"))
                at = seq if stage == 0 else seq + stage
                n_over = overwrote
                if (stage == 0 or stage in conts_freed) and prev and L.w_state(prev) == L.ST_COMMITTED \
                        and base <= L.w_seq(prev) < at:
                    n_over += 1
                if n_over:
                    bump("overwritten", to=nat.load(word("overwritten")) + n_over)
            if not published:
                bump("abandoned")
            elif seg.metrics:
                nat.settle_extras(i, 0)  # planned before OWNED; none done yet
            bump("recorded")
            if seg.metrics:
                bump("sev", sev)
                bump("type_count", tidx)
                bump_msg()
        if seg.metrics:
            ts = nat.load(word("jts"))
            ts = ts - (1 << 64) if ts >= 1 << 63 else ts
            first, last = (seg.shards[i]["first_ts"]), (seg.shards[i]["last_ts"])
            if int(first) == 0 or ts < int(first):
                nat.store(word("first_ts"), ts & ((1 << 64) - 1))
            if int(last) == 0 or ts > int(last):
                nat.store(word("last_ts"), ts & ((1 << 64) - 1))
        nat.store(word("journal"), 0)


def _fit_utf8(raw: bytes, cap: int) -> bytes:
    """The longest prefix of ``raw`` within ``cap`` bytes that does not split a character."""
    if len(raw) <= cap:
        return raw
    return raw[:cap].decode("utf-8", "ignore").encode("utf-8")
