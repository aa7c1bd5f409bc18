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
from _benchlib import FULL_RING, N_PEERS, NOTES, build_ring, machine

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
    tr = terminalreporter
    if _SUMMARY:
        tr.section("shmdiag: median per operation")
        for name, ns, ops in _SUMMARY:
            shown = f"{ns:12,.0f} ns" if ns < 1e6 else f"{ns / 1e6:12,.2f} ms"
            tr.write_line(f"{name:<60} {shown}   ({ops:,} per round)")
    if NOTES:
        tr.section("shmdiag: ratios and shares measured in this run")
        for line in NOTES:
            tr.write_line(line)


READ_SIZES = (1_000, 100_000, FULL_RING)
READ_IDS = ("1k", "100k", "1m")


@pytest.fixture(scope="module", params=READ_SIZES, ids=READ_IDS)
def ring(request):
    """A FULL ring of 1,000 / 100,000 / 1,000,000 events (record_message events, one error per
    ERROR_EVERY events, N_PEERS connected peers), built once per module and size: pytest groups the
    read benchmarks by size, so only one big ring exists at a time (1M: ~0.7 s to fill)."""
    size = request.param
    rec = build_ring(size)
    try:
        stats = rec.get_stats()
        assert stats.total_events == size
        assert rec.health_check().event_count == size  # every slot holds a retained event
        assert stats.active_peers == N_PEERS
        yield rec
    finally:
        rec.close()
