"""Recorder.set_batch: a process's record_message and span events staged and written in a row.
They must reach the ring whole and in call order, within max_delay of a quiet process, at close;
and a process killed with a batch pending has it counted as recorded and lost, books balanced."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from shmdiag import Inspector, Recorder, RecorderClosedError

from helpers import wait_for


def _seen(name: str) -> list[tuple[str, str, str]]:
    """What another process would read: (type, peer, message) of every retained event."""
    with Inspector.attach(name) as ins:
        return [(e.event_type, e.peer_id, e.message) for e in ins.get_events(0)]


def test_a_batch_is_written_when_full_and_before_any_other_event_in_call_order(make_recorder):
    rec = make_recorder(1000, collector=False)
    rec.set_batch(4, max_delay=60)
    rec.record_message("p1", "inv", "inbound", 1)
    with rec.span("ping", "p1"):
        pass
    rec.record_message("p1", "pong", "inbound", 2)
    assert _seen(rec.name) == []  # staged: nobody sees them yet
    rec.record_message("p2", "tx", "outbound", 3)  # the fourth: the batch is written
    assert [t for t, _, _ in _seen(rec.name)] == ["message", "latency", "message", "message"]
    rec.record_message("p3", "inv", "inbound", 4)
    rec.record_error("p3", "refused", "connect")  # not batched: what was staged goes first
    seen = _seen(rec.name)
    assert [(t, p) for t, p, _ in seen[-2:]] == [("message", "p3"), ("error", "p3")]
    stats = rec.get_stats()
    assert stats.total_events == 6 and stats.events_by_type == {"message": 4, "latency": 1, "error": 1}
    assert {d.peer_id: d.bytes_received for d in rec.get_peer_diagnostics()} == {"p1": 3, "p2": 0, "p3": 4}


def test_staged_events_carry_the_wall_clock_time_of_their_call(make_recorder):
    """A staged message is stamped at its call; a staged span at the end of its block, from the
    block's own monotonic reading and the batch's wall-minus-monotonic offset (one clock read
    saved). Either way the stamp lies between wall-clock readings taken around it."""
    rec = make_recorder(1000, collector=False)
    rec.set_batch(8, max_delay=60)
    marks = [time.time()]
    rec.record_message("p1", "inv", "inbound", 1)  # the batch's first event: its offset is read
    marks.append(time.time())
    time.sleep(0.02)
    with rec.span("ping", "p1"):
        time.sleep(0.02)
        marks.append(time.time())
    marks.append(time.time())
    with rec.span("ping", "p1"):
        pass
    marks.append(time.time())
    rec.flush()
    with Inspector.attach(rec.name) as ins:
        stamps = [e.timestamp.timestamp() for e in ins.get_events(0)]
    assert len(stamps) == 3
    us = 1e-6  # event times read back have microseconds
    for (lo, hi), ts in zip([(marks[0], marks[1]), (marks[2], marks[3]), (marks[3], marks[4])], stamps, strict=True):
        assert lo - us <= ts <= hi + us, (lo, ts, hi)


def test_a_quiet_process_writes_its_batch_within_max_delay(make_recorder):
    rec = make_recorder(1000, collector=False)
    rec.set_batch(32, max_delay=0.05)
    for i in range(3):
        rec.record_message("p1", "inv", "inbound", i)
    wait_for(lambda: len(_seen(rec.name)) == 3, timeout=10, what="the flusher to write the batch")


def test_flush_close_and_turning_batching_off_write_the_batch(make_recorder):
    rec = make_recorder(1000, collector=False)
    other = make_recorder(attach=rec.name)
    other.set_batch(16, max_delay=60)
    other.record_message("p1", "inv", "inbound", 1)
    other.flush()
    assert len(_seen(rec.name)) == 1
    other.record_message("p1", "inv", "inbound", 2)
    other.set_batch(0)  # off: the batch first, then every event at once
    assert len(_seen(rec.name)) == 2
    other.record_message("p1", "inv", "inbound", 3)
    assert len(_seen(rec.name)) == 3
    other.set_batch(16, max_delay=60)
    with other.span("ping", "p1"):
        pass
    other.close()
    assert [t for t, _, _ in _seen(rec.name)] == ["message"] * 3 + ["latency"]
    with pytest.raises(RecorderClosedError):
        other.flush()


@pytest.mark.parametrize("args, error", [((-1,), ValueError), ((1025,), ValueError), ((True,), TypeError),
                                         ((1.5,), TypeError), ((8, 0), ValueError), ((8, -1.0), ValueError),
                                         ((8, 61), ValueError), ((8, "1"), TypeError)])
def test_bad_batch_arguments_are_refused_and_change_nothing(make_recorder, args, error):
    rec = make_recorder(100, collector=False)
    with pytest.raises(error):
        rec.set_batch(*args)
    rec.record_message("p1", "inv", "inbound", 1)  # still written at once
    assert len(_seen(rec.name)) == 1


def _texts(name: str) -> list[tuple]:
    """Every retained event as far as its texts and size go (a span's duration aside)."""
    with Inspector.attach(name) as ins:
        return [(e.event_type, e.peer_id, e.truncated,
                 sorted((k, v) for k, v in e.metadata.items() if k != "seconds")) for e in ins.get_events(0)]


def test_a_batch_of_every_text_length_reads_back_as_the_same_events_written_at_once(make_recorder):
    """A batch packs each event's texts right after it, 8-byte aligned: peers and names of every
    length up to the staging limits and past them (written at once, after the batch), ASCII or
    not, must come back as the same calls made without batching do."""
    calls = []
    for n in range(1, 72):
        peer = ("é" * (n // 2) + "p" * (n % 2)) if n % 3 == 0 else f"{n:x}".rjust(n, "p")
        calls.append(("message", peer, "t" * (n % 20 + 1), "outbound" if n % 2 else "inbound", n))
        calls.append(("span", peer[: n % 7], "o" * (n % 36 + 1)))
    calls.append(("message", "p", "inv", "inbound", 1))
    plain, batched = make_recorder(1000, collector=False), make_recorder(1000, collector=False)
    batched.set_batch(1024, max_delay=60)
    for rec in (plain, batched):
        for call in calls:
            if call[0] == "message":
                rec.record_message(*call[1:])
            else:
                with rec.span(call[2], call[1]):
                    pass
    assert len(_seen(batched.name)) == len(calls) - 1  # the texts past the limits went at once
    batched.flush()
    assert _texts(batched.name) == _texts(plain.name)
    assert len(_texts(plain.name)) == len(calls)


KILLED_WITH_A_BATCH = textwrap.dedent(
    """
    import sys, time
    from shmdiag import Recorder
    rec = Recorder.attach(sys.argv[1])
    rec.record_message("w", "version", "outbound", 126)   # written: not batched yet
    rec.set_batch(64, max_delay=60)
    for i in range(10):
        rec.record_message("w", "inv", "inbound", 37)
    for i in range(5):
        with rec.span("ping", "w"):
            pass
    print("ready", flush=True)
    time.sleep(60)
    """
)


@pytest.mark.multiprocess
def test_a_writer_killed_with_a_batch_pending_has_it_counted_as_recorded_and_lost(make_recorder, procs):
    rec = make_recorder(1000, collector=False)
    p = subprocess.Popen([sys.executable, "-c", KILLED_WITH_A_BATCH, rec.name], stdout=subprocess.PIPE)
    procs.append(p)
    assert p.stdout.readline() == b"ready\n"
    assert len(_seen(rec.name)) == 1
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert rec.reap_dead_writers() == 1
    acct = rec.accounting()
    assert (acct.recorded, acct.lost, acct.retained) == (16, 15, 1), acct
    assert acct.recorded == acct.retained + acct.overwritten + acct.lost + acct.abandoned + acct.expired
    stats = rec.get_stats()
    assert stats.events_by_type == {"message": 11, "latency": 5}, stats.events_by_type
    assert rec.reap_dead_writers() == 0 and rec.accounting() == acct  # settled once


FORKS = textwrap.dedent(
    """
    import os, sys
    from shmdiag import Recorder
    rec = Recorder.attach(sys.argv[1])
    rec.set_batch(32, max_delay=60)
    for i in range(3):
        rec.record_message("parent", "inv", "inbound", i)
    pid = os.fork()
    if pid == 0:   # the child does not batch, and leaves the parent's staged events alone
        rec.record_message("child", "inv", "inbound", 9)
        print(len(list(Recorder.attach(sys.argv[1]).get_events(0))), flush=True)
        rec.close()
        os._exit(0)
    os.waitpid(pid, 0)
    rec.close()
    """
)


@pytest.mark.multiprocess
def test_a_forked_child_does_not_batch_nor_write_its_parents_batch(make_recorder):
    rec = make_recorder(1000, collector=False)
    out = subprocess.run([sys.executable, "-c", FORKS, rec.name], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"  # the child's event, at once; the parent's 3 still staged
    assert sorted(p for _, p, _ in _seen(rec.name)) == ["child", "parent", "parent", "parent"]


def test_batching_is_per_recorder_process_and_keeps_working_with_a_recorder_gone(make_recorder):
    """The flusher holds the recorder weakly: a dropped recorder is finalized, its batch written."""
    rec = make_recorder(1000, collector=False)
    other = Recorder.attach(rec.name)
    other.set_batch(8, max_delay=60)
    other.record_message("p1", "inv", "inbound", 1)
    del other
    import gc

    gc.collect()
    wait_for(lambda: len(_seen(rec.name)) == 1, timeout=10, what="the dropped recorder's batch")
