"""Inspectors cost the same at any ring size (issue 11): ``ls``, ``health``, ``stats`` and
``top`` on a 10,000-event ring and on a 4,000,000-event one (1,000,000 when /dev/shm has less
than ~1.2 GB free; the id says which), both full, in one run.

``python -m pytest bench/test_bench_inspect.py -q``. Every benchmark attaches the way the
command does where it matters: ``ring_info`` (what ``ls`` does per ring) and ``attach+health``
(``shmdiag health``) map the ring afresh on every call, so pages a call touched are faulted in
again each time; ``health_check`` and ``get_stats`` run on an Inspector attached once (a
dashboard). The figure to read is ``x_small`` in ``extra_info`` (and the summary): the median
over 15 interleaved pairs of rounds of the large ring's time over the small ring's (both
rings exist for the whole module, so load that comes and goes hits both alike). ``top`` idle: ``shmdiag top`` in a
pseudo-terminal for 5 s on the large, idle ring, its CPU time from psutil.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import pexpect
import psutil
import pytest
from _benchlib import NOTES, build_ring

from shmdiag import Inspector
from shmdiag.core.rings import ring_info

SMALL = 10_000
LARGE = 4_000_000 if os.statvfs("/dev/shm").f_bavail * os.statvfs("/dev/shm").f_frsize > 1_200_000_000 else 1_000_000
SIZES = (SMALL, LARGE)
IDS = ("10k", "4m" if LARGE == 4_000_000 else "1m")
INNER = 100  # calls per round
TOP_SECONDS = 5.0

PAIRS = 15  # interleaved (small, large) rounds behind each ratio


@pytest.fixture(scope="module")
def rings():
    """Both full rings at once, so each ratio comes from interleaved rounds: on a shared
    machine, load that changes between two sequential benchmarks would otherwise be read as a
    difference between ring sizes."""
    made = {}
    try:
        for size in SIZES:
            made[size] = build_ring(size)
            assert made[size].get_stats().total_events == size
        yield made
    finally:
        for rec in made.values():
            rec.close()


@pytest.fixture(scope="module", params=SIZES, ids=IDS)
def full_ring(request, rings):
    return rings[request.param]


@pytest.fixture(scope="module")
def inspectors(rings):
    made = {size: Inspector.attach(rec.name) for size, rec in rings.items()}
    yield made
    for ins in made.values():
        ins.close()


@pytest.fixture
def inspector(full_ring, inspectors):
    return inspectors[full_ring.config.max_events]


def _paired_ratio(small_fn, large_fn) -> tuple[float, float, float]:
    """(median of per-pair large/small time ratios, small us/call, large us/call) over PAIRS
    interleaved rounds of INNER calls each, the order within a pair alternating."""
    ratios, small_t, large_t = [], [], []
    for k in range(PAIRS):
        times = {}
        for which, fn in (("s", small_fn), ("l", large_fn))[:: 1 if k % 2 else -1]:
            t = time.perf_counter()
            for _ in range(INNER):
                fn()
            times[which] = (time.perf_counter() - t) / INNER
        ratios.append(times["l"] / times["s"])
        small_t.append(times["s"])
        large_t.append(times["l"])
    return statistics.median(ratios), statistics.median(small_t) * 1e6, statistics.median(large_t) * 1e6


def _bench(benchmark, per_op, label: str, size: int, make_fn) -> None:
    """Time ``make_fn(size)`` with pytest-benchmark; on the large ring, also the interleaved
    ratio to the small ring (``extra_info["x_small"]``)."""
    fn = make_fn(size)

    def loop():
        for _ in range(INNER):
            fn()

    benchmark.pedantic(loop, rounds=20, warmup_rounds=1)
    per_op(INNER, "call")
    benchmark.extra_info["ring_events"] = size
    if size == SMALL or getattr(benchmark, "stats", None) is None:
        return
    ratio, small_us, large_us = _paired_ratio(make_fn(SMALL), fn)
    benchmark.extra_info.update(x_small=round(ratio, 3), small_us=round(small_us, 1), large_us=round(large_us, 1))
    NOTES.append(f"{label}: {size:,}-event ring / {SMALL:,}-event ring = {ratio:.2f}x "
                 f"(median of {PAIRS} interleaved pairs; {small_us:,.1f} -> {large_us:,.1f} us per call)")


@pytest.mark.benchmark(group="inspect: ls (ring_info)")
def test_ls_ring_info(benchmark, per_op, rings, full_ring):
    size = full_ring.config.max_events
    _bench(benchmark, per_op, "ls (ring_info, fresh mapping)", size,
           lambda n: lambda: ring_info(rings[n].name))
    info = ring_info(full_ring.name)
    # a full ring; a run given up after 10 ms can leave a few slots a lap behind (issue 11, "capacity")
    assert info.total_events == info.capacity == size and 0.99 * size <= info.retained <= size


@pytest.mark.benchmark(group="inspect: attach + health_check")
def test_attach_health(benchmark, per_op, rings, full_ring):
    size = full_ring.config.max_events

    def once(n: int):
        def run():
            with Inspector.attach(rings[n].name) as ins:
                return ins.health_check()
        return run

    _bench(benchmark, per_op, "attach + health_check (shmdiag health)", size, once)
    h = once(size)()
    assert h.total_events == size and 0.99 * size <= h.event_count <= size


@pytest.mark.benchmark(group="inspect: health_check")
def test_health_check(benchmark, per_op, full_ring, inspector, inspectors):
    size = full_ring.config.max_events
    _bench(benchmark, per_op, "health_check", size, lambda n: inspectors[n].health_check)
    assert 0.99 * size <= inspector.health_check().event_count <= size


@pytest.mark.benchmark(group="inspect: get_stats")
def test_get_stats(benchmark, per_op, full_ring, inspector, inspectors):
    size = full_ring.config.max_events
    _bench(benchmark, per_op, "get_stats", size, lambda n: inspectors[n].get_stats)
    assert inspector.get_stats().total_events == size


@pytest.mark.benchmark(group="inspect: top idle")
def test_top_idle_cpu(benchmark, full_ring):
    """``shmdiag top`` (1 s refresh) on the idle ring for TOP_SECONDS: the share of one core its
    process used, from psutil, after the first screen is drawn."""
    size = full_ring.config.max_events
    if size == SMALL:
        pytest.skip("measured on the large ring only")
    env = {**os.environ, "TERM": "xterm", "LANG": "C.UTF-8"}
    shares = []

    def run():
        child = pexpect.spawn(sys.executable, ["-m", "shmdiag", "top", full_ring.name], dimensions=(24, 80),
                              env=env, timeout=30)
        try:
            child.expect("retained")
            proc = psutil.Process(child.pid)
            c0, t0 = proc.cpu_times(), time.monotonic()
            deadline = t0 + TOP_SECONDS
            while time.monotonic() < deadline:  # keep the pty drained, as a terminal would
                try:
                    child.read_nonblocking(65536, timeout=0.2)
                except pexpect.TIMEOUT:
                    pass
            c1, t1 = proc.cpu_times(), time.monotonic()
            shares.append((c1.user + c1.system - c0.user - c0.system) / (t1 - t0))
            child.send("q")
            child.expect(pexpect.EOF)
        finally:
            child.close(force=True)

    benchmark.pedantic(run, rounds=1, iterations=1)
    share = shares[-1]
    benchmark.extra_info.update(ring_events=size, top_cpu_share=round(share, 5), seconds=TOP_SECONDS)
    NOTES.append(f"top idle on the {size:,}-event ring: {share:.2%} of a core over {TOP_SECONDS:g} s")
