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


def _same_keys(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Which key_state words name the same published key before and after a copy (pins aside):
    an entry recycled for another peer meanwhile (core/_native.c, peer_find) is left out."""
    ident = ~np.uint64(((1 << L.KEY_PIN_BITS) - 1) << L.KEY_PIN_SHIFT)
    return L.key_ready(before) & ((before & ident) == (after & ident))


def peer_rows(seg: Segment) -> tuple[int, np.ndarray]:
    """(base, a copy of every peer entry whose key is published). The key state is read,
    with acquire, before the rest of the entry (a writer publishes the key after the entry),
    and again after it: an entry recycled during the copy is left out."""
    _, base = seg.era()
    seg.native.fence()
    ks = seg.peers["key_state"].copy()
    seg.native.fence()
    sel = np.flatnonzero(L.key_ready(ks))
    rows = seg.peers[sel]
    seg.native.fence()
    return base, rows[_same_keys(ks[sel], seg.peers["key_state"][sel])]


def peer_lifecycles(seg: Segment) -> tuple[np.ndarray, np.ndarray]:
    """(keys, life words) of published entries with a lifecycle event: three columns, not the
    whole table, because stats ask for connected peers on every call."""
    seg.native.fence()
    ks = seg.peers["key_state"].copy()
    seg.native.fence()
    life = seg.peers["life"].copy()
    sel = np.flatnonzero(L.key_ready(ks) & (life != 0))
    keys = seg.peers["key"][sel]
    seg.native.fence()
    keep = _same_keys(ks[sel], seg.peers["key_state"][sel])
    return keys[keep], life[sel][keep]


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
    """(bank, a copy of the operation table): the histogram bank of the current era, read
    from the head word before the table (clears alternate banks, see ``Recorder.clear_events``)."""
    head = seg.load("head")
    seg.native.fence()
    return L.op_bank(L.head_gen(head)), seg.ops.copy()


def metrics_enabled(seg: Segment) -> bool:
    """Whether writers keep per-severity, per-type, per-peer and latency counters."""
    return seg.metrics
