"""Per-peer diagnostics, read from the shared peer table.

Writers keep each peer's counters in its table entry with atomic adds (``account_extras`` in
_native.c), so the figures cover every event recorded since the last clear, overwritten ones
included. Racing inserts can leave two entries for one key: they are merged here.
"""

from __future__ import annotations

import numpy as np

from . import _layout as L
from ._models import NetworkDiagnostic, PeerDiagnostic
from ._reader import ns_to_datetime
from ._segment import Segment

_SUMMED = ("msgs_sent", "msgs_recv", "bytes_sent", "bytes_recv", "errors", "ping_count", "ping_sum_ns", "events")


def message_types(seg: Segment) -> list[str]:
    """Names of the ring's message-type registry, by index ('' for an unused entry)."""
    states = seg.header["msg_state"].copy()
    names = seg.header["msg_name"].copy()
    out = []
    for j in range(L.MSG_TYPES - 1):
        st = int(states[j])
        n = (st >> 2) & 0x3F
        out.append(bytes(names[j])[:n].decode("utf-8", "replace") if st & 3 == 2 else "")
    out.append(L.OTHER_MSG)
    return out


def _ready_rows(seg: Segment) -> np.ndarray:
    seg.native.fence()
    ks = seg.peers["key_state"].copy()
    seg.native.fence()  # key_state (acquire) before the rest of each entry
    return seg.peers[np.flatnonzero((ks & 3) == 2)]


def _key(row: np.void) -> str:
    return bytes(row["key"])[: int(row["key_len"])].decode("utf-8", "replace")


def connected_peers(seg: Segment) -> set[str]:
    """Peer ids whose latest lifecycle event is a connect. Connections are facts about the
    present, so a clear (which forgets events) does not disconnect anyone."""
    latest: dict[str, int] = {}
    for row in _ready_rows(seg):
        lw = int(row["life"])
        k = _key(row)
        if lw > latest.get(k, 0):  # duplicates of a key merge: the newest lifecycle event wins
            latest[k] = lw
    return {k for k, lw in latest.items() if lw & 1}


def read(seg: Segment) -> NetworkDiagnostic:
    """Peers with an event since the last clear, and peers connected now."""
    _, base = seg.era()
    rows = _ready_rows(seg)
    names = message_types(seg)
    merged: dict[str, dict] = {}
    for row in rows:
        current = int(row["era"]) == base + 1
        life = int(row["life"])
        if not current and not life & 1:
            continue
        k = _key(row)
        m = merged.get(k)
        if m is None:
            m = merged[k] = {"life": 0, "addr": "", "connected_at": 0, "last": 0, "ping_last": 0, "ping_seq": -1,
                             "sent": np.zeros(L.MSG_TYPES, np.uint64), "recv": np.zeros(L.MSG_TYPES, np.uint64),
                             **{f: 0 for f in _SUMMED}}
        if life > m["life"]:
            m["life"] = life
            m["addr"] = bytes(row["addr"])[: int(row["addr_len"])].decode("utf-8", "replace")
            m["connected_at"] = int(row["connected_at"])
        if not current:
            continue
        for f in _SUMMED:
            m[f] += int(row[f])
        m["last"] = max(m["last"], int(row["last_activity"]))
        if int(row["ping_count"]) and int(row["last_activity"]) >= m["ping_seq"]:
            m["ping_last"], m["ping_seq"] = int(row["ping_last_ns"]), int(row["last_activity"])
        m["sent"] += row["bytes_sent_per_msg"]
        m["recv"] += row["bytes_recv_per_msg"]

    net = NetworkDiagnostic(untracked_peers=seg.load("peers_untracked"),
                            untracked_events=seg.load("peer_events_untracked"))
    pings = ping_ns = 0
    for k, m in merged.items():
        p = PeerDiagnostic(
            peer_id=k, address=m["addr"],
            connected_at=ns_to_datetime(m["connected_at"]) if m["connected_at"] else None,
            last_activity=ns_to_datetime(m["last"]) if m["last"] else None,
            messages_sent=m["msgs_sent"], messages_received=m["msgs_recv"],
            bytes_sent=m["bytes_sent"], bytes_received=m["bytes_recv"],
            bytes_sent_per_msg=_per_msg(names, m["sent"]), bytes_recv_per_msg=_per_msg(names, m["recv"]),
            latency=m["ping_last"] / 1e9 if m["ping_count"] else None,
            error_count=m["errors"], status="connected" if m["life"] & 1 else "disconnected",
        )
        net.peer_diagnostics.append(p)
        pings += m["ping_count"]
        ping_ns += m["ping_sum_ns"]
    net.peer_diagnostics.sort(key=lambda p: p.peer_id)
    net.total_peers = len(net.peer_diagnostics)
    net.active_peers = sum(p.status == "connected" for p in net.peer_diagnostics)
    net.disconnected_peers = net.total_peers - net.active_peers
    net.network_latency = ping_ns / pings / 1e9 if pings else None
    return net


def _per_msg(names: list[str], counts: np.ndarray) -> dict[str, int]:
    out: dict[str, int] = {}
    for j in np.flatnonzero(counts):
        name = names[j] or L.OTHER_MSG  # an entry still being named when read
        out[name] = out.get(name, 0) + int(counts[j])
    return out
