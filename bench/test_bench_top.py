"""What ``top``'s pane of the latest warnings/errors costs (issue 12), on a 1,000,000-event ring.

``python -m pytest bench/test_bench_top.py -q``. The counters-only sample (what top read before
the pane) against a refresh with the pane, idle; the pane's start when the newest warning is a
whole ring back (its worst case: every slot word read once); and a refresh after 100,000 new
events of which 0.1% are errors (the follower reads their slot words and decodes the errors).
The figures to read are in the summary (NOTES): ratios and events/s measured in this run.
"""

from __future__ import annotations

import time

import pytest
from _benchlib import NOTES, fill_messages

from shmdiag import Inspector, Recorder
from shmdiag.cli import top as _top

SIZE = 1_000_000
NEW = 100_000


@pytest.fixture(scope="module")
def ring():
    rec = Recorder(max_events=SIZE)
    try:
        rec.record_error("peer-0", TimeoutError("no pong in 20s"), "ping")  # the only warning+, oldest
        fill_messages(rec, SIZE - 1)
        yield rec
    finally:
        rec.close()


def _median(f, n: int = 15) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return sorted(times)[n // 2]


@pytest.mark.benchmark(group="top: warnings pane")
def test_top_pane_cost(benchmark, ring):
    with Inspector.attach(ring.name) as ins:
        t0 = time.perf_counter()
        sampler = _top.Sampler(ins)
        sampler.take()  # the pane's start: looks back for the newest warnings
        start = time.perf_counter() - t0
        assert [e.event_type for e in sampler.problems] == ["error"]
        # Interleaved, so that load from other processes hits both alike.
        pairs = [(_median(lambda: _top.sample(ins), 3), _median(sampler.take, 3)) for _ in range(15)]
        bare = sorted(p[0] for p in pairs)[7]
        idle = sorted(p[1] for p in pairs)[7]
        ratio = sorted(p[1] / p[0] for p in pairs)[7]
        benchmark.pedantic(sampler.take, rounds=15, iterations=1)

        # Catching up after NEW events, 0.1% of them errors.
        def burst() -> None:
            for i in range(NEW // 1000):
                fill_messages(ring, 999)
                ring.record_error("peer-1", TimeoutError(f"burst {i}"), "ping")

        catch = []
        for _ in range(3):
            burst()
            t0 = time.perf_counter()
            sampler.take()
            catch.append(time.perf_counter() - t0 - bare)
        assert sampler.problems[-1].error.endswith(f"burst {NEW // 1000 - 1}")
    per_s = NEW / sorted(catch)[1]
    benchmark.extra_info.update(start_s=start, bare_ms=bare * 1e3, idle_ms=idle * 1e3, follow_events_per_s=per_s)
    NOTES.append(f"top's warnings pane on a {SIZE:,}-event ring: start {start * 1e3:.0f} ms (newest warning a whole "
                 f"ring back); idle refresh with the pane / counters only: median ratio {ratio:.2f}x "
                 f"over 15 interleaved pairs; follows {per_s / 1e6:.1f} M events/s (0.1% errors)")
