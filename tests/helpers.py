"""Helpers shared by the test modules (plain functions and constants; fixtures are in conftest.py).

Test modules import from here (``from helpers import ...``: pytest puts ``tests/`` on sys.path),
never from one another. Child processes may import it too: a ``python -c`` script after
``sys.path.insert(0, <tests dir>)``, and multiprocessing's spawn children, which inherit sys.path.
"""

from __future__ import annotations

import json
import mmap
import os
import secrets
import selectors
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from shmdiag import DiagnosticEvent, Recorder, Severity
from shmdiag.core import layout as L

TESTS_DIR = Path(__file__).resolve().parent
SHM_DIR = "/dev/shm"
CLI = [sys.executable, "-m", "shmdiag"]


# -- ring names -------------------------------------------------------------------------------
def unique_name(tag: str = "t") -> str:
    return f"shmdiag-test-{os.getpid()}-{tag}-{secrets.token_hex(4)}"


def shm_path(name: str) -> str:
    return os.path.join(SHM_DIR, name)


def unlink_quietly(name: str) -> None:
    try:
        os.unlink(shm_path(name))
    except FileNotFoundError:
        pass


# -- raw access to a segment, for tampering ------------------------------------------------
# Not SharedMemory(name=...): on Python < 3.13 it registers the segment with this process's
# resource tracker, and unregistering again makes the tracker print a KeyError traceback when the
# creating Recorder unlinks the ring later. A plain mmap of /dev/shm/<name> involves no tracker.
@contextmanager
def raw_segment(name: str) -> Iterator[mmap.mmap]:
    fd = os.open(shm_path(name), os.O_RDWR)
    try:
        mm = mmap.mmap(fd, 0)
        try:
            yield mm
        finally:
            mm.close()
    finally:
        os.close(fd)


def field_span(dtype: np.dtype, field: str, base: int = 0) -> tuple[int, np.dtype]:
    fdtype, off = dtype.fields[field][:2]
    return base + off, fdtype


def read_field(mm, dtype: np.dtype, field: str, base: int = 0):
    off, fdtype = field_span(dtype, field, base)
    return np.frombuffer(mm[off: off + fdtype.itemsize], dtype=fdtype)[0]


def write_field(mm, dtype: np.dtype, field: str, value, base: int = 0) -> None:
    off, fdtype = field_span(dtype, field, base)
    raw = np.asarray(value, dtype=fdtype.base).reshape(fdtype.shape).tobytes()
    assert len(raw) == fdtype.itemsize
    mm[off: off + fdtype.itemsize] = raw


def fix_header_crc(mm) -> None:
    write_field(mm, L.HEADER, "header_crc", L.header_crc(mm[: L.HEADER_STATIC_SIZE]))


def own_shard_base(mm) -> int:
    """Byte offset of the shard this process owns in the segment mapped as ``mm``."""
    shards_off = int(read_field(mm, L.HEADER, "shards_off"))
    for i in range(int(read_field(mm, L.HEADER, "max_shards"))):
        b = shards_off + i * L.SHARD.itemsize
        if int(read_field(mm, L.SHARD, "owner", b)) == (os.getpid() << 8) | L.SH_ACTIVE:
            return b
    raise AssertionError("no shard owned by this process")


def slot_base(mm, slot: int) -> int:
    """Byte offset of slot ``slot``, from the segment's own header."""
    return int(read_field(mm, L.HEADER, "slots_off")) + slot * L.SLOT_SIZE


# -- the shmdiag command, and writer processes driven by operations -------------------------
# A writer process: attaches by name and records the operations given as JSON, then closes.
OPS_WRITER = textwrap.dedent(
    """
    import json, sys, time
    from shmdiag import DiagnosticEvent, Recorder, Severity
    name, ops = sys.argv[1], json.loads(sys.argv[2])
    with Recorder.attach(name) as rec:
        for op in ops:
            kind, args = op[0], op[1:]
            if kind == "msg":
                rec.record_message(*args)
            elif kind == "conn":
                rec.record_peer_connection(*args)
            elif kind == "disc":
                rec.record_peer_disconnection(*args)
            elif kind == "err":
                rec.record_error(*args)
            elif kind == "lat":
                rec.record_latency(*args)
            elif kind == "event":
                etype, message, sev, peer = args
                rec.record_event(DiagnosticEvent(etype, message, Severity(sev), peer_id=peer))
            elif kind == "many":  # n numbered probe events
                n, tag = args
                for i in range(n):
                    rec.record_event(DiagnosticEvent("probe", f"{tag}:{i}", Severity.INFO, peer_id=tag))
            elif kind == "sleep":
                time.sleep(args[0])
    print("done", flush=True)
    """
)


def run_cli(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """``python -m shmdiag ARGS``, text output captured."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, **kw)


def assert_one_error_line(cp: subprocess.CompletedProcess, status: int, *needles: str) -> str:
    assert cp.returncode == status, (cp.returncode, cp.stdout, cp.stderr)
    assert "Traceback" not in cp.stderr, cp.stderr
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1, cp.stderr
    assert lines[0].startswith("shmdiag: error: "), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]

def write(name: str, ops: list) -> None:
    """Record ``ops`` from a separate writer process, and wait for it."""
    cp = subprocess.run([sys.executable, "-c", OPS_WRITER, name, json.dumps(ops)], capture_output=True, text=True,
                        timeout=60)
    assert cp.returncode == 0, cp.stderr


def wait_for(cond: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def attachable(name: str) -> bool:
    try:
        Recorder.attach(name).close()
        return True
    except Exception:
        return False


class LineReader:
    """Lines from a child's stdout pipe, with a deadline (never blocks the test forever)."""

    def __init__(self, proc: subprocess.Popen, stream=None) -> None:
        self.proc = proc
        self.stream = proc.stdout if stream is None else stream
        self.buf = b""
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.stream, selectors.EVENT_READ)
        self.eof = False

    def lines_until(self, done, timeout: float = 20.0) -> list[bytes]:
        out: list[bytes] = []
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                out.append(line)
                if done(line, out):
                    return out
            if self.eof or time.monotonic() > deadline:
                raise AssertionError(f"output ended or timed out; got {len(out)} lines, last: {out[-3:]}")
            if self.sel.select(timeout=0.2):
                chunk = os.read(self.stream.fileno(), 65536)
                if not chunk:
                    self.eof = True
                self.buf += chunk


def start_tail(name: str, procs: list, *extra: str) -> tuple[subprocess.Popen, LineReader]:
    """tail -f, started after a marker event, so that the marker's line proves it is following."""
    marker = f"marker-{time.monotonic_ns()}"
    write(name, [["event", "marker", marker, 1, ""]])
    p = subprocess.Popen([*CLI, "tail", name, "-f", "-n", "1", *extra], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    procs.append(p)
    reader = LineReader(p)
    reader.lines_until(lambda line, _: marker.encode() in line)
    return p, reader


# -- writers whose events check themselves ----------------------------------------------------
# Writers encode who they are and what they are writing into several fields of every event, so a
# torn or mixed record (fields from two different events) is caught by cross-checking them.
# The code an unrelated writer runs: `python -c PROBE_WRITER <name> <writer> <threads> <n> <gofile>`.
PROBE_WRITER = textwrap.dedent(
    """
    import os, sys, threading, time
    from shmdiag import DiagnosticEvent, Recorder
    name, w, threads, n, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]

    def run(rec, t):
        peer = f"w{w}t{t}"
        for i in range(n):
            if i % 4 == 0:
                rec.record_event(DiagnosticEvent("probe", f"{w}:{t}:{i}", peer_id=peer,
                                                 metadata={"w": w, "t": t, "i": i}))
            else:
                rec.record_message(peer, f"m{w}.{t}.{i}", "outbound", i)

    rec = Recorder.attach(name)
    while not os.path.exists(go):
        time.sleep(0.001)
    ts = [threading.Thread(target=run, args=(rec, t)) for t in range(threads)]
    for th in ts: th.start()
    for th in ts: th.join()
    if len(sys.argv) < 7:
        rec.close()
    """
)


def mp_writer(name: str, w: int, threads: int, n: int, go: str) -> None:
    """The same writer, started by multiprocessing (spawn) instead of `python -c`."""
    sys.argv = ["-c", name, str(w), str(threads), str(n), go]
    exec(compile(PROBE_WRITER, "<writer>", "exec"), {"__name__": "__writer__"})


def popen_writer(name: str, w: int, threads: int, n: int, go: Path, *, close: bool = True) -> subprocess.Popen:
    args = [sys.executable, "-c", PROBE_WRITER, name, str(w), str(threads), str(n), str(go)]
    if not close:
        args.append("no-close")
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def check_intact(events: list[DiagnosticEvent]) -> dict[tuple[int, int], list[int]]:
    """Assert each event's fields agree with each other; return i's per (writer, thread) in seq order."""
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs), "events must come oldest first"
    assert len(set(seqs)) == len(seqs), "duplicate sequence numbers"
    per: dict[tuple[int, int], list[int]] = defaultdict(list)
    for e in events:
        assert e.peer_id.startswith("w") and "t" in e.peer_id, e
        w, t = (int(x) for x in e.peer_id[1:].split("t"))
        if e.event_type == "probe":
            assert e.message == f"{w}:{t}:{e.metadata['i']}", e
            assert e.metadata["w"] == w and e.metadata["t"] == t, e
            i = e.metadata["i"]
            assert i % 4 == 0 and e.severity == Severity.INFO, e
        else:
            assert e.event_type == "message" and e.severity == Severity.DEBUG, e
            i = e.metadata["size"]
            assert e.metadata["message_type"] == f"m{w}.{t}.{i}", e
            assert e.metadata["direction"] == "outbound" and i % 4 != 0, e
        assert not e.truncated
        per[(w, t)].append(i)
    for key, seen in per.items():
        assert seen == sorted(seen) and len(set(seen)) == len(seen), f"writer {key} out of order or repeated"
    return per


def reconcile(rec: Recorder, hijacked: int = 0) -> None:
    """recorded == retained + overwritten + lost + abandoned + expired, exactly (no writer in flight)."""
    acct = rec.accounting()
    retained = len(rec.get_events(0))
    assert acct.in_flight == 0, acct
    assert acct.recorded == retained + acct.overwritten + acct.lost + acct.abandoned + acct.expired + hijacked, (
        acct, retained)


def attach_and_exit(name: str, close: bool) -> None:
    """A process that attaches, records one connection and exits (closing its recorder or not)."""
    rec = Recorder.attach(name)
    rec.record_peer_connection(f"peer-{os.getpid()}", "127.0.0.1:8333")
    if close:
        rec.close()


# -- runs of sequence numbers ---------------------------------------------------------------
def run_of(rec: Any) -> tuple[int, int]:
    """(first seq, length) of the run this process's shard says it uses."""
    word = int(rec._seg.shards["run"][rec._shards.index])
    assert word > L.RUN_CLAIMING, word
    first, end = L.run_span(word)
    return first, end - first


def written_in(rec: Any, first: int, n: int) -> int:
    """How many seqs of the run [first, first + n) their slots hold."""
    seqs = range(first, first + n)
    return sum(int(L.w_seq(int(rec._seg.slots["w"][s % rec._seg.capacity]))) == s for s in seqs)


def end_mid_run(rec: Any) -> tuple[int, int, int]:
    """Record until this process's run is partly used; return (first, length, used)."""
    while True:
        first, n = run_of(rec)
        used = written_in(rec, first, n)
        if 0 < used < n:
            return first, n, used
        rec.record_message("fast", "inv", "inbound", 37)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need_binary(name: str) -> str:
    """The path of the program ``name`` (a real server or tool the test runs). Missing, the test
    is skipped, unless SHMDIAG_REQUIRE_TOOLS is set (``.ci/run`` sets it after installing them),
    where a missing program fails the test rather than hiding it."""
    import shutil

    import pytest

    path = shutil.which(name) or next((p for d in ("/usr/sbin", "/sbin") if os.path.exists(p := f"{d}/{name}")), None)
    if path is None:
        msg = f"{name} is not installed (.ci/run installs it)"
        if os.environ.get("SHMDIAG_REQUIRE_TOOLS"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def http_json(url: str, data: object = None, timeout: float = 5.0) -> Any:
    """GET (or POST ``data`` as JSON to) ``url``; the decoded JSON answer."""
    import urllib.request

    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


_VALIDATORS: dict = {}


def validate_json(doc: object, kind: str) -> None:
    """Raise jsonschema.ValidationError where ``doc`` departs from shmdiag/schemas/<kind>.schema.json
    (strict: an undocumented field fails)."""
    if not _VALIDATORS:
        from jsonschema import Draft202012Validator
        from referencing import Registry, Resource

        from shmdiag.export.schema import load_schema, schema_names

        schemas = {n: load_schema(n) for n in schema_names()}
        registry = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in schemas.values())
        _VALIDATORS.update({n: Draft202012Validator(s, registry=registry) for n, s in schemas.items()})
    _VALIDATORS[kind].validate(doc)


# The source of rss_shmem(), for probe scripts run with ``python -c`` (prepend it): bytes of
# shared memory mapped into the probe's page tables, which tells whether it faulted pages in.
RSS_SHMEM_SRC = """
def rss_shmem():
    for line in open("/proc/self/status"):
        if line.startswith("RssShmem:"):
            return int(line.split()[1]) * 1024
    raise SystemExit("no RssShmem in /proc/self/status")
"""
