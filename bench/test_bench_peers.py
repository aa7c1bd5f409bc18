"""The peer table at a crawler's scale (issue 11): ``python -m pytest bench/test_bench_peers.py
bench/test_bench_core.py::test_record_message --benchmark-only`` puts the connect of a new peer
beside record_message in one run.

A "full" table has no empty entry left: every new peer recycles the entry of the peer that
disconnected longest ago (the target: under 1 us per connect). Nothing here asserts a timing.
"""

from __future__ import annotations

import itertools

import pytest

from shmdiag import Recorder, RecorderConfig

MAX_PEERS = 4096
INNER = 1_000      # new peers connected per round
CONNECTED = 2_048  # peers connected throughout, so candidates are a mix of connected and not


def _full_table() -> Recorder:
    """A ring whose peer table holds CONNECTED connected peers and no empty entry: 3 x the table's
    entries of peers have connected, exchanged a message and (all but CONNECTED) disconnected."""
    rec = Recorder.with_config(RecorderConfig(max_events=100_000, max_peers=MAX_PEERS), collector=False)
    n = 3 * 2 * MAX_PEERS
    for i in range(n):
        rec.record_peer_connection(f"old-{i}", "198.51.100.1:8333")
        rec.record_message(f"old-{i}", "version", "outbound", 102)
        if i % (n // CONNECTED):
            rec.record_peer_disconnection(f"old-{i}", "198.51.100.1:8333", "crawled")
    net = rec.get_network_diagnostic()
    assert net.total_peers == 2 * MAX_PEERS and net.recycled_peers > 0 and net.untracked_peers == 0
    assert net.active_peers == CONNECTED
    return rec


@pytest.mark.benchmark(group="peers")
def test_record_peer_connection_new_peer_full_table(benchmark, per_op):
    rec = _full_table()
    counter = itertools.count()
    state: dict[str, list[str]] = {"last": []}

    def setup():
        # Untimed: the previous round's peers leave, so the table stays full of recyclable entries.
        for p in state["last"]:
            rec.record_peer_disconnection(p, "203.0.113.9:8333", "crawled")
        ids = [f"new-{next(counter)}" for _ in range(INNER)]
        state["last"] = ids
        return (ids,), {}

    def loop(ids):
        conn = rec.record_peer_connection
        for p in ids:
            conn(p, "203.0.113.9:8333")

    try:
        before = rec.get_network_diagnostic().recycled_peers
        benchmark.pedantic(loop, setup=setup, rounds=100, warmup_rounds=3)
        per_op(INNER, "connect")
        net = rec.get_network_diagnostic()
        rounds = len(benchmark.stats.stats.data) + 3 if getattr(benchmark, "stats", None) else None
        assert net.untracked_peers == 0
        assert net.active_peers == CONNECTED + INNER
        if rounds is not None:
            assert net.recycled_peers - before == rounds * INNER  # every connect recycled an entry
        benchmark.extra_info["recycled"] = net.recycled_peers - before
    finally:
        rec.close()


@pytest.mark.benchmark(group="peers")
def test_record_peer_connection_new_peer_empty_table(benchmark, per_op):
    """The same connects into a table with room: the cost without recycling, for comparison."""
    # 131,072 entries, 65,536 connected peers guaranteed: 53 rounds of 1,000 connects stay below
    rec = Recorder.with_config(RecorderConfig(max_events=100_000, max_peers=1 << 16), collector=False)
    counter = itertools.count()

    def setup():
        return ([f"new-{next(counter)}" for _ in range(INNER)],), {}

    def loop(ids):
        conn = rec.record_peer_connection
        for p in ids:
            conn(p, "203.0.113.9:8333")

    try:
        benchmark.pedantic(loop, setup=setup, rounds=50, warmup_rounds=3)
        per_op(INNER, "connect")
        net = rec.get_network_diagnostic()
        assert net.untracked_peers == 0 and net.recycled_peers == 0
    finally:
        rec.close()


@pytest.mark.benchmark(group="peers")
def test_record_peer_connection_known_peer_full_table(benchmark, per_op):
    """A connect of a peer the full table already tracks (a reconnect): the floor of the above."""
    rec = _full_table()
    ids = [f"old-{i}" for i in range(3 * 2 * MAX_PEERS - INNER, 3 * 2 * MAX_PEERS)]  # the newest: tracked
    try:
        before = rec.get_network_diagnostic().recycled_peers

        def loop():
            conn = rec.record_peer_connection
            for p in ids:
                conn(p, "203.0.113.9:8333")

        benchmark.pedantic(loop, rounds=100, warmup_rounds=3)
        per_op(INNER, "connect")
        net = rec.get_network_diagnostic()
        assert net.recycled_peers == before and net.untracked_peers == 0
    finally:
        rec.close()
