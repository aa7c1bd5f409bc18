"""Regression tests for the defects an adversarial campaign found (issue 9): each one failed
before its fix."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import textwrap
import threading

import numpy as np
import orjson
import pytest

from shmdiag import NotARingError, Recorder, ShmDiagError
from shmdiag.core import layout as L

from helpers import (
    CLI,
    own_shard_base,
    raw_segment,
    read_field,
    run_cli,
    shm_path,
    slot_base,
    unique_name,
    unlink_quietly,
    write_field,
)


def assert_clean(cp: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in cp.stderr and "unexpected" not in cp.stderr, cp.stderr


# -- 1. clear generations never share a word with another field ----------------------------
def test_no_two_layout_fields_overlap():
    for dt in (L.HEADER, L.SHARD, L.PEER, L.OP_BANK, L.OP, L.SLOT):
        L.check_no_overlap(dt)
    base_of = L.HEADER.fields["base_of"]
    end = base_of[1] + base_of[0].itemsize
    for f in ("peers_untracked", "peer_events_untracked"):
        assert not base_of[1] <= L.HEADER.fields[f][1] < end


def test_overlap_check_refuses_overlapping_fields():
    bad = L._struct(32, ("a", "<u8", (2,), 0), ("b", "<u8", 8))
    with pytest.raises(AssertionError, match="'b' at 8 overlaps 'a'"):
        L.check_no_overlap(bad)


def test_clear_eight_times_forgets_everything(make_recorder):
    r = make_recorder(1000)
    for c in range(8):
        r.record_message("p", "inv", "inbound", c)
        r.clear_events()
    assert (len(r.get_events(0)), r.get_stats().total_events) == (0, 0)


CLEARER = textwrap.dedent(
    """
    import sys
    from shmdiag import Recorder
    with Recorder.attach(sys.argv[1]) as r:
        for i in range(100):
            r.record_message("q", "tx", "outbound", i)
            r.clear_events()
            assert r.get_stats().total_events == 0 or True  # the other process may have recorded since
    """
)


@pytest.mark.multiprocess
def test_a_hundred_clears_from_two_processes_keep_the_books(make_recorder):
    """Two processes each record and clear 100 times, interleaved, with a full peer table so
    untracked connects also land in the header: afterwards nothing from before the last clear
    is retained and the accounting identity holds."""
    r = make_recorder(1000, max_peers=1)
    r.record_peer_connection("only", "10.0.0.1:8333")
    other = subprocess.Popen([sys.executable, "-c", CLEARER, r.name])
    for i in range(100):
        r.record_peer_connection(f"extra{i}", "10.0.0.2:8333")  # untracked: the table is full
        r.record_message("p", "inv", "inbound", i)
        r.clear_events()
    assert other.wait(timeout=60) == 0
    r.clear_events()
    h = r.health_check()
    assert (len(r.get_events(0)), r.get_stats().total_events, h.event_count) == (0, 0, 0)
    r.record_message("p", "inv", "inbound", 1)
    a = r.accounting()
    assert a.recorded == 1 == len(r.get_events(0))
    assert a.recorded == r.health_check().event_count + a.overwritten + a.lost + a.abandoned + a.expired


# -- 2. export -o writes into FIFOs and devices, and replaces only regular files ------------
def test_export_into_a_fifo_keeps_the_fifo(make_recorder, tmp_path):
    r = make_recorder(100)
    r.record_message("p", "inv", "inbound", 7)
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    got: list[bytes] = []

    def read() -> None:  # blocks until a writer opens the FIFO: in a thread, so a regression fails, not hangs
        with open(fifo, "rb") as fp:
            got.append(fp.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    cli = subprocess.Popen([*CLI, "export", r.name, "-o", str(fifo)], stderr=subprocess.PIPE, text=True)
    assert cli.wait(timeout=30) == 0, cli.stderr.read()
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    reader.join(timeout=30)
    (data,) = got
    assert [e["message"] for e in orjson.loads(data)["events"]] == ["Message inbound: inv (7 bytes)"]
    assert not (tmp_path / "f.tmp").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_export_into_a_device_keeps_the_device(make_recorder, tmp_path):
    """A character device of our own (a null device in tmp_path), never the system's /dev/null:
    a regression here would replace the node, and must not break the machine."""
    r = make_recorder(100)
    r.record_message("p", "inv", "inbound", 7)
    dev = tmp_path / "null"
    os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    before = os.stat(dev)
    cp = run_cli("export", r.name, "-o", str(dev))
    assert cp.returncode == 0, cp.stderr
    after = os.stat(dev)
    assert stat.S_ISCHR(after.st_mode) and (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)
    assert not (tmp_path / "null.tmp").exists()


def test_export_replaces_a_regular_file_whole(make_recorder, tmp_path):
    r = make_recorder(100)
    r.record_message("p", "inv", "inbound", 7)
    out = tmp_path / "x.json"
    out.write_bytes(b"old")
    assert run_cli("export", r.name, "-o", str(out)).returncode == 0
    assert len(orjson.loads(out.read_bytes())["events"]) == 1


# -- 3, 7. garbage head and base words: both read paths agree, and nothing raises -----------
def _damage_header(name: str, field: str, value: int, item: int | None = None) -> None:
    with raw_segment(name) as mm:
        if item is None:
            write_field(mm, L.HEADER, field, value)
        else:
            arr = np.array(read_field(mm, L.HEADER, field))
            arr[item] = value
            write_field(mm, L.HEADER, field, arr)


def _tail_seqs(name: str, n: int) -> list[int]:
    cp = run_cli("tail", "-n", str(n), "--json", name)
    assert_clean(cp)
    assert cp.returncode == 0, cp.stderr
    return [orjson.loads(line)["seq"] for line in cp.stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("value", [2**64 - 2, 2**48 - 1, 12345])
def test_garbage_base_word_is_never_a_crash(make_recorder, value):
    r = make_recorder(100_000)
    for i in range(50):
        r.record_message("p", "inv", "inbound", i)
    _damage_header(r.name, "base_of", value, item=0)
    events = r.get_events(10)
    assert len(events) <= 10
    assert [e.seq for e in events] == [e.seq for e in r.get_events(0)][-10:]
    assert _tail_seqs(r.name, 10) == [e.seq for e in events]


@pytest.mark.parametrize("value", [2**48 - 1, 2**40, 3])
def test_garbage_head_word_both_paths_agree(make_recorder, value):
    r = make_recorder(1000)
    for i in range(50):
        r.record_message("p", "inv", "inbound", i)
    with raw_segment(r.name) as mm:
        head = int(read_field(mm, L.HEADER, "head"))
        write_field(mm, L.HEADER, "head", (head & ~L.SEQ_MASK) | value)
    want = [e.seq for e in r.get_events(0)][-10:]
    assert [e.seq for e in r.get_events(10)] == want
    assert _tail_seqs(r.name, 10) == want


# -- 4, 5. garbage counters give figures within bounds ---------------------------------------
def test_peers_json_with_huge_per_message_counters(make_recorder):
    r = make_recorder(100)
    r.record_message("p", "inv", "inbound", 5)
    r.record_message("p", "tx", "inbound", 5)
    with raw_segment(r.name) as mm:
        # Name both registry entries alike and give both counters 2**63: one key, 2**64 together.
        for field in ("msg_name", "msg_state"):
            arr = np.array(read_field(mm, L.HEADER, field))
            arr[1] = arr[0]
            write_field(mm, L.HEADER, field, arr)
        peers_off = int(read_field(mm, L.HEADER, "peers_off"))
        pindex_off = L.pindex_offset({f: read_field(mm, L.HEADER, f) for f in ("shards_off", "max_shards")})
        for i in range(2 * int(read_field(mm, L.HEADER, "max_peers"))):
            b = peers_off + i * L.PEER.itemsize
            if int(read_field(mm, L.PEER_INDEX, "key_state", pindex_off + i * L.PEER_INDEX.itemsize)) & 3 == 2:
                arr = np.zeros(L.MSG_TYPES, dtype=np.uint64)
                arr[:2] = 2**63
                write_field(mm, L.PEER, "bytes_recv_per_msg", arr, b)
    cp = run_cli("peers", "--json", r.name)
    assert_clean(cp)
    assert cp.returncode == 0, cp.stderr
    (peer,) = orjson.loads(cp.stdout)["peers"]
    assert max(peer["bytes_received_per_msg"].values()) == 2**64 - 1


def test_garbage_severity_counter_is_inconsistent_not_a_rate(make_recorder):
    r = make_recorder(5)
    for i in range(5):
        r.record_message("p", "inv", "inbound", i)
    with raw_segment(r.name) as mm:
        b = own_shard_base(mm)
        sev = np.array(read_field(mm, L.SHARD, "sev", b))
        sev[3] = 2**40
        write_field(mm, L.SHARD, "sev", sev, b)
    s, h = r.get_stats(), r.health_check()
    assert 0.0 <= s.error_rate <= 1.0 and 0.0 <= h.error_rate <= 1.0
    assert s.writers_inconsistent == 1 == h.writers_inconsistent
    assert h.status == "warning" and "do not add up" in h.message
    assert s.total_events == 5  # the books still count what the shard recorded


def test_consistent_shards_are_believed(make_recorder):
    r = make_recorder(100)
    r.record_error("p", "boom", "op")
    r.record_message("p", "inv", "inbound", 1)
    s = r.get_stats()
    assert (s.writers_inconsistent, s.error_rate) == (0, 0.5)


# -- 6. a damaged newest record does not shorten get_events(limit) ---------------------------
def test_damaged_newest_record_get_events_looks_further_back(make_recorder):
    r = make_recorder(5000)
    for i in range(5000):
        r.record_message("p", "inv", "inbound", i)
    newest = r.get_events(1)[0]
    with raw_segment(r.name) as mm:
        off = slot_base(mm, newest.seq % 5000) + L.SLOT.fields["text"][1]
        mm[off] ^= 0xFF
    got = [e.seq for e in r.get_events(10)]
    assert len(got) == 10 and newest.seq not in got
    assert got == [e.seq for e in r.get_events(0)][-10:]
    assert _tail_seqs(r.name, 10) == got


# -- 8. directories and symlinks in /dev/shm are refused as foreign --------------------------
@pytest.fixture
def shm_entry():
    name = unique_name("dir")
    yield name
    path = shm_path(name)
    if os.path.islink(path):
        os.unlink(path)
    elif os.path.isdir(path):
        os.rmdir(path)
    unlink_quietly(name)


def test_attach_to_directory_is_not_a_ring(shm_entry):
    os.mkdir(shm_path(shm_entry))
    with pytest.raises(NotARingError, match=shm_entry):
        Recorder.attach(shm_entry)
    cp = run_cli("stats", shm_entry)
    assert_clean(cp)
    assert cp.returncode != 0 and len(cp.stderr.strip().splitlines()) == 1


def test_attach_to_symlink_is_not_a_ring(shm_entry, make_recorder):
    target = make_recorder(10)
    os.symlink(shm_path(target.name), shm_path(shm_entry))
    with pytest.raises(ShmDiagError, match=shm_entry):
        Recorder.attach(shm_entry)


def test_attach_to_fifo_is_refused_not_a_hang(shm_entry):
    """shm_open of a FIFO would wait for a writer (read-only) before anything could refuse it."""
    os.mkfifo(shm_path(shm_entry))
    cp = run_cli("stats", shm_entry, timeout=30)
    assert_clean(cp)
    assert cp.returncode != 0 and "not a regular file" in cp.stderr
    with pytest.raises(NotARingError, match="not a regular file"):
        Recorder.attach(shm_entry)


# -- 9. the log gets a bounded text, as the ring does ----------------------------------------
def test_record_error_logs_a_bounded_text(make_recorder):
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger(unique_name("log"))
    logger.addHandler(Keep())
    logger.setLevel(logging.DEBUG)
    r = make_recorder(10, logger=logger)
    r.record_error("p", "x" * 10_000_000, "parse")
    (rec,) = records
    line = rec.getMessage()
    assert len(line) < L.TEXT_MAX + 200 and "more characters" in line  # the ring's budget, not 10 MB
    assert line.startswith("error [p] Error in parse: xxx")


# -- found by the fuzz test -------------------------------------------------------------------
def test_rm_refuses_a_ring_whose_creator_runs_whatever_its_collector_word_says(make_recorder):
    """The collector word is live and unchecksummed: naming a dead process there must not make
    a ring whose creator is running look stale."""
    r = make_recorder(100)
    r.record_message("p", "inv", "inbound", 1)
    with raw_segment(r.name) as mm:
        write_field(mm, L.HEADER, "collector", L.clear_make(4194305, 1))
    cp = run_cli("rm", r.name)
    assert_clean(cp)
    assert cp.returncode == 1 and os.path.exists(shm_path(r.name)), (cp.stdout, cp.stderr)
    assert len(r.get_events(0)) == 1
