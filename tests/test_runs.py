"""Runs of sequence numbers: a writer claims several with one fetch_add (``_layout.RUN_MAX``),
sized to its recent rate, and uses a run for at most ``RUN_TTL_NS``. Nothing may be lost,
repeated or held back by it: not by a writer that goes quiet in the middle of a run, not by
one that is lapped, not for ``tail -f``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson
import pytest

from shmdiag.core import layout as L
from shmdiag.core.follow import _RUN_DONE_NS, Follower, history

from helpers import LineReader, check_intact, end_mid_run, popen_writer, reconcile, run_of, start_tail, write

BIG = 1 << 16  # run_max(BIG) == RUN_MAX
TTL = _RUN_DONE_NS / 1e9  # a run's life, plus the resolution of the clock writers time it with


def test_run_length_grows_with_the_ring():
    assert [L.run_max(c) for c in (1, 100, 2047, 2048, 4096, 16_384, BIG, 1 << 20)] == [1, 1, 1, 2, 4, 16, 64, 64]


def _burst(rec, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(100):
            rec.record_message("fast", "inv", "inbound", 37)


def test_a_fast_writer_claims_long_runs_and_a_slow_one_single_seqs(make_recorder):
    rec = make_recorder(BIG)
    _burst(rec, 5 * TTL)
    first, n, used = end_mid_run(rec)
    assert n == L.RUN_MAX

    # Quiet for longer than a run lives: the rest of the run is given up. The writer only
    # finds out after taking the next seq of its old run (the check comes after the slot is
    # taken), so it puts that slot back as it was; nobody claimed after the run, so the rest of
    # it, that seq included, goes back to the head and the next run starts there: no seq unused.
    raw = lambda i: rec._seg.slots[i: i + 1].view("u1").tobytes()  # noqa: E731  (padding too)
    # The first slot past both the run and the 4 seqs the slow writer will take (when the run
    # was nearly used up, those 4 go past its end, and the slot right after it is theirs).
    past = max(first + n, first + used + 4) % BIG
    before = raw(past)
    _, cursor = history(rec._seg, 0)
    follower = Follower(rec._seg, cursor)
    seqs = []
    for _ in range(4):
        time.sleep(2.5 * TTL)
        rec.record_message("slow", "ping", "outbound", 8)
        seqs.append(rec.get_events(1)[0].seq)
    assert seqs[0] == first + used, "the stale run's rest was given back and reused"
    assert seqs == list(range(seqs[0], seqs[0] + 4)), "a slow writer claims one seq at a time"
    assert run_of(rec) == (seqs[-1], 1)
    assert raw(past) == before, "nothing written past the seqs used"
    assert int(rec._seg.shards["unused"].sum()) == 0

    # A follower goes straight past the unused seqs: nothing held back, no gap reported.
    out = follower.poll()
    assert [e.seq for e in out] == seqs and all(e.peer_id == "slow" for e in out)
    assert (follower.delivered, follower.overwritten, follower.unreadable) == (4, 0, 0)


def test_a_clear_starts_a_new_run(make_recorder):
    """Events after a clear must never take seqs of a run claimed before it: those are below
    the new generation's base, and would vanish from the stats."""
    rec = make_recorder(BIG)
    _burst(rec, 3 * TTL)
    first, n = run_of(rec)
    rec.clear_events()
    rec.record_message("p", "inv", "inbound", 1)
    assert rec.get_stats().total_events == 1
    assert [e.metadata["size"] for e in rec.get_events(0)] == [1]
    assert run_of(rec)[0] >= first + n


@pytest.mark.slow
@pytest.mark.multiprocess
def test_many_writers_with_runs_lap_the_ring_and_the_books_balance(tmp_path: Path, make_recorder):
    """Four writer processes of two threads each, fast enough to claim long runs and to lap a
    64Ki ring several times: every retained event intact and once, each thread's events in
    order, and recorded == retained + overwritten + lost + abandoned + expired."""
    rec = make_recorder(BIG, max_writers=16)
    go = tmp_path / "go"
    procs = [popen_writer(rec.name, w, 2, 40_000, go) for w in range(4)]
    try:
        rec.record_message("w9t9", "m9.9.1", "outbound", 1)  # the creator holds a run too
        go.touch()
        for p in procs:
            assert p.wait(timeout=120) == 0, p.stderr.read()
    finally:
        for p in procs:
            p.kill()
    events = rec.get_events(0)
    check_intact(events)
    assert len(events) > BIG * 9 // 10, "unused ends of runs cost only a few slots"
    acct = rec.accounting()
    assert acct.recorded == 4 * 2 * 40_000 + 1
    reconcile(rec)
    # The ring really was shared in runs: long stretches of consecutive seqs from one process.
    pids = [e.pid for e in events]
    stretches = 1 + sum(a != b for a, b in zip(pids, pids[1:], strict=False))
    assert stretches < len(events) / 8, stretches


@pytest.mark.multiprocess
def test_tail_follow_is_not_held_back_by_a_writer_gone_quiet_mid_run(make_recorder, procs):
    """A writer process that recorded fast (long runs) and then went quiet, still alive, holds
    the unused rest of its run. `tail -f` must deliver other writers' later events anyway, and
    report no gap for seqs that were never events."""
    rec = make_recorder(BIG)
    tail, reader = start_tail(rec.name, procs, "--json")
    # ~20 events a millisecond (runs of 64), then quiet, alive, in the middle of a run.
    quiet = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys, time
            sys.path.insert(0, sys.argv[2])
            from helpers import end_mid_run
            from shmdiag import Recorder
            rec = Recorder.attach(sys.argv[1])
            end = time.monotonic() + 0.2
            while time.monotonic() < end:
                for _ in range(20):
                    rec.record_message("quiet", "inv", "inbound", 37)
                time.sleep(0.001)
            first, n, used = end_mid_run(rec)
            print(rec.accounting().recorded, first, n, used, flush=True)
            time.sleep(60)
            """), rec.name, str(Path(__file__).parent)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(quiet)
    line = LineReader(quiet).lines_until(lambda line, _: True, timeout=60)[0]
    recorded, first, n, used = (int(x) for x in line.split())
    assert n > 1 and 0 < used < n

    write(rec.name, [["event", "marker", "after-the-quiet-one", 1, ""]])
    lines = reader.lines_until(lambda line, _: b"after-the-quiet-one" in line, timeout=60)
    got = [orjson.loads(x) for x in lines]
    assert not [g for g in got if "skipped" in g], [g for g in got if "skipped" in g]
    # every event of the quiet writer: the ring held only the first marker besides
    assert sum(g.get("pid") == quiet.pid for g in got) == recorded - 1
    assert got[-1]["seq"] >= first + n
