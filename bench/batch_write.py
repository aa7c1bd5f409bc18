"""What writing a batch (Recorder.set_batch) costs per event, warm and with the caches trashed.

    python bench/batch_write.py [--batch 32,256] [--trash 0,16] [--rounds 200]

A ring of 1,000,000 events is filled once (a ring in its steady state: every slot written
before, as in the crawler's ``--lap``), then for each batch size: stage that many
``record_message`` and ``span`` events of 16 peers, write TRASH MiB of other memory (0: warm),
and time ``flush()``; the median over the rounds, per event, is printed. The first events of a
batch find the lines of the write (its code, the layout, the shard, the registries, the peer
entries) cold; the rest find them warm: the larger the batch, the closer its cost per event to
the warm one. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from shmdiag import Recorder, RecorderConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", default="32,256", help="batch sizes, comma-separated (even, below 1024)")
    ap.add_argument("--trash", default="0,16", help="MiB written before each flush, comma-separated")
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args()
    rec = Recorder.with_config(RecorderConfig(max_events=1_000_000, log_level="critical"))
    peers = [f"127.0.0.1:{18000 + i}" for i in range(16)]
    rm, sp = rec.record_message, rec.span
    for i in range(1_000_000):
        rm(peers[i % 16], "inv", "inbound", 37)
    rec.set_batch(1024, max_delay=60)  # never full: each batch is written by the timed flush()
    print("ns per event written by flush() (median of rounds)")
    for batch in (int(b) for b in args.batch.split(",")):
        if batch % 2 or not 0 < batch < 1024:
            ap.error(f"--batch: {batch} is not even and below 1024")
        for mib in (float(t) for t in args.trash.split(",")):
            junk = np.zeros(max(8, int(mib * (1 << 20)) // 8), dtype=np.int64)
            per_event = []
            for _ in range(args.rounds):
                for i in range(batch // 2):
                    rm(peers[i % 16], "pong", "inbound", 32)
                    with sp("ping", peers[i % 16]):
                        pass
                if mib:
                    junk[::8] += 1
                t0 = time.perf_counter_ns()
                rec.flush()
                per_event.append((time.perf_counter_ns() - t0) / batch)
            print(f"batches of {batch}, {mib:g} MiB written before each: {statistics.median(per_event):.0f} ns")
    rec.close()


if __name__ == "__main__":
    main()
