"""A one-shot ``shmdiag health`` judged from timestamps costs the window's events, not the ring's.

``python -m pytest bench/test_bench_health.py -q``. A full ring of 4,000,000 events (1,000,000
when /dev/shm has less than ~1.2 GB free), older than the window (WINDOW s), whose writer (this
process) then records RECENT INFO events: its counters straddle the window's start, so a
one-shot check (a fresh Inspector, no history) counts the window's error rate from the retained
events (``core/recent.py``). Compared, in interleaved rounds of one run:

* ``window``: attach + ``health_check(WINDOW)``, the path above;
* ``creation``: attach + ``health_check(3600)``, the ring younger than the window (no slot read);
* ``full scan``: what reading every retained slot's severity costs (``reader.retained_slots``),
  the naive alternative.
"""

from __future__ import annotations

import os
import statistics
import time

import pytest
from _benchlib import NOTES, build_ring

from shmdiag import DiagnosticEvent, Inspector, Severity
from shmdiag.core import reader

LARGE = 4_000_000 if os.statvfs("/dev/shm").f_bavail * os.statvfs("/dev/shm").f_frsize > 1_200_000_000 else 1_000_000
WINDOW = 30.0
RECENT = 1000
ROUNDS = 15


@pytest.fixture(scope="module")
def ring():
    rec = build_ring(LARGE)
    try:
        created = time.time_ns()  # just after the fill: the fill lies before the window once WINDOW has passed
        while time.time_ns() - created < (WINDOW + 1) * 1e9:
            time.sleep(0.2)
        for i in range(RECENT):
            rec.record_event(DiagnosticEvent("progress", str(i), Severity.INFO))
        yield rec
    finally:
        rec.close()


def _timed(fn, n: int = 5) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


@pytest.mark.benchmark(group="health: one-shot window")
def test_one_shot_window_reads_only_the_window(benchmark, per_op, ring):
    def window():
        with Inspector.attach(ring.name) as ins:
            return ins.health_check(WINDOW)

    def creation():
        with Inspector.attach(ring.name) as ins:
            return ins.health_check(3600)

    def full():
        with Inspector.attach(ring.name) as ins:
            return reader.retained_slots(ins._seg)

    h = window()
    assert h.window_source == "timestamps" and h.window_rated_events == RECENT, h
    assert creation().window_source == "creation"

    def loop():
        for _ in range(5):
            window()

    benchmark.pedantic(loop, rounds=ROUNDS, warmup_rounds=1)
    per_op(5, "check")
    if getattr(benchmark, "stats", None) is None:
        return
    rw, rf, tw, tc, tf = [], [], [], [], []
    for k in range(ROUNDS):
        order = [("w", window), ("c", creation), ("f", full)]
        got = {name: _timed(fn) for name, fn in (order if k % 2 else order[::-1])}
        rw.append(got["w"] / got["c"])
        rf.append(got["w"] / got["f"])
        tw.append(got["w"])
        tc.append(got["c"])
        tf.append(got["f"])
    med = statistics.median
    benchmark.extra_info.update(ring_events=LARGE, x_creation=round(med(rw), 3), x_full_scan=round(med(rf), 4),
                                window_ms=round(med(tw) * 1e3, 2), creation_ms=round(med(tc) * 1e3, 2),
                                full_scan_ms=round(med(tf) * 1e3, 2))
    NOTES.append(f"one-shot health, window judged from timestamps ({RECENT} events in it) on a {LARGE:,}-event "
                 f"ring: {med(tw) * 1e3:.2f} ms = {med(rw):.2f}x the same check with no slot read "
                 f"({med(tc) * 1e3:.2f} ms), {med(rf):.4f}x a scan of every retained slot ({med(tf) * 1e3:.1f} ms); "
                 f"median of {ROUNDS} interleaved rounds")
