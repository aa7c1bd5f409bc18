"""Filters on the stored fields (core/filter.py) against a reference: every event decoded in
Python and filtered one by one; the follower under a real writer process; ``tail``'s flags run as
a user runs them; ``tail -F`` across a real ``serve`` restarted; ``export`` with filters."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import orjson
import pytest

from shmdiag import DiagnosticEvent, Inspector, Recorder, Severity
from shmdiag.core import kinds as K
from shmdiag.core import layout as L
from shmdiag.core import reader as R
from shmdiag.core.filter import EventFilter, unrecorded
from shmdiag.core.follow import Batch, Follower, Gap

from helpers import (
    CLI,
    LineReader,
    assert_one_error_line,
    raw_segment,
    read_field,
    run_cli,
    slot_base,
    start_tail,
    unique_name,
    unlink_quietly,
    wait_for,
    write,
    write_field,
)

# Writer processes (each its own pid) recording many kinds, peers and severities.
_MIX = """
import sys
from datetime import datetime, timezone, timedelta
from shmdiag import DiagnosticEvent, Recorder, Severity
name, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = datetime(2026, 11, 30, 6, 0, tzinfo=timezone.utc)
with Recorder.attach(name) as rec:
    for i in range(n):
        p = f"{tag}-p{i % 5}"
        k = i % 7
        if k == 0:
            rec.record_message(p, "inv", "inbound" if i & 1 else "outbound", i)
        elif k == 1:
            rec.record_error(p, KeyError(f"k{i}"), "parse")
        elif k == 2:
            rec.record_event(DiagnosticEvent("block", f"block {i} ok", Severity(i % 5), peer_id=p if i % 3 else "",
                                             timestamp=t0 + timedelta(seconds=i)))
        elif k == 3:
            rec.record_peer_connection(p, f"10.0.0.{i % 250}:8333")
        elif k == 4:
            rec.record_latency("ping", 0.001 * (i % 9 + 1), peer_id=p)
        elif k == 5:
            rec.record_event(DiagnosticEvent("x" * 32, "long type", Severity.WARNING, peer_id="q" * 64,
                                             error="bad \\"thing\\"\\n"))
        else:
            rec.record_event(DiagnosticEvent("blocks", "ñ 日本", Severity.ERROR, peer_id=p[:-1],
                                             timestamp=t0 + timedelta(seconds=i)))
"""


def _mix(name: str, tag: str, n: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _MIX, name, tag, str(n)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def mixed():
    """A ring of 3000 slots written by three writer processes (three pids): 2400 events."""
    rec = Recorder(max_events=3000, name=unique_name("filters"))
    try:
        ps = [_mix(rec.name, tag, 800) for tag in ("a", "b", "c")]
        for p in ps:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
        yield rec
    finally:
        rec.close()


def _filters(events: list[DiagnosticEvent]) -> list[EventFilter]:
    pids = sorted({e.pid for e in events})
    t0 = datetime(2026, 11, 30, 6, 0, tzinfo=timezone.utc)
    ns = lambda dt: int(dt.timestamp()) * 10**9  # noqa: E731
    return [
        EventFilter(),
        EventFilter(types={"block"}),
        EventFilter(types={"blocks", "error"}),
        EventFilter(types={"message"}),
        EventFilter(types={"x" * 32}),
        EventFilter(types={"bloc"}),
        EventFilter(peers={"a-p1"}),
        EventFilter(peers={"q" * 64, "b-p"}),
        EventFilter(peers={""}),
        EventFilter(min_severity=3),
        EventFilter(pids={pids[0]}),
        EventFilter(pids={pids[1], pids[2]}, types={"latency"}),
        EventFilter(since_ns=ns(t0 + timedelta(seconds=100)), until_ns=ns(t0 + timedelta(seconds=400))),
        EventFilter(types={"error"}, peers={"c-p2"}, min_severity=3),
        EventFilter(grep=re.compile(r"block \d+0 ")),
        EventFilter(grep=re.compile(r"KeyError: 'k1")),
        EventFilter(types={"block"}, peers={"a-p2"}, min_severity=2, pids={pids[0]}),
    ]


def test_reads_match_the_reference(mixed):
    seg = mixed._seg
    every = R.read_events(seg, 0, 0)
    assert len(every) == 2400 and len({e.pid for e in every}) == 3
    for f in _filters(every):
        ref = [e for e in every if f.event(e)]
        assert R.read_events(seg, 0, 0, f) == ref, f
        for n in (1, 7, 100, 5000):
            assert R.read_events(seg, n, 0, f) == ref[-n:], (f, n)


def test_get_events_keywords(mixed):
    every = mixed.get_events(0)
    pid = next(e.pid for e in every if e.peer_id == "a-p1")
    got = mixed.get_events(50, Severity.WARNING, event_type=["error", "block"], peer_id="a-p1", pid=pid)
    ref = [e for e in every if e.severity >= Severity.WARNING and e.event_type in ("error", "block")
           and e.peer_id == "a-p1" and e.pid == pid][-50:]
    assert got == ref and got
    with Inspector.attach(mixed.name) as insp:
        assert insp.get_events(10, grep="ñ", since=timedelta(days=3650)) == [
            e for e in every if "ñ" in e.message and e.timestamp >= datetime.now(timezone.utc) - timedelta(days=3650)
        ][-10:]
    assert mixed.get_events(5, until=datetime(2000, 1, 1, tzinfo=timezone.utc)) == []


@pytest.mark.parametrize("kw, exc", [
    ({"event_type": 3}, TypeError), ({"peer_id": [b"x"]}, TypeError), ({"pid": "1"}, TypeError),
    ({"pid": True}, TypeError), ({"since": "10m"}, TypeError), ({"since": datetime(2026, 1, 1)}, ValueError),
    ({"since": timedelta(seconds=-1)}, ValueError), ({"grep": "("}, ValueError), ({"grep": 5}, TypeError),
    ({"min_severity": 9}, ValueError),
])
def test_get_events_bad_filters(rec, kw, exc):
    with pytest.raises(exc):
        rec.get_events(10, **kw)


def test_export_takes_the_filters(mixed, tmp_path):
    every = mixed.get_events(0)
    for f in _filters(every)[1:6]:
        with open(tmp_path / "out.ndjson", "w+b") as fp:
            n = mixed.write_export(fp, "ndjson", filt=f)
            fp.seek(0)
            lines = fp.read().splitlines()  # events only, one per line
        ref = [e for e in every if f.event(e)]
        assert n == len(ref) == len(lines)
        assert [orjson.loads(x)["seq"] for x in lines] == [e.seq for e in ref]


def test_export_cli_filters(mixed, tmp_path):
    out = tmp_path / "e.ndjson"
    cp = run_cli("export", mixed.name, "--format", "ndjson", "-o", str(out), "--type", "error", "--peer", "b-p3",
                 "--grep", "k[0-9]+")
    assert cp.returncode == 0, cp.stderr
    got = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    ref = [e for e in mixed.get_events(0) if e.event_type == "error" and e.peer_id == "b-p3"]
    assert [g["seq"] for g in got] == [e.seq for e in ref] and ref
    assert_one_error_line(run_cli("export", mixed.name, "--grep", "[a-"), 2, "--grep")


def test_follower_matches_the_reference(mixed):
    seg = mixed._seg
    every = R.read_events(seg, 0, 0)
    base = seg.era()[1]
    for f in _filters(every):
        fol = Follower(seg, base, filt=f)
        got: list[DiagnosticEvent] = []
        for _ in range(100):
            items = fol.poll_raw(max_seqs=333)  # small batches: many polls
            assert not [g for g in items if isinstance(g, Gap)]
            got += [e for b in items if isinstance(b, Batch) for e in b.events()]
            if not fol.behind:
                break
        assert got == [e for e in every if f.event(e)], f
        assert fol.behind == 0 and fol.lag_seconds == 0.0


def test_never_recorded_types_and_peers(mixed):
    seg = mixed._seg
    assert unrecorded(seg, EventFilter(types={"block"})) is None
    assert unrecorded(seg, EventFilter(types={"nope", "block"})) is None
    why = unrecorded(seg, EventFilter(types={"nope"}))
    assert why is not None and "'nope'" in why and "block, blocks, error" in why
    why = unrecorded(seg, EventFilter(peers={"nobody"}))
    assert why is not None and "a-p0" in why
    assert mixed.get_events(10, event_type="nope") == []
    cp = run_cli("tail", mixed.name, "--type", "no_such_type")
    assert_one_error_line(cp, 1, "no_such_type", "types recorded:", "latency", "peer_connected")
    cp = run_cli("tail", mixed.name, "--peer", "nobody", "-n", "100000")
    assert_one_error_line(cp, 1, "nobody", "peers recorded:")


def test_a_type_counted_as_other_is_searched(make_recorder):
    rec = make_recorder(2000)
    for i in range(L.TYPE_SLOTS + 5):  # more types than a shard counts by name
        rec.record_event(DiagnosticEvent(f"t{i}", "m", Severity.INFO))
    assert unrecorded(rec._seg, EventFilter(types={f"t{L.TYPE_SLOTS + 4}"})) is None
    assert [e.message for e in rec.get_events(5, event_type=f"t{L.TYPE_SLOTS + 4}")] == ["m"]
    assert unrecorded(rec._seg, EventFilter(types={"never"})) is None  # cannot be told any more
    assert rec.get_events(5, event_type="never") == []


def _make_continuation(name: str, seq: int, cap: int) -> None:
    """Turn the committed record of ``seq`` into a continuation slot, checksum and all (as a
    writer of a multi-slot event would leave it)."""
    with raw_segment(name) as mm:
        b = slot_base(mm, seq % cap)
        write_field(mm, L.SLOT, "kind", K.KIND_CONTINUATION, b)
        words = np.frombuffer(mm[b: b + L.SLOT_SIZE], dtype="<u8")
        write_field(mm, L.SLOT, "checksum", int((words * L.CHECKSUM_KEYS).sum(dtype=np.uint64)), b)
        assert int(read_field(mm, L.SLOT, "kind", b)) == K.KIND_CONTINUATION


def test_continuation_slots_are_never_events(make_recorder):
    rec = make_recorder(100)
    for i in range(20):
        rec.record_event(DiagnosticEvent("e", f"m{i}", Severity.INFO, peer_id="p"))
    _make_continuation(rec.name, 7, 100)
    seqs = [e.seq for e in rec.get_events(0)]
    assert 7 not in seqs and len(seqs) == 19
    assert 7 not in [e.seq for e in rec.get_events(10, peer_id="p", event_type="e")] + [
        e.seq for e in rec.get_events(0, peer_id="p")]
    for filt in (None, EventFilter(types={"e"})):
        fol = Follower(rec._seg, 0, filt=filt, pending_timeout=0.01)
        time.sleep(0.05)
        items = fol.poll()
        assert [e.seq for e in items] == [s for s in range(20) if s != 7]  # no Gap either
    assert [orjson.loads(x)["seq"] for x in rec.export_events("ndjson").splitlines()] == seqs


def test_follower_under_a_real_writer(make_recorder):
    rec = make_recorder(100_000)
    filt = EventFilter(types={"error", "block"}, min_severity=1)
    head, base = rec._seg.era()
    fol = Follower(rec._seg, head, filt=filt)
    p = _mix(rec.name, "w", 20_000)
    got: list[DiagnosticEvent] = []
    deadline = time.monotonic() + 120
    while p.poll() is None or fol.behind or fol.cursor < rec._seg.era()[0]:
        assert time.monotonic() < deadline
        for it in fol.poll_raw(max_seqs=4096):
            assert not isinstance(it, Gap), it
            got += it.events()
        time.sleep(0.001)
    assert p.returncode == 0
    ref = [e for e in rec.get_events(0) if filt.event(e)]
    assert got == ref and len(ref) > 4000


# -- the command ---------------------------------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["--grep", "(unclosed"], "--grep"),
    (["--min-severity", "loud"], "severity"),
    (["--since", "10m", "--until", "1h"], "before --since"),
    (["--since", "2999-01-01T00:00:00Z"], "future"),
    (["--since", "yesterday-ish"], "--since"),
    (["-n", "0"], "-n"),
    (["-n", "-1"], "-n"),
    (["--pid", "zero"], "--pid"),
])
def test_tail_bad_input(rec, args, needle):
    cp = run_cli("tail", rec.name, *args)
    assert cp.returncode == 2, cp.stderr
    assert "Traceback" not in cp.stderr
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], cp.stderr


def test_tail_cli_filters(mixed):
    every = mixed.get_events(0)
    pid = every[-1].pid

    def tail(*args: str) -> list[int]:
        cp = run_cli("tail", mixed.name, "--json", *args)
        assert cp.returncode == 0, cp.stderr
        return [orjson.loads(x)["seq"] for x in cp.stdout.splitlines()]

    assert tail("-n", "5", "--pid", str(pid), "--type", "block") == [
        e.seq for e in every if e.pid == pid and e.event_type == "block"][-5:]
    assert tail("-n", "1000", "--grep", "KeyError: 'k1[0-9]'") == [
        e.seq for e in every if e.error and re.search("KeyError: 'k1[0-9]'", e.error)]
    assert tail("-n", "1000", "--since", "2026-11-30T06:01:00Z", "--until", "2026-11-30 06:02") == [
        e.seq for e in every if datetime(2026, 11, 30, 6, 1, tzinfo=timezone.utc) <= e.timestamp
        <= datetime(2026, 11, 30, 6, 2, tzinfo=timezone.utc)]
    assert tail("-n", "3", "--since", "1h") == [e.seq for e in every
                                                if e.timestamp >= datetime.now(timezone.utc) - timedelta(hours=1)][-3:]


def test_tail_follow_filtered_reports_few_gaps(make_recorder, procs):
    """Under a selective filter a follower that fell behind does not print a gap line per run of
    events the filter would have dropped; what it skipped is still counted."""
    rec = make_recorder(64)
    write(rec.name, [["event", "probe", "start-mark", 1, "wanted"]])
    p = subprocess.Popen([*CLI, "tail", rec.name, "-f", "-n", "1", "--json", "--type", "probe", "--peer", "wanted"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(p)
    reader = LineReader(p)
    reader.lines_until(lambda line, _: b"start-mark" in line)
    os.kill(p.pid, signal.SIGSTOP)
    try:
        for _ in range(5):
            write(rec.name, [["many", 300, "flood"], ["event", "probe", "hit", 1, "wanted"]])
        write(rec.name, [["event", "probe", "the-end", 1, "wanted"]])
    finally:
        os.kill(p.pid, signal.SIGCONT)
    lines = reader.lines_until(lambda line, _: b"the-end" in line)
    got = [orjson.loads(x) for x in lines]
    gaps = [g for g in got if g.get("kind") == "gap"]
    assert len(gaps) <= 2, gaps
    assert sum(g["skipped"] for g in gaps) >= 5 * 300 - 64
    assert all(g["unknown"] + g["matched"] <= g["skipped"] for g in gaps)


def test_tail_follow_json_reports_its_lag(make_recorder, procs):
    rec = make_recorder(400_000)
    p, reader = start_tail(rec.name, procs, "--json")
    os.kill(p.pid, signal.SIGSTOP)
    try:
        write(rec.name, [["many", 300_000, "flood"], ["event", "marker", "the-end", 1, ""]])
    finally:
        os.kill(p.pid, signal.SIGCONT)
    lines = reader.lines_until(lambda line, _: b"the-end" in line, timeout=120)
    got = [orjson.loads(x) for x in lines]
    lags = [g for g in got if g["kind"] == "lag"]
    assert lags and lags[0]["behind"] > 0
    assert len([g for g in got if g["kind"] == "event"]) == 300_001
    more = reader.lines_until(lambda line, _: orjson.loads(line)["kind"] == "lag", timeout=30)
    assert orjson.loads(more[-1])["behind"] == 0


def _serve(name: str, procs: list) -> subprocess.Popen:
    p = subprocess.Popen([*CLI, "serve", name, "--max-events", "1000"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    procs.append(p)
    wait_for(lambda: os.path.exists(f"/dev/shm/{name}") and run_cli("health", name).returncode in (0, 1),
             timeout=30, what="serve")
    return p


def test_tail_F_follows_a_restarted_collector(procs):
    name = unique_name("tailF")
    try:
        s1 = _serve(name, procs)
        write(name, [["event", "before", "one", 1, ""]])
        t = subprocess.Popen([*CLI, "tail", name, "-F", "-n", "5", "--json"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        procs.append(t)
        reader = LineReader(t)
        reader.lines_until(lambda line, _: b'"one"' in line)
        s1.send_signal(signal.SIGTERM)  # serve removes the ring
        s1.wait(timeout=30)
        assert not os.path.exists(f"/dev/shm/{name}")
        time.sleep(1.5)  # tail sees it go
        _serve(name, procs)
        write(name, [["event", "after", "two", 1, ""]])
        lines = reader.lines_until(lambda line, _: b'"two"' in line, timeout=30)
        assert orjson.loads(lines[-1])["event_type"] == "after"
        assert t.poll() is None  # still following
        t.send_signal(signal.SIGINT)
        _, err = t.communicate(timeout=30)
        assert b"was removed" in err and b"waiting for it" in err
    finally:
        unlink_quietly(name)


def test_tail_f_without_F_stops_when_the_ring_goes(procs):
    name = unique_name("tailf")
    try:
        s = _serve(name, procs)
        write(name, [["event", "before", "one", 1, ""]])
        t = subprocess.Popen([*CLI, "tail", name, "-f", "-n", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(t)
        LineReader(t).lines_until(lambda line, _: b"one" in line)
        s.send_signal(signal.SIGTERM)
        s.wait(timeout=30)
        _, err = t.communicate(timeout=30)
        assert t.returncode == 0 and b"was removed; stopping" in err, err
    finally:
        unlink_quietly(name)


def test_tail_follow_shows_its_lag_on_a_terminal(make_recorder, procs):
    """stderr a terminal: a status line while behind, erased before events are printed."""
    rec = make_recorder(400_000)
    write(rec.name, [["event", "marker", "start-mark", 1, ""]])
    master, slave = pty.openpty()
    p = subprocess.Popen([*CLI, "tail", rec.name, "-f", "-n", "1"], stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    procs.append(p)
    reader = LineReader(p)
    reader.lines_until(lambda line, _: b"start-mark" in line)
    os.kill(p.pid, signal.SIGSTOP)
    try:
        write(rec.name, [["many", 300_000, "flood"], ["event", "marker", "the-end", 1, ""]])
    finally:
        os.kill(p.pid, signal.SIGCONT)
    reader.lines_until(lambda line, _: b"the-end" in line, timeout=180)
    err = b""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and b"\r\x1b[K" not in err.split(b"catching up", 1)[-1]:
        if select.select([master], [], [], 0.5)[0]:
            err += os.read(master, 65536)
    os.close(master)
    assert b"-- catching up: " in err and b" events behind (" in err
    assert err.rstrip(b"\r\n").endswith(b"\r\x1b[K")  # erased once caught up


def test_events_of_several_slots_come_whole_through_the_filters(make_recorder, procs):
    rec = make_recorder(1000)
    long = "x" * 1500 + "-the-end"
    write(rec.name, [["event", "marker", "start-mark", 1, ""]])
    p = subprocess.Popen([*CLI, "tail", rec.name, "-f", "-n", "1", "--json", "--type", "long", "--type", "marker"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(p)
    reader = LineReader(p)
    reader.lines_until(lambda line, _: b"start-mark" in line)
    with Inspector.attach(rec.name) as insp:
        head = insp.seq_range()[1]
        fol = insp.follower(head, filt=EventFilter(types={"long"}))
        rec.record_event(DiagnosticEvent("long", long, Severity.WARNING, peer_id="p"))
        rec.record_message("p", "inv", "inbound", 1)
        got = [e for e in rec.get_events(5, event_type="long", peer_id="p")]
        assert [e.message for e in got] == [long] and not got[0].truncated
        items = [it for it in fol.poll_raw() if isinstance(it, Batch)]
        assert [e.message for b in items for e in b.events()] == [long]
        line = fol.render(items[0]).tobytes()
        assert orjson.loads(line)["message"] == long
    lines = reader.lines_until(lambda line, _: b"the-end" in line)
    assert orjson.loads(lines[-1])["message"] == long
