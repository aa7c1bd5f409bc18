"""What writers of one ring pay for recording the same peers, against peers of their own.

    python bench/shared_peers.py [--writers 2,4,8] [--ring 100000] [--seconds 2] [--repeats 2]

For each number of writer processes, three set-ups in turn, repeated: one ring whose writers
all record the same 100 peers (a load test's writers, or several processes of a node that
talk about the same peers); one ring whose writers each record 100 peers of their own (a
crawler's processes, which split the peers between them); one ring per writer (nothing
shared). Each writer attaches, warms up, waits at a barrier, then calls ``record_message`` in
a loop for ``--seconds``. Printed: the events/s of all writers together and their CPU time per
event. A writer adds every event to its peer's counters with atomic adds, so writers of the
same peers on different cores pass those cache lines back and forth; what that costs depends
on where the machine runs the cores (on this shared VM the same set-up cost about 185 ns an
event with shared peers in some minutes and 290 in others). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

from shmdiag import Recorder, RecorderConfig

N_PEERS = 100


def _writer(name: str, index: int, own_peers: bool, seconds: float, barrier, out) -> None:
    rec = Recorder.attach(name)
    rm = rec.record_message
    net = index + 1 if own_peers else 0
    peers = [f"10.{net}.0.{i}:8333" for i in range(N_PEERS)]
    for i in range(5_000):
        rm(peers[i % N_PEERS], "inv", "inbound", 37)
    barrier.wait()
    n, c0, t0 = 0, time.process_time(), time.perf_counter()
    end = t0 + seconds
    while True:
        for i in range(1024):
            rm(peers[i % N_PEERS], "inv", "inbound", 37)
        n += 1024
        if time.perf_counter() >= end:
            break
    out.put((n, t0, time.perf_counter(), time.process_time() - c0))
    rec.close()


def run(writers: int, setup: str, ring: int, seconds: float) -> tuple[float, float]:
    """(events/s of all writers, CPU ns per event) of one set-up."""
    ctx = mp.get_context("fork")
    rings = 1 if setup != "ring per writer" else writers
    recs = [Recorder.with_config(RecorderConfig(max_events=max(1024, ring // rings), max_peers=10_000,
                                                log_level="critical"), collector=False) for _ in range(rings)]
    try:
        out, barrier = ctx.Queue(), ctx.Barrier(writers)
        procs = [ctx.Process(target=_writer, args=(recs[i % rings].name, i, setup != "same peers", seconds,
                                                   barrier, out)) for i in range(writers)]
        for p in procs:
            p.start()
        got = [out.get(timeout=seconds + 120) for _ in procs]
        for p in procs:
            p.join()
    finally:
        for r in recs:
            r.close()
    events = sum(g[0] for g in got)
    wall = max(g[2] for g in got) - min(g[1] for g in got)
    return events / wall, sum(g[3] for g in got) / events * 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writers", default="2,4,8", help="numbers of writer processes, comma-separated")
    ap.add_argument("--ring", type=int, default=100_000, help="events of the shared ring")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    for writers in (int(w) for w in args.writers.split(",")):
        for rep in range(args.repeats):
            for setup in ("same peers", "own peers", "ring per writer"):
                rate, cpu = run(writers, setup, args.ring, args.seconds)
                print(f"{writers} writers, repeat {rep + 1}, {setup:15s}: {rate / 1e6:6.2f} M events/s, "
                      f"{cpu:4.0f} ns CPU an event", flush=True)


if __name__ == "__main__":
    main()
