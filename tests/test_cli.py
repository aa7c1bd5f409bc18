"""The ``shmdiag`` command, driven as a user would: subprocesses against real rings, with real
writer processes. Every error path must give one line on stderr and no traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone

import orjson
import pytest

from shmdiag import DiagnosticEvent, Recorder, Severity

from helpers import (
    CLI,
    OPS_WRITER,
    LineReader,
    assert_one_error_line,
    attachable,
    run_cli,
    shm_path,
    start_tail,
    unique_name,
    wait_for,
    write,
)


# -- serve ----------------------------------------------------------------------------------
@pytest.mark.multiprocess
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_serve_is_attachable_and_a_signal_unlinks_it(procs, shm_names, sig):
    name = unique_name("serve")
    shm_names.append(name)
    p = subprocess.Popen([*CLI, "serve", name, "--max-events", "500"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    procs.append(p)
    wait_for(lambda: attachable(name) or p.poll() is not None, what="serve to create the ring")
    assert p.poll() is None, p.stderr.read()
    write(name, [["msg", "peer-1", "inv", "inbound", 37]])
    with Recorder.attach(name) as rec:
        assert rec.config.max_events == 500
        assert [e.peer_id for e in rec.get_events(10)] == ["peer-1"]
    os.kill(p.pid, sig)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    assert not os.path.exists(shm_path(name))
    assert b"Traceback" not in err
    text = out.decode()
    assert f"shmdiag tail {name} -f" in text and f"Recorder.attach({name!r})" in text


def test_serve_config_file_and_override(procs, shm_names, tmp_path):
    name = unique_name("cfg")
    shm_names.append(name)
    cfg = tmp_path / "ring.toml"
    cfg.write_text("[shmdiag]\nmax_events = 300\ncleanup_interval = 0.2\nretention_period = 3600\n"
                   'log_level = "warning"\nmax_writers = 8\n')
    p = subprocess.Popen([*CLI, "serve", name, "--config", str(cfg), "--max-events", "250"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(p)
    wait_for(lambda: attachable(name) or p.poll() is not None, what="serve to create the ring")
    with Recorder.attach(name) as rec:
        c = rec.config
        assert (c.max_events, c.cleanup_interval, c.retention_period, c.log_level, c.max_writers) == (
            250, 0.2, 3600.0, "warning", 8)
    # The collector's health check runs every cleanup_interval here; its first result is logged.
    LineReader(p, p.stderr).lines_until(lambda line, _: f"shmdiag {name} health: healthy".encode() in line)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    assert not os.path.exists(shm_path(name))


@pytest.mark.parametrize("content, needle", [
    ("max_events = 0\n", "max_events"),
    ("max_evnts = 100\n", "max_evnts"),
    ('log_level = "loud"\n', "log_level"),
    ("cleanup_interval = -1\n", "cleanup_interval"),
    ("enable_metrics = 1\n", "enable_metrics"),
    ("max_events = [1, \n", "not valid TOML"),
    ('name = "other"\n', "name"),
])
def test_serve_bad_config_exits_2_naming_the_field(tmp_path, shm_names, content, needle):
    name = unique_name("badcfg")
    shm_names.append(name)
    cfg = tmp_path / "bad.toml"
    cfg.write_text(content)
    cp = run_cli("serve", name, "--config", str(cfg))
    assert_one_error_line(cp, 2, needle)
    assert not os.path.exists(shm_path(name))


def test_serve_config_without_a_toml_reader_says_what_is_needed(tmp_path, monkeypatch, capsys):
    """Python 3.10 has no tomllib: without the tomli package, --config says so (one line, 2)."""
    from shmdiag.cli import main as _cli

    monkeypatch.setitem(sys.modules, "tomllib", None)
    monkeypatch.setitem(sys.modules, "tomli", None)
    cfg = tmp_path / "c.toml"
    cfg.write_text("max_events = 10\n")
    assert _cli.main(["serve", unique_name(), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tomli" in err and err.startswith("shmdiag: error: ")


def test_serve_usage_errors(tmp_path, make_recorder):
    missing = str(tmp_path / "missing.toml")
    assert_one_error_line(run_cli("serve", unique_name(), "--config", missing), 2, "missing.toml")
    assert_one_error_line(run_cli("serve", unique_name(), "--max-events", "-5"), 2, "--max-events")
    assert_one_error_line(run_cli("serve", "bad/name"), 2, "not a valid ring name")
    rec = make_recorder(100)
    assert_one_error_line(run_cli("serve", rec.name), 1, "already exists", f"pid {os.getpid()}, still running")


# -- ls / rm --------------------------------------------------------------------------------
STALE = textwrap.dedent(
    """
    import sys, time
    from multiprocessing import resource_tracker
    from shmdiag import Recorder, RecorderConfig
    rec = Recorder.with_config(RecorderConfig(name=sys.argv[1], max_events=64))
    for i in range(100):
        rec.record_message("p", "inv", "inbound", i)
    # Without this, the tracker would unlink the ring once this process is killed.
    resource_tracker.unregister("/" + rec.name, "shared_memory")
    print("ready", flush=True)
    time.sleep(120)
    """
)


def make_stale(name: str, procs: list) -> int:
    """A ring whose creator was SIGKILLed (and whose tracker let it be): the creator's pid."""
    p = subprocess.Popen([sys.executable, "-c", STALE, name], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(p)
    assert p.stdout.readline() == b"ready\n", p.stderr.read()
    p.kill()
    p.wait(timeout=10)
    assert os.path.exists(shm_path(name))
    return p.pid


@pytest.mark.multiprocess
def test_ls_lists_live_and_stale_rings(make_recorder, procs, shm_names):
    live = make_recorder(200)
    write(live.name, [["msg", "a", "inv", "inbound", 1]] * 30)
    stale = unique_name("stale")
    shm_names.append(stale)
    dead_pid = make_stale(stale, procs)

    cp = run_cli("ls", "--json")
    assert cp.returncode == 0, cp.stderr
    rows = {r["name"]: r for r in json.loads(cp.stdout)["rings"]}
    r = rows[live.name]
    assert (r["creator_pid"], r["creator_alive"], r["capacity"], r["retained"], r["total_events"], r["note"]) == (
        os.getpid(), True, 200, 30, 30, "")
    assert r["writers_alive"] == 0 and 0 <= r["uptime"] < 600
    created = datetime.fromisoformat(r["created_at"].replace("Z", "+00:00"))
    assert abs((datetime.now(timezone.utc) - created).total_seconds() - r["uptime"]) < 60
    s = rows[stale]
    assert (s["creator_pid"], s["creator_alive"], s["capacity"], s["retained"], s["total_events"]) == (
        dead_pid, False, 64, 64, 100)

    cp = run_cli("ls")
    assert cp.returncode == 0
    lines = cp.stdout.splitlines()
    assert lines[0].split()[:4] == ["NAME", "OWNER", "CAPACITY", "RETAINED"]
    live_line = next(x for x in lines if x.startswith(live.name + " "))
    stale_line = next(x for x in lines if x.startswith(stale + " "))
    assert f"{os.getpid()} (alive)" in live_line
    assert f"{dead_pid} (dead)" in stale_line


def test_ls_notes_a_corrupt_ring_and_skips_foreign_files(make_recorder, shm_names):
    from helpers import raw_segment

    rec = make_recorder(100)
    with raw_segment(rec.name) as mm:
        mm[40:44] = b"\xff\xff\xff\xff"  # max_shards, without fixing the header checksum
    foreign = unique_name("foreign")
    shm_names.append(foreign)
    with open(shm_path(foreign), "wb") as f:
        f.write(os.urandom(8192))
    cp = run_cli("ls", "--json")
    assert cp.returncode == 0, cp.stderr
    rows = {r["name"]: r for r in json.loads(cp.stdout)["rings"]}
    assert foreign not in rows
    assert "corrupt header" in rows[rec.name]["note"]
    assert rows[rec.name]["creator_pid"] == os.getpid()


@pytest.mark.multiprocess
def test_rm_refuses_live_removes_stale_and_refuses_foreign(make_recorder, procs, shm_names):
    live = make_recorder(100)
    assert_one_error_line(run_cli("rm", live.name), 1, "in use", str(os.getpid()))
    assert os.path.exists(shm_path(live.name))

    stale = unique_name("stale")
    shm_names.append(stale)
    make_stale(stale, procs)
    cp = run_cli("rm", stale)
    assert cp.returncode == 0, cp.stderr
    assert not os.path.exists(shm_path(stale))

    foreign = unique_name("foreign")
    shm_names.append(foreign)
    with open(shm_path(foreign), "wb") as f:
        f.write(b"not a ring at all" * 500)
    for args in (["rm", foreign], ["rm", foreign, "--force"]):
        assert_one_error_line(run_cli(*args), 1, "not a shmdiag ring")
        assert os.path.exists(shm_path(foreign))

    assert_one_error_line(run_cli("rm", unique_name("nosuch")), 1, "no shmdiag ring")
    cp = run_cli("rm", live.name, "--force")
    assert cp.returncode == 0 and not os.path.exists(shm_path(live.name))
    live.close()  # the creator's own unlink finds it gone: no error


# -- stats / health / peers ------------------------------------------------------------------
def _traffic(tag: str = "") -> list:
    return ([["conn", f"p1{tag}", "203.0.113.5:8333"], ["conn", f"p2{tag}", "198.51.100.7:8333"]]
            + [["msg", f"p1{tag}", "inv", "inbound", 37]] * 20 + [["msg", f"p2{tag}", "tx", "outbound", 250]] * 10
            + [["err", f"p2{tag}", "bad checksum", "read"], ["lat", "ping", 0.05, f"p1{tag}"],
               ["lat", "handshake", 0.012, f"p1{tag}"], ["disc", f"p2{tag}", "198.51.100.7:8333", "timeout"],
               ["event", "block_validated", "block 871234 valid", 1, ""]])


@pytest.mark.multiprocess
def test_stats_text_and_json(make_recorder):
    rec = make_recorder(1000)
    write(rec.name, _traffic())
    cp = run_cli("stats", rec.name, "--json")
    assert cp.returncode == 0, cp.stderr
    d = json.loads(cp.stdout)
    s = rec.get_stats()
    assert d["total_events"] == s.total_events == 37
    assert d["events_by_type"] == s.events_by_type and d["events_by_type"]["message"] == 30
    assert d["events_by_severity"] == {str(k): v for k, v in s.events_by_severity.items()}
    assert d["active_peers"] == 1
    cp = run_cli("stats", rec.name)
    assert cp.returncode == 0
    assert "total events:  37" in cp.stdout
    assert any(line.split()[:2] == ["message", "30"] for line in cp.stdout.splitlines())
    assert any(line.split()[:2] == ["ERROR", "1"] for line in cp.stdout.splitlines())


@pytest.mark.multiprocess
def test_health_text_json_and_exit_codes(make_recorder):
    rec = make_recorder(1000)
    write(rec.name, [["event", "progress", "m", 1, "p"]] * 40)
    cp = run_cli("health", rec.name)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert cp.stdout.startswith("SHMDIAG OK - healthy: ")
    # 4 errors in 44 events at INFO and above: 9% error rate, a warning
    write(rec.name, [["err", "p", "boom", "read"]] * 4)
    cp = run_cli("health", rec.name, "--json")
    assert cp.returncode == 1
    d = json.loads(cp.stdout)
    assert d["status"] == "warning" and d["total_events"] == 44 and d["writers_dead"] == 0
    assert [r["condition"] for r in d["reasons"]] == ["error_rate"]
    # 60 errors in 100: 60%, an error
    write(rec.name, [["err", "p", "boom", "read"]] * 56)
    cp = run_cli("health", rec.name)
    assert cp.returncode == 2
    assert cp.stdout.startswith("SHMDIAG CRITICAL - error: error rate 60.0%")
    assert rec.health_check().status == "error"


@pytest.mark.multiprocess
def test_peers_text_and_json(make_recorder):
    rec = make_recorder(1000)
    write(rec.name, _traffic())
    cp = run_cli("peers", rec.name, "--json")
    assert cp.returncode == 0, cp.stderr
    d = json.loads(cp.stdout)
    assert (d["total_peers"], d["active_peers"], d["disconnected_peers"]) == (2, 1, 1)
    by_id = {p["peer_id"]: p for p in d["peers"]}
    assert by_id["p1"]["bytes_received"] == 20 * 37 and by_id["p1"]["status"] == "connected"
    assert by_id["p2"]["bytes_sent_per_msg"] == {"tx": 2500} and by_id["p2"]["errors"] == 1
    assert by_id["p1"]["latency"] == pytest.approx(0.05, rel=0.02)
    cp = run_cli("peers", rec.name)
    assert cp.returncode == 0
    lines = cp.stdout.splitlines()
    assert lines[0].startswith("2 peers: 1 connected, 1 disconnected")
    rows = [x.split() for x in lines[2:]]
    assert rows[0][:3] == ["PEER", "ADDRESS", "STATUS"]
    assert rows[1][:3] == ["p2", "198.51.100.7:8333", "disconnected"]  # the busiest first
    assert rows[2][:3] == ["p1", "203.0.113.5:8333", "connected"]


# -- tail -----------------------------------------------------------------------------------
def _json_lines(text: str) -> list[dict]:
    return [orjson.loads(x) for x in text.splitlines() if x.strip()]


@pytest.mark.multiprocess
def test_tail_last_n_and_filters(make_recorder):
    rec = make_recorder(1000)
    write(rec.name, _traffic())
    everything = rec.get_events(0)

    cp = run_cli("tail", rec.name, "-n", "3", "--json")
    assert cp.returncode == 0, cp.stderr
    got = _json_lines(cp.stdout)
    assert [g["seq"] for g in got] == [e.seq for e in everything[-3:]]
    assert got[-1]["event_type"] == "block_validated" and got[-1]["message"] == "block 871234 valid"

    cp = run_cli("tail", rec.name, "--json")
    assert [g["seq"] for g in _json_lines(cp.stdout)] == [e.seq for e in everything[-10:]]

    cp = run_cli("tail", rec.name, "-n", "100", "--type", "message", "--peer", "p2", "--json")
    got = _json_lines(cp.stdout)
    assert len(got) == 10 and {(g["event_type"], g["peer_id"]) for g in got} == {("message", "p2")}

    cp = run_cli("tail", rec.name, "-n", "100", "--min-severity", "warning", "--json")
    got = _json_lines(cp.stdout)
    want = [e for e in everything if e.severity >= Severity.WARNING]
    assert [g["seq"] for g in got] == [e.seq for e in want] and len(want) == 2

    cp = run_cli("tail", rec.name, "-n", "2", "--type", "error", "--type", "peer_connected")
    lines = cp.stdout.splitlines()
    assert len(lines) == 2
    assert "ERROR" in lines[1] and "p2" in lines[1] and "Error in read" in lines[1] and "bad checksum" in lines[1]
    assert "INFO" in lines[0] and "Peer connected: 198.51.100.7:8333" in lines[0]


@pytest.mark.multiprocess
def test_tail_follow_sees_new_events_in_order(make_recorder, procs):
    rec = make_recorder(10_000)
    p, reader = start_tail(rec.name, procs, "--json")
    # Two writer processes at once, then an end marker after both.
    ws = [subprocess.Popen([sys.executable, "-c", OPS_WRITER, rec.name, json.dumps([["many", 300, tag]])],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE) for tag in ("a", "b")]
    procs.extend(ws)
    for w in ws:
        assert w.wait(timeout=60) == 0
    write(rec.name, [["event", "marker", "the-end", 1, ""]])
    lines = reader.lines_until(lambda line, _: b"the-end" in line)
    got = [orjson.loads(x) for x in lines]
    assert {g["kind"] for g in got} == {"event"}
    seqs = [g["seq"] for g in got]
    assert seqs == sorted(set(seqs)), "in order, no repeats"
    msgs = [g["message"] for g in got if g["event_type"] == "probe"]
    assert sorted(msgs) == sorted(f"{t}:{i}" for t in "ab" for i in range(300))
    for t in "ab":  # each writer's events in the order it wrote them
        assert [m for m in msgs if m.startswith(t)] == [f"{t}:{i}" for i in range(300)]
    # Everything the ring holds since the start marker was delivered: nothing missed.
    ring_seqs = [e.seq for e in rec.get_events(0) if e.seq > seqs[0] - 1]
    assert seqs == ring_seqs
    os.kill(p.pid, signal.SIGINT)
    assert p.wait(timeout=10) == 0
    assert p.stderr.read() == b""


@pytest.mark.multiprocess
def test_tail_follow_filters(make_recorder, procs):
    rec = make_recorder(1000)
    p, reader = start_tail(rec.name, procs, "--json", "--type", "probe", "--type", "marker", "--peer", "b",
                            "--peer", "")
    write(rec.name, [["many", 50, "a"], ["many", 50, "b"], ["msg", "b", "inv", "inbound", 1],
                     ["event", "marker", "the-end", 1, ""]])
    got = [orjson.loads(x) for x in reader.lines_until(lambda line, _: b"the-end" in line)]
    assert [g["message"] for g in got[:-1]] == [f"b:{i}" for i in range(50)]


@pytest.mark.multiprocess
def test_tail_follow_goes_on_across_a_clear(make_recorder, procs):
    rec = make_recorder(1000)
    p, reader = start_tail(rec.name, procs, "--json")
    write(rec.name, [["many", 5, "a"]])
    assert run_cli("clear", rec.name).returncode == 0
    write(rec.name, [["many", 5, "b"], ["event", "marker", "the-end", 1, ""]])
    got = [orjson.loads(x) for x in reader.lines_until(lambda line, _: b"the-end" in line)]
    assert [g.get("message") for g in got] == [f"a:{i}" for i in range(5)] + [f"b:{i}" for i in range(5)] + ["the-end"]


@pytest.mark.multiprocess
@pytest.mark.parametrize("as_json", [True, False])
def test_tail_follow_reports_overwritten_events(make_recorder, procs, as_json):
    rec = make_recorder(64)
    p, reader = start_tail(rec.name, procs, *(["--json"] if as_json else []))
    start_seq = rec.get_events(1)[0].seq  # the marker tail printed
    os.kill(p.pid, signal.SIGSTOP)
    try:
        write(rec.name, [["many", 1000, "flood"]])
        write(rec.name, [["event", "marker", "the-end", 1, ""]])
    finally:
        os.kill(p.pid, signal.SIGCONT)
    end_seq = rec.get_events(1)[0].seq
    lines = reader.lines_until(lambda line, _: b"the-end" in line)
    if as_json:
        got = [orjson.loads(x) for x in lines]
        delivered = [g["seq"] for g in got if g["kind"] == "event"]
        gaps = [g for g in got if g["kind"] == "gap"]
        assert gaps, "an overwrite must be reported"
        skipped = sum(g["skipped"] for g in gaps)
        assert skipped == sum(g["overwritten"] for g in gaps) >= 1000 - 64
        covered = set(delivered)
        for g in gaps:  # gap ranges never contain a delivered event
            assert not covered & set(range(g["first_seq"], g["last_seq"] + 1))
        assert delivered == sorted(set(delivered))
        assert len(delivered) + skipped == end_seq - start_seq
        # What was delivered is what the ring still holds (nothing it could deliver was skipped).
        assert delivered[-64:] == [e.seq for e in rec.get_events(0)]
    else:
        notes = [x for x in lines if x.startswith(b"-- ")]
        assert notes and all(b"events overwritten before they could be read --" in x for x in notes)
        skipped = sum(int(x.split()[1]) for x in notes)
        events = [x for x in lines if not x.startswith(b"-- ")]
        assert len(events) + skipped == end_seq - start_seq
        assert events[-1].split()[-1] == b"the-end"


def _claim_unwritten(seg, busy: bool = False) -> int:
    """Do what a writer does before it writes a record: claim a run of one sequence number
    (published in a spare shard, as claim_run does) and, with ``busy``, take its slot. Return it."""
    from shmdiag.core import layout as L

    spare = seg.max_shards - 1
    t0 = time.monotonic_ns()
    seg.native.store(seg.shard_word(spare, "run_t0"), t0)
    seq = seg.native.fetch_add(seg.header_word("head"), 1) & L.SEQ_MASK
    seg.native.store(seg.shard_word(spare, "run"), L.run_make(seq, 1))
    if busy:
        woff = seg.slot_word(seq % seg.capacity)
        assert seg.native.cas(woff, seg.native.load(woff), L.w_make(seq, 0, L.ST_BUSY))
    return seq


def test_follower_waits_for_a_claimed_record_and_says_so_when_it_never_comes(make_recorder):
    """A sequence number a writer claimed holds back everything after it, to keep order: while
    the writer's run is fresh (it may still write it), and while its slot is busy (the writer is
    inside the record) up to pending_timeout, after which it is reported unreadable. One whose
    run expired unwritten was never an event: skipped without a word. An expired record is
    reported as unreadable too. Driven in-process with a fake clock."""
    from shmdiag.core.follow import _RUN_DONE_NS, Follower, Gap, history

    rec = make_recorder(100)
    seg = rec._seg
    rec.record_message("p", "inv", "inbound", 1)
    _, cursor = history(seg, 0)
    f = Follower(seg, cursor, pending_timeout=1.0)
    _claim_unwritten(seg)  # claimed, never written, no slot taken
    t0 = time.monotonic()
    for i in range(3):
        rec.record_message("p", "inv", "inbound", 10 + i)
    assert f.poll(t0) == []  # it may still come: nothing after it is delivered before it
    out = f.poll(t0 + 2 * _RUN_DONE_NS / 1e9)  # its run expired: it never will
    assert [e.metadata["size"] for e in out] == [10, 11, 12]
    assert (f.delivered, f.unreadable, f.overwritten) == (3, 0, 0)

    t0 = time.monotonic()
    seq = _claim_unwritten(seg, busy=True)  # a writer inside the record, stopped or dead
    rec.record_message("p", "inv", "inbound", 13)
    assert f.poll(t0) == []
    assert f.poll(t0 + 0.5) == []
    out = f.poll(t0 + 1.5)
    assert isinstance(out[0], Gap) and (out[0].unreadable, out[0].overwritten) == (1, 0)
    assert out[0].first_seq == out[0].last_seq == seq
    assert [e.metadata["size"] for e in out[1:]] == [13]
    assert (f.delivered, f.unreadable, f.overwritten) == (4, 1, 0)

    # Retention cleanup deletes a record before the follower reads it.
    rec.record_event(DiagnosticEvent("old", "from the past", timestamp=datetime(2000, 1, 1, tzinfo=timezone.utc)))
    rec.record_message("p", "inv", "inbound", 99)
    assert rec.cleanup_old_events() == 1
    out = f.poll()
    assert isinstance(out[0], Gap) and out[0].unreadable == 1
    assert [e.metadata["size"] for e in out[1:]] == [99]
    assert f.poll() == []


def test_follower_survives_a_corrupt_head(make_recorder):
    """A head word far beyond anything written (foreign bytes, a bug) must not make a poll
    read 2**48 slots one batch at a time: the far part is counted in one step."""
    from shmdiag.core import layout as L
    from shmdiag.core.follow import Follower, Gap

    rec = make_recorder(100)
    seg = rec._seg
    rec.record_message("p", "inv", "inbound", 1)
    f = Follower(seg, seg.era()[0])
    gen = seg.load("head") >> L.SEQ_BITS
    bogus = L.SEQ_MASK - 10
    seg.native.store(seg.header_word("head"), (gen << L.SEQ_BITS) | bogus)
    t0 = time.monotonic()
    first = f.poll(t0)
    assert len(first) == 1 and isinstance(first[0], Gap) and first[0].overwritten == bogus - 200 - 1
    # The last two laps are the unwritten top of the head: they could be given back and written
    # (drop_run in core/_native.c), so the follower waits there, without a timeout...
    assert f.cursor == bogus - 200
    assert f.poll(t0 + 5) == []
    # ... until a record above them shows they never will be.
    rec.record_message("p", "inv", "inbound", 2)
    out = f.poll()
    assert [e.metadata["size"] for e in out if not isinstance(e, Gap)] == [2] and f.cursor == bogus + 1


def test_history_starts_following_below_a_record_in_flight(make_recorder):
    from shmdiag.core.follow import history

    rec = make_recorder(100)
    for i in range(5):
        rec.record_message("p", "inv", "inbound", i)
    head0 = rec._seg.era()[0]
    assert _claim_unwritten(rec._seg) == head0  # in flight
    rec.record_message("p", "inv", "inbound", 5)
    events, cursor = history(rec._seg, 3)
    assert [e.metadata["size"] for e in events] == [2, 3, 4]
    assert cursor == head0  # the follower starts at the record in flight, then delivers size 5
    events, _ = history(rec._seg, 3, follow=False)  # a one-off look is not hidden by it
    assert [e.metadata["size"] for e in events] == [3, 4, 5]


def test_tail_without_follow_shows_the_newest_past_a_stuck_record(make_recorder):
    rec = make_recorder(100)
    for i in range(5):
        rec.record_message("p", "inv", "inbound", i)
    _claim_unwritten(rec._seg, busy=True)  # a writer stopped inside its record
    for i in range(5, 8):
        rec.record_message("p", "inv", "inbound", i)
    out = subprocess.run([*CLI, "tail", rec.name, "-n", "3", "--json"], capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    sizes = [orjson.loads(line)["metadata"]["size"] for line in out.stdout.splitlines()]
    assert sizes == [5, 6, 7]


@pytest.mark.multiprocess
def test_tail_follow_survives_a_closed_pipe(make_recorder, procs):
    rec = make_recorder(1000)
    write(rec.name, [["many", 20, "x"]])
    p = subprocess.Popen([*CLI, "tail", rec.name, "-f", "-n", "5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(p)
    LineReader(p).lines_until(lambda line, out: len(out) == 2)  # like `| head -n 2`
    p.stdout.close()
    write(rec.name, [["many", 20, "y"]])
    assert p.wait(timeout=20) == 0
    assert b"Traceback" not in p.stderr.read()


@pytest.mark.multiprocess
def test_tail_follow_stops_when_the_ring_is_removed(procs, shm_names):
    name = unique_name("gone")
    shm_names.append(name)
    s = subprocess.Popen([*CLI, "serve", name], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(s)
    wait_for(lambda: attachable(name) or s.poll() is not None, what="serve")
    p, _ = start_tail(name, procs)
    s.send_signal(signal.SIGTERM)
    assert s.wait(timeout=20) == 0
    assert p.wait(timeout=20) == 0, p.stderr.read()
    assert b"was removed" in p.stderr.read()


@pytest.mark.multiprocess
def test_human_output_escapes_control_characters(make_recorder):
    rec = make_recorder(100)
    write(rec.name, [["conn", "evil\x1b[2J\x00", "10.0.0.9:8333"], ["err", "evil\x1b[2J\x00", "bad\nline", "read"]])
    write(rec.name, [["msg", "p", "inv", "inbound", 1]] * 30)  # keep it healthy (exit 0), rated over DEBUG too
    for args in (["tail", rec.name], ["peers", rec.name], ["stats", rec.name],
                 ["health", rec.name, "--error-rate-min-severity", "debug"]):
        cp = run_cli(*args)
        assert cp.returncode == 0, cp.stderr
        assert "\x1b" not in cp.stdout and "\x00" not in cp.stdout
    cp = run_cli("tail", rec.name, "--min-severity", "info")
    lines = cp.stdout.splitlines()
    assert len(lines) == 2 and lines[1].endswith("error: bad\\nline")
    assert "evil\\x1b[2J\\x00" in lines[0]
    cp = run_cli("tail", rec.name, "--json", "--min-severity", "info")  # JSON keeps the exact text
    assert [orjson.loads(x)["peer_id"] for x in cp.stdout.splitlines()] == ["evil\x1b[2J\x00"] * 2


# -- export / clear ---------------------------------------------------------------------------
@pytest.mark.multiprocess
def test_export_json_and_ndjson(make_recorder, tmp_path):
    rec = make_recorder(500)
    write(rec.name, _traffic() + [["many", 600, "x"]])  # overwrites: 500 retained
    events = rec.get_events(0)
    assert len(events) == 500

    cp = subprocess.run([*CLI, "export", rec.name], capture_output=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    d = orjson.loads(cp.stdout)
    assert d["name"] == rec.name and d["stats"]["total_events"] == 637
    assert [(e["seq"], e["message"]) for e in d["events"]] == [(e.seq, e.message) for e in events]
    assert cp.stderr == b""  # no progress bar when stderr is not a terminal

    out = tmp_path / "x.ndjson"
    cp = run_cli("export", rec.name, "--format", "ndjson", "-o", str(out))
    assert cp.returncode == 0, cp.stderr
    assert not (tmp_path / "x.ndjson.tmp").exists()
    rows = [orjson.loads(x) for x in out.read_bytes().splitlines()]  # events only, one per line
    assert [(r["kind"], r["seq"], r["message"]) for r in rows] == [("event", e.seq, e.message) for e in events]

    out = tmp_path / "x.json"
    cp = run_cli("export", rec.name, "-o", str(out))
    assert cp.returncode == 0
    assert len(orjson.loads(out.read_bytes())["events"]) == 500
    assert_one_error_line(run_cli("export", rec.name, "-o", str(tmp_path / "no" / "dir.json")), 1)


def test_export_shows_progress_on_a_terminal_for_a_large_ring(make_recorder, tmp_path):
    import pexpect

    rec = make_recorder(60_000)
    for i in range(60_000):
        rec.record_message("p", "inv", "inbound", i)
    out = tmp_path / "big.ndjson"
    child = pexpect.spawn(sys.executable, ["-m", "shmdiag", "export", rec.name, "--format", "ndjson", "-o", str(out)],
                          dimensions=(24, 80), timeout=60)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    tty = child.before.decode()
    assert "exporting [" in tty and "100% 60000/60000 events" in tty, tty[-300:]
    assert sum(1 for line in out.read_bytes().splitlines() if b'"seq"' in line) == 60_000


@pytest.mark.multiprocess
def test_clear(make_recorder):
    rec = make_recorder(100)
    write(rec.name, _traffic())
    cp = run_cli("clear", rec.name)
    assert cp.returncode == 0, cp.stderr
    assert "37 retained events dropped" in cp.stdout
    assert rec.get_stats().total_events == 0 and rec.get_events(0) == []


# -- errors a person can make ------------------------------------------------------------------
@pytest.mark.parametrize("cmd", ["stats", "health", "peers", "tail", "export", "clear"])
def test_unknown_ring_is_one_line(cmd):
    name = unique_name("nosuch")
    cp = run_cli(cmd, name)
    assert_one_error_line(cp, 3 if cmd == "health" else 1, name, "no shmdiag ring")  # health: UNKNOWN


def test_not_a_ring_is_one_line(shm_names):
    name = unique_name("foreign")
    shm_names.append(name)
    with open(shm_path(name), "wb") as f:
        f.write(b"\x01" * 10000)
    for cmd in ("stats", "tail", "health"):
        assert_one_error_line(run_cli(cmd, name), 3 if cmd == "health" else 1, "not a shmdiag ring")
    with open(shm_path(name), "wb") as f:
        f.write(b"tiny")
    assert_one_error_line(run_cli("stats", name), 1, "not a shmdiag ring")


def test_corrupt_and_other_version_rings_are_one_line(make_recorder):
    from shmdiag.core import layout as L

    from helpers import fix_header_crc, raw_segment, write_field

    rec = make_recorder(100)
    with raw_segment(rec.name) as mm:
        write_field(mm, L.HEADER, "version", 99)
        fix_header_crc(mm)
    assert_one_error_line(run_cli("stats", rec.name), 1, "layout version 99")
    with raw_segment(rec.name) as mm:
        write_field(mm, L.HEADER, "version", L.VERSION)
        write_field(mm, L.HEADER, "capacity", 7)
    assert_one_error_line(run_cli("tail", rec.name), 1, "corrupt header")


def test_permission_problem_is_one_line(make_recorder):
    if os.geteuid() == 0:
        pytest.skip("root may open any segment")
    rec = make_recorder(100)
    os.chmod(shm_path(rec.name), 0o000)
    try:
        assert_one_error_line(run_cli("stats", rec.name), 1, "permission denied")
    finally:
        os.chmod(shm_path(rec.name), 0o600)


def test_permission_problem_is_one_line_simulated(make_recorder, monkeypatch, capsys):
    """The same path as above for root (who may open anything): shm_open says EACCES."""
    from shmdiag.cli import main as _cli
    from shmdiag.core import segment as _segment

    rec = make_recorder(100)

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(_segment._posixshmem, "shm_open", denied)
    for cmd in ("stats", "tail", "health"):
        assert _cli.main([cmd, rec.name]) == (3 if cmd == "health" else 1)
        err = capsys.readouterr().err
        assert err == f"shmdiag: error: permission denied opening ring {rec.name!r}\n"


@pytest.mark.parametrize("args, needle", [
    (["tail", "R", "-n", "x"], "-n"),
    (["tail", "R", "-n", "-3"], "-n"),
    (["tail", "R", "--min-severity", "loud"], "severity"),
    (["export", "R", "--format", "xml"], "--format"),
    (["stats"], "NAME"),
    (["frobnicate"], "invalid choice"),
    (["stats", "R", "--bogus"], "--bogus"),
    (["stats", "../etc/passwd"], "not a valid ring name"),
    ([], "required"),
])
def test_bad_usage_exits_2_with_one_line(args, needle):
    cp = run_cli(*args)
    assert_one_error_line(cp, 2, needle)


def test_top_refuses_without_a_terminal(make_recorder):
    rec = make_recorder(100)
    cp = run_cli("top", rec.name, stdin=subprocess.DEVNULL)
    assert_one_error_line(cp, 1, "terminal")


def test_loadgen_is_wired():
    try:
        import shmdiag.loadgen.generator as lg  # noqa: F401
    except ImportError:
        cp = run_cli("loadgen")
        assert_one_error_line(cp, 1, "loadgen")
        return
    cp = run_cli("loadgen", "--help")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.startswith("usage: shmdiag loadgen")


@pytest.mark.multiprocess
def test_inspectors_do_not_write_into_the_ring(make_recorder):
    rec = make_recorder(200)
    write(rec.name, _traffic())
    before = [(w.pid, w.state) for w in rec.get_writers()]
    for args in (["stats", rec.name], ["health", rec.name, "--error-rate-min-severity", "debug"], ["peers", rec.name],
                 ["tail", rec.name], ["export", rec.name], ["ls"]):
        assert run_cli(*args).returncode == 0
    assert [(w.pid, w.state) for w in rec.get_writers()] == before  # no shard was taken
    assert rec.get_stats().total_events == 37
