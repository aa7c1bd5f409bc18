"""Shared fixtures for the shmdiag benchmarks (run: ``python -m pytest bench -q``).

The default ``python -m pytest`` collects only ``tests/`` (pyproject's testpaths); benchmarks
run only when ``bench`` is named. Speed is reported, never asserted: each benchmark asserts only
that what it measured really happened (events counted, results read back).

Every benchmark times whole rounds of many operations (an inner loop), so the harness's own
per-call overhead does not dominate; ``per_op`` stores the number of operations per round in
``extra_info`` and the per-operation median, which ``bench/report.py`` and the terminal summary use.
"""

from __future__ import annotations

import logging

import pytest

from _benchlib import ERROR_EVERY, FULL_RING, N_PEERS, fill_messages, machine
from shmdiag import Recorder


_SUMMARY: list[tuple[str, float, int]] = []


@pytest.fixture(autouse=True, scope="session")
def _logging_as_in_an_application():
    """Keep pytest's log-capture handlers (on the root logger) out of the figures.

    An application that has not configured logging pays for a LogRecord that shmdiag's
    NullHandler drops; under pytest the same record would also be formatted into pytest's
    capture buffers, which made WARNING/ERROR helpers ~3x slower than outside pytest.
    Not propagating to the root gives exactly the unconfigured application's cost.
    """
    log = logging.getLogger("shmdiag")
    saved = log.propagate
    log.propagate = False
    yield
    log.propagate = saved


@pytest.fixture
def per_op(benchmark):
    """Call as ``per_op(n)`` after ``benchmark.pedantic(...)``: n operations were timed per round."""

    def note(ops: int, unit: str = "event") -> None:
        benchmark.extra_info["ops_per_round"] = ops
        benchmark.extra_info["op"] = unit
        stats = getattr(benchmark, "stats", None)
        if stats is not None:  # None under --benchmark-disable
            median = stats.stats.median
            benchmark.extra_info["median_ns_per_op"] = round(median / ops * 1e9, 1)
            _SUMMARY.append((benchmark.name, median / ops * 1e9, ops))

    return note


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["shmdiag"] = machine()


def pytest_terminal_summary(terminalreporter):
    if not _SUMMARY:
        return
    tr = terminalreporter
    tr.section("shmdiag: median per operation")
    for name, ns, ops in _SUMMARY:
        shown = f"{ns:12,.0f} ns" if ns < 1e6 else f"{ns / 1e6:12,.2f} ms"
        tr.write_line(f"{name:<60} {shown}   ({ops:,} per round)")


@pytest.fixture(scope="module")
def full_ring():
    """A FULL 1,000,000-event ring: record_message events, one error per ERROR_EVERY events and
    N_PEERS connected peers. Built once per module (about 1 s, most of it first-touch page faults)."""
    rec = Recorder(max_events=FULL_RING)
    try:
        peers = [f"peer-{i}" for i in range(N_PEERS)]
        for i, p in enumerate(peers):
            rec.record_peer_connection(p, f"203.0.113.{i}:8333")
        chunk = ERROR_EVERY - 1
        done = N_PEERS
        while done < FULL_RING:
            n = min(chunk, FULL_RING - done)
            fill_messages(rec, n)
            done += n
            if done < FULL_RING:
                rec.record_error(peers[done % N_PEERS], TimeoutError("no pong in 20s"), "ping")
                done += 1
        stats = rec.get_stats()
        assert stats.total_events == FULL_RING
        assert rec.health_check().event_count == FULL_RING  # every slot holds a retained event
        assert stats.active_peers == N_PEERS
        yield rec
    finally:
        rec.close()
