"""A writer pre-faults the ring's slots a chunk at a time (madvise MADV_POPULATE_READ in the
native claim_run), so it takes one syscall per MiB instead of a minor fault per 4 KiB page in
the middle of write(); a read-only attach never does. Measured as what each process maps of the
shared memory (RssShmem in /proc/self/status), in real processes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from helpers import RSS_SHMEM_SRC

CHUNK = 1 << 20  # PF_CHUNK in shmdiag/core/_native.c
EVENTS = 100_000  # 24 MB of slots: several chunks

PROBE = RSS_SHMEM_SRC + textwrap.dedent(
    """
    import json, os, sys
    from shmdiag import Inspector, Recorder


    name, mode = sys.argv[1], sys.argv[2]
    out = {}
    if mode == "writer":
        rec = Recorder.attach(name)
        before = rss_shmem()
        rec.record_message("peer-1", "ping", "outbound", 32)  # the first event: claims a run
        out["first_event"] = rss_shmem() - before
        # A forked child has page tables of its own: it pre-faults again (its map starts empty).
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            before = rss_shmem()
            rec.record_message("peer-2", "ping", "outbound", 32)
            os.write(w, json.dumps(rss_shmem() - before).encode())
            os._exit(0)
        os.close(w)
        child = b""
        while chunk := os.read(r, 1024):
            child += chunk
        os.waitpid(pid, 0)
        out["forked_child_first_event"] = json.loads(child)
        rec.close()
    else:
        ins = Inspector.attach(name)
        ins.get_stats()  # the tables (bounded); then only a window of slots may be mapped
        before = rss_shmem()
        out["events"] = len(ins.get_events(10))
        ins.get_stats()
        out["get_events"] = rss_shmem() - before
        ins.close()
    print(json.dumps(out))
    """
)


def probe(name: str, mode: str) -> dict:
    cp = subprocess.run([sys.executable, "-c", PROBE, name, mode], capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout)


@pytest.mark.multiprocess
def test_a_writer_prefaults_a_chunk_and_a_reader_maps_only_what_it_reads(make_recorder):
    rec = make_recorder(EVENTS)
    w = probe(rec.name, "writer")
    # Without pre-faulting, one event maps a few pages (header words, the shard, one slot, the
    # peer entry: ~16 KiB); with it, the 1 MiB chunk its run starts in.
    assert w["first_event"] >= CHUNK // 2, w
    assert w["forked_child_first_event"] >= CHUNK // 2, w
    # The pages are in the ring now, pre-faulted by two processes; an inspector reading ten
    # events still maps only their window (fault-around: at most 64 KiB next to a touched page).
    for i in range(5_000):
        rec.record_message(f"peer-{i % 7}", "inv", "inbound", 37)
    r = probe(rec.name, "reader")
    assert r["events"] == 10
    assert r["get_events"] <= 1 << 20, r
    assert rec.accounting().recorded == 5_002


@pytest.mark.multiprocess
def test_prefault_changes_nothing_in_the_ring(make_recorder):
    """Pre-faulting a chunk that another process is writing in changes no byte: a second writer
    attaching (and pre-faulting the chunk the first one fills) loses nothing."""
    rec = make_recorder(EVENTS)
    for _ in range(3_000):
        rec.record_message("peer-a", "inv", "inbound", 37)
    probe(rec.name, "writer")  # pre-faults the chunk rec is filling, then records 2 events
    for _ in range(3_000):
        rec.record_message("peer-a", "inv", "inbound", 37)
    books = rec.accounting()
    assert books.recorded == 6_002 and books.lost == 0 and books.overwritten == 0, books
    events = rec.get_events(10_000)
    assert len(events) == 6_002
    assert sum(1 for e in events if e.peer_id == "peer-a") == 6_000
