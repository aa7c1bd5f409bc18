"""Per-peer diagnostics (get_peer_diagnostics / get_network_diagnostic): exact, bounded, shared."""

from __future__ import annotations

import multiprocessing as mp
from datetime import datetime, timezone

import numpy as np
import pytest

from shmdiag import DiagnosticEvent, NetworkDiagnostic, PeerDiagnostic, Recorder, Severity
from shmdiag.core import layout as L


def by_id(rec: Recorder) -> dict[str, PeerDiagnostic]:
    return {p.peer_id: p for p in rec.get_peer_diagnostics()}


def test_one_peer_in_full(rec):
    before = datetime.now(timezone.utc)
    rec.record_peer_connection("p1", "203.0.113.5:8333")
    rec.record_message("p1", "version", "outbound", 102)
    rec.record_message("p1", "version", "inbound", 126)
    rec.record_message("p1", "inv", "inbound", 37)
    rec.record_message("p1", "inv", "inbound", 73)
    rec.record_message("p1", "tx", "outbound", 250)
    rec.record_latency("ping", 0.040, peer_id="p1")
    rec.record_latency("pong", 0.030, peer_id="p1")
    rec.record_error("p1", TimeoutError("no pong"), "ping")
    rec.record_event(DiagnosticEvent("misbehaving", "bad block", Severity.CRITICAL, peer_id="p1"))
    rec.record_event(DiagnosticEvent("note", "fine", Severity.WARNING, peer_id="p1"))
    p = by_id(rec)["p1"]
    assert p.address == "203.0.113.5:8333"
    assert (p.messages_sent, p.messages_received) == (2, 3)
    assert (p.bytes_sent, p.bytes_received) == (352, 236)
    assert p.bytes_sent_per_msg == {"version": 102, "tx": 250}
    assert p.bytes_recv_per_msg == {"version": 126, "inv": 110}
    assert p.latency == pytest.approx(0.030)  # the latest round trip
    assert p.error_count == 2  # ERROR and CRITICAL events, not the WARNING
    assert p.status == "connected"
    assert before <= p.connected_at <= p.last_activity <= datetime.now(timezone.utc)
    net = rec.get_network_diagnostic()
    assert (net.total_peers, net.active_peers, net.disconnected_peers) == (1, 1, 0)
    assert net.network_latency == pytest.approx(0.035)
    assert net.untracked_peers == 0 and net.untracked_events == 0


def test_status_follows_the_latest_lifecycle_event(rec):
    rec.record_peer_connection("a", "10.0.0.1:8333")
    rec.record_peer_connection("b", "10.0.0.2:8333")
    rec.record_peer_disconnection("a", "10.0.0.1:8333", "timeout")
    peers = by_id(rec)
    assert peers["a"].status == "disconnected" and peers["b"].status == "connected"
    rec.record_peer_connection("a", "10.0.0.9:18333")  # reconnects from another address
    peers = by_id(rec)
    assert peers["a"].status == "connected" and peers["a"].address == "10.0.0.9:18333"
    net = rec.get_network_diagnostic()
    assert (net.total_peers, net.active_peers, net.disconnected_peers) == (2, 2, 0)
    assert rec.get_stats().active_peers == 2


def test_a_peer_without_lifecycle_events_is_listed_by_its_traffic(rec):
    rec.record_message("ghost", "addr", "inbound", 30003)
    p = by_id(rec)["ghost"]
    assert p.status == "never_connected" and p.status_reason == "no connect recorded"
    assert p.address == "" and p.connected_at is None
    assert p.bytes_received == 30003 and p.latency is None


def test_exact_although_the_ring_overwrote_almost_everything(make_recorder):
    r = make_recorder(16)
    r.record_peer_connection("p", "x")
    for i in range(5000):
        r.record_message("p", ("inv", "tx", "getdata")[i % 3], "inbound" if i % 2 else "outbound", i)
    p = by_id(r)["p"]
    sent = [i for i in range(5000) if i % 2 == 0]
    recv = [i for i in range(5000) if i % 2]
    assert (p.messages_sent, p.messages_received) == (len(sent), len(recv))
    assert (p.bytes_sent, p.bytes_received) == (sum(sent), sum(recv))
    per = {t: sum(i for i in recv if ("inv", "tx", "getdata")[i % 3] == t) for t in ("inv", "tx", "getdata")}
    assert p.bytes_recv_per_msg == {t: v for t, v in per.items() if v}
    assert len(r.get_events(limit=0)) == 16


def test_clear_resets_counters_but_not_connections(rec):
    rec.record_peer_connection("up", "1.1.1.1:8333")
    rec.record_peer_connection("gone", "2.2.2.2:8333")
    rec.record_message("up", "inv", "inbound", 37)
    rec.record_latency("ping", 0.01, peer_id="up")
    rec.record_peer_disconnection("gone", "2.2.2.2:8333", "eviction")
    rec.clear_events()
    peers = by_id(rec)
    assert set(peers) == {"up"}  # still connected; "gone" had nothing since the clear
    up = peers["up"]
    assert (up.messages_received, up.bytes_received, up.bytes_recv_per_msg, up.latency) == (0, 0, {}, None)
    assert up.status == "connected" and up.address == "1.1.1.1:8333" and up.connected_at is not None
    rec.record_message("up", "tx", "inbound", 250)
    rec.record_message("gone", "tx", "inbound", 1)
    peers = by_id(rec)
    assert peers["up"].bytes_recv_per_msg == {"tx": 250}
    assert peers["gone"].status == "disconnected" and peers["gone"].bytes_received == 1
    assert rec.get_network_diagnostic().network_latency is None


def test_a_full_table_counts_the_rest_and_recycles_disconnected_peers(make_recorder):
    """max_peers=4: 8 entries. Ten connected peers: eight tracked, two counted beyond the table
    (and health warns). Disconnected peers' entries go to new peers, oldest disconnect first,
    and what they counted stays in the recycled totals."""
    r = make_recorder(100, max_peers=4)
    for i in range(10):
        r.record_peer_connection(f"p{i}", f"10.0.0.{i}:8333")
        r.record_message(f"p{i}", "ping", "outbound", 8)
    net = r.get_network_diagnostic()
    assert net.total_peers == net.active_peers == 8
    assert net.untracked_peers == 2
    assert net.untracked_events == 4  # each untracked peer's connect and message
    tracked = {p.peer_id for p in net.peer_diagnostics}
    assert tracked == {f"p{i}" for i in range(8)}
    assert all(p.bytes_sent == 8 for p in net.peer_diagnostics)
    r.record_message("p0", "pong", "inbound", 8)  # tracked peers keep being counted at the cap
    assert by_id(r)["p0"].bytes_recv_per_msg == {"pong": 8}
    h = r.health_check()
    assert h.status == "warning" and "peer table full" in h.message
    assert (h.active_peers, h.max_peers, h.peers_untracked) == (8, 4, 2)

    for i in (3, 1, 2):  # in this order: p3 left first
        r.record_peer_disconnection(f"p{i}", f"10.0.0.{i}:8333", "bye")
    r.record_peer_connection("q0", "10.0.1.0:8333")
    r.record_message("q0", "inv", "inbound", 37)
    peers = by_id(r)
    assert "p3" not in peers and {"p1", "p2", "q0"} <= set(peers)  # the oldest disconnect went first
    assert peers["q0"].status == "connected" and peers["q0"].bytes_received == 37
    assert peers["q0"].bytes_sent == 0  # a recycled entry starts from zero
    net = r.get_network_diagnostic()
    assert (net.recycled_peers, net.recycled_messages_sent, net.recycled_bytes_sent) == (1, 1, 8)
    assert net.recycled_events == 3  # p3's connect, message and disconnect
    assert net.active_peers == r.get_stats().active_peers == 6
    r.clear_events()
    net = r.get_network_diagnostic()
    assert (net.untracked_peers, net.untracked_events, net.recycled_peers, net.recycled_bytes_sent) == (0, 0, 0, 0)
    h = r.health_check()  # still more peers connected than max_peers: a clear does not disconnect anyone
    assert h.status == "warning" and h.peers_untracked == 0 and h.active_peers == 6
    for i in (0, 4):
        r.record_peer_disconnection(f"p{i}", f"10.0.0.{i}:8333", "bye")
    assert r.health_check().status == "healthy"


def test_message_types_beyond_the_registry_go_to_other(rec):
    n = L.MSG_TYPES + 20
    for i in range(n):
        rec.record_message("p", f"t{i}", "inbound", i + 1)
    rec.record_message("p", "x" * (L.MSG_NAME_SIZE + 1), "inbound", 1000)  # too long to name
    p = by_id(rec)["p"]
    assert sum(p.bytes_recv_per_msg.values()) == p.bytes_received == sum(range(1, n + 1)) + 1000
    named = {k for k in p.bytes_recv_per_msg if k != L.OTHER_MSG}
    assert len(named) == L.MSG_TYPES - 1
    assert p.bytes_recv_per_msg[L.OTHER_MSG] >= 1000


def test_metrics_disabled_tracks_no_peers(make_recorder):
    r = make_recorder(100, enable_metrics=False)
    r.record_peer_connection("p", "x")
    r.record_message("p", "inv", "inbound", 37)
    assert r.get_network_diagnostic() == NetworkDiagnostic()


def _peer_writer(name: str, w: int, n: int, barrier) -> None:
    rec = Recorder.attach(name)
    own = f"w{w}"
    rec.record_peer_connection(own, f"10.1.0.{w}:8333")
    barrier.wait()
    for i in range(n):
        rec.record_message(own, "inv", "inbound", 37)
        rec.record_message(own, "tx", "outbound", w)
        rec.record_message("shared", "block", "inbound", 1000 + w)  # every process, at once
        if i % 100 == 0:
            rec.record_latency("ping", (w + 1) / 1000, peer_id=own)
    if w % 2:
        rec.record_peer_disconnection(own, f"10.1.0.{w}:8333", "done")
    rec.close()


@pytest.mark.multiprocess
def test_many_processes_each_count_exactly(make_recorder):
    writers, n = 4, 3000
    r = make_recorder(64)  # tiny ring: almost everything is overwritten
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(writers)
    procs = [ctx.Process(target=_peer_writer, args=(r.name, w, n, barrier)) for w in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    # An inspector in another process sees the same as the creator.
    with Recorder.attach(r.name) as inspector:
        peers = {p.peer_id: p for p in inspector.get_peer_diagnostics()}
    assert set(peers) == {"w0", "w1", "w2", "w3", "shared"}
    for w in range(writers):
        p = peers[f"w{w}"]
        assert (p.messages_received, p.bytes_received) == (n, 37 * n)
        assert (p.messages_sent, p.bytes_sent) == (n, w * n)
        assert p.bytes_recv_per_msg == {"inv": 37 * n}
        assert p.latency == pytest.approx((w + 1) / 1000)
        assert p.status == ("disconnected" if w % 2 else "connected")
        assert p.address == f"10.1.0.{w}:8333"
    shared = peers["shared"]
    assert shared.messages_received == writers * n
    assert shared.bytes_recv_per_msg == {"block": sum((1000 + w) * n for w in range(writers))}
    net = r.get_network_diagnostic()
    assert (net.active_peers, net.disconnected_peers) == (2, 3)  # w0, w2 connected; w1, w3 and "shared" not
    assert net.network_latency == pytest.approx(sum((w + 1) / 1000 for w in range(writers)) / writers)


def test_duplicate_entries_of_one_key_are_merged(make_recorder):
    """Racing inserts of one key can leave two entries; readers merge them (forged here)."""
    r = make_recorder(100, max_peers=8)
    r.record_peer_connection("dup", "old:1")
    r.record_message("dup", "inv", "inbound", 37)
    r.record_latency("ping", 0.5, peer_id="dup")
    table, index = r._seg.peers, r._seg.peer_index
    src = int(np.flatnonzero((index["key_state"] & 3) == 2)[0])
    dst = (src + 3) % len(table)
    table[dst], index[dst] = table[src], index[src]
    index["life"][dst] = (int(index["life"][src]) + (1 << L.LIFE_SEQ_SHIFT)) & ~1  # a later event, a disconnect
    table["addr"][dst], table["addr_len"][dst] = b"new:2", 5
    table["last_activity"][dst] = table["last_activity"][src] + 1
    table["ping_last_ns"][dst] = 250_000_000
    (p,) = r.get_peer_diagnostics()
    assert p.bytes_received == 74 and p.bytes_recv_per_msg == {"inv": 74}
    assert p.status == "disconnected" and p.address == "new:2"
    assert p.latency == pytest.approx(0.25)
    assert r.get_stats().active_peers == 0
