"""``python -m shmdiag demo``: several writer processes, attached by name, recording a P2P node's
traffic into one ring; then the stats, health and last events, read from the parent."""

from __future__ import annotations

import multiprocessing as mp
import random
import sys
import time

from shmdiag.cli.format import human_bytes, human_duration
from shmdiag.core.models import Severity
from shmdiag.loadgen.generator import Simulation
from shmdiag.loadgen.profile import DEMO_STEP_MIX
from shmdiag.recorder import Recorder

_PEERS = 25  # per writer


def _worker(name: str, worker: int, peers: int, seconds: float) -> None:
    """One writer: the load generator's simulated node (loadgen/profile.py's traffic: handshakes,
    the message mix, pings, errors at DEMO_STEP_MIX's calmer rate, disconnects), until
    ``seconds`` have passed."""
    with Recorder.attach(name) as rec:
        sim = Simulation(rec, worker, peers, random.Random(worker), tape_len=4096, step_mix=DEMO_STEP_MIX)
        deadline = time.monotonic() + seconds
        while (now := time.monotonic()) < deadline:
            sim.steps(200)
            sim.ping_due(now, 3 * peers)
            time.sleep(0.001)  # a node is not a busy loop


def run(writers: int = 4, seconds: float = 2.0, max_events: int = 10_000) -> int:
    ctx = mp.get_context("spawn")  # unrelated processes: they find the ring by name only
    with Recorder(max_events=max_events) as rec:
        print(f"ring {rec.name!r}: {max_events} events; {writers} writer processes for {seconds:g}s ...")
        procs = [ctx.Process(target=_worker, args=(rec.name, w, _PEERS, seconds)) for w in range(writers)]
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
              f"lost {health.events_lost}, writers alive {health.writers_alive}, "
              f"uptime {human_duration(health.uptime)}")
        net = rec.get_network_diagnostic()
        lat = ", ".join(f"{op} p50 {human_duration(s.p50)} p99 {human_duration(s.p99)} (n={s.count})"
                        for op, s in rec.get_latency_stats().items())
        print(f"\npeers: {net.total_peers} seen, {net.active_peers} connected; latency: {lat}")
        for peer in sorted(net.peer_diagnostics, key=lambda d: -(d.bytes_sent + d.bytes_received))[:3]:
            print(f"  {peer.peer_id:<14} {peer.address:<20} {peer.status:<12} sent {human_bytes(peer.bytes_sent):>9}  "
                  f"recv {human_bytes(peer.bytes_received):>9}  ping {human_duration(peer.latency)}")
        retained = rec.get_events(0, Severity.INFO)
        connects = [e for e in retained if e.event_type == "peer_connected"]
        for title, events in (("last events (INFO and above)", retained[-10:]), ("last connections", connects[-3:]),
                              ("last messages", rec.get_events(5))):
            print(f"\n{title}:")
            for e in events:
                print(f"  {e.timestamp:%H:%M:%S.%f} pid={e.pid:<7} {e.severity!s:<8} {e.peer_id:<14} {e.message}")
    sys.stdout.flush()
    return 0
