"""The ring outlives its collector; memory is reserved when a ring is created (issue 11).

Real processes throughout: ``shmdiag serve`` in a subprocess SIGKILLed and started again, writer
subprocesses, library recorders in subprocesses killed mid-life, and the command run as a user
runs it (one line on stderr and a non-zero status for every error)."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from shmdiag import Inspector, Recorder, RecorderConfig, RingInUseError, RingTooLargeError
from shmdiag.collector import Collector
from shmdiag.core import layout as L

from helpers import (
    CLI,
    LineReader,
    assert_one_error_line,
    attachable,
    fix_header_crc,
    run_cli,
    shm_path,
    unique_name,
    wait_for,
    write,
    write_field,
)


def start_serve(name: str, procs: list, *args: str) -> tuple[subprocess.Popen, list[bytes]]:
    """``shmdiag serve NAME ARGS`` until it has printed its banner (its first line)."""
    p = subprocess.Popen([*CLI, "serve", name, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(p)
    lines = LineReader(p).lines_until(lambda line, _: line.startswith(b"shmdiag: "))
    return p, lines


def snapshot(name: str) -> dict:
    """Everything an inspector can tell about the ring, comparable (uptime left out)."""
    with Inspector.attach(name) as ins:
        h = dataclasses.asdict(ins.health_check())
        for k in ("uptime", "status", "message", "collector_pid", "collector_alive", "reasons", "idle_seconds"):
            h.pop(k)
        for k in [k for k in h if k.startswith("window")]:  # judged from the clock and history
            h.pop(k)
        return {
            "events": [dataclasses.asdict(e) for e in ins.get_events(0)],
            "stats": dataclasses.asdict(ins.get_stats()),
            "accounting": dataclasses.asdict(ins.accounting()),
            "health": h,
            "peers": dataclasses.asdict(ins.get_network_diagnostic()),
            "latency": {k: dataclasses.asdict(v) for k, v in ins.get_latency_stats().items()},
            "writers": [dataclasses.asdict(w) for w in ins.get_writers()],
            "config": dataclasses.asdict(ins.config),
        }


def traffic(tag: str) -> list:
    return ([["conn", f"{tag}-a", "203.0.113.5:8333"], ["conn", f"{tag}-b", "198.51.100.7:8333"]]
            + [["msg", f"{tag}-a", "inv", "inbound", 37]] * 40 + [["msg", f"{tag}-b", "tx", "outbound", 250]] * 20
            + [["err", f"{tag}-b", "bad checksum", "read"], ["lat", "ping", 0.05, f"{tag}-a"],
               ["disc", f"{tag}-b", "198.51.100.7:8333", "timeout"], ["many", 30, tag]])


def ls_row(name: str) -> dict:
    cp = run_cli("ls", "--json")
    assert cp.returncode == 0, cp.stderr
    return {r["name"]: r for r in json.loads(cp.stdout)["rings"]}[name]


# -- the ring outlives its collector ------------------------------------------------------------
@pytest.mark.multiprocess
def test_a_killed_serve_leaves_its_ring_and_serve_adopts_it(procs, shm_names):
    name = unique_name("adopt")
    shm_names.append(name)
    first, _ = start_serve(name, procs, "--max-events", "500")
    for tag in ("w1", "w2", "w3"):  # writer processes, one after another
        write(name, traffic(tag))
    per_writer = len(traffic("x")) - 1 + 30
    before = snapshot(name)
    assert before["accounting"]["recorded"] == 3 * per_writer
    with Inspector.attach(name) as ins:
        h = ins.health_check()
        assert (h.collector_pid, h.collector_alive) == (first.pid, True)

    first.send_signal(signal.SIGKILL)
    first.wait(timeout=20)
    # The resource tracker had nothing to unlink: the ring, and every event and counter, are there.
    assert os.path.exists(shm_path(name))
    assert snapshot(name) == before

    row = ls_row(name)
    assert (row["collector_pid"], row["collector_alive"], row["creator_pid"], row["creator_alive"]) == (
        first.pid, False, first.pid, False)
    assert row["total_events"] == 3 * per_writer
    line = next(x for x in run_cli("ls").stdout.splitlines() if x.startswith(name + " "))
    assert line.count(f"{first.pid} (dead)") == 2  # creator and collector

    cp = run_cli("health", name)
    assert cp.returncode == 2, cp
    assert cp.stdout.startswith(f"SHMDIAG CRITICAL - error: collector (pid {first.pid}) is not running"), cp.stdout
    h = json.loads(run_cli("health", name, "--json").stdout)
    assert (h["status"], h["collector_pid"], h["collector_alive"]) == ("error", first.pid, False)

    # Writers carry on without a collector.
    write(name, [["many", 25, "between"]])

    # Asked to adopt it with another size: refused, nothing changed.
    with open(shm_path(name), "rb") as f:
        raw = f.read()
    assert_one_error_line(run_cli("serve", name, "--max-events", "600"), 1, "max_events = 500", "600")
    with open(shm_path(name), "rb") as f:
        assert f.read() == raw

    second, banner = start_serve(name, procs, "--max-events", "500")
    assert banner[-1].startswith(f"shmdiag: adopted ring {name!r}".encode()), banner
    assert f"{3 * per_writer + 25} recorded so far".encode() in banner[-1]
    with Inspector.attach(name) as ins:
        h = ins.health_check()
        assert (h.status, h.collector_pid, h.collector_alive) == ("healthy", second.pid, True)
        assert [dataclasses.asdict(e) for e in ins.get_events(0)][: len(before["events"])] == before["events"]
    row = ls_row(name)
    assert (row["collector_pid"], row["collector_alive"], row["creator_pid"]) == (second.pid, True, first.pid)
    assert run_cli("health", name).returncode == 0

    # A live collector keeps others off: serve and rm refuse, naming it; so does a Collector.
    assert_one_error_line(run_cli("serve", name), 1, "in use", f"pid {second.pid}, still running")
    assert_one_error_line(run_cli("rm", name), 1, "in use", f"collector (pid {second.pid})")
    with Recorder.attach(name) as rec:
        with pytest.raises(RingInUseError, match=str(second.pid)):
            Collector(rec).start()

    write(name, [["many", 40, "after"]])
    with Inspector.attach(name) as ins:
        st = ins.get_stats()
        assert st.total_events == 3 * per_writer + 25 + 40  # totals continue
        assert st.events_by_type["probe"] == 3 * 30 + 25 + 40
    second.send_signal(signal.SIGTERM)
    _, err = second.communicate(timeout=20)
    assert second.returncode == 0, err
    assert b"ring removed" in err and b"Traceback" not in err
    assert not os.path.exists(shm_path(name))


@pytest.mark.multiprocess
def test_serve_started_again_adopts_the_ring_of_a_killed_adopter(procs, shm_names):
    """Adoption is repeatable, and serve without settings takes the ring's own."""
    name = unique_name("readopt")
    shm_names.append(name)
    p, _ = start_serve(name, procs, "--max-events", "300")
    write(name, [["many", 10, "a"]])
    p.kill()
    p.wait(timeout=20)
    q, banner = start_serve(name, procs)  # no --max-events: the ring's own 300
    assert b"adopted ring" in banner[-1] and b"300 events" in banner[-1]
    write(name, [["many", 5, "b"]])
    q.kill()
    q.wait(timeout=20)
    assert ls_row(name)["collector_pid"] == q.pid
    r, banner = start_serve(name, procs)
    assert b"15 recorded so far" in banner[-1]
    r.send_signal(signal.SIGINT)
    assert r.wait(timeout=20) == 0
    assert not os.path.exists(shm_path(name))


def _ring_bytes(max_events: int = 100) -> bytes:
    """The bytes of a fresh, valid ring (made under a scratch name and removed again)."""
    rec = Recorder.with_config(RecorderConfig(name=unique_name("tpl"), max_events=max_events), collector=False)
    try:
        rec.record_message("p", "inv", "inbound", 1)
        with open(shm_path(rec.name), "rb") as f:
            return f.read()
    finally:
        rec.close()


def _tampered(kind: str) -> bytes:
    raw = bytearray(_ring_bytes())
    if kind == "foreign":
        return os.urandom(64 * 1024)
    if kind == "truncated":
        return bytes(raw[: len(raw) // 2])
    if kind == "corrupt":
        raw[40:44] = b"\xff\xff\xff\xff"  # max_shards, the header checksum left as it was
        return bytes(raw)
    assert kind == "other version"
    write_field(raw, L.HEADER, "version", L.VERSION + 1)
    fix_header_crc(raw)
    return bytes(raw)


@pytest.mark.parametrize("kind, needle", [("foreign", "not a shmdiag ring"), ("truncated", "segment is"),
                                          ("corrupt", "corrupt header"), ("other version", "layout version")])
def test_serve_refuses_to_adopt_what_is_not_a_ring_of_its_version(shm_names, kind, needle):
    name = unique_name("bad")
    shm_names.append(name)
    raw = _tampered(kind)
    with open(shm_path(name), "wb") as f:
        f.write(raw)
    os.chmod(shm_path(name), 0o600)
    line = assert_one_error_line(run_cli("serve", name, "--max-events", "100"), 1, "cannot adopt", needle)
    assert "nothing was changed" in line
    with open(shm_path(name), "rb") as f:
        assert f.read() == raw  # not a byte written


# -- rings made by a library Recorder -------------------------------------------------------------
LIBRARY = textwrap.dedent(
    """
    import sys
    from shmdiag import Recorder, RecorderConfig
    name, persist, close = sys.argv[1], sys.argv[2] == "persist", sys.argv[3] == "close"
    rec = Recorder.with_config(RecorderConfig(name=name, max_events=100), persist=persist)
    for i in range(20):
        rec.record_message("p", "inv", "inbound", i)
    if close:
        rec.close()
        print("closed", flush=True)
    else:
        print("ready", flush=True)
        sys.stdin.read()  # until killed
    """
)


def _library(name: str, procs: list, persist: bool, close: bool) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", LIBRARY, name, "persist" if persist else "-",
                          "close" if close else "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    procs.append(p)
    assert p.stdout.readline() in (b"ready\n", b"closed\n"), p.stderr.read()
    return p


@pytest.mark.multiprocess
def test_a_killed_library_recorder_has_its_ring_removed_by_the_resource_tracker(procs, shm_names):
    name = unique_name("lib")
    shm_names.append(name)
    p = _library(name, procs, persist=False, close=False)
    assert os.path.exists(shm_path(name))
    p.kill()
    p.wait(timeout=20)
    wait_for(lambda: not os.path.exists(shm_path(name)), what="the resource tracker to unlink the ring")


@pytest.mark.multiprocess
def test_a_persistent_library_ring_outlives_its_recorder_and_rm_removes_it(procs, shm_names):
    killed, closed = unique_name("kept"), unique_name("closed")
    shm_names += [killed, closed]
    p = _library(killed, procs, persist=True, close=False)
    before = snapshot(killed)
    p.kill()
    p.wait(timeout=20)
    after = snapshot(killed)
    for k in ("events", "stats", "accounting", "peers", "latency", "config"):  # its writer, itself, died
        assert after[k] == before[k], k
    # It ran a collector (a creating Recorder does), which was killed with it: an error.
    cp = run_cli("health", killed)
    assert cp.returncode == 2 and f"collector (pid {p.pid}) is not running" in cp.stdout, cp
    assert run_cli("rm", killed).returncode == 0  # stale: no --force needed
    assert not os.path.exists(shm_path(killed))

    q = _library(closed, procs, persist=True, close=True)
    assert q.wait(timeout=20) == 0
    # Closed cleanly: the ring stays, with no collector and none expected: healthy.
    with Inspector.attach(closed) as ins:
        h = ins.health_check()
        assert (h.status, h.collector_pid, h.collector_alive, h.total_events) == ("healthy", 0, None, 20)
    row = ls_row(closed)
    assert (row["collector_pid"], row["creator_pid"], row["creator_alive"]) == (None, q.pid, False)
    cp = run_cli("rm", closed)
    assert cp.returncode == 0, cp.stderr
    assert not os.path.exists(shm_path(closed))


def test_the_collector_word_follows_the_collector(ring_name):
    rec = Recorder.with_config(RecorderConfig(name=ring_name, max_events=100), persist=True)
    with Inspector.attach(ring_name) as ins:
        h = ins.health_check()
        assert (h.collector_pid, h.collector_alive, h.status) == (os.getpid(), True, "healthy")
        rec.close()  # persist: the ring stays; the collector stopped cleanly
        h = ins.health_check()
        assert (h.collector_pid, h.collector_alive, h.status) == (0, None, "healthy")
    assert os.path.exists(shm_path(ring_name))
    with Recorder.attach(ring_name) as again:
        again.close(remove=True)
    assert not os.path.exists(shm_path(ring_name))


# -- writers notice when their ring is removed or replaced --------------------------------------
@pytest.mark.multiprocess
def test_a_writer_notices_its_ring_was_removed_and_warns_once(make_recorder, caplog):
    creator = make_recorder(100)
    log = logging.getLogger("shmdiag.test.writer")
    writer = Recorder.attach(creator.name, log)
    try:
        writer.record_message("p", "inv", "inbound", 1)
        assert writer.check_ring() == "" and writer.health_check().status == "healthy"
        cp = run_cli("rm", creator.name, "--force")
        assert cp.returncode == 0, cp.stderr
        with caplog.at_level(logging.WARNING, logger="shmdiag.test.writer"):
            writer.record_message("p", "inv", "inbound", 2)  # still works: into the orphan
            h = writer.health_check()
            assert (h.status, h.detached) == ("error", "ring removed")
            assert h.message.startswith("ring removed")
            assert writer.health_check().status == "error"
            assert writer.check_ring() == "ring removed"
        warnings = [r for r in caplog.records if r.name == "shmdiag.test.writer"]
        assert len(warnings) == 1 and "ring removed" in warnings[0].getMessage(), warnings
    finally:
        writer.close()


@pytest.mark.multiprocess
def test_a_writer_and_the_collector_notice_a_replaced_ring(procs, shm_names, caplog):
    name = unique_name("replaced")
    shm_names.append(name)
    first, _ = start_serve(name, procs, "--max-events", "100")
    log = logging.getLogger("shmdiag.test.replaced")
    writer = Recorder.attach(name, log)
    try:
        os.unlink(shm_path(name))  # what 'rm --force' does, by hand
        replacement = Recorder.with_config(RecorderConfig(name=name, max_events=100), collector=False)
        try:
            with caplog.at_level(logging.WARNING, logger="shmdiag.test.replaced"):
                h = writer.health_check()
                writer.health_check()
            assert (h.status, h.detached) == ("error", "replaced by another segment")
            assert len([r for r in caplog.records if r.name == "shmdiag.test.replaced"]) == 1
            assert replacement.health_check().status == "healthy"
            # On SIGTERM, serve leaves the replacement alone: it is not its ring.
            first.send_signal(signal.SIGTERM)
            _, err = first.communicate(timeout=20)
            assert first.returncode == 0, err
            assert os.path.exists(shm_path(name)) and attachable(name)
        finally:
            replacement.close()
    finally:
        writer.close()
    assert not os.path.exists(shm_path(name))


@pytest.mark.parametrize("health", [True, False])
def test_the_collector_round_logs_a_removed_ring_once(make_recorder, caplog, health):
    log = logging.getLogger("shmdiag.test.coll")
    rec = make_recorder(100, enable_health_check=health, logger=log)
    c = Collector(rec, log)
    os.unlink(shm_path(rec.name))
    with caplog.at_level(logging.INFO, logger="shmdiag.test.coll"):
        c.run_once()
        c.run_once()
    removed = [r for r in caplog.records if "ring removed" in r.getMessage() and r.levelno == logging.WARNING]
    assert len(removed) == (2 if health else 1), [r.getMessage() for r in caplog.records]


# -- memory is reserved when a ring is created ----------------------------------------------------
def _too_many_events() -> tuple[int, int]:
    """A capacity whose ring is larger than the free space of /dev/shm, and its size."""
    st = os.statvfs("/dev/shm")
    free = st.f_bavail * st.f_frsize
    n = free // L.SLOT_SIZE + 1000
    assert n <= 1 << 32
    return n, L.segment_offsets(n, 128, 4096)["total_size"]


def test_a_ring_larger_than_the_free_memory_fails_at_creation(ring_name):
    n, size = _too_many_events()
    with pytest.raises(RingTooLargeError) as info:
        Recorder(max_events=n, name=ring_name)
    text = str(info.value)
    assert f"{size} bytes" in text and "available" in text
    assert not os.path.exists(shm_path(ring_name))


def test_serve_of_an_impossible_size_is_one_line(shm_names):
    name = unique_name("huge")
    shm_names.append(name)
    n, size = _too_many_events()
    assert_one_error_line(run_cli("serve", name, "--max-events", str(n)), 1, f"{size} bytes", "is available")
    assert not os.path.exists(shm_path(name))


def test_memory_is_reserved_and_a_failed_reservation_leaves_nothing(ring_name, monkeypatch):
    with Recorder(max_events=5000, name=unique_name("res"), collector=False) as rec:
        st = os.stat(shm_path(rec.name))
        assert st.st_blocks * 512 >= st.st_size  # every page allocated, not a sparse file

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space)  # room at the check, none at fallocate
    with pytest.raises(RingTooLargeError, match="available"):
        Recorder(max_events=5000, name=ring_name)
    assert not os.path.exists(shm_path(ring_name))

