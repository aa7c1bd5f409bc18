"""The HTTP endpoint's costs (issue 13): ``python -m pytest bench/test_bench_web.py -s``.

* a ``/metrics`` scrape of a ring with 4,096 connected peers and 31 timed operations (target:
  under 20 ms);
* writers' events/s with and without 50 concurrent HTTP clients on ``shmdiag serve --http``,
  measured in the same run, alternating, so the ratio is what counts (target: within 5%).

Nothing here asserts a timing; each benchmark asserts that what it measured happened.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from _benchlib import NOTES

pytest.importorskip("aiohttp")

from shmdiag import Inspector, Recorder, RecorderConfig  # noqa: E402
from shmdiag.metrics import exposition  # noqa: E402

CLI = [sys.executable, "-m", "shmdiag"]
MSG_TYPES = ("version", "verack", "ping", "pong", "inv", "getdata", "tx", "headers", "block", "addr",
             "addrv2", "sendcmpct", "feefilter", "wtxidrelay", "getheaders")


def _big_ring() -> Recorder:
    rec = Recorder.with_config(RecorderConfig(max_events=200_000, max_peers=4096), collector=False)
    for i in range(4096):
        p = f"peer-{i}"
        rec.record_peer_connection(p, f"198.51.{i >> 8}.{i & 255}:8333")
        for j, t in enumerate(MSG_TYPES):
            rec.record_message(p, t, "inbound" if (i + j) & 1 else "outbound", 37 + j)
        rec.record_latency("ping", 0.01 + i * 1e-5, peer_id=p)
    for k in range(30):
        for n in range(50):
            rec.record_latency(f"op-{k}", (n + 1) * 1e-4)
    return rec


@pytest.mark.benchmark(group="web")
def test_scrape_4096_peers_31_operations(benchmark, per_op):
    rec = _big_ring()
    try:
        with Inspector.attach(rec.name) as insp:
            assert len(insp.get_latency_histograms()) == 31
            assert insp.get_stats().active_peers == 4096
            body = benchmark.pedantic(exposition, args=(insp,), rounds=30, warmup_rounds=2)
            per_op(1, "scrape")
        assert b'shmdiag_peers_connected 4096.0' in body
        stats = getattr(benchmark, "stats", None)
        if stats is not None:
            NOTES.append(f"/metrics scrape, 4,096 connected peers, 31 operations: median "
                         f"{stats.stats.median * 1e3:.1f} ms ({len(body):,} bytes)")
    finally:
        rec.close()


# 50 concurrent clients in a process of their own: each polls an endpoint, sleeps POLL_S, again;
# 5 of them keep the live event stream open as dashboards do.
CLIENTS = textwrap.dedent("""
    import asyncio, json, sys, time
    import aiohttp
    url, seconds, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    paths = ["metrics", "api/stats", "api/health", "api/peers?limit=50", "api/latency", "api/writers",
             "api/events?limit=100"]
    counts = {"requests": 0, "errors": 0, "stream_items": 0}

    async def poller(s, k, end):
        while time.monotonic() < end:
            async with s.get(url + paths[k % len(paths)]) as r:
                await r.read()
                counts["requests"] += 1
                # /api/health says 503 while the ring is critical, which loadgen at full speed
                # makes it (events lost, unused seqs): an answer, not a server error
                counts["errors"] += r.status >= 500 and not (paths[k % len(paths)] == "api/health" and r.status == 503)
            k += 1
            await asyncio.sleep(0.1)

    async def streamer(s, end):
        async with s.get(url + "api/events/stream?n=100") as r:
            while time.monotonic() < end:
                try:
                    line = await asyncio.wait_for(r.content.readline(), end - time.monotonic())
                except asyncio.TimeoutError:
                    break
                counts["stream_items"] += line.startswith(b"data:")

    async def main():
        end = time.monotonic() + seconds
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            await asyncio.gather(*[poller(s, k, end) for k in range(n - 5)], *[streamer(s, end) for _ in range(5)])
        import resource
        ru = resource.getrusage(resource.RUSAGE_SELF)
        counts["cpu_s"] = ru.ru_utime + ru.ru_stime
        print(json.dumps(counts))

    asyncio.run(main())
""")


def _loadgen(name: str, seconds: float, writers: int, per_cpu: list[float]) -> float:
    """events/s of one loadgen run; appends its events per writer-CPU-second to ``per_cpu``
    (what a slower write path would show even when the scheduler hides it)."""
    cp = subprocess.run([*CLI, "loadgen", "--ring", name, "--writers", str(writers), "--duration", str(seconds),
                         "--json"], capture_output=True, text=True, timeout=seconds + 60)
    assert cp.returncode == 0, cp.stderr
    report = json.loads(cp.stdout)
    cpu = sum(w["cpu_s"] for w in report["writers"])
    per_cpu.append(report["events"] / cpu if cpu else 0.0)
    return float(report["events_per_s"])


@pytest.mark.parametrize("writers", [1, 2])
def test_writer_rate_with_50_http_clients(tmp_path, writers):
    """Writers' events/s alone and with 50 HTTP clients, alternated ROUNDS times in one run."""
    name = f"shmdiag-bench-web-{time.monotonic_ns()}"
    serve = subprocess.Popen([*CLI, "serve", name, "--max-events", "1000000", "--http", "127.0.0.1:0"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = ""
        assert serve.stdout is not None
        for line in serve.stdout:
            if "dashboard:" in line:
                url = line.split()[1]
                break
        assert url
        seconds, rounds = 4.0, 3
        alone, loaded, served, server_cpu = [], [], [], []
        alone_cpu: list[float] = []
        loaded_cpu: list[float] = []
        server = psutil.Process(serve.pid)
        for _ in range(rounds):
            alone.append(_loadgen(name, seconds, writers, alone_cpu))
            clients = subprocess.Popen([sys.executable, "-c", CLIENTS, url, str(seconds + 2), "50"],
                                       stdout=subprocess.PIPE, text=True)
            t = server.cpu_times()
            time.sleep(1.0)  # clients connected and polling before writers start
            loaded.append(_loadgen(name, seconds, writers, loaded_cpu))
            out, _ = clients.communicate(timeout=60)
            t2 = server.cpu_times()
            server_cpu.append((t2.user + t2.system - t.user - t.system) / (seconds + 1))
            served.append(json.loads(out))
        assert all(s["requests"] > 100 and s["errors"] == 0 and s["stream_items"] > 0 for s in served), served
        a, b = sum(alone) / rounds, sum(loaded) / rounds
        NOTES.append(f"loadgen --writers {writers}: {a:,.0f} events/s alone, {b:,.0f} with 50 HTTP clients "
                     f"({(b / a - 1) * 100:+.1f}%; rounds alone {[round(x) for x in alone]}, "
                     f"with clients {[round(x) for x in loaded]}; "
                     f"{sum(s['requests'] for s in served) / rounds / (seconds + 2):.0f} requests/s served; "
                     f"server {sum(server_cpu) / rounds:.0%} of a core, clients "
                     f"{sum(s['cpu_s'] for s in served) / rounds / (seconds + 2):.0%}; events per writer-CPU-second "
                     f"{sum(alone_cpu) / rounds:,.0f} alone, {sum(loaded_cpu) / rounds:,.0f} with clients)")
        print(NOTES[-1])
    finally:
        serve.terminate()
        serve.wait(timeout=30)
