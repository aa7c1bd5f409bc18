"""Export throughput of two source trees, A/B in one session: ``python tools/ab_export.py
/work/main /work/wt-branch [--events 1000000] [--rounds 6] [--reps 5]``.

Each round runs one process per tree, alternately (so both see the same machine load), with
that tree first on PYTHONPATH: it builds ``bench/_benchlib.build_ring(events)`` and times
``write_export`` into a temporary file ``reps`` times per format in CPU time (less sensitive to
other processes on a shared machine than wall time), keeping the median. Prints each round and
the medians over the rounds, with B/A ratios. Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

CHILD = r"""
import os, statistics, sys, tempfile, time
sys.path.insert(0, os.path.join(sys.argv[1], "bench"))
import shmdiag
assert os.path.dirname(os.path.dirname(os.path.abspath(shmdiag.__file__))) == os.path.abspath(sys.argv[1])
from _benchlib import build_ring
n, reps = int(sys.argv[2]), int(sys.argv[3])
rec = build_ring(n)
try:
    for fmt in ("ndjson", "json"):
        ts = []
        for _ in range(reps):
            with tempfile.TemporaryFile() as f:
                t = time.process_time()
                k = rec.write_export(f, fmt)
                ts.append(time.process_time() - t)
                size = f.tell()
            assert k == n, (k, n)
        print(fmt, n / statistics.median(ts), size / n)
finally:
    rec.close()
"""


def run(tree: str, events: int, reps: int) -> dict[str, tuple[float, float]]:
    env = dict(os.environ, PYTHONPATH=tree)
    # cwd=tree: `python -c` puts the working directory first on sys.path, before PYTHONPATH
    cp = subprocess.run([sys.executable, "-c", CHILD, tree, str(events), str(reps)], env=env, cwd=tree,
                        capture_output=True, text=True, timeout=1800, check=True)
    out = {}
    for line in cp.stdout.splitlines():
        fmt, eps, size = line.split()
        out[fmt] = (float(eps), float(size))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    got: dict[str, dict[str, list[float]]] = {args.a: {}, args.b: {}}
    sizes: dict[str, dict[str, float]] = {args.a: {}, args.b: {}}
    for i in range(args.rounds):
        for tree in (args.a, args.b):
            r = run(tree, args.events, args.reps)
            for fmt, (eps, size) in r.items():
                got[tree].setdefault(fmt, []).append(eps)
                sizes[tree][fmt] = size
            print(f"round {i + 1} {tree}: " + "  ".join(f"{f} {eps / 1e6:.2f} M/s {s:.0f} B/ev"
                                                          for f, (eps, s) in r.items()), flush=True)
    for fmt in got[args.a]:
        ma, mb = statistics.median(got[args.a][fmt]), statistics.median(got[args.b][fmt])
        print(f"{fmt}: A {ma / 1e6:.2f} M events/s ({sizes[args.a][fmt]:.0f} B/event), "
              f"B {mb / 1e6:.2f} M events/s ({sizes[args.b][fmt]:.0f} B/event), B/A {mb / ma:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
