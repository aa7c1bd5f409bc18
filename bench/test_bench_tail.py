"""Filters and following (issue 12): ``python -m pytest bench/test_bench_tail.py``.

* follower throughput: ``Follower.poll_raw`` batches rendered by the export's numpy renderer and
  written to a pipe (drained by another process), from the first event of a full 1M ring, as
  ``tail -f --json`` does when it is behind; the per-event path it replaced (``poll()``,
  ``event_to_dict``, orjson per event) on 100k events of the same ring, for the ratio; and
  ``shmdiag tail -f -n 0 --json`` itself, run as a user runs it, following a writer process
  that records at full speed (events delivered per second, and how many it lost);
* ``tail -n 10 --type X`` (what the command calls: ``Inspector.history`` with a filter) on 1M
  and 4M rings, for a frequent type, a rare one recorded only at the start of the ring (the
  whole ring is searched) and one never recorded (answered from the counters);
* ``get_events(100, ...)`` with each filter on a 1M ring, against ``get_events(100)``.

Nothing here asserts a speed; each benchmark checks what it timed really happened.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from datetime import timedelta

import orjson
import pytest
from _benchlib import N_PEERS, build_ring, errors_in

from shmdiag import DiagnosticEvent, Inspector, Recorder, Severity
from shmdiag.core.filter import EventFilter
from shmdiag.core.follow import Batch, Follower
from shmdiag.export.dicts import event_to_dict
from shmdiag.export.templates import render_events
from shmdiag.inspector import event_filter

CLI = [sys.executable, "-m", "shmdiag"]


@pytest.fixture(scope="module")
def ring1m():
    rec = build_ring(1_000_000)
    try:
        yield rec
    finally:
        rec.close()


class _Pipe:
    """A pipe drained by ``cat`` into a temporary file (the other end of a real pipe)."""

    def __init__(self) -> None:
        self.path = f"/tmp/shmdiag-bench-tail-{os.getpid()}.out"
        self.out = open(self.path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=self.out)
        assert self.proc.stdin is not None
        self.fp = self.proc.stdin

    def close(self) -> int:
        self.fp.close()
        self.proc.wait(timeout=60)
        self.out.close()
        size = os.path.getsize(self.path)
        os.unlink(self.path)
        return size


def _follow_fast(seg, fp) -> int:
    f = Follower(seg, seg.era()[1])
    n = 0
    while True:  # until the follower waits at the top (the unused rest of the writer's run)
        before = f.cursor
        for it in f.poll_raw(max_seqs=1 << 16):
            if isinstance(it, Batch):
                for lo in range(0, len(it), 1 << 14):  # as tail does
                    fp.write(render_events(it.raw[lo: lo + (1 << 14)]).data)
                n += len(it)
        if f.cursor == before:
            break
    fp.flush()
    return n


def _follow_per_event(seg, fp, stop: int) -> int:
    """What tail -f --json did before: decode every event, event_to_dict, orjson."""
    f = Follower(seg, seg.era()[1], batch=stop)
    n = 0
    for it in f.poll_raw(max_seqs=stop):
        if isinstance(it, Batch):
            for e in it.events():
                fp.write(orjson.dumps(event_to_dict(e), option=orjson.OPT_UTC_Z) + b"\n")
                n += 1
    fp.flush()
    return n


def _rate(benchmark, per_op, n: int) -> None:
    per_op(n)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["events_per_s"] = round(n / stats.stats.median)


@pytest.mark.benchmark(group="tail-follow")
def test_follower_to_pipe_1m(benchmark, per_op, ring1m):
    pipe = _Pipe()
    try:
        n = benchmark.pedantic(_follow_fast, args=(ring1m._seg, pipe.fp), rounds=3, warmup_rounds=1)
    finally:
        size = pipe.close()
    _rate(benchmark, per_op, n)
    # (warmup + rounds) passes, or a single one under --benchmark-disable: at least one whole pass
    assert n == 1_000_000 and size > 150 * n


@pytest.mark.benchmark(group="tail-follow")
def test_follower_per_event_before_100k(benchmark, per_op, ring1m):
    pipe = _Pipe()
    try:
        n = benchmark.pedantic(_follow_per_event, args=(ring1m._seg, pipe.fp, 100_000), rounds=2, warmup_rounds=0)
    finally:
        pipe.close()
    _rate(benchmark, per_op, n)
    assert n == 100_000


_WRITER = """
import sys, time
from shmdiag import Recorder
name, n = sys.argv[1], int(sys.argv[2])
with Recorder.attach(name) as rec:
    rm = rec.record_message
    t = time.perf_counter()
    for i in range(n):
        rm("peer-1", "inv", "inbound", 37)
    print(n / (time.perf_counter() - t), flush=True)
"""


@pytest.mark.benchmark(group="tail-follow-cli")
def test_tail_f_json_keeps_up_with_a_writer(benchmark, per_op):
    """``shmdiag tail -f -n 0 --json | (a reader)`` while one writer process records 1M
    record_message at full speed into a 1M ring: events delivered and lost, and the rate."""
    n = 1_000_000
    rec = Recorder(max_events=n)
    try:
        def run() -> tuple[int, int, float]:
            rec.record_event(DiagnosticEvent("marker", "attached", Severity.INFO))
            tail = subprocess.Popen([*CLI, "tail", rec.name, "-f", "-n", "1", "--json"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
            assert tail.stdout is not None
            fd = tail.stdout.fileno()
            sel = selectors.DefaultSelector()
            sel.register(fd, selectors.EVENT_READ)
            buf = b""
            while b"attached" not in buf:  # tail printed the marker: it is following
                assert sel.select(timeout=60), "tail did not start"
                buf += os.read(fd, 1 << 16)
            t0 = time.perf_counter()
            w = subprocess.Popen([sys.executable, "-c", _WRITER, rec.name, str(n)], stdout=subprocess.PIPE, text=True)
            got = lost = 0
            last = t0
            buf = b""
            deadline = time.monotonic() + 300
            while got + lost < n and time.monotonic() < deadline:
                if not sel.select(timeout=5):
                    continue
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                buf += chunk
                lines = buf.split(b"\n")
                buf = lines.pop()
                for line in lines:
                    if b'"kind":"event"' in line[:40]:
                        got += 1
                    elif b'"kind":"gap"' in line[:40]:
                        lost += orjson.loads(line)["skipped"]
                last = time.perf_counter()
            w.wait(timeout=120)
            tail.terminate()
            tail.communicate(timeout=30)
            return got, lost, last - t0

        got, lost, secs = benchmark.pedantic(run, rounds=1, warmup_rounds=0)
        per_op(n)
        benchmark.extra_info.update(delivered=got, lost=lost, events_per_s=round(got / secs))
        assert got + lost == n
    finally:
        rec.close()


# -- tail -n 10 --type X --------------------------------------------------------------------------

@pytest.fixture(scope="module", params=[1_000_000, 4_000_000], ids=["1M", "4M"])
def typed(request):
    """build_ring's mix after one first event of type "rare" (so finding it searches the ring)."""
    size = request.param
    rec = Recorder(max_events=size)
    try:
        rec.record_event(DiagnosticEvent("rare", "the first event", Severity.INFO))
        peers = [f"peer-{i}" for i in range(N_PEERS)]
        rm = rec.record_message
        for i in range(size - 1):
            if i % 1000 == 999:
                rec.record_error(peers[i % N_PEERS], TimeoutError("no pong in 20s"), "ping")
            else:
                rm(peers[i % N_PEERS], "inv", "inbound", 37)
        insp = Inspector.attach(rec.name)
        yield size, insp
        insp.close()
    finally:
        rec.close()


@pytest.mark.benchmark(group="tail-n-type")
@pytest.mark.parametrize("etype", ["error", "rare", "no_such_type"])
def test_tail_n10_type(benchmark, per_op, typed, etype):
    size, insp = typed
    filt = EventFilter(types={etype})

    def run():
        if insp.unrecorded(filt) is not None:  # what tail does first
            return []
        return insp.history(10, filt=filt, follow=False)[0]

    events = benchmark.pedantic(run, rounds=3 if etype == "rare" else 20, warmup_rounds=1)
    per_op(1, "call")
    benchmark.extra_info["ring"] = size
    assert len(events) == {"error": 10, "rare": 1, "no_such_type": 0}[etype]


@pytest.mark.benchmark(group="tail-n-type")
def test_tail_n10_type_cli_4m_wall(benchmark, per_op, typed):
    """The command itself, start to exit (interpreter start-up included)."""
    size, insp = typed
    if size != 4_000_000:
        pytest.skip("the 4M ring only")
    cp = benchmark.pedantic(subprocess.run, args=([*CLI, "tail", insp.name, "-n", "10", "--type", "rare", "--json"],),
                            kwargs={"capture_output": True, "timeout": 120}, rounds=3, warmup_rounds=0)
    per_op(1, "call")
    assert cp.returncode == 0 and len(cp.stdout.splitlines()) == 1


# -- get_events(100, filter) on a 1M ring ------------------------------------------------------

_FILTERS = {
    "none": {},
    "min_severity=error": {"min_severity": Severity.ERROR},
    "event_type=error": {"event_type": "error"},
    "peer_id=peer-7": {"peer_id": "peer-7"},
    "pid=self": {"pid": os.getpid()},
    "since=1h": {"since": timedelta(hours=1)},
    "type+peer": {"event_type": "error", "peer_id": "peer-99"},  # build_ring's errors are all peer-99's
}


@pytest.mark.benchmark(group="get-events-filter")
@pytest.mark.parametrize("which", list(_FILTERS))
def test_get_events_100_filtered(benchmark, per_op, ring1m, which):
    kw = _FILTERS[which]
    rounds = 50
    out = benchmark.pedantic(lambda: ring1m.get_events(100, **kw), rounds=rounds, warmup_rounds=2)
    per_op(1, "call")
    assert len(out) == 100 <= errors_in(1_000_000)
    ref = event_filter(**kw)
    assert all(ref.event(e) for e in out)


@pytest.mark.benchmark(group="get-events-filter")
@pytest.mark.parametrize("which", ["none", "event_type=error", "peer_id=peer-7"])
def test_newest_100_records_without_decoding(benchmark, per_op, ring1m, which):
    """What get_events(100, ...) costs before decoding: find, filter, copy and check 100 records."""
    from shmdiag.core.reader import newest_records

    filt = event_filter(**_FILTERS[which])
    out = benchmark.pedantic(lambda: newest_records(ring1m._seg, 100, filt), rounds=50, warmup_rounds=2)
    per_op(1, "call")
    assert len(out) == 100


# -- get_events(100) through C (read_newest + decode_slots) against the numpy/Python path -----

def _interleaved_us(fns: dict[str, object], rounds: int = 15, inner: int = 200) -> dict[str, float]:
    """Median µs per call of each function, over ``rounds`` rounds of ``inner`` calls, the
    functions taking turns within each round (load that comes and goes hits all alike)."""
    import statistics

    got: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for r in range(rounds):
        for k in order if r % 2 == 0 else order[::-1]:
            fn = fns[k]
            t = time.perf_counter()
            for _ in range(inner):
                fn()  # type: ignore[operator]
            got[k].append((time.perf_counter() - t) / inner * 1e6)
    return {k: statistics.median(v) for k, v in got.items()}


@pytest.mark.benchmark(group="get-events-native")
@pytest.mark.parametrize("sev", [Severity.DEBUG, Severity.ERROR], ids=["all", "min_severity=error"])
def test_get_events_100_native_vs_python(benchmark, per_op, ring1m, sev):
    """``get_events(100)`` on the full 1M ring as shipped (the C path), and its ratio to the
    numpy search + Python decoders (``reader._NATIVE = False``, the path before) in the same
    run: ``extra_info`` ``native_us``, ``python_us``, ``speedup``."""
    from _benchlib import NOTES

    from shmdiag.core import reader as R

    out = benchmark.pedantic(lambda: ring1m.get_events(100, sev), rounds=200, warmup_rounds=5)
    per_op(1, "call")
    assert len(out) == 100 and out[-1].seq < 1_000_000

    def python_path():
        R._NATIVE = False
        try:
            return ring1m.get_events(100, sev)
        finally:
            R._NATIVE = True

    assert python_path() == out  # the same events both ways
    us = _interleaved_us({"native": lambda: ring1m.get_events(100, sev), "python": python_path})
    speedup = us["python"] / us["native"]
    benchmark.extra_info.update(native_us=round(us["native"], 1), python_us=round(us["python"], 1),
                                speedup=round(speedup, 2))
    NOTES.append(f"get_events(100{', ERROR' if sev else ''}) on a 1M ring: {us['native']:.1f} us through C, "
                 f"{us['python']:.1f} us through numpy + Python decoders ({speedup:.2f}x, interleaved, same run)")
