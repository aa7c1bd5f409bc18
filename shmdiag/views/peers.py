"""Per-peer diagnostics, read from the shared peer table.

Writers keep each peer's counters in its table entry with atomic adds (``account_extras`` in
core/_native.c), so the figures cover every event recorded since the last clear, overwritten ones
included. Racing inserts can leave two entries for one key: they are merged here. Entries of
peers that are not connected are recycled for new peers (oldest disconnect first); what they had
counted is in the header's recycled totals, reported beside the tracked peers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shmdiag.core import layout as L
from shmdiag.core import snapshot
from shmdiag.core.models import NetworkDiagnostic, PeerDiagnostic
from shmdiag.core.reader import ns_to_datetime
from shmdiag.core.segment import Segment

_SUMMED = ("msgs_sent", "msgs_recv", "bytes_sent", "bytes_recv", "errors", "ping_count", "ping_sum_ns", "events")


def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique keys and, for each row, its group: racing inserts can leave one key twice."""
    return np.unique(keys, return_inverse=True)


def connected_peers(seg: Segment) -> set[str]:
    """Peer ids whose latest lifecycle event is a connect. Connections are facts about the
    present, so a clear (which forgets events) does not disconnect anyone."""
    keys, life = snapshot.peer_lifecycles(seg)
    uniq, inv = _groups(keys)
    latest = _merge(np.maximum, np.zeros(len(uniq), np.uint64), inv, life)  # newest lifecycle wins
    return {k.decode("utf-8", "replace") for k in uniq[L.life_connected(latest)].tolist()}


def connected_count(seg: Segment) -> int:
    """``len(connected_peers(seg))`` without decoding the ids (stats and every scrape ask):
    rows are grouped by key hash, and by the keys themselves only where hashes repeat."""
    hashes, keys, life = snapshot.peer_lifecycles_hashed(seg)
    _, hinv, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    shared = counts[hinv] > 1
    n = int(L.life_connected(life[~shared]).sum())
    if shared.any():
        uniq, inv = _groups(keys[shared])
        latest = _merge(np.maximum, np.zeros(len(uniq), np.uint64), inv, life[shared])
        n += int(L.life_connected(latest).sum())
    return n


def _merge(op: np.ufunc, acc: np.ndarray, inv: np.ndarray, col: np.ndarray) -> np.ndarray:
    """Fold rows into their key's group; a plain scatter when no key is duplicated (usual)."""
    if len(inv) == len(acc):
        acc[inv] = col
    else:
        op.at(acc, inv, col)
    return acc


def read(seg: Segment) -> NetworkDiagnostic:
    """Peers with an event since the last clear, and peers connected now."""
    base, rows = snapshot.peer_rows(seg)
    current = rows["era"] == base + 1
    keep = current | L.life_connected(rows["life"])
    rows, current = rows[keep], current[keep]
    uniq, inv = _groups(rows["key"])
    g = len(uniq)
    sums = {}
    for f in _SUMMED + ("bytes_sent_per_msg", "bytes_recv_per_msg"):
        col = np.where(current.reshape((-1,) + (1,) * (rows[f].ndim - 1)), rows[f], 0).astype(np.uint64)
        sums[f] = _merge(np.add, np.zeros((g,) + col.shape[1:], np.uint64), inv, col)
    # Per key, the row with the latest lifecycle event names the address; the row with the latest
    # activity gives the latest ping.
    by_life = np.lexsort((rows["life"], inv))
    life_row = by_life[np.r_[np.flatnonzero(np.diff(inv[by_life])), len(by_life) - 1]] if len(rows) else by_life
    activity = np.where(current, rows["last_activity"], 0)
    by_act = np.lexsort((activity, inv))
    act_row = by_act[np.r_[np.flatnonzero(np.diff(inv[by_act])), len(by_act) - 1]] if len(rows) else by_act
    names = snapshot.message_types(seg)
    sent = _per_msg(names, sums["bytes_sent_per_msg"])
    recv = _per_msg(names, sums["bytes_recv_per_msg"])
    lr, ar = rows[life_row], rows[act_row]
    addrs = [bytes(a)[:n].decode("utf-8", "replace")
             for a, n in zip(lr["addr"].tolist(), lr["addr_len"].tolist(), strict=True)]
    connected_at, lives = lr["connected_at"].tolist(), lr["life"].tolist()
    last = activity[act_row].tolist()
    ping_last = np.where(ar["ping_count"] > 0, ar["ping_last_ns"], 0).tolist()
    cols = {f: sums[f].tolist() for f in _SUMMED}

    untracked_peers, untracked_events = snapshot.untracked(seg)
    rec = snapshot.recycled(seg)
    net = NetworkDiagnostic(untracked_peers=untracked_peers, untracked_events=untracked_events,
                            recycled_peers=rec["peers"], recycled_messages_sent=rec["msgs_sent"],
                            recycled_messages_received=rec["msgs_recv"], recycled_bytes_sent=rec["bytes_sent"],
                            recycled_bytes_received=rec["bytes_recv"], recycled_errors=rec["errors"],
                            recycled_events=rec["events"])
    for i, key in enumerate(uniq.tolist()):
        status, reason = _status(lives[i], connected_at[i])
        net.peer_diagnostics.append(PeerDiagnostic(
            peer_id=key.decode("utf-8", "replace"), address=addrs[i],
            connected_at=ns_to_datetime(connected_at[i]) if connected_at[i] else None,
            last_activity=ns_to_datetime(last[i]) if last[i] else None,
            messages_sent=cols["msgs_sent"][i], messages_received=cols["msgs_recv"][i],
            bytes_sent=cols["bytes_sent"][i], bytes_received=cols["bytes_recv"][i],
            bytes_sent_per_msg=sent[i], bytes_recv_per_msg=recv[i],
            latency=ping_last[i] / 1e9 if cols["ping_count"][i] and ping_last[i] else None,
            error_count=cols["errors"][i], status=status, status_reason=reason,
        ))
    net.total_peers = len(net.peer_diagnostics)
    net.active_peers = sum(p.status == "connected" for p in net.peer_diagnostics)
    net.disconnected_peers = net.total_peers - net.active_peers
    pings = int(sums["ping_count"].sum()) + rec["ping_count"]
    ping_ns = int(sums["ping_sum_ns"].sum()) + rec["ping_sum_ns"]
    net.network_latency = ping_ns / pings / 1e9 if pings else None
    return net


@dataclass
class PeerTotals:
    """How many peers the table tracks and has recycled; messages and bytes each way over every
    peer since the last clear, recycled entries included (exact); bytes per message type each
    way. Per-type bytes come from the tracked entries' counters plus, under ``*other*``, what
    recycled entries had counted (their per-type split is not kept): so the types sum to the
    byte totals exactly, but a type's figure drops when an entry that counted it is recycled."""

    peers_tracked: int = 0   # distinct peers in the table: an event since the last clear, or connected
    peers_recycled: int = 0  # entries recycled for new peers since the last clear
    messages_sent: int = 0
    messages_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    bytes_sent_per_msg: dict[str, int] = field(default_factory=dict)
    bytes_recv_per_msg: dict[str, int] = field(default_factory=dict)


def _distinct(hashes: np.ndarray, keys: np.ndarray) -> int:
    """How many distinct keys: by their hashes (ints, fast), comparing the keys themselves only
    among rows whose hash is not unique (racing inserts of one key, or a collision)."""
    _, inv, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    shared = counts[inv] > 1
    return int((~shared).sum()) + len(np.unique(keys[shared]))


def totals(seg: Segment) -> PeerTotals:
    """Ring-wide peer figures, summed in place over the peer table (no per-peer objects, no copy
    of the table): what a metrics scrape needs, in a few ms at 8,192 entries."""
    cols = ("msgs_sent", "msgs_recv", "bytes_sent", "bytes_recv", "bytes_sent_per_msg", "bytes_recv_per_msg")
    sums, hashes, keys = snapshot.peer_sums(seg, cols)
    rec = snapshot.recycled(seg)
    names = snapshot.message_types(seg)
    out = PeerTotals(
        peers_tracked=_distinct(hashes, keys), peers_recycled=rec["peers"],
        messages_sent=int(sums["msgs_sent"]) + rec["msgs_sent"],
        messages_received=int(sums["msgs_recv"]) + rec["msgs_recv"],
        bytes_sent=int(sums["bytes_sent"]) + rec["bytes_sent"],
        bytes_received=int(sums["bytes_recv"]) + rec["bytes_recv"],
    )
    for col, extra, into in (("bytes_sent_per_msg", rec["bytes_sent"], out.bytes_sent_per_msg),
                             ("bytes_recv_per_msg", rec["bytes_recv"], out.bytes_recv_per_msg)):
        for j, v in enumerate(sums[col].tolist()):
            if v:
                name = names[j] or L.OTHER_MSG  # an entry still being named when read
                into[name] = into.get(name, 0) + int(v)
        if extra:
            into[L.OTHER_MSG] = into.get(L.OTHER_MSG, 0) + extra
    return out


def _status(life: int, connected_at: int) -> tuple[str, str]:
    """(status, status_reason) of a peer from its latest lifecycle word (see PeerDiagnostic)."""
    if L.life_connected(life):
        return "connected", ""
    if L.life_died(life):
        return "disconnected", "writer died"
    if life == 0 or connected_at == 0:
        return "never_connected", "no connect recorded"
    return "disconnected", ""


def _per_msg(names: list[str], counts: np.ndarray) -> list[dict[str, int]]:
    """One {message type: bytes} dict per row of a (peers x MSG_TYPES) matrix."""
    out: list[dict[str, int]] = [{} for _ in range(len(counts))]
    rows, cols = np.nonzero(counts)
    for r, c, v in zip(rows.tolist(), cols.tolist(), counts[rows, cols].tolist(), strict=True):
        name = names[c] or L.OTHER_MSG  # an entry still being named when read
        # Saturate: two entries of one name (a racing registration, or damaged words) must not
        # sum past what a u64 (and JSON consumers) can hold.
        out[r][name] = min(out[r].get(name, 0) + v, L.U64_MAX)
    return out
