"""How many peer pins SIGKILLed writers leave held, after reaping.

    python bench/pin_kills.py [TREE ...] [--kills 1000] [--seed 1]

A writer records a message and a latency sample for peer "p" in a tight loop and is SIGKILLed
0-2 ms after it starts, ``--kills`` times, each reaped (as tests/test_capacity.py's random-kill
test does); then the pin count left on p's entry is printed. A pin left held keeps the entry
from ever being recycled. One child process per TREE (PYTHONPATH set to it; default: the
shmdiag that imports), run from "/" so the tree wins. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

CHILD = r"""
import multiprocessing as mp, os, random, signal, sys, time
import numpy as np
import shmdiag
from shmdiag import Recorder
from shmdiag.core import layout as L

def writer(name, ready):
    with Recorder.attach(name) as rec:
        rm, rl = rec.record_message, rec.record_latency
        rm("p", "inv", "inbound", 37)
        rl("rtt", 0.001, peer_id="p")
        ready.set()
        while True:
            rm("p", "inv", "inbound", 37)
            rl("rtt", 0.001, peer_id="p")

if __name__ == "__main__":
    kills, rng = int(sys.argv[1]), random.Random(int(sys.argv[2]))
    fork = mp.get_context("fork")
    with Recorder(max_events=1 << 12, collector=False) as rec:
        for _ in range(kills):
            ready = fork.Event()
            p = fork.Process(target=writer, args=(rec.name, ready))
            p.start()
            assert ready.wait(60)
            time.sleep(rng.random() * 0.002)
            os.kill(p.pid, signal.SIGKILL)
            p.join(30)
            assert rec.reap_dead_writers() == 1
        seg = rec._seg
        ks = seg.peer_index["key_state"]
        rows = np.flatnonzero((seg.peers["key"] == b"p") & L.key_ready(ks))
        pins = sum(int(L.key_pins(int(ks[r]))) for r in rows)
        print(f"{os.path.dirname(os.path.dirname(shmdiag.__file__))}: {kills} kills, {pins} pins left held")
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trees", nargs="*")
    ap.add_argument("--kills", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    for tree in a.trees or [None]:
        env = dict(os.environ)
        if tree:
            env["PYTHONPATH"] = os.path.abspath(tree)
        subprocess.run([sys.executable, "-c", CHILD, str(a.kills), str(a.seed)], env=env, cwd="/", check=True,
                       timeout=3600)


if __name__ == "__main__":
    main()
