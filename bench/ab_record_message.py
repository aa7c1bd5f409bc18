"""A/B: record_message (or a span) of two shmdiag trees, in one session.

    python bench/ab_record_message.py /work/main /work/wt-BRANCH [--rounds 7] [--calls 200000] [--clock cpu]
                                      [--call message|span] [--batch N]

Each round runs, alternately (A, B, B, A, ...: neither side always goes first), a fresh child
process per tree with PYTHONPATH set to it: a warm 100,000-event ring (one full lap first), then
``--calls`` record_message calls (``--call span``: ``with rec.span(...)`` blocks) timed with
perf_counter_ns, by a recorder that batches N events (``--batch``; 0, the default: none).
Prints each tree's median ns per call and the ratio B/A. A benchmark in the benchmark sense:
nothing is asserted.

``--clock cpu`` times with the child's thread CPU time instead of the wall clock: on a shared
machine the wall clock also counts the time the child waited for a core, which swamps a few
percent; CPU time still carries other work's cache misses, but not its time slices.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

CHILD = r"""
import sys, time
from shmdiag import Recorder, RecorderConfig
n, call, batch = int(sys.argv[1]), sys.argv[3], int(sys.argv[4])
clock = time.thread_time_ns if sys.argv[2] == "cpu" else time.perf_counter_ns
rec = Recorder.with_config(RecorderConfig(max_events=100_000, log_level="critical"))
rm, sp = rec.record_message, rec.span
for _ in range(100_000):
    rm("peer-7", "inv", "inbound", 37)
if batch:
    rec.set_batch(batch)
r = range(n)
if call == "span":
    t0 = clock()
    for _ in r:
        with sp("ping", "peer-7"):
            pass
    t1 = clock()
else:
    t0 = clock()
    for _ in r:
        rm("peer-7", "inv", "inbound", 37)
    t1 = clock()
rec.flush()
assert rec.get_stats().total_events == 100_000 + n
rec.close()
print((t1 - t0) / n)
"""


def run(tree: str, calls: int, clock: str = "wall", call: str = "message", batch: int = 0) -> float:
    env = dict(os.environ, PYTHONPATH=tree)
    # cwd: not a source tree ("-c" puts the cwd before PYTHONPATH on sys.path: run from a worktree,
    # both sides would import that worktree's shmdiag)
    out = subprocess.run([sys.executable, "-c", CHILD, str(calls), clock, call, str(batch)], env=env,
                         capture_output=True, text=True, timeout=600, check=True, cwd="/")
    return float(out.stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--call", choices=("message", "span"), default="message")
    ap.add_argument("--batch", type=int, default=0, help="Recorder.set_batch(N) before the timed calls")
    args = ap.parse_args()
    got: dict[str, list[float]] = {args.a: [], args.b: []}
    for i in range(args.rounds):
        order = (args.a, args.b) if i % 2 == 0 else (args.b, args.a)
        for tree in order:
            got[tree].append(run(tree, args.calls, args.clock, args.call, args.batch))
    ma, mb = statistics.median(got[args.a]), statistics.median(got[args.b])
    for tree, m in ((args.a, ma), (args.b, mb)):
        print(f"{tree}: median {m:.1f} ns/call  min {min(got[tree]):.1f}  rounds {[round(x, 1) for x in got[tree]]}")
    # On a shared machine the minimum is the least disturbed round: report both ratios.
    print(f"B/A = {mb / ma:.3f} (medians), {min(got[args.b]) / min(got[args.a]):.3f} (minima)")


if __name__ == "__main__":
    main()
