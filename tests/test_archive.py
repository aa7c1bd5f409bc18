"""The on-disk archive (issue 15): every event a collector reads, in SQLite, with counted gaps.

Real processes for what crosses processes: ``shmdiag serve --archive`` in a subprocess,
SIGKILLed mid-archive and started again, writer subprocesses; the commands run as a user runs
them. The books are checked exactly: archived events + gaps cover every sequence number once."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from shmdiag import DiagnosticEvent, Inspector, Recorder, Severity
from shmdiag.archive.archiver import RingArchiver, SqliteSink
from shmdiag.archive.query import Filter, query, totals
from shmdiag.archive.store import ArchiveError, ArchiveFullError, ArchiveWriter, archive_files

from helpers import CLI, LineReader, assert_one_error_line, run_cli, unique_name, unlink_quietly, wait_for

WRITER = textwrap.dedent(
    """
    import os, sys, time
    from shmdiag import Recorder
    name, n, pause, go = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    rec = Recorder.attach(name)
    for i in range(n):
        if i == n // 2:  # the second half waits for the test's word (written while serve is dead)
            while not os.path.exists(go):
                time.sleep(0.01)
        rec.record_message(f"peer{i % 7}", "inv", "inbound", i)
        if i % 500 == 499:
            time.sleep(pause)
    rec.close()
    print("done", flush=True)
    """
)


def coverage(directory: str) -> tuple[list[tuple[int, int]], list[tuple[int, int, int]]]:
    """Every archived event's (seq, slots) (in file order) and every gap (first, last, count), all files."""
    seqs, gaps = [], []
    for p in archive_files(directory):
        db = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
        seqs += list(db.execute("SELECT seq, slots FROM event_rows ORDER BY rowid"))
        gaps += list(db.execute("SELECT first_seq, last_seq, overwritten + unreadable + undelivered FROM gaps"))
        db.close()
    return seqs, gaps


def assert_exact_cover(directory: str, end: int) -> tuple[int, int]:
    """Events (each over its slots: seq .. seq + slots - 1) and gaps cover [0, end) with no
    sequence number twice; returns (events, sequence numbers in gaps)."""
    seqs, gaps = coverage(directory)
    covered: set[int] = set()
    for seq, slots in seqs:
        assert slots >= 1
        span = set(range(seq, seq + slots))
        assert not span & covered, f"an event archived twice, or over another's slots: {seq}"
        covered |= span
    gapped = 0
    for first, last, n in gaps:
        assert n == last - first + 1, (first, last, n)
        span = set(range(first, last + 1))
        assert not span & covered, "a gap over archived events"
        covered |= span
        gapped += n
    assert covered == set(range(end)), f"missing {sorted(set(range(end)) - covered)[:10]}"
    return len(seqs), gapped


def start_serve(name: str, procs: list, tmp_path, *args: str) -> subprocess.Popen:
    """``shmdiag serve NAME ARGS`` (stderr to a file: a pipe nobody reads could fill up) until it
    says it archives."""
    err = open(tmp_path / f"serve-{len(procs)}.err", "wb")
    p = subprocess.Popen([*CLI, "serve", name, *args], stdout=subprocess.PIPE, stderr=err)
    err.close()
    procs.append(p)
    LineReader(p).lines_until(lambda line, _: b"archiving to" in line)
    return p


# -- the collector's archive, crash-safe --------------------------------------------------------
@pytest.mark.multiprocess
def test_sigkilled_serve_resumes_right_after_the_last_archived_event(procs, tmp_path):
    name, adir = unique_name("arc"), str(tmp_path / "archive")
    n = 60_000
    try:
        serve = start_serve(name, procs, tmp_path, "--max-events", str(2 * n), "--archive", adir)
        go = tmp_path / "go"
        writer = subprocess.Popen([sys.executable, "-c", WRITER, name, str(n), "0.005", str(go)],
                                  stdout=subprocess.PIPE)
        procs.append(writer)
        # Kill the collector mid-archive: some events archived, the writer still recording.
        wait_for(lambda: sum(t["events"] for t in totals(adir).values()) > 2000, 60, "the archive to fill")
        serve.kill()
        serve.wait(10)
        archived_before, _ = coverage(adir)
        assert 0 < len(archived_before) < n  # readable after the kill
        go.touch()  # the second half is recorded while no collector runs
        assert writer.wait(60) == 0
        # Started again, serve adopts the ring and resumes where the archive's books end.
        serve = start_serve(name, procs, tmp_path, "--archive", adir)
        with Inspector.attach(name) as ins:
            recorded = ins.accounting().recorded
        assert recorded == n
        wait_for(lambda: max(t["next_seq"] for t in totals(adir).values()) >= n, 30, "the archive to catch up")
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(30) == 0
    finally:
        unlink_quietly(name)
    events, gapped = assert_exact_cover(adir, n)
    # The ring held everything while the collector was down: nothing missed, nothing twice.
    assert (events, gapped) == (n, 0)
    sizes = [json.loads(line)["metadata"]["size"] for line in run_cli("query", adir, "--json").stdout.splitlines()]
    assert sorted(sizes) == list(range(n))
    assert len(archive_files(adir)) == 2  # one file per start; the killed one was sealed by the next start


def test_a_slow_archive_counts_what_the_ring_overwrote(make_recorder, tmp_path):
    """Writers faster than the archive: never slowed, and recorded == archived + gaps exactly."""
    rec = make_recorder(1000)
    adir = str(tmp_path / "a")
    with Inspector.attach(rec.name) as ins:
        arc = RingArchiver(ins, [SqliteSink(ArchiveWriter(adir))], host="h")
        for i in range(5000):
            rec.record_message("p", "inv", "outbound", i)
            if i % 1700 == 0:
                arc.run_once()
        arc.run_once()
        assert [r["condition"] for r in arc.reasons()] == ["archive_behind"]  # a health reason (serve's /api/health)
        arc.stop()
    acct = rec.accounting()
    events, gapped = assert_exact_cover(adir, 5000)
    assert events + gapped == acct.recorded == 5000
    assert gapped > 0 and events <= 4 * 1000  # four polls, each reads at most what the ring holds
    t = totals(adir)[("h", rec.name, ins.created_ns)]
    assert t["overwritten"] == gapped and t["events"] == events


def test_clear_and_new_generation_are_noted_not_fatal(make_recorder, tmp_path, ring_name):
    adir = str(tmp_path / "a")
    rec = make_recorder(config=None, name=ring_name, max_events=100)
    with Inspector.attach(ring_name) as ins:
        arc = RingArchiver(ins, [SqliteSink(ArchiveWriter(adir))], host="h", poll_interval=0.01)
        rec.record_event(DiagnosticEvent("before", "x"))
        arc.run_once()
        rec.clear_events()
        rec.record_event(DiagnosticEvent("after", "y"))
        arc._next_check = 0  # the once-a-second check, now
        arc.run_once()
        arc.stop()
        gen1 = ins.created_ns
    rec.close()
    unlink_quietly(ring_name)
    rec2 = Recorder(max_events=100, name=ring_name)
    try:
        rec2.record_event(DiagnosticEvent("again", "z"))
        with Inspector.attach(ring_name) as ins:
            arc = RingArchiver(ins, [SqliteSink(ArchiveWriter(adir))], host="h")
            assert arc.resumed_at == 0  # a new generation starts at seq 0
            arc.stop()
            gen2 = ins.created_ns
    finally:
        rec2.close()
    notes = []
    for p in archive_files(adir):
        db = sqlite3.connect(p)
        notes += [r for r in db.execute("SELECT kind, generation FROM notes")]
        db.close()
    assert ("clear", gen1) in notes and ("generation", gen2) in notes
    assert [(r[3], r[12]) for r in query(adir)] == [("before", gen1), ("after", gen1), ("again", gen2)]


def test_a_full_disk_is_counted_and_archiving_resumes(make_recorder, tmp_path, caplog):
    rec = make_recorder(100_000)
    adir = str(tmp_path / "a")
    writer = ArchiveWriter(adir, page_limit=40)  # SQLite's own limit: "database or disk is full"
    sink = SqliteSink(writer)
    with Inspector.attach(rec.name) as ins:
        arc = RingArchiver(ins, [sink], host="h")
        with caplog.at_level(logging.ERROR, logger="shmdiag"):
            for i in range(20):
                for j in range(1000):
                    rec.record_event(DiagnosticEvent("big", "m" * 200, metadata={"i": i, "j": j}))
                arc.run_once()
        assert sink.not_archived > 0 and sink.full_episodes == 1
        assert "disk full" in caplog.text
        writer._db.execute("PRAGMA max_page_count=1000000")  # room again
        rec.record_event(DiagnosticEvent("later", "after the disk was freed"))
        arc.stop()
        head = ins.seq_range()[1]  # (may include the unused rest of the writer's run)
    end = 2 * 20_000 + 1  # each "big" event takes two slots (its text does not fit one), "later" one
    assert head >= end
    events, gapped = assert_exact_cover(adir, end)
    # the gaps count sequence numbers: two per event not archived
    assert gapped == 2 * sink.not_archived and events == 20_001 - sink.not_archived
    assert any(r[3] == "later" for r in query(adir))
    with pytest.raises(ArchiveFullError):
        ArchiveWriter(str(tmp_path / "b"), page_limit=2)


# -- rotation, retention, query -------------------------------------------------------------
def test_rotation_by_size_and_query_across_files_in_time_order(make_recorder, tmp_path):
    rec = make_recorder(100_000)
    adir = str(tmp_path / "a")
    with Inspector.attach(rec.name) as ins:
        arc = RingArchiver(ins, [SqliteSink(ArchiveWriter(adir, max_bytes=1 << 16))], host="h")
        for i in range(3000):
            rec.record_event(DiagnosticEvent("tick" if i % 3 else "tock", f"n={i}", Severity(i % 5),
                                             peer_id=f"p{i % 4}"))
            if i % 200 == 0:
                arc.run_once()
        arc.stop()
    files = archive_files(adir)
    assert len(files) > 3
    for p in files:  # every file sealed: indexes on type, peer, severity and time; not WAL
        db = sqlite3.connect(p)
        idx = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"events_ts", "events_type", "events_peer", "events_severity"} <= idx
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        db.close()
    rows = list(query(adir))
    assert [r[1] for r in rows] == list(range(3000))
    got = [r[6] for r in query(adir, Filter(types=["tock"], peers=["p2"], min_severity=3))]
    want = [f"n={i}" for i in range(3000) if i % 3 == 0 and i % 4 == 2 and i % 5 >= 3]
    assert got == want and got
    assert [r[6] for r in query(adir, Filter(grep="n=299"), limit=3)] == ["n=299", "n=2990", "n=2991"]
    mid = rows[1500][0]
    assert [r[1] for r in query(adir, Filter(since_ns=mid, until_ns=rows[1600][0]))][0] == 1500


def test_retention_deletes_old_files_only(tmp_path, make_recorder):
    rec = make_recorder(1000)
    adir = str(tmp_path / "a")
    with Inspector.attach(rec.name) as ins:
        w = ArchiveWriter(adir, keep=3600)
        arc = RingArchiver(ins, [SqliteSink(w)], host="h")
        rec.record_event(DiagnosticEvent("old", "x", timestamp=None))
        arc.run_once()
        old = w.path
        db = sqlite3.connect(old)  # make its newest event and its creation two hours old
        db.execute("UPDATE event_rows SET ts = ts - 7200000000000")
        db.execute("UPDATE meta SET value = CAST(value AS INTEGER) - 7200000000000 WHERE key = 'created_ns'")
        db.commit()
        db.close()
        w.rotate()
        rec.record_event(DiagnosticEvent("new", "y"))
        arc.run_once()
        w.rotate()  # retention runs after each rotation: the two-hour-old file goes, the recent one stays
        arc.stop()
    files = archive_files(adir)
    assert old not in files and len(files) == 2
    assert [r[3] for r in query(adir)] == ["new"]


def test_query_cli_filters_and_json_shape(tmp_path, make_recorder):
    rec = make_recorder(1000)
    adir = str(tmp_path / "a")
    with Inspector.attach(rec.name) as ins:
        arc = RingArchiver(ins, [SqliteSink(ArchiveWriter(adir))], host="hostA")
        rec.record_peer_connection("p1", "10.0.0.1:8333")
        rec.record_message("p1", "inv", "inbound", 42)
        rec.record_error("p1", "bad checksum", "read")
        rec.record_event(DiagnosticEvent("custom", "hello world", Severity.WARNING, metadata={"k": [1, 2]}))
        arc.stop()
        tail = run_cli("tail", rec.name, "-n", "10", "--json")
    cp = run_cli("query", adir, "--json")
    assert cp.returncode == 0, cp.stderr
    got = [json.loads(line) for line in cp.stdout.splitlines()]
    want = [json.loads(line) for line in tail.stdout.splitlines()]
    for g, w in zip(got, want, strict=True):  # tail --json's shape, plus where it came from
        assert {k: g[k] for k in w} == w
        assert (g["host"], g["ring"]) == ("hostA", rec.name)
    cp = run_cli("query", adir, "--min-severity", "warning", "--grep", "checksum")
    assert cp.returncode == 0 and len(cp.stdout.splitlines()) == 1 and "bad checksum" in cp.stdout
    cp = run_cli("query", adir, "--type", "custom", "--since", "1h", "--until", "2099-01-01T00:00:00Z")
    assert len(cp.stdout.splitlines()) == 1 and "hello world" in cp.stdout
    assert run_cli("query", adir, "--since", "2099-01-01").stdout == ""
    assert_one_error_line(run_cli("query", adir, "--since", "yesterday-ish"), 2, "not a time")


def test_replay_into_a_ring(tmp_path, make_recorder):
    src = make_recorder(1000)
    adir = str(tmp_path / "a")
    with Inspector.attach(src.name) as ins:
        arc = RingArchiver(ins, [SqliteSink(ArchiveWriter(adir))], host="h")
        src.record_peer_connection("p1", "10.0.0.1:8333")
        for i in range(5):
            src.record_event(DiagnosticEvent("tick", f"n={i}", Severity.WARNING, peer_id="p1", metadata={"i": i}))
        arc.stop()
    dst = make_recorder(1000)
    t0 = time.monotonic()
    cp = run_cli("replay", adir, "--into", dst.name, "--speed", "1000")
    assert cp.returncode == 0, cp.stderr
    assert time.monotonic() - t0 < 30
    a, b = src.get_events(0), dst.get_events(0)
    key = [(e.event_type, e.message, e.severity, e.peer_id, e.metadata, e.timestamp) for e in a]
    assert [(e.event_type, e.message, e.severity, e.peer_id, e.metadata, e.timestamp) for e in b] == key
    assert [p.status for p in dst.get_peer_diagnostics()] == ["connected"]
    assert_one_error_line(run_cli("replay", adir, "--into", unique_name("none")), 1, "no")


# -- bad input ----------------------------------------------------------------------------------
def _digest(directory: str) -> dict[str, str]:
    return {n: hashlib.sha256(open(os.path.join(directory, n), "rb").read()).hexdigest()
            for n in sorted(os.listdir(directory))}


@pytest.mark.parametrize("foreign", ["notes.txt", "shmdiag-20260101T000000-000001.sqlite"])
def test_a_foreign_file_in_the_archive_dir_is_refused_and_nothing_changes(tmp_path, make_recorder, foreign):
    rec = make_recorder(100)
    adir = str(tmp_path / "a")
    with Inspector.attach(rec.name) as ins:
        arc = RingArchiver(ins, [SqliteSink(ArchiveWriter(adir))], host="h")
        rec.record_event(DiagnosticEvent("kept", "x"))
        arc.stop()
    with open(os.path.join(adir, foreign), "wb") as f:
        f.write(b"not an archive\n" * 10)
    before = _digest(adir)
    name = unique_name("bad")
    try:
        line = assert_one_error_line(run_cli("serve", name, "--archive", adir), 1, foreign)
        assert "not a shmdiag archive" in line
        assert not os.path.exists(f"/dev/shm/{name}")  # refused before the ring was made
    finally:
        unlink_quietly(name)
    assert_one_error_line(run_cli("query", adir), 1, foreign)
    assert _digest(adir) == before
    with pytest.raises(ArchiveError):
        ArchiveWriter(adir)


def test_an_unusable_archive_dir_is_one_line(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    name = unique_name("bad")
    try:
        assert_one_error_line(run_cli("serve", name, "--archive", str(afile)), 1, str(afile))
        assert_one_error_line(run_cli("query", str(tmp_path / "missing")), 1, "no such directory")
        assert_one_error_line(run_cli("serve", name, "--archive", str(tmp_path), "--archive-max-bytes", "1k"), 2,
                              "64K")
        if os.geteuid() != 0:  # root writes anywhere
            ro = tmp_path / "ro"
            ro.mkdir(mode=0o500)
            assert_one_error_line(run_cli("serve", name, "--archive", str(ro)), 1, "not writable")
        assert not os.path.exists(f"/dev/shm/{name}")
    finally:
        unlink_quietly(name)


def test_two_writers_of_one_archive_dir_are_refused(tmp_path):
    w = ArchiveWriter(str(tmp_path / "a"))
    try:
        with pytest.raises(ArchiveError, match="another process"):
            ArchiveWriter(str(tmp_path / "a"))
    finally:
        w.close()


def test_the_archive_holds_each_event_once_whatever_arrives_twice(tmp_path):
    """The central archive's rules, on batches as NATS may deliver them: a redelivery, an overlap
    (a restarted collector publishing again from seq 0), a counted drop, and a range that never
    arrived. Events + gaps cover every sequence number once."""
    from shmdiag.archive.store import Batch, GapRow, Source

    def rows(a: int, b: int, slots: int = 1) -> list:
        return [(1_700_000_000_000_000_000 + s, s, 1, "t", 1, "", f"m{s}", None, None, 0, slots) for s in range(a, b)]

    src = Source("h", "r", 7)
    with ArchiveWriter(str(tmp_path / "c")) as w:
        assert w.write(Batch(src, 0, 10, rows(0, 10))) == 10
        assert w.write(Batch(src, 0, 10, rows(0, 10))) == 0  # redelivered
        # A restarted collector from seq 0: the ring had overwritten 0-5 (a gap), holds 6-14.
        assert w.write(Batch(src, 0, 15, rows(6, 15), [GapRow(0, 5, overwritten=6)])) == 5
        # The collector dropped 15-19 (NATS down); the next batch carries the count.
        assert w.write(Batch(src, 20, 25, rows(20, 25), dropped=GapRow(15, 19, undelivered=5))) == 5
        # 25-29 never arrived (the stream's limits discarded them): counted here, as seqs.
        assert w.write(Batch(src, 30, 32, rows(30, 32))) == 2
        # A gap straddling what is archived already is clipped, not dropped.
        assert w.write(Batch(src, 28, 40, rows(36, 40), [GapRow(28, 35, overwritten=8)])) == 4
        # An event of three slots (40-42) in a batch that ended after its first slot: the next
        # batch (its continuations, then 43-44) starts inside it, and is not archived twice.
        assert w.write(Batch(src, 40, 41, rows(40, 41, slots=3))) == 1
        assert w.write(Batch(src, 41, 45, rows(43, 45))) == 2
        # 45-49 dropped by the collector: an event of 5 slots, counted as 5 sequence numbers.
        assert w.write(Batch(src, 50, 51, rows(50, 51), dropped=GapRow(45, 49, undelivered=5))) == 1
    events, gapped = assert_exact_cover(str(tmp_path / "c"), 51)
    assert (events, gapped) == (30, 19)
    t = totals(str(tmp_path / "c"))[("h", "r", 7)]
    assert (t["undelivered"], t["overwritten"], t["next_seq"]) == (15, 4, 51)


LONG_WRITER = textwrap.dedent(
    """
    import sys
    from shmdiag import DiagnosticEvent, Recorder
    name, n = sys.argv[1], int(sys.argv[2])
    rec = Recorder.attach(name)
    for i in range(n):
        if i % 3 == 0:  # 2-5 KiB messages: events of 11 to 27 slots, between one-slot ones
            rec.record_event(DiagnosticEvent("long", f"<{i}>" + "x" * (2048 + 97 * (i % 31)), peer_id="p"))
        else:
            rec.record_message(f"peer{i % 7}", "inv", "inbound", i)
    rec.close()
    """
)


def long_message(i: int) -> str:
    return f"<{i}>" + "x" * (2048 + 97 * (i % 31))


@pytest.mark.multiprocess
def test_long_events_through_serve_archive_cover_their_slots(procs, tmp_path):
    """Events of several slots: archived whole (message of 2-5 KiB), each row covering its
    continuation slots, so events + gaps still cover every sequence number exactly."""
    name, adir = unique_name("arl"), str(tmp_path / "archive")
    n = 3000
    try:
        serve = start_serve(name, procs, tmp_path, "--max-events", "200000", "--archive", adir)
        w = subprocess.run([sys.executable, "-c", LONG_WRITER, name, str(n)], timeout=120)
        assert w.returncode == 0
        with Inspector.attach(name) as ins:
            assert ins.accounting().recorded == n
            end = max(e.seq for e in ins.get_events(1)) + 1  # the last event is one slot
        wait_for(lambda: max([t["next_seq"] for t in totals(adir).values()], default=0) >= end, 60,
                 "the archive to catch up")
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(30) == 0
    finally:
        unlink_quietly(name)
    events, gapped = assert_exact_cover(adir, end)
    assert (events, gapped) == (n, 0)
    slots = [s for _, s in coverage(adir)[0]]
    assert max(slots) > 10 and end == sum(slots)
    longs = [r[6] for r in query(adir, Filter(types=["long"]))]
    assert longs == [long_message(i) for i in range(0, n, 3)]  # whole, not cut at the first slot


@pytest.mark.multiprocess
def test_archive_counters_on_metrics_of_the_serving_process(procs, tmp_path):
    import urllib.request

    from helpers import free_port

    name, adir, port = unique_name("arm"), str(tmp_path / "archive"), free_port()
    try:
        serve = start_serve(name, procs, tmp_path, "--archive", adir, "--http", f"127.0.0.1:{port}")
        with Recorder.attach(name) as rec:
            for i in range(300):
                rec.record_message("p", "inv", "inbound", i)

        def metrics() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return r.read().decode()

        wait_for(lambda: "shmdiag_archive_events_total 300.0" in metrics(), 30, "the archive's counters")
        text = metrics()
        assert 'shmdiag_archive_gap_events_total{cause="overwritten"} 0.0' in text
        assert "shmdiag_archive_lag_events" in text and "shmdiag_nats_" not in text  # no --nats
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(30) == 0
    finally:
        unlink_quietly(name)
