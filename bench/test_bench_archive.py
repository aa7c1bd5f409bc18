"""The archive's throughput: ``python -m pytest bench/test_bench_archive.py`` (issue 15 target:
at least 300,000 events/s archived, sustained, while a writer records).

* ``sustained``: a writer process records N record_message events as fast as it can into a ring
  that holds them all, while a RingArchiver (follower thread + SQLite thread, as ``serve
  --archive`` runs it) archives from seq 0; timed from the writer's first event until the
  archive's cursor reaches N. Figures: archived events/s, the writer's own rate, gaps (0 unless the
  archive fell a whole ring behind), and bytes on disk per event (sealed files: all indexes).
* ``follow only`` and ``sqlite only``: the two halves alone in the same run (the follower polling
  a full ring into rows; ArchiveWriter.write of those rows), for ratios: the archive can be no
  faster than its slower half.

Nothing asserts a speed; each benchmark checks that every event was archived or counted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
from _benchlib import NOTES, fill_messages

from shmdiag import Inspector, Recorder
from shmdiag.archive.archiver import RingArchiver, SqliteSink
from shmdiag.archive.rows import read_batch
from shmdiag.archive.store import ArchiveWriter, Source

N = 300_000

WRITER = """
import sys, time
sys.path.insert(0, sys.argv[3])
from _benchlib import fill_messages
from shmdiag import Recorder
rec = Recorder.attach(sys.argv[1])
n = int(sys.argv[2])
t = time.perf_counter()
fill_messages(rec, n)
print(n / (time.perf_counter() - t), flush=True)
rec.close()
"""


def _dir_bytes(d: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))


@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="shmdiag-bench-archive-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_archive_sustained_while_a_writer_records(benchmark, per_op, workdir):
    results: dict[str, float] = {}
    rounds = [0]
    rates: list[float] = []

    def run() -> None:
        rounds[0] += 1
        adir = os.path.join(workdir, f"a{rounds[0]}")
        rec = Recorder(max_events=N)  # a fresh ring each round: the archive follows it from seq 0
        with rec, Inspector.attach(rec.name) as ins:
            arc = RingArchiver(ins, [SqliteSink(ArchiveWriter(adir))], host="bench",
                               poll_interval=0.01)
            w = subprocess.Popen([sys.executable, "-c", WRITER, rec.name, str(N), os.path.dirname(__file__)],
                                 stdout=subprocess.PIPE, text=True)
            arc.start()
            while ins.seq_range()[1] == 0:  # timed from the writer's first event (not its interpreter's start)
                time.sleep(0.0005)
            t0 = time.perf_counter()
            while arc.cursor < N:
                time.sleep(0.002)
            dt = time.perf_counter() - t0
            writer_rate = float(w.communicate(timeout=120)[0])
            arc.stop()  # seals the file: the type/peer/severity indexes are built here, not timed
        assert arc.archived + arc.overwritten + arc.unreadable == N
        rates.append(arc.archived / dt)
        results.update(rate=arc.archived / dt, writer=writer_rate, gaps=arc.overwritten + arc.unreadable,
                       bytes=_dir_bytes(adir) / max(1, arc.archived))

    benchmark.pedantic(run, rounds=3, warmup_rounds=0)
    per_op(N, "event archived")
    benchmark.extra_info.update({k: round(v, 1) for k, v in results.items()})
    NOTES.append(f"archive sustained: {sorted(rates)[len(rates) // 2]:,.0f} events/s archived (median of "
                 f"{len(rates)} rounds; {min(rates):,.0f} to {max(rates):,.0f}); last round "
                 f"{results['rate']:,.0f} events/s archived while the writer "
                 f"recorded {results['writer']:,.0f}/s; gaps {results['gaps']}; "
                 f"{results['bytes']:.0f} bytes on disk per event")


def test_archive_halves(benchmark, per_op, workdir):
    """Follow only (poll a full ring into rows) vs SQLite only (write those rows): the ratio says
    which half bounds the archive."""
    rec = Recorder(max_events=N)
    try:
        fill_messages(rec, N)
        src = Source("bench", rec.name, 0)
        with Inspector.attach(rec.name) as ins:
            batches = []

            def follow() -> None:
                f = ins.follower(0)
                batches.clear()
                while f.cursor < N:
                    batches.append(read_batch(f, src))

            t0 = time.perf_counter()
            follow()
            t_follow = time.perf_counter() - t0
            assert sum(len(b.rows) for b in batches) == N
            n_dir = [0]

            def sqlite_only() -> None:
                n_dir[0] += 1
                w = ArchiveWriter(os.path.join(workdir, f"s{n_dir[0]}"))
                for b in batches:
                    for i in range(0, len(b.rows), 50_000):
                        part = b.rows[i: i + 50_000]
                        w.write(type(b)(src, part[0][1], part[-1][1] + 1, part))
                w.close(seal_now=False)

            benchmark.pedantic(sqlite_only, rounds=3, warmup_rounds=0)
            per_op(N, "event written")
            t_sql = benchmark.stats.stats.median if getattr(benchmark, "stats", None) else 0.0
    finally:
        rec.close()
    NOTES.append(f"archive halves: follower -> rows {N / t_follow:,.0f} events/s; SQLite write "
                 f"{N / t_sql if t_sql else 0:,.0f} events/s (ts index only while written)")
