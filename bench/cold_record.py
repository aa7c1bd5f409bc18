"""What a recording call costs when its cache lines are cold, as they are inside a real program.

    python bench/cold_record.py [TREE ...] [--calls 20000] [--trash 0,2,8,32] [--rounds 3] [--batch N]

A tight loop prices ``record_message`` at ~350 ns because every line it touches (the Recorder,
the native Mapping and its layout, the shard's counters, the header's registry, the peer entry,
the slot) stays in cache from one call to the next. Inside the crawler each message brings
~35 us of other work between two calls. Here, before each timed call, a numpy stride write
over TRASH MiB evicts the caches (0: warm, the tight loop's case); each call is timed alone
(perf_counter_ns, the timer's own cost subtracted) and the median is printed, for
``record_message`` and for ``with span(...)``. The ring has been filled once first (a lapped
ring: no page faults in the timed calls). One child process per TREE (PYTHONPATH set to it;
default: the shmdiag that imports), rounds alternating the trees. Nothing is asserted.

``--batch N`` times the calls of a recorder with ``set_batch(N)``: most calls stage, every Nth
writes the batch, so the mean (calls over 1 ms left out: preemptions) is printed, not the median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time
import numpy as np
from shmdiag import Recorder, RecorderConfig
calls, trash_mib, batch = int(sys.argv[1]), [float(x) for x in sys.argv[2].split(",")], int(sys.argv[3])
rec = Recorder.with_config(RecorderConfig(max_events=100_000, log_level="critical"))
if batch:
    rec.set_batch(batch, max_delay=60)
rm, sp = rec.record_message, rec.span
for _ in range(100_000):  # one lap: every page of the ring mapped, as in a ring in its steady state
    rm("127.0.0.1:18444", "inv", "inbound", 37)
pc = time.perf_counter_ns
out = {}
for mib in trash_mib:
    junk = np.zeros(max(8, int(mib * (1 << 20)) // 8), dtype=np.int64)
    junk[::8] += 1
    tm, ts, tn = [], [], []
    for _ in range(calls):
        if mib:
            junk[::8] += 1
        t0 = pc(); rm("127.0.0.1:18444", "pong", "inbound", 32); t1 = pc()
        tm.append(t1 - t0)
        if mib:
            junk[::8] += 1
        t0 = pc()
        with sp("ping", "127.0.0.1:18444"):
            pass
        t1 = pc()
        ts.append(t1 - t0)
        if mib:
            junk[::8] += 1
        t0 = pc(); t1 = pc()
        tn.append(t1 - t0)
    tm.sort(); ts.sort(); tn.sort()
    null = tn[len(tn) // 2]
    if batch:
        tm, ts = [t for t in tm if t < 1_000_000], [t for t in ts if t < 1_000_000]
        out[str(mib)] = (sum(tm) / len(tm) - null, sum(ts) / len(ts) - null)
    else:
        out[str(mib)] = (tm[len(tm) // 2] - null, ts[len(ts) // 2] - null)
rec.close()
print(json.dumps(out))
"""


def run(tree: str | None, calls: int, trash: str, batch: int) -> dict[str, list[float]]:
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = tree
    # cwd "/": with -c the cwd comes before PYTHONPATH on sys.path
    cp = subprocess.run([sys.executable, "-c", CHILD, str(calls), trash, str(batch)], env=env, capture_output=True,
                        text=True, timeout=900, check=True, cwd="/")
    return json.loads(cp.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trees", nargs="*", help="shmdiag source trees (extension built); default: the installed one")
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--trash", default="0,2,8,32", help="MiB written between calls, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=0, help="Recorder.set_batch(N) in the child (0: off)")
    args = ap.parse_args()
    trees = args.trees or [None]
    got: dict[str | None, list[dict]] = {t: [] for t in trees}
    for i in range(args.rounds):
        for tree in trees[i % len(trees):] + trees[:i % len(trees)]:
            got[tree].append(run(tree, args.calls, args.trash, args.batch))
    stat = f"mean ns per call, batches of {args.batch}" if args.batch else "median ns per call"
    print(f"{stat} (median of rounds): record_message / with span(); MiB written between calls")
    for tree, rounds in got.items():
        cells = []
        for mib in rounds[0]:
            m = statistics.median(r[mib][0] for r in rounds)
            s = statistics.median(r[mib][1] for r in rounds)
            cells.append(f"{float(mib):g} MiB: {m:.0f} / {s:.0f}")
        print(f"{tree or 'installed'}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
