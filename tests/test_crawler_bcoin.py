"""The crawler against real bcoin full nodes on loopback (regtest, in memory), checked against an
accounting no one here wrote: each node's getpeerinfo bytessent/bytesrecv for the crawler's
connection must equal, to the byte, what the crawler counted on its socket and what shmdiag
recorded. Needs Node.js and bcoin in tools/crawler/node (``.ci/run`` installs it); skipped
without them."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from shmdiag import Severity
from tools.crawler.bcoin import bcoin_bin, bcoin_nodes, free_ports
from tools.crawler.crawl import owner_of

ROOT = Path(__file__).resolve().parent.parent
UA = "/shmdiag-crawler:0.1/"

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


@pytest.fixture(autouse=True)
def need_bcoin():
    """Skip without bcoin, unless SHMDIAG_REQUIRE_TOOLS is set (``.ci/run`` sets it after
    installing the tools): then a missing bcoin fails rather than hides the tests."""
    if bcoin_bin() is None:
        msg = "bcoin is not installed ((cd tools/crawler/node && npm ci); .ci/run does it)"
        if os.environ.get("SHMDIAG_REQUIRE_TOOLS"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture
def crawler_procs():
    """Crawler processes a test started; killed (process group) at teardown, whatever happened."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(10)


def start_crawler(procs: list, ring: str, seeds: list[str], *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "tools.crawler", "--ring", ring, "--json"]
    for s in seeds:
        args += ["--seed", s]
    p = subprocess.Popen([*args, *extra], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    procs.append(p)
    return p


def read_line(p: subprocess.Popen, timeout: float) -> str:
    q: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: q.put(p.stdout.readline()), daemon=True).start()
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no line from the crawler in {timeout}s") from None


def wait_height(nodes, height: int, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while any(n.rpc("getblockchaininfo")["blocks"] < height for n in nodes):
        assert time.monotonic() < end, "blocks did not propagate"
        time.sleep(0.1)


def test_crawl_of_four_bcoin_nodes_agrees_with_their_accounting(tmp_path, make_recorder, crawler_procs):
    rec = make_recorder(200_000)
    refused = f"127.0.0.1:{free_ports(1)[0]}"
    with bcoin_nodes(4, tmp_path) as nodes:
        nodes[0].mine(1)  # a tip newer than genesis: bcoin answers getheaders only once "synced"
        wait_height(nodes, 1)
        p = start_crawler(crawler_procs, rec.name, [nodes[0].endpoint, refused], "--processes", "2",
                          "--duration", "8", "--ping-interval", "1", "--timeout", "5", "--hold")
        time.sleep(3)
        nodes[1].mine(2)  # during the crawl: inv -> getdata -> block on every connection
        time.sleep(1.5)
        nodes[2].mine(1)
        holding = json.loads(read_line(p, 60))["holding"]
        # The crawler's connections are open and idle: read the nodes' own accounting now.
        node_view = {}
        for n in nodes:
            mine = [x for x in n.rpc("getpeerinfo") if x["subver"] == UA]
            assert len(mine) == 1 and mine[0]["inbound"], (n.endpoint, mine)
            node_view[n.endpoint] = mine[0]
        out, err = p.communicate(timeout=60)  # closes its stdin: the crawler closes its connections
    assert p.returncode == 0, err
    summary = json.loads(out)
    peers = summary["peers"]
    endpoints = [n.endpoint for n in nodes]

    # Discovery: every node advertised to the crawler by another node's addr, visited once.
    # bcoin also advertises its regtest seed, 127.0.0.1:48444 (nothing listens there: refused)
    assert set(endpoints) | {refused} <= set(peers) <= set(endpoints) | {refused, "127.0.0.1:48444"}
    for i, ep in enumerate(endpoints):
        prev = endpoints[i - 1]
        assert prev in peers[ep]["heard_from"], (ep, peers[ep]["heard_from"])
    # each visited by the process that owns its address (the ports are random, so which
    # processes those are varies from run to run)
    assert [peers[ep]["process"] for ep in endpoints] == [owner_of(ep, 2) for ep in endpoints]
    assert peers[refused]["outcome"] == "refused"

    diags = {d.peer_id: d for d in rec.get_peer_diagnostics()}
    reasons = {e.peer_id: e.metadata["reason"] for e in rec.get_events(0) if e.event_type == "peer_disconnected"}
    blocks = 0
    for ep in endpoints:
        mine, nv, d = peers[ep], node_view[ep], diags[ep]
        assert mine["outcome"] == "connected" and reasons[ep] == mine["reason"] == "crawl finished"
        assert mine["user_agent"] == "/bcoin:v1.0.2/"
        # Nothing moved between the holding snapshot and the close.
        snap = holding[ep]
        assert (snap["bytes_sent"], snap["bytes_received"]) == (mine["bytes_sent"], mine["bytes_received"])
        # The same bytes seen from both ends, and recorded by shmdiag message by message.
        assert (nv["bytesrecv"], nv["bytessent"]) == (mine["bytes_sent"], mine["bytes_received"]), ep
        assert (d.bytes_sent, d.bytes_received) == (mine["bytes_sent"], mine["bytes_received"]), ep
        assert d.bytes_sent_per_msg == mine["sent_per_msg"] and d.bytes_recv_per_msg == mine["recv_per_msg"], ep
        assert (d.messages_sent, d.messages_received) == (mine["messages_sent"], mine["messages_received"])
        assert d.status == "disconnected" and d.error_count == 0 and d.latency is not None and d.latency < 1
        for cmd in ("version", "verack", "getaddr", "ping", "getheaders"):
            assert cmd in mine["sent_per_msg"], (ep, cmd)
        for cmd in ("version", "verack", "addr", "pong", "headers", "inv"):
            assert cmd in mine["recv_per_msg"], (ep, cmd)
        blocks += mine["blocks"]
        assert mine["blocks"] == mine["blocks_announced"] >= 1, ep
    assert blocks >= 4

    lat = rec.get_latency_stats()
    assert lat["handshake"].count == 4 and lat["handshake"].errors == 0
    assert 0 < lat["handshake"].p50 < 1 and 0 < lat["ping"].p50 < 1
    assert lat["ping"].count >= 4 * 5 and lat["connect"].count >= 4
    errors = [e for e in rec.get_events(0, min_severity=Severity.ERROR) if e.event_type == "error"]
    assert any(e.peer_id == refused and "refused" in (e.error or "") for e in errors)
    assert not [e for e in errors if e.peer_id in endpoints]

    stats = rec.get_stats()
    msgs = sum(peers[ep]["messages_sent"] + peers[ep]["messages_received"] for ep in peers)
    assert stats.events_by_type["message"] == msgs
    acc = rec.accounting()
    assert acc.in_flight == 0 and acc.lost == 0 and acc.abandoned == 0
    assert acc.recorded == stats.total_events == acc.retained + acc.overwritten + acc.lost + acc.abandoned + acc.expired


def test_node_killed_mid_crawl(tmp_path, make_recorder, crawler_procs):
    rec = make_recorder(50_000)
    with bcoin_nodes(2, tmp_path) as nodes:
        nodes[0].mine(1)
        wait_height(nodes, 1)
        p = start_crawler(crawler_procs, rec.name, [nodes[0].endpoint], "--processes", "2", "--duration", "6",
                          "--ping-interval", "0.5")
        end = time.monotonic() + 20
        while not any(x["subver"] == UA for x in nodes[1].rpc("getpeerinfo")):
            assert time.monotonic() < end, "the crawler never reached node 1"
            time.sleep(0.1)
        time.sleep(0.5)
        nodes[1].kill()
        out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    peers = json.loads(out)["peers"]
    killed, alive = nodes[1].endpoint, nodes[0].endpoint
    assert peers[alive]["reason"] == "crawl finished"
    assert peers[killed]["reason"] in ("closed by peer", "ping timeout") or \
        peers[killed]["reason"].startswith("connection lost"), peers[killed]
    errs = [e for e in rec.get_events(0, min_severity=Severity.ERROR)
            if e.event_type == "error" and e.peer_id == killed]
    assert errs, "the killed node's close was not recorded as an error"
    d = {x.peer_id: x for x in rec.get_peer_diagnostics()}[killed]
    assert d.status == "disconnected" and d.error_count >= 1
    assert d.bytes_received == peers[killed]["bytes_received"] and d.bytes_sent == peers[killed]["bytes_sent"]


def test_bench_script_runs():
    """The benchmark (python -m tools.crawler.bench) end to end, briefly: every mode crawls and
    reports messages; no figures are asserted (timings are never asserted in tests)."""
    cp = subprocess.run([sys.executable, "-m", "tools.crawler.bench", "--nodes", "2", "--repeats", "1",
                         "--duration", "1.5", "--no-write", "--baseline", str(ROOT)],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stderr
    for mode in ("off", "attached", "shmdiag", "logging", "jsonl", "alternate", "baseline-shmdiag",
                 "baseline-alternate"):
        assert f"| {mode} |" in cp.stdout, cp.stdout
    assert "us per message" in cp.stdout
    # the in-process A/B's own table: one row per alternate crawl
    alt = cp.stdout.split("Within one crawl", 1)[1]
    assert "| alternate |" in alt and "| baseline-alternate |" in alt, cp.stdout
