"""The cache lines one recording call touches, counted by cachegrind's cache simulation.

    python bench/cg_record.py WHAT N [BATCH]  # WHAT: none | message | write | span | nullspan

Fills a 10,000-event ring once, then N times: a 1 MiB stride write (evicts the simulated
32 KiB L1 caches), then one call. Run it under cachegrind for two values of N and take the
difference per call, minus the same for WHAT=none (a Python no-op call); e.g.

    PY=$(python -c 'import sys; print(sys.executable)')   # the real binary, not a pyenv shim
    for w in none message write span; do for n in 1000 3000; do
      valgrind --tool=cachegrind --cache-sim=yes --D1=32768,8,64 --I1=32768,8,64 \
        --cachegrind-out-file=/dev/null $PY bench/cg_record.py $w $n 2>&1 | grep -E "I1  misses|D1  misses"
    done; done

(D1 misses per call ~ data lines touched cold, I1 misses ~ instruction lines.) "write" calls
the Recorder's native write directly (private; for this measurement only). BATCH: the calls of
a recorder with ``set_batch(BATCH)`` (a batch's write falls on every BATCH-th call).
"""

import sys

import numpy as np

from shmdiag import Recorder, RecorderConfig

what, n = sys.argv[1], int(sys.argv[2])
rec = Recorder.with_config(RecorderConfig(max_events=10_000, log_level="critical"))
if len(sys.argv) > 3:
    rec.set_batch(int(sys.argv[3]), max_delay=60)
rm, sp, wr = rec.record_message, rec.span, rec._write
for _ in range(10_000):
    rm("127.0.0.1:18444", "inv", "inbound", 37)
junk = np.zeros((1 << 20) // 8, dtype=np.int64)
def noop(*a):
    pass


class NoSpan:  # the crawler's span when it records nothing (tools/crawler/sinks.py)
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


NOSPAN = NoSpan()
for _ in range(n):
    junk[::8] += 1
    if what == "message":
        rm("127.0.0.1:18444", "pong", "inbound", 32)
    elif what == "write":
        wr(3, 0, 0, 2, 0, 32, "", "127.0.0.1:18444", "pong", "", "")
    elif what == "span":
        with sp("ping", "127.0.0.1:18444"):
            pass
    elif what == "nullspan":
        with NOSPAN:
            pass
    else:
        noop("127.0.0.1:18444", "pong", "inbound", 32)
