"""A/B: ``get_events(100)`` on a full 1,000,000-event ring, two shmdiag trees, one session.

    python bench/ab_get_events.py /work/main /work/wt-BRANCH [--rounds 5] [--size 1000000]

Each round runs, alternately (A, B, B, A, ...), a fresh child process per tree with PYTHONPATH
set to it: bench/_benchlib.build_ring(size) (record_message traffic, 0.1% record_error), then
the median of 200 timed ``get_events(100)`` calls, plus the same for its two halves: finding
and copying the 100 records (``reader.newest_records``) and decoding them
(``reader.decode_records``). Prints each tree's medians (µs) and the ratios B/A. Nothing is
asserted (tests/test_kinds.py and tests/test_decode_fast.py check that the decoders agree).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

CHILD = r"""
import statistics, sys, time
sys.path.insert(0, sys.argv[2])
from _benchlib import build_ring
from shmdiag.core import reader as R
rec = build_ring(int(sys.argv[1]))
seg = rec._seg
recs = R.newest_records(seg, 100)
def med(f, n=200):
    for _ in range(20):
        f()
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns(); f(); out.append(time.perf_counter_ns() - t0)
    return statistics.median(out) / 1e3
g = med(lambda: rec.get_events(100))
r = med(lambda: R.newest_records(seg, 100))
d = med(lambda: R.decode_records(seg, recs))
assert len(rec.get_events(100)) == 100
rec.close()
print(g, r, d)
"""


def run(tree: str, size: int) -> tuple[float, float, float]:
    env = dict(os.environ, PYTHONPATH=tree)
    here = os.path.dirname(os.path.abspath(__file__))
    # cwd: not a source tree ("-c" puts the cwd before PYTHONPATH on sys.path)
    out = subprocess.run([sys.executable, "-c", CHILD, str(size), here], env=env, capture_output=True,
                         text=True, timeout=600, check=True, cwd="/")
    g, r, d = out.stdout.split()
    return float(g), float(r), float(d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=1_000_000)
    args = ap.parse_args()
    got: dict[str, list[tuple[float, float, float]]] = {args.a: [], args.b: []}
    for i in range(args.rounds):
        order = (args.a, args.b) if i % 2 == 0 else (args.b, args.a)
        for tree in order:
            got[tree].append(run(tree, args.size))
    meds = {}
    for tree in (args.a, args.b):
        cols = list(zip(*got[tree], strict=True))
        meds[tree] = [statistics.median(c) for c in cols]
        g, r, d = meds[tree]
        print(f"{tree}: get_events(100) {g:.0f} µs  (records {r:.0f} µs, decode {d:.0f} µs)")
    a, b = meds[args.a], meds[args.b]
    print(f"B/A: get_events {b[0] / a[0]:.3f}  records {b[1] / a[1]:.3f}  decode {b[2] / a[2]:.3f}")


if __name__ == "__main__":
    main()
