"""Consistent copies of the segment's shared tables, for the read models above the core.

The read models (``shmdiag.views``) compute stats, peers and latency from these copies and never
touch the segment themselves: the loads, fences and the order in which words are read — the
part that must match the writers' publication order in ``_native.c`` — live here, once.
Every value in a copy is still untrusted (another process, or damage, wrote it): the views
bound what they compute from it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from shmdiag.core import layout as L
from shmdiag.core.segment import Segment


def shards(seg: Segment) -> tuple[int, np.ndarray]:
    """(base, every shard): the current era's first sequence number and a copy of the shard
    table, read after it (a shard whose ``base`` differs belongs to a cleared era).

    Each row is copied in memory order, ``recorded`` before the severity and type counters, and
    a writer adds to those just before it stores ``recorded`` (release). So a row whose
    ``recorded`` reads the same after the copy saw no event complete during it: its breakdown is
    that of ``recorded`` events, plus at most the one in flight (what views.stats.consistent
    allows). A row whose writer moved on is copied again (a few times, then taken as it is: a
    reader preempted in the middle of a copy would otherwise see a live writer's counters many
    events apart, and leave its breakdown out of the stats)."""
    _, base = seg.era()
    seg.native.fence()
    table = seg.shards.copy()
    for _ in range(_TRIES):
        seg.native.fence()
        moved = np.flatnonzero(seg.shards["recorded"] != table["recorded"])
        if not len(moved):
            break
        table[moved] = seg.shards[moved]
    return base, table


# Columns of core/_native.c shard_counters().
_C_OWNER, _C_BASE, _C_JOURNAL, _C_JMETA, _C_JB_REC, _C_JB_OUT = 0, 1, 2, 3, 4, 5
_C_RECORDED, _C_OVERWRITTEN, _C_LOST, _C_ABANDONED, _C_EXPIRED, _C_START, _C_OK = 6, 7, 8, 9, 10, 11, 12
_COLS = 13
_TRIES = 20  # whole-table attempts before a shard that never held still is taken as it was


@dataclass(frozen=True)
class Counters:
    """One consistent copy of the ring's books: where every event recorded in the current era
    (since creation or the last clear) went, read from the shard table alone.

    ``recorded == retained + overwritten + lost + abandoned + expired`` holds exactly, and
    ``0 <= retained <= min(capacity, recorded)``. ``in_flight`` events are claimed but not yet
    counted: a writer is inside ``write()`` (or died there and is not reaped yet); they are in
    none of the other figures. With ``in_flight == 0`` and no cleanup or clear running,
    ``retained`` is exactly the number of retained records (what ``get_events(0)`` returns).

    How: each shard is copied at one moment of its history (``_native.shard_counters``); a shard
    whose journal is in its counting phase is taken as it was just before it (its journal holds
    those values), so an in-flight event is in no counter at all. Summing shards read a few
    nanoseconds apart, and removals (an overwrite, a retention cleanup) counted by one process
    of an event another process has published but not counted yet, can leave the difference
    ``recorded - overwritten - lost - abandoned - expired`` up to one event per writer inside
    ``write()`` (or a cleanup under way) outside ``0..min(capacity, recorded)``: those events are
    settled here as the writers are about to, the excess counted as overwritten (the removal
    happened, its count is on its way) or the shortfall taken off the overwritten and expired
    counts (removals of events still in flight). ``adjusted`` says by how many; it is 0 at rest.
    """

    base: int
    recorded: int
    overwritten: int
    lost: int
    abandoned: int
    expired: int
    retained: int
    in_flight: int
    adjusted: int = 0
    unsteady: int = 0  # shards that never held still long enough to be copied (taken as seen)
    # Sequence numbers claimed and never used (not events, so not in the books above): read with
    # the shards in use, a column of its own, since it changes only when a give-back fails.
    unused: int = 0


def total(col: np.ndarray) -> int:
    """An exact sum of u64 counters (numpy's u64 sum wraps), saturated at ``L.U64_MAX``: damaged
    words must not make a figure no JSON consumer can read."""
    return min(int(sum(col.tolist())), L.U64_MAX)


def counters(seg: Segment) -> Counters:
    """The books of the current era from one consistent copy of the shard table (see
    :class:`Counters`). Reads the header and the shard table only: never a slot."""
    buf = np.empty((seg.max_shards, _COLS), dtype=np.uint64)
    for attempt in range(_TRIES):
        head1 = seg.load("head")
        _, base = seg.era()
        seg.native.fence()
        unsteady = seg.native.shard_counters(buf, L.OWNER_STATE_BITS, L.SH_REAPING)
        seg.native.fence()
        # A clear during the copy (a new generation in the head word) makes a mixed copy.
        if L.head_gen(seg.load("head")) == L.head_gen(head1) and (unsteady == 0 or attempt == _TRIES - 1):
            break
        os.sched_yield()
    t = buf
    used = (L.owner_state(t[:, _C_OWNER]) != L.SH_FREE) & (t[:, _C_BASE] == np.uint64(base))
    t = t[used].copy()
    unused = total(seg.shards["unused"][used])
    journal = t[:, _C_JOURNAL]
    busy = journal != 0
    # In its counting phase a writer has stored "old + 1" in some counters and not yet in
    # others: take the old values, which the journal holds, so the event is in none of them.
    counting = busy & (L.j_phase(journal) == L.PH_COUNTING)
    if counting.any():
        outcome = (t[:, _C_JMETA] >> np.uint64(3 * L.JMETA_BITS)) & np.uint64(0xFF)
        t[counting, _C_RECORDED] = t[counting, _C_JB_REC]
        for out, col in ((L.OUT_OVERWROTE, _C_OVERWRITTEN), (L.OUT_LOST, _C_LOST)):
            sel = counting & (outcome == np.uint64(out))
            t[sel, col] = t[sel, _C_JB_OUT]
    recorded, overwritten, lost, abandoned, expired = (
        total(t[:, c]) for c in (_C_RECORDED, _C_OVERWRITTEN, _C_LOST, _C_ABANDONED, _C_EXPIRED))
    retained = recorded - overwritten - lost - abandoned - expired
    top = min(seg.capacity, recorded)
    adjusted = 0
    if retained > top:
        adjusted = retained - top
        overwritten += adjusted  # can not pass recorded: retained - adjusted = top >= 0
        retained = top
    elif retained < 0:
        adjusted = short = -retained
        terms = [overwritten, expired, lost, abandoned]
        for k in range(4):  # short <= their sum, since recorded >= 0
            d = min(short, terms[k])
            terms[k] -= d
            short -= d
        overwritten, expired, lost, abandoned = terms
        retained = 0
    return Counters(base=base, recorded=recorded, overwritten=overwritten, lost=lost, abandoned=abandoned,
                    expired=expired, retained=retained, in_flight=int(busy.sum()), adjusted=adjusted, unused=unused,
                    unsteady=int(unsteady))


def era_shards(seg: Segment) -> np.ndarray:
    """The shards in use whose counters belong to the current era."""
    base, table = shards(seg)
    used = L.owner_state(table["owner"]) != L.SH_FREE
    return table[used & (table["base"] == base)]


def _same_keys(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Which key_state words name the same published key before and after a copy (pins aside):
    an entry recycled for another peer meanwhile (core/_native.c, peer_find) is left out."""
    ident = ~np.uint64(((1 << L.KEY_PIN_BITS) - 1) << L.KEY_PIN_SHIFT)
    return L.key_ready(before) & ((before & ident) == (after & ident))


def peer_rows(seg: Segment) -> tuple[int, np.ndarray]:
    """(base, a copy of every peer entry whose key is published, with its index words: PEER_ROW
    rows). The key state is read,
    with acquire, before the rest of the entry (a writer publishes the key after the entry),
    and again after it: an entry recycled during the copy is left out."""
    _, base = seg.era()
    seg.native.fence()
    ks = seg.peer_index["key_state"].copy()
    seg.native.fence()
    sel = np.flatnonzero(L.key_ready(ks))
    rows = np.empty(len(sel), dtype=L.PEER_ROW)
    entries, index = seg.peers[sel], seg.peer_index[sel]
    for f in L.fields(L.PEER):
        rows[f] = entries[f]
    for f in L.fields(L.PEER_INDEX):
        rows[f] = index[f]
    seg.native.fence()
    return base, rows[_same_keys(ks[sel], seg.peer_index["key_state"][sel])]


def peer_sums(seg: Segment, fields: tuple[str, ...]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """({field: its sum over the published entries of the current clear generation}, then the key
    hashes (high bits of key_state) and keys of the entries tracked: of the current generation,
    or connected). Copies only the columns asked for, not the table (8 MiB at 4,096 peers):
    what a metrics scrape needs. As in
    :func:`peer_rows`, the key states are read before and after, and an entry recycled
    meanwhile is left out (the sums are then taken again without it)."""
    _, base = seg.era()
    seg.native.fence()
    ks = seg.peer_index["key_state"].copy()
    seg.native.fence()
    era = seg.peers["era"].copy()
    life = seg.peer_index["life"].copy()
    ready = L.key_ready(ks)
    cur = ready & (era == base + 1)

    def sums(mask: np.ndarray) -> dict[str, np.ndarray]:
        sel = np.flatnonzero(mask)
        return {f: seg.peers[f][sel].sum(axis=0, dtype=np.uint64) for f in fields}  # fancy indexing copies

    got = sums(cur)
    tracked = np.flatnonzero(ready & (cur | L.life_connected(life)))
    keys = seg.peers["key"][tracked]
    seg.native.fence()
    same = _same_keys(ks, seg.peer_index["key_state"])
    if (cur & ~same).any():
        got = sums(cur & same)
    keep = same[tracked]
    return got, ks[tracked][keep] >> np.uint64(L.KEY_HASH_SHIFT), keys[keep]


def peer_lifecycles(seg: Segment) -> tuple[np.ndarray, np.ndarray]:
    """(keys, life words) of published entries with a lifecycle event: three columns, not the
    whole table, because stats ask for connected peers on every call."""
    _, keys, life = peer_lifecycles_hashed(seg)
    return keys, life


def peer_lifecycles_hashed(seg: Segment) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(key hashes, keys, life words): :func:`peer_lifecycles` with each key's hash (the high
    bits of its key_state), which lets a reader group rows by key without comparing strings."""
    seg.native.fence()
    ks = seg.peer_index["key_state"].copy()
    seg.native.fence()
    life = seg.peer_index["life"].copy()
    sel = np.flatnonzero(L.key_ready(ks) & (life != 0))
    keys = seg.peers["key"][sel]
    seg.native.fence()
    keep = _same_keys(ks[sel], seg.peer_index["key_state"][sel])
    return ks[sel][keep] >> np.uint64(L.KEY_HASH_SHIFT), keys[keep], life[sel][keep]


def message_types(seg: Segment) -> list[str]:
    """Names of the ring's message-type registry, by index ('' for an unused entry)."""
    states = seg.header["msg_state"].copy()
    names = seg.header["msg_name"].copy()
    out = []
    for j in range(L.MSG_TYPES - 1):
        st = int(states[j])
        n = min(L.name_len(st), L.MSG_NAME_SIZE)
        out.append(bytes(names[j])[:n].decode("utf-8", "replace") if L.name_ready(st) else "")
    out.append(L.OTHER_MSG)
    return out


def message_counters(seg: Segment) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(recorded, msg_count, msg_bytes) of the shards of the current era: each writer's events,
    and its messages and their bytes by [direction, message type] (layout.MSG_DIRECTIONS, the
    header registry's indices; see :func:`message_types`). Each shard is its owner's alone and
    a clear's new era zeroes it at its owner's next event, so era shards (live, exited or dead
    writers') hold exactly the era's messages; a writer adds to these counters just before its
    "recorded" (core/_native.c step 7), so a live one may be one message ahead of it."""
    t = era_shards(seg)
    return t["recorded"].copy(), t["msg_count"].copy(), t["msg_bytes"].copy()


def untracked(seg: Segment) -> tuple[int, int]:
    """(connects, events) of peers that found the peer table full."""
    return seg.load("peers_untracked"), seg.load("peer_events_untracked")


def recycled(seg: Segment) -> dict[str, int]:
    """What recycled peer entries had counted since the last clear ({RECYCLED_FIELDS: n}): the
    totals' era word is read before them, as a peer entry's (zeros if of an older generation)."""
    _, base = seg.era()
    era = seg.load("recycled_era")
    seg.native.fence()
    values = seg.header["recycled"].copy().tolist()
    if era != base + 1:
        values = [0] * len(values)
    return dict(zip(L.RECYCLED_FIELDS, values, strict=True))


def op_table(seg: Segment) -> tuple[int, np.ndarray]:
    """(generation, a copy of the operation table): the clear generation, read from the head
    word before the table; its histograms are in bank ``L.op_bank(gen)`` of each operation, when
    that bank's gen word names it (clears alternate banks, see ``core/maintenance.clear``)."""
    head = seg.load("head")
    seg.native.fence()
    return int(L.head_gen(head)), seg.ops.copy()


def clear_generation(seg: Segment) -> int:
    """How many times the ring was cleared (modulo the head word's generation bits): a reader
    that sees it change knows a clear happened in between."""
    return int(L.head_gen(seg.load("head")))


def metrics_enabled(seg: Segment) -> bool:
    """Whether writers keep per-severity, per-type, per-peer and latency counters."""
    return seg.metrics
