"""The crawler against peers of our own that misbehave, without Node.js: a well-behaved fake peer
advertises (addr) a set of bad ones -- wrong magic, bad checksum, a 32 MB length, a truncated
message, a malformed payload, silence, a close after the handshake -- and a port with nothing
listening. The crawler (2 processes, run as a user runs it) must discover them all through addr,
record each fault as the right error and disconnect reason, and never crash."""

from __future__ import annotations

import asyncio
import json
import signal
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from shmdiag import Severity
from tools.crawler import wire
from tools.crawler.bcoin import free_ports
from tools.crawler.crawl import owner_of

from helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent
MAGIC = wire.MAGIC["regtest"]

pytestmark = pytest.mark.multiprocess


def _version() -> bytes:
    return wire.frame(MAGIC, "version", wire.encode_version(wire.Version(user_agent="/fake:1/", nonce=1)))


class FakePeers:
    """asyncio servers in a thread, one per behaviour, on loopback."""

    BEHAVIOURS = ("good", "bad_magic", "bad_checksum", "oversized", "truncated", "malformed", "silent", "closer")

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ports: dict[str, int] = {}
        self.refused_port = free_ports(1)[0]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> None:
        self.servers = []
        for b in self.BEHAVIOURS:
            srv = await asyncio.start_server(lambda r, w, b=b: self._serve(b, r, w), "127.0.0.1", 0)
            self.servers.append(srv)
            self.ports[b] = srv.sockets[0].getsockname()[1]

    def endpoint(self, b: str) -> str:
        return f"127.0.0.1:{self.ports[b]}"

    async def _read_msg(self, r: asyncio.StreamReader) -> tuple[str, bytes]:
        cmd, n, _ = wire.parse_header(await r.readexactly(24), MAGIC)
        return cmd, await r.readexactly(n)

    async def _serve(self, b: str, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await self._read_msg(r)  # the crawler's version
            if b == "silent":
                await asyncio.sleep(30)
            elif b == "bad_magic":
                w.write(wire.frame(wire.MAGIC["main"], "version", b"x" * 10))
            elif b == "bad_checksum":
                v = bytearray(_version())
                v[20] ^= 0xFF
                w.write(bytes(v))
            elif b == "oversized":
                w.write(MAGIC + b"block".ljust(12, b"\0") + struct.pack("<I", 32 << 20) + b"\0" * 4 + b"\0" * 100)
            elif b == "truncated":
                w.write(_version()[:50])
                await w.drain()
                w.close()
                return
            elif b == "malformed":
                w.write(wire.frame(MAGIC, "version", b"\x01\x02\x03\x04\x05"))
            else:  # good, closer: a handshake
                w.write(_version() + wire.frame(MAGIC, "verack"))
                if b == "closer":
                    await r.readexactly(24)  # sendaddrv2
                    await self._read_msg(r)  # verack
                    # Close with a FIN, never an RST: half-close, then read what the crawler sent
                    # meanwhile (getaddr, ping, ...) until it closes too. Closing with unread data
                    # would make the kernel reset the connection ("connection reset by peer").
                    w.write_eof()
                    try:
                        await asyncio.wait_for(r.read(), 10)
                    except (asyncio.TimeoutError, ConnectionError):
                        pass
                    w.close()
                    return
                while True:
                    cmd, payload = await self._read_msg(r)
                    if cmd == "ping":
                        w.write(wire.frame(MAGIC, "pong", payload))
                    elif cmd == "getaddr":
                        addrs = [wire.Addr("127.0.0.1", p, 1, 1) for p in
                                 [*(self.ports[x] for x in self.BEHAVIOURS if x != "good"), self.refused_port]]
                        w.write(wire.frame(MAGIC, "addr", wire.encode_addr(addrs)))
                        # and the same again in addrv2, plus one outside loopback (filtered)
                        v2 = [*addrs, wire.Addr("203.0.113.9", 8333, 1, 1)]
                        w.write(wire.frame(MAGIC, "addrv2", wire.encode_addrv2(v2)))
            await w.drain()
            await asyncio.sleep(30)
        except (asyncio.IncompleteReadError, ConnectionError, wire.WireError):
            pass
        finally:
            w.close()

    def stop(self) -> None:
        async def _stop() -> None:
            for s in self.servers:
                s.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(_stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def fakes():
    f = FakePeers()
    yield f
    f.stop()


def test_crawler_records_every_fault_and_survives(fakes, make_recorder):
    rec = make_recorder(100_000)
    cp = subprocess.run(
        [sys.executable, "-m", "tools.crawler", "--ring", rec.name, "--seed", fakes.endpoint("good"),
         "--processes", "2", "--duration", "4", "--timeout", "1.5", "--ping-interval", "0.5", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    summary = json.loads(cp.stdout)
    peers = summary["peers"]
    expected = {"good": "crawl finished", "bad_magic": "bad magic", "bad_checksum": "bad checksum",
                "oversized": "oversized", "truncated": "truncated", "malformed": "malformed",
                "silent": "handshake timeout", "closer": "closed by peer"}
    refused = f"127.0.0.1:{fakes.refused_port}"
    assert set(peers) == {fakes.endpoint(b) for b in expected} | {refused}
    for b, reason in expected.items():
        p = peers[fakes.endpoint(b)]
        assert p["reason"] == reason, (b, p)
        assert p["via"] == ("seed" if b == "good" else fakes.endpoint("good")), (b, p)
    assert peers[refused]["outcome"] == "refused"
    # Each address was visited by the process that owns it, once although advertised twice.
    assert all(p["process"] == owner_of(ep, 2) for ep, p in peers.items())  # (ports are random: not always both)
    assert sum(w["duplicates"] for w in summary["workers"]) >= len(expected)
    assert sum(w["filtered"] for w in summary["workers"]) == 1  # 203.0.113.9: not loopback

    errors: dict[str, list] = {}
    for e in rec.get_events(0, min_severity=Severity.ERROR):
        if e.event_type == "error":
            errors.setdefault(e.peer_id, []).append(e)
    want = {"bad_magic": "bad magic", "bad_checksum": "bad checksum", "oversized": "oversized",
            "truncated": "truncated", "malformed": "malformed", "silent": "timeout", "closer": "closed by peer"}
    for b, text in want.items():
        evs = errors.get(fakes.endpoint(b), [])
        assert any(text in (e.error or "") for e in evs), (b, evs)
    assert any("refused" in (e.error or "") and e.metadata["operation"] == "connect" for e in errors[refused])
    assert fakes.endpoint("good") not in errors

    reasons = {e.peer_id: e.metadata["reason"] for e in rec.get_events(0) if e.event_type == "peer_disconnected"}
    diags = {d.peer_id: d for d in rec.get_peer_diagnostics()}
    for b in expected:
        ep = fakes.endpoint(b)
        d, p = diags[ep], peers[ep]
        assert d.status == "disconnected" and reasons[ep] == p["reason"], (b, d)
        assert d.bytes_sent == p["bytes_sent"] and d.bytes_sent_per_msg == p["sent_per_msg"], b
        assert d.bytes_recv_per_msg == p["recv_per_msg"], b
        # what was framed and recorded; garbage is counted on the socket only
        assert d.bytes_received == sum(p["recv_per_msg"].values()) <= p["bytes_received"], b
    good = peers[fakes.endpoint("good")]
    assert diags[fakes.endpoint("good")].bytes_received == good["bytes_received"]
    assert good["recv_per_msg"]["addr"] > 24 and good["recv_per_msg"]["addrv2"] > 24
    assert diags[refused].status == "never_connected"

    lat = rec.get_latency_stats()
    assert lat["connect"].errors >= 1 and lat["handshake"].errors >= 5 and lat["ping"].count >= 3
    acc = rec.accounting()
    assert acc.in_flight == 0
    assert acc.recorded == acc.retained + acc.overwritten + acc.lost + acc.abandoned + acc.expired
    assert acc.lost == 0


def test_crawler_usage_errors(make_recorder):
    for args, needle in ((["--seed", "127.0.0.1:1", "--processes", "0", "--ring", "x"], "--processes"),
                         (["--seed", "nohost:1", "--ring", "x"], "does not appear to be an IPv4"),
                         (["--seed", "127.0.0.1:1"], "--ring")):
        cp = subprocess.run([sys.executable, "-m", "tools.crawler", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=30)
        assert cp.returncode == 2 and cp.stderr.count("\n") == 1 and needle in cp.stderr, cp.stderr


def test_sigterm_ends_the_crawl_cleanly(fakes, make_recorder):
    rec = make_recorder(10_000)
    p = subprocess.Popen([sys.executable, "-m", "tools.crawler", "--ring", rec.name, "--seed", fakes.endpoint("good"),
                          "--processes", "2", "--duration", "120", "--json"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(d.peer_id == fakes.endpoint("good") and d.status == "connected"
                             for d in rec.get_peer_diagnostics()), 30, "the crawler to connect")
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    assert p.returncode == 0, err
    assert "stopping" in err
    assert json.loads(out)["peers"][fakes.endpoint("good")]["reason"] == "crawl finished"
    d = {x.peer_id: x for x in rec.get_peer_diagnostics()}[fakes.endpoint("good")]
    assert d.status == "disconnected"


def _crawl_good(fakes, ring: str, *extra: str, duration: str = "2") -> subprocess.CompletedProcess:
    """One crawl process pinging the good fake peer back to back for `duration` s, JSON out."""
    return subprocess.run(
        [sys.executable, "-m", "tools.crawler", "--ring", ring, "--seed", fakes.endpoint("good"),
         "--processes", "1", "--duration", duration, "--timeout", "1.5", "--ping-interval", "0", *extra, "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_alternate_mode_records_only_in_its_on_phases(fakes, make_recorder):
    """--record alternate (the benchmark's in-process A/B) switches shmdiag on and off at each
    poll: every message of the crawl falls in one phase, and only the on phases' reach the ring."""
    rec = make_recorder(100_000)
    cp = _crawl_good(fakes, rec.name, "--record", "alternate")
    assert cp.returncode == 0, cp.stderr
    s = json.loads(cp.stdout)
    on, off = s["alternate"]["on"], s["alternate"]["off"]
    assert on["messages"] + off["messages"] == s["messages"]
    assert on["phases"] >= 2 and off["phases"] >= 2, s["alternate"]
    assert on["messages"] > 0 and off["messages"] > 0, s["alternate"]
    assert on["cpu_s"] > 0 and off["cpu_s"] > 0
    recorded = rec.get_stats().events_by_type.get("message", 0)
    # The crawl's on-phase messages, plus any after the crawl's figures were taken (the last
    # phase stays as it is while connections close); never the off phases'.
    assert on["messages"] <= recorded < s["messages"], (recorded, s["alternate"], s["messages"])


@pytest.mark.parametrize("only, kept, left_out", [("record_message", "message", "latency"),
                                                  ("span", "latency", "message")])
def test_alternate_only_switches_that_method_alone(fakes, make_recorder, only, kept, left_out):
    """--alternate-only METHOD (what record_message or span costs alone): only that method's
    events reach the ring; the other methods stay off in both phases."""
    rec = make_recorder(100_000)
    cp = _crawl_good(fakes, rec.name, "--record", "alternate", "--alternate-only", only)
    assert cp.returncode == 0, cp.stderr
    by_type = rec.get_stats().events_by_type
    assert by_type.get(kept, 0) > 0, by_type
    assert by_type.get(left_out, 0) == 0 and by_type.get("connect", 0) == 0, by_type


def test_alternate_only_needs_alternate(fakes):
    cp = subprocess.run(
        [sys.executable, "-m", "tools.crawler", "--seed", fakes.endpoint("good"), "--record", "off",
         "--alternate-only", "span"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert cp.returncode == 2 and cp.stderr.strip().count("\n") == 0, (cp.returncode, cp.stderr)
    assert "--alternate-only needs --record alternate" in cp.stderr


def test_a_batched_crawl_records_every_message(fakes, make_recorder):
    """--batch N (Recorder.set_batch in each crawl process): every message the crawler counted
    reaches the ring by the end of the crawl, the last batch written at close."""
    rec = make_recorder(100_000)
    cp = _crawl_good(fakes, rec.name, "--batch", "16", duration="1.5")
    assert cp.returncode == 0, cp.stderr
    s = json.loads(cp.stdout)
    by_type = rec.get_stats().events_by_type
    assert s["messages"] > 100 and by_type.get("message") == s["messages"], (by_type, s["messages"])
    assert by_type.get("latency", 0) > 0 and rec.accounting().lost == 0
