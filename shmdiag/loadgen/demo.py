"""``python -m shmdiag demo``: several writer processes, attached by name, recording a P2P node's
traffic into one ring; then the stats, health and last events, read from the parent."""

from __future__ import annotations

import multiprocessing as mp
import random
import sys
import time

from shmdiag.recorder import Recorder
from shmdiag.core.models import Severity

_HANDSHAKE = [("version", 126), ("verack", 0), ("sendaddrv2", 0), ("wtxidrelay", 0), ("sendcmpct", 9), ("feefilter", 8)]
_TRAFFIC = [("inv", 37, 40), ("getdata", 37, 15), ("tx", 250, 25), ("ping", 8, 6), ("pong", 8, 6),
            ("headers", 162, 3), ("addrv2", 3000, 2), ("block", 1_400_000, 1)]
_REASONS = ["timeout", "remote closed", "peer misbehaving", "shutdown"]
_ERRORS = [("handshake", "incompatible version 70001"), ("read", "bad checksum"), ("connect", "connection refused"),
           ("read", "bad magic"), ("ping", "timeout after 20s")]


def _worker(name: str, worker: int, peers: int, seconds: float) -> None:
    rng = random.Random(worker)
    with Recorder.attach(name) as rec:
        live: dict[str, str] = {}
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            if len(live) < peers and rng.random() < (0.2 if len(live) < peers // 2 else 0.002):
                pid = f"w{worker}-peer{n}"
                addr = f"10.{worker}.{n % 256}.{rng.randrange(1, 255)}:8333"
                rec.record_peer_connection(pid, addr)
                with rec.span("handshake", peer_id=pid):
                    for msg, size in _HANDSHAKE:
                        rec.record_message(pid, msg, "outbound", size)
                        rec.record_message(pid, msg, "inbound", size)
                live[pid] = addr
            elif live:
                pid = rng.choice(list(live))
                msg, size, _ = rng.choices(_TRAFFIC, weights=[t[2] for t in _TRAFFIC])[0]
                rec.record_message(pid, msg, rng.choice(("inbound", "outbound")), size)
                if msg == "pong":  # a round trip: 20-300 ms, as over the internet
                    rec.record_latency("ping", rng.lognormvariate(-2.5, 0.6), peer_id=pid)
                roll = rng.random()
                if roll < 0.01:
                    op, err = rng.choice(_ERRORS)
                    rec.record_error(pid, err, op)
                elif roll < 0.02:
                    rec.record_peer_disconnection(pid, live.pop(pid), rng.choice(_REASONS))
            n += 1
            if n % 200 == 0:
                time.sleep(0.001)  # a node is not a busy loop


def _secs(s: float) -> str:
    return f"{s * 1e6:.0f} us" if s < 1e-3 else f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def run(writers: int = 4, seconds: float = 2.0, max_events: int = 10_000) -> int:
    ctx = mp.get_context("spawn")  # unrelated processes: they find the ring by name only
    with Recorder(max_events=max_events) as rec:
        print(f"ring {rec.name!r}: {max_events} events; {writers} writer processes for {seconds:g}s ...")
        procs = [ctx.Process(target=_worker, args=(rec.name, w, 25, seconds)) for w in range(writers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        stats, health = rec.get_stats(), rec.health_check()
        print(f"\nstats: {stats.total_events} events, {stats.active_peers} peers connected, "
              f"error rate {stats.error_rate:.2%}")
        for t, c in sorted(stats.events_by_type.items(), key=lambda kv: -kv[1]):
            print(f"  {t:<20} {c:>9}")
        print("  " + "  ".join(f"{s}={c}" for s, c in stats.events_by_severity.items()))
        print(f"\nhealth: {health.status} - {health.message}")
        print(f"  retained {health.event_count}/{health.max_events}, overwritten {health.events_overwritten}, "
              f"lost {health.events_lost}, writers alive {health.writers_alive}, uptime {health.uptime:.1f}s")
        net = rec.get_network_diagnostic()
        lat = ", ".join(f"{op} p50 {_secs(s.p50)} p99 {_secs(s.p99)} (n={s.count})"
                        for op, s in rec.get_latency_stats().items())
        print(f"\npeers: {net.total_peers} seen, {net.active_peers} connected; latency: {lat}")
        for p in sorted(net.peer_diagnostics, key=lambda p: -(p.bytes_sent + p.bytes_received))[:3]:
            ping = f"{p.latency * 1e3:.0f} ms" if p.latency is not None else "-"
            print(f"  {p.peer_id:<14} {p.address:<20} {p.status:<12} sent {p.bytes_sent:>9} B  "
                  f"recv {p.bytes_received:>9} B  ping {ping}")
        print("\nlast events (INFO and above):")
        for e in rec.get_events(10, Severity.INFO):
            print(f"  {e.timestamp:%H:%M:%S.%f} pid={e.pid:<7} {e.severity!s:<8} {e.peer_id:<14} {e.message}")
        print("\nlast messages:")
        for e in rec.get_events(5):
            print(f"  {e.timestamp:%H:%M:%S.%f} pid={e.pid:<7} {e.severity!s:<8} {e.peer_id:<14} {e.message}")
    sys.stdout.flush()
    return 0
