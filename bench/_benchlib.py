"""Helpers shared by the benchmarks: ring filling, and the writer processes of the concurrent
benchmark (in a module of their own so a 'spawn' child can import them)."""

from __future__ import annotations

import threading

FULL_RING = 1_000_000
ERROR_EVERY = 1000  # one record_error per this many events in the full ring
N_PEERS = 100
NOTES: list[str] = []  # lines for the end-of-run summary (ratios measured in the run)


def fill_messages(rec, n: int) -> None:
    """n record_message events over N_PEERS peers (a mix of types, directions and sizes)."""
    peers = [f"peer-{i}" for i in range(N_PEERS)]
    types = ("inv", "tx", "getdata", "ping", "headers")
    rm = rec.record_message
    for i in range(n):
        rm(peers[i % N_PEERS], types[i % 5], "inbound" if i & 1 else "outbound", 37 + (i & 1023))


def build_ring(size: int):
    """A FULL ring of ``size`` events: N_PEERS peer connections, then record_message events with
    one record_error per ERROR_EVERY events (0.1%). A tight loop in one process: ~0.7 s for
    1,000,000 events, most of it first-touch page faults."""
    from shmdiag import Recorder

    rec = Recorder(max_events=size)
    try:
        peers = [f"peer-{i}" for i in range(N_PEERS)]
        for i, p in enumerate(peers):
            rec.record_peer_connection(p, f"203.0.113.{i}:8333")
        done = N_PEERS
        while done < size:
            n = min(ERROR_EVERY - 1, size - done)
            fill_messages(rec, n)
            done += n
            if done < size:
                rec.record_error(peers[done % N_PEERS], TimeoutError("no pong in 20s"), "ping")
                done += 1
        return rec
    except BaseException:
        rec.close()
        raise


def errors_in(size: int) -> int:
    """record_error events build_ring(size) stores."""
    return len(range(N_PEERS + ERROR_EVERY - 1, size, ERROR_EVERY))


def segment_bytes(rec) -> int:
    """Size of the ring's shared-memory segment (POSIX shm lives in /dev/shm on Linux)."""
    import os

    try:
        return os.stat(f"/dev/shm/{rec.name.lstrip('/')}").st_size
    except OSError:
        return rec._seg.size


def writer_main(name: str, index: int, warm: int, per_round: int, ready, go, done, stop) -> None:
    """Attach to ring ``name``, record ``warm`` events (so this process's page tables cover the
    ring and its shard exists), then for every round: wait for ``go``, record ``per_round``
    events at full speed, wait at ``done``. Leaves when ``stop`` is set at a ``go``."""
    from shmdiag import Recorder

    barriers = (ready, go, done)
    try:
        with Recorder.attach(name) as rec:
            rm = rec.record_message
            peer = f"writer-{index}"
            for _ in range(warm):
                rm(peer, "inv", "inbound", 37)
            r = range(per_round)
            ready.wait()
            while True:
                go.wait()
                if stop.is_set():
                    break
                for _ in r:
                    rm(peer, "inv", "inbound", 37)
                done.wait()
    except threading.BrokenBarrierError:
        raise
    except BaseException:
        for b in barriers:  # never leave the parent waiting for a writer that failed
            b.abort()
        raise


# -- machine description (stored in the benchmark json by conftest, read by report.py) ----------

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def git_commit(root) -> str:
    """HEAD of the repository at ``root``, marked when shmdiag/ differs from it."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "shmdiag"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()
        return head + (" (shmdiag/ modified)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict:
    import os
    import platform
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path

    pkgs = {}
    for pkg in ("shmdiag", "numpy", "orjson", "pytest-benchmark"):
        try:
            pkgs[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return {
        "cpus": os.cpu_count(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "packages": pkgs,
        "shmdiag_commit": git_commit(Path(__file__).resolve().parent.parent),
    }
