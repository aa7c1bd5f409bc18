"""A real Prometheus scrapes ``shmdiag serve --http`` while loadgen writes: what its query API
answers equals the ring's figures, and rate(shmdiag_events_total) is non-zero while writers run.

Needs Debian's ``prometheus`` package (``/usr/bin/prometheus``; ``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

pytest.importorskip("aiohttp", reason="needs the 'web' extra")

from shmdiag import Inspector  # noqa: E402

from helpers import CLI, LineReader  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

PROMETHEUS = shutil.which("prometheus")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def start_serve(name: str, procs: list) -> str:
    """``shmdiag serve NAME --http 127.0.0.1:0``; the dashboard's URL it prints."""
    p = subprocess.Popen([*CLI, "serve", name, "--max-events", "2000", "--http", "127.0.0.1:0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(p)
    lines = LineReader(p).lines_until(lambda line, _: b"dashboard:" in line)
    return lines[-1].split()[1].decode()


class Prom:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, q: str) -> list:
        d = get_json(f"{self.url}api/v1/query?{urllib.parse.urlencode({'query': q})}")
        assert d["status"] == "success", d
        return d["data"]["result"]

    def scalar(self, q: str) -> float | None:
        r = self.query(q)
        return float(r[0]["value"][1]) if r else None

    def wait(self, cond, what: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = cond()
                if last:
                    return last
            except OSError as e:  # not listening yet
                last = e
            time.sleep(0.25)
        raise AssertionError(f"Prometheus: timed out waiting for {what} (last: {last!r})")


def start_prometheus(target: str, tmp_path, procs: list) -> Prom:
    port = free_port()
    host = urllib.parse.urlsplit(target).netloc
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: shmdiag
    static_configs:
      - targets: ["{host}"]
        labels: {{host: "test-host"}}
""")
    p = subprocess.Popen([PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                          f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    procs.append(p)
    prom = Prom(f"http://127.0.0.1:{port}/")
    prom.wait(lambda: urllib.request.urlopen(f"{prom.url}-/ready", timeout=2).status == 200, "ready")

    def up() -> bool:
        targets = get_json(f"{prom.url}api/v1/targets")["data"]["activeTargets"]
        return any(t["health"] == "up" for t in targets)

    prom.wait(up, "the shmdiag target to be up")
    return prom


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (Debian package; .ci/run installs it)")
def test_prometheus_scrapes_the_rings_figures(ring_name, procs, tmp_path):
    target = start_serve(ring_name, procs)
    prom = start_prometheus(target, tmp_path, procs)
    gen = subprocess.Popen([*CLI, "loadgen", "--ring", ring_name, "--writers", "2", "--duration", "8",
                            "--rate", "400"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    procs.append(gen)

    # While writers run, Prometheus sees events flowing.
    rate = prom.wait(lambda: gen.poll() is None and (prom.scalar('sum(rate(shmdiag_events_total[5s]))') or 0) > 0,
                     "a non-zero rate while loadgen runs", timeout=20)
    assert rate
    assert gen.poll() is None, "loadgen ended before Prometheus saw a rate: the test proves nothing"
    assert gen.wait(timeout=60) == 0, gen.stderr.read().decode() if gen.stderr else ""

    # Writers stopped: the ring's figures are fixed; Prometheus' latest scrape must equal them.
    with Inspector.attach(ring_name) as insp:
        stats, health = insp.stats_and_health()
        peers = insp.get_peer_totals()
        msgs = insp.get_message_totals()
        lat = insp.get_latency_stats()
    assert stats.total_events > 1000
    prom.wait(lambda: prom.scalar("sum(shmdiag_events_total)") == stats.total_events,
              f"sum(shmdiag_events_total) == {stats.total_events}", timeout=15)
    by_type = {r["metric"]["type"]: float(r["value"][1]) for r in prom.query("shmdiag_events_total")}
    assert by_type == stats.events_by_type
    assert all(r["metric"]["host"] == "test-host" and r["metric"]["job"] == "shmdiag"
               for r in prom.query("shmdiag_events_total"))
    for sev, n in stats.events_by_severity.items():
        assert prom.scalar(f'shmdiag_events_by_severity_total{{severity="{sev.name.lower()}"}}') == n
    assert prom.scalar("shmdiag_ring_retained_events") == health.event_count
    assert prom.scalar("shmdiag_ring_capacity_events") == 2000
    assert prom.scalar("shmdiag_events_overwritten_total") == health.events_overwritten > 0
    assert prom.scalar("shmdiag_peers_connected") == stats.active_peers
    assert prom.scalar('sum(shmdiag_messages_total{direction="outbound"})') == peers.messages_sent > 0
    assert prom.scalar('sum(shmdiag_message_bytes_total{direction="inbound"})') == peers.bytes_received > 0
    for direction, count, nbytes in (("outbound", msgs.messages_sent, msgs.bytes_sent),
                                     ("inbound", msgs.messages_received, msgs.bytes_received)):
        got = {r["metric"]["message"]: float(r["value"][1])
               for r in prom.query(f'shmdiag_messages_total{{direction="{direction}"}}')}
        assert got == count and len(got) > 1
        got = {r["metric"]["message"]: float(r["value"][1])
               for r in prom.query(f'shmdiag_message_bytes_total{{direction="{direction}"}}')}
        assert got == nbytes
    assert prom.scalar(f'shmdiag_health_status{{status="{health.status}"}}') == 1
    assert prom.scalar("shmdiag_collector_up") == 1
    assert lat, "loadgen records ping round trips"
    for op, st in lat.items():
        assert prom.scalar(f'shmdiag_operation_duration_seconds_count{{operation="{op}"}}') == st.count
    # A histogram Prometheus can take quantiles of, near the ring's own percentile.
    op = max(lat, key=lambda o: lat[o].count)
    q = prom.scalar(f'histogram_quantile(0.5, shmdiag_operation_duration_seconds_bucket{{operation="{op}"}})')
    assert q is not None and q > 0
