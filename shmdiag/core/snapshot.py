"""Consistent copies of the segment's shared tables, for the read models above the core.

The read models (``shmdiag.views``) compute stats, peers and latency from these copies and never
touch the segment themselves: the loads, fences and the order in which words are read — the
part that must match the writers' publication order in ``_native.c`` — live here, once.
Every value in a copy is still untrusted (another process, or damage, wrote it): the views
bound what they compute from it.
"""

from __future__ import annotations

import numpy as np

from shmdiag.core import layout as L
from shmdiag.core.segment import Segment


def shards(seg: Segment) -> tuple[int, np.ndarray]:
    """(base, every shard): the current era's first sequence number and a copy of the shard
    table, read after it (a shard whose ``base`` differs belongs to a cleared era)."""
    _, base = seg.era()
    seg.native.fence()
    return base, seg.shards.copy()


def era_shards(seg: Segment) -> np.ndarray:
    """The shards in use whose counters belong to the current era."""
    base, table = shards(seg)
    used = L.owner_state(table["owner"]) != L.SH_FREE
    return table[used & (table["base"] == base)]


def peer_rows(seg: Segment) -> tuple[int, np.ndarray]:
    """(base, a copy of every peer entry whose key is published). The key state is read,
    with acquire, before the rest of the entry: a writer publishes the key after the entry."""
    _, base = seg.era()
    seg.native.fence()
    ks = seg.peers["key_state"].copy()
    seg.native.fence()
    return base, seg.peers[np.flatnonzero(L.key_ready(ks))]


def peer_lifecycles(seg: Segment) -> tuple[np.ndarray, np.ndarray]:
    """(keys, life words) of published entries with a lifecycle event: three columns, not the
    whole table, because stats ask for connected peers on every call."""
    seg.native.fence()
    ks = seg.peers["key_state"].copy()
    seg.native.fence()
    life = seg.peers["life"].copy()
    sel = np.flatnonzero(L.key_ready(ks) & (life != 0))
    return seg.peers["key"][sel], life[sel]


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


def untracked(seg: Segment) -> tuple[int, int]:
    """(connects, events) of peers that found the peer table full."""
    return seg.load("peers_untracked"), seg.load("peer_events_untracked")


def op_table(seg: Segment) -> tuple[int, np.ndarray]:
    """(generation, a copy of the operation table): the clear generation, read from the head
    word before the table; its histograms are in bank ``L.op_bank(gen)`` of each operation, when
    that bank's gen word names it (clears alternate banks, see ``core/maintenance.clear``)."""
    head = seg.load("head")
    seg.native.fence()
    return int(L.head_gen(head)), seg.ops.copy()


def metrics_enabled(seg: Segment) -> bool:
    """Whether writers keep per-severity, per-type, per-peer and latency counters."""
    return seg.metrics
