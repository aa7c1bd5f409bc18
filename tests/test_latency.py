"""Timed spans and latency percentiles: within 2% of the exact percentiles, across processes,
however many events the ring has overwritten."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import time

import numpy as np
import pytest

from shmdiag import LatencyStats, Recorder, Severity
from shmdiag.core import layout as L


def assert_close(got: float, exact: float, rel: float = 0.02) -> None:
    assert abs(got - exact) <= rel * exact, (got, exact)


def samples(seed: int, n: int) -> np.ndarray:
    """Durations in seconds with a long tail, like network round trips (median ~50 ms)."""
    rng = np.random.default_rng(seed)
    return rng.lognormal(mean=math.log(0.05), sigma=1.0, size=n)


def check_against_exact(st: LatencyStats, xs: np.ndarray) -> None:
    assert st.count == len(xs)
    assert st.max == pytest.approx(float(xs.max()), rel=1e-6)  # exact (ns resolution)
    assert st.mean == pytest.approx(float(xs.mean()), rel=1e-6)
    for q, got in ((50, st.p50), (90, st.p90), (99, st.p99)):
        assert_close(got, float(np.percentile(xs, q, method="lower")), 0.01)  # the rank it picks
        assert_close(got, float(np.percentile(xs, q)), 0.02)  # numpy's default, interpolated


def test_percentiles_within_two_percent_after_heavy_overwrite(make_recorder):
    r = make_recorder(50)
    xs = samples(1, 20_000)
    for x in xs:
        r.record_latency("handshake", float(x), peer_id="p")
    check_against_exact(r.get_latency_stats()["handshake"], xs)
    assert len(r.get_events(limit=0)) == 50


def test_operations_are_kept_apart(rec):
    rec.record_latency("a", 0.001)
    rec.record_latency("b", 2.0)
    rec.record_latency("b", 4.0)
    st = rec.get_latency_stats()
    assert set(st) == {"a", "b"}
    assert st["a"].count == 1 and st["b"].count == 2
    assert st["b"].mean == pytest.approx(3.0) and st["b"].max == pytest.approx(4.0)
    assert_close(st["a"].p99, 0.001, 0.01)


def test_span_times_the_block_and_records_an_event(rec):
    with rec.span("verify", peer_id="p9"):
        time.sleep(0.02)
    st = rec.get_latency_stats()["verify"]
    assert st.count == 1 and st.errors == 0 and st.max >= 0.02
    ev = rec.get_events(limit=1)[0]
    assert ev.event_type == "latency" and ev.peer_id == "p9"
    assert ev.metadata["op"] == "verify" and ev.metadata["seconds"] == pytest.approx(st.max)


def test_an_exception_in_a_span_is_an_error_and_is_reraised(rec):
    with pytest.raises(ConnectionResetError):
        with rec.span("handshake", peer_id="p1"):
            raise ConnectionResetError("reset by peer")
    with rec.span("handshake", peer_id="p1"):
        pass
    st = rec.get_latency_stats()["handshake"]
    assert (st.count, st.errors) == (1, 1)  # the failure is counted, not timed
    ev = [e for e in rec.get_events(limit=0) if e.severity == Severity.ERROR]
    assert len(ev) == 1 and ev[0].error == "ConnectionResetError: reset by peer"
    assert rec.get_peer_diagnostics()[0].error_count == 1
    assert rec.get_stats().error_rate == pytest.approx(0.5)


def test_keyboard_interrupt_passes_through_a_span_unrecorded(rec):
    with pytest.raises(KeyboardInterrupt):
        with rec.span("op"):
            raise KeyboardInterrupt
    assert rec.get_latency_stats() == {}


@pytest.mark.parametrize("bad", [-0.001, float("nan"), float("inf"), 1e10])
def test_bad_durations_raise_value_error_and_record_nothing(rec, bad):
    with pytest.raises(ValueError, match="seconds"):
        rec.record_latency("op", bad)
    assert rec.get_stats().total_events == 0


@pytest.mark.parametrize("args, exc", [(("op", "1"), TypeError), (("op", True), TypeError), (("", 1.0), ValueError),
                                       ((3, 1.0), TypeError), (("op", 1.0, None), TypeError)])
def test_bad_arguments(rec, args, exc):
    with pytest.raises(exc):
        rec.record_latency(*args)
    assert rec.get_stats().total_events == 0


@pytest.mark.parametrize("args, exc", [(("",), ValueError), ((None,), TypeError), (("op", 5), TypeError)])
def test_bad_span_arguments_raise_before_the_block_runs(rec, args, exc):
    with pytest.raises(exc):
        rec.span(*args)
    assert rec.get_stats().total_events == 0


def test_zero_and_huge_durations(rec):
    rec.record_latency("op", 0)
    rec.record_latency("op", 3 * 3600.0)  # beyond the histogram's top bucket: max stays exact
    st = rec.get_latency_stats()["op"]
    assert st.count == 2 and st.max == pytest.approx(10800.0)
    assert st.p50 == 0.0 and st.p99 <= st.max


def test_native_and_python_bucket_functions_agree(rec):
    rng = np.random.default_rng(7)
    values = sorted({0, 1, 2, 3, 999, 1000, 1001, *[int(v) for v in rng.integers(1, 10**13, 200)],
                     *[round(L.LATENCY_GAMMA**k) for k in range(1, 1400, 37)]})
    seg = rec._seg
    for v in values:
        rec.clear_events()
        rec.record_latency("op", v / 1e9)
        bank = seg.ops["banks"][:, (seg.load("head") >> L.SEQ_BITS) & 1]
        row = next(j for j in range(L.OP_SLOTS) if bank[j]["count"])
        hit = np.flatnonzero(bank[row]["buckets"])
        assert list(hit) == [L.latency_bucket(round(v / 1e9 * 1e9))], v


def test_clear_resets_latency_and_later_samples_count_alone(rec):
    for _ in range(100):
        rec.record_latency("op", 1.0)
    for _ in range(3):  # both banks, each reused
        rec.clear_events()
        assert rec.get_latency_stats() == {}
        rec.record_latency("op", 0.5)
        st = rec.get_latency_stats()["op"]
        assert st.count == 1 and st.max == pytest.approx(0.5)


def test_operations_beyond_the_registry_are_pooled(rec):
    for i in range(L.OP_SLOTS + 10):
        rec.record_latency(f"op{i}", 0.001)
    st = rec.get_latency_stats()
    assert sum(s.count for s in st.values()) == L.OP_SLOTS + 10
    assert st[L.OTHER_OP].count == 11


def _latency_writer(name: str, seed: int, n: int, barrier) -> None:
    rec = Recorder.attach(name)
    xs = samples(seed, n)
    barrier.wait()
    for x in xs:
        rec.record_latency("rpc", float(x))
    rec.close()


@pytest.mark.multiprocess
def test_percentiles_across_processes(make_recorder):
    r = make_recorder(100)
    ctx = mp.get_context("spawn")
    seeds, n = [11, 12, 13], 5000
    barrier = ctx.Barrier(len(seeds))
    procs = [ctx.Process(target=_latency_writer, args=(r.name, s, n, barrier)) for s in seeds]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    xs = np.concatenate([samples(s, n) for s in seeds])
    with Recorder.attach(r.name) as inspector:
        check_against_exact(inspector.get_latency_stats()["rpc"], xs)


def test_a_clear_takes_over_the_lock_of_a_dead_clearer(rec):
    """A clearer SIGKILLed inside clear_events leaves the lock word behind: pid and start time
    name a process that is gone (here: a real pid with the wrong start time, as after reuse)."""
    seg = rec._seg
    stale = (os.getppid() << 32) | 12345  # a live pid, but not the process that took the lock
    seg.native.store(seg.header_word("clear_lock"), stale)
    rec.record_latency("op", 0.1)
    rec.clear_events()  # does not wait 10 s and fail
    assert rec.get_latency_stats() == {}
    assert seg.native.load(seg.header_word("clear_lock")) == 0
