"""Many processes on one ring: what must hold, each tested with real processes.

Writers encode who they are and what they are writing into several fields of every event, so a
torn or mixed record (fields from two different events) is caught by cross-checking them.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from pathlib import Path

import pytest

from shmdiag import Recorder
from shmdiag.core import layout as L

from helpers import check_intact, mp_writer, popen_writer, reconcile


def wait_writing(rec: Recorder, procs: list[subprocess.Popen], timeout: float = 60) -> None:
    """Wait until every process owns a writer shard, i.e. has recorded."""
    deadline = time.monotonic() + timeout
    want = {p.pid for p in procs}
    while time.monotonic() < deadline:
        owners = {int(w) >> 8 for w in rec._seg.shards["owner"] if int(w) & 0xFF == L.SH_ACTIVE}
        if want <= owners:
            return
        time.sleep(0.02)
    raise AssertionError("writers did not start")


class _Alarm:
    """Fail, rather than hang, if a read blocks."""

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds

    def __enter__(self):
        def boom(*_):
            raise TimeoutError(f"blocked for more than {self.seconds}s")

        self.old = signal.signal(signal.SIGALRM, boom)
        signal.alarm(self.seconds)

    def __exit__(self, *exc):
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.old)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_many_writers_many_threads(tmp_path):
    """1. 8+ processes (unrelated `python -c` ones and multiprocessing ones), 3 threads each."""
    writers, threads, n = 8, 3, 3000
    go = tmp_path / "go"
    with Recorder(max_events=20_000) as rec:
        procs = [popen_writer(rec.name, w, threads, n, go) for w in range(5)]
        ctx = mp.get_context("spawn")
        mps = [ctx.Process(target=mp_writer, args=(rec.name, w, threads, n, str(go))) for w in range(5, writers)]
        for p in mps:
            p.start()
        time.sleep(0.5)
        go.touch()
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err.decode()
        for p in mps:
            p.join(120)
            assert p.exitcode == 0
        stats = rec.get_stats()
        assert stats.total_events == writers * threads * n
        assert stats.events_by_type == {"probe": writers * threads * n // 4, "message": writers * threads * n * 3 // 4}
        events = rec.get_events(0)
        per = check_intact(events)
        assert {w for w, _ in per} <= set(range(writers))
        pids = {e.pid for e in events}
        assert os.getpid() not in pids and len(pids) >= 2
        reconcile(rec)
        h = rec.health_check()
        assert h.total_events == writers * threads * n
        assert h.events_overwritten > 0
        assert h.writers_dead == 0, h


@pytest.mark.multiprocess
def test_one_writer_fills_whole_capacity(tmp_path):
    """2. max_events is the total capacity: one active writer fills all of it."""
    go = tmp_path / "go"
    go.touch()
    with Recorder(max_events=1000) as rec:
        p = popen_writer(rec.name, 0, 1, 1000, go)
        assert p.wait(60) == 0
        events = rec.get_events(0)
        assert len(events) == 1000
        assert len({e.pid for e in events}) == 1
        check_intact(events)
    with Recorder(max_events=3) as small:
        p = popen_writer(small.name, 0, 1, 5, go)
        assert p.wait(60) == 0
        got = small.get_events(0)
        assert [e.metadata.get("i", e.metadata.get("size")) for e in got] == [2, 3, 4]
        assert small.get_stats().total_events == 5


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("capacity", [4096, 1 << 16])  # runs of 4 and of 64 sequence numbers
def test_sigkilled_writers_never_block_or_corrupt(tmp_path, capacity):
    """3. Writers SIGKILLed mid-stream: the others finish, nothing torn is returned, counts reconcile."""
    go = tmp_path / "go"
    go.touch()
    with Recorder(max_events=capacity) as rec:
        survivors = [popen_writer(rec.name, w, 2, 20_000, go) for w in range(3)]
        victims = [popen_writer(rec.name, 10 + k, 1, 10_000_000, go) for k in range(4)]
        wait_writing(rec, victims)
        for v in victims:
            time.sleep(0.1)
            os.kill(v.pid, signal.SIGKILL)
            v.wait()
        for p in survivors:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err.decode()
        with _Alarm(30):
            events = rec.get_events(0)
            check_intact(events)
            h = rec.health_check()
        assert h.writers_dead == len(victims), h
        assert h.status != "healthy"
        assert "died" in h.message
        per_writer = defaultdict(int)
        for e in rec.get_events(0):
            per_writer[int(e.peer_id[1:].split("t")[0])] += 1
        reconcile(rec)
        stats = rec.get_stats()
        assert stats.total_events >= 3 * 2 * 20_000


def _die_mid_record(name: str, phase: int) -> None:
    """Record a few events, then do what a writer does up to `phase` of a record and die there."""
    rec = Recorder.attach(name)
    for i in range(5):
        rec.record_message("victim", "inv", "inbound", i)
    seg, nat = rec._seg, rec._seg.native
    i = rec._shards.index
    seq = nat.fetch_add(seg.header_word("head"), 1)
    nat.store(seg.shard_word(i, "jmeta"), 2 | (0 << 8))  # type "message", DEBUG
    nat.store(seg.shard_word(i, "journal"), L.j_make(seq, L.PH_CLAIMED))
    woff = seg.slot_word(seq % seg.capacity)
    nat.store(seg.shard_word(i, "jprev"), nat.load(woff))
    assert nat.cas(woff, nat.load(woff), L.w_make(seq, 0, L.ST_BUSY))
    if phase == L.PH_OWNED:
        nat.store(seg.shard_word(i, "journal"), L.j_make(seq, L.PH_OWNED))
        seg.slots[seq % seg.capacity]["ts_ns"] = 12345  # half a payload
        seg.slots[seq % seg.capacity]["lens"][1] = 200
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.multiprocess
@pytest.mark.parametrize("phase", [L.PH_CLAIMED, L.PH_OWNED])
def test_half_written_record_is_never_returned(phase):
    """3. A writer killed inside a record: the record is never read, the slot is recovered, the event
    is counted once as abandoned, and health reports the dead writer."""
    with Recorder(max_events=64) as rec:
        rec.record_message("creator", "ping", "inbound", 8)
        p = mp.get_context("spawn").Process(target=_die_mid_record, args=(rec.name, phase))
        p.start()
        p.join(60)
        assert p.exitcode == -signal.SIGKILL
        with _Alarm(10):
            events = rec.get_events(0)
        assert [e.peer_id for e in events] == ["creator"] + ["victim"] * 5
        h = rec.health_check()  # reaps the dead writer
        assert h.writers_dead == 1 and h.events_abandoned == 1, h
        assert h.status == "error" and "died" in h.message  # 1 of 7 events abandoned: >= 10%
        acct = rec.accounting()
        assert acct.recorded == 7 and acct.abandoned == 1
        reconcile(rec)
        # the slot is usable again: a full lap of new events is all retained
        for i in range(64):
            rec.record_message("after", "tx", "outbound", i)
        assert [e.metadata["size"] for e in rec.get_events(0)] == list(range(64))
        reconcile(rec)


@pytest.mark.multiprocess
def test_attachers_exiting_never_destroy_the_segment(tmp_path):
    """4. Processes that attach and exit (closing or not) leave the ring alone; the creator's close
    is silent: no resource-tracker warning, no traceback."""
    script = tmp_path / "creator.py"
    script.write_text(textwrap.dedent(f"""
        import multiprocessing as mp, os, subprocess, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from shmdiag import Recorder
        from helpers import attach_and_exit
        if __name__ == "__main__":
            rec = Recorder(max_events=100)
            for method in ("spawn", "fork", "forkserver"):
                for close in (True, False):
                    p = mp.get_context(method).Process(target=attach_and_exit, args=(rec.name, close))
                    p.start(); p.join(); assert p.exitcode == 0
            code = ("import sys; from shmdiag import Recorder; r = Recorder.attach(sys.argv[1]); "
                    "r.record_message('x', 'ping', 'inbound', 8)")
            subprocess.run([sys.executable, "-c", code, rec.name], check=True)
            assert os.path.exists("/dev/shm/" + rec.name), "an attacher destroyed the ring"
            stats = rec.get_stats()
            assert stats.total_events == 7, stats
            assert stats.active_peers == 6, stats
            name = rec.name
            rec.close()
            assert not os.path.exists("/dev/shm/" + name)
            print("ok")
    """))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
    assert r.stderr == "", r.stderr


@pytest.mark.multiprocess
def test_fork_child_writes_through_inherited_recorder():
    """A recorder inherited across fork writes with the child's pid into a shard of its own,
    and the child's exit neither unlinks the ring nor counts as a dead writer."""
    with Recorder(max_events=100) as rec:
        rec.record_message("parent", "ping", "inbound", 8)
        p = mp.get_context("fork").Process(target=rec.record_message, args=("child", "pong", "outbound", 8))
        p.start()
        p.join(30)
        assert p.exitcode == 0
        events = rec.get_events(0)
        assert [(e.peer_id, e.pid) for e in events] == [("parent", os.getpid()), ("child", p.pid)]
        h = rec.health_check()
        assert h.writers_dead == 0 and h.status == "healthy", h


def test_segment_mode_is_owner_only():
    """5. Created readable and writable by its owner only."""
    old = os.umask(0)
    try:
        with Recorder(max_events=10) as rec:
            assert os.stat(f"/dev/shm/{rec.name}").st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


@pytest.mark.multiprocess
def test_stopped_writer_never_blocks_reads(tmp_path):
    """6. A SIGSTOPped writer (very likely mid-record) never makes a read, or another writer, wait."""
    go = tmp_path / "go"
    go.touch()
    with Recorder(max_events=256) as rec:
        stopped = [popen_writer(rec.name, 20 + k, 1, 10_000_000, go, close=False) for k in range(3)]
        try:
            wait_writing(rec, stopped)
            for p in stopped:
                os.kill(p.pid, signal.SIGSTOP)
            with _Alarm(20):
                for _ in range(20):
                    check_intact(rec.get_events(0))
                    rec.get_stats()
                    rec.health_check()
                    rec.export_events()
                # other writers go on: the stopped writers' busy slots cost counted losses at worst
                other = popen_writer(rec.name, 1, 2, 5000, go)
                out, err = other.communicate(timeout=60)
                assert other.returncode == 0, err.decode()
            check_intact(rec.get_events(0))
            h = rec.health_check()
            assert h.writers_alive >= 3
        finally:
            for p in stopped:
                os.kill(p.pid, signal.SIGKILL)
                os.kill(p.pid, signal.SIGCONT)
                p.wait()


def test_busy_slot_is_skipped_by_readers_and_writers():
    """6, deterministically: a slot left busy (its writer stopped inside it) is skipped by readers,
    and writers that land on it a lap later drop their event and count it as lost."""
    with Recorder(max_events=4) as rec:
        for i in range(4):
            rec.record_message("p", "inv", "inbound", i)
        seg = rec._seg
        w = seg.native.load(seg.slot_word(1))
        seg.native.store(seg.slot_word(1), (w & ~3) | L.ST_BUSY)  # as if its writer stopped mid-record
        with _Alarm(10):
            assert [e.metadata["size"] for e in rec.get_events(0)] == [0, 2, 3]
            for i in range(4, 12):
                rec.record_message("p", "inv", "inbound", i)
        assert [e.metadata["size"] for e in rec.get_events(0)] == [8, 10, 11]
        acct = rec.accounting()
        assert acct.lost == 2  # events 5 and 9 hit the busy slot
        reconcile(rec, hijacked=1)  # event 1, whose committed slot this test turned busy
        assert rec.health_check().status in ("warning", "degraded", "error")


@pytest.mark.multiprocess
@pytest.mark.parametrize("capacity", [1000, 1 << 16])  # one sequence number at a time, runs of 64
def test_clear_from_another_process_while_writing(tmp_path, capacity):
    """clear_events() from any process: everyone sees an empty ring and zeroed stats; writers that
    were recording carry on and their later events count."""
    go = tmp_path / "go"
    go.touch()
    with Recorder(max_events=capacity) as rec:
        writer = popen_writer(rec.name, 0, 1, 10_000_000, go, close=False)
        try:
            wait_writing(rec, [writer])
            code = ("import sys; from shmdiag import Recorder; r = Recorder.attach(sys.argv[1]); "
                    "r.clear_events(); r.close()")
            subprocess.run([sys.executable, "-c", code, rec.name], check=True, timeout=60)
            writer.kill()
            writer.wait()
            rec.health_check()  # settles the killed writer's last event
            # what is there now was recorded after the clear, and agrees with itself
            events = rec.get_events(0)
            stats = rec.get_stats()
            check_intact(events)
            acct = rec.accounting()
            assert stats.total_events == acct.recorded
            assert stats.total_events < 10_000_000
            reconcile(rec)
        finally:
            writer.kill()
            writer.wait()
        rec.clear_events()
        assert rec.get_events(0) == [] and rec.get_stats().total_events == 0
        rec.record_message("again", "ping", "inbound", 8)
        assert rec.get_stats().total_events == 1
