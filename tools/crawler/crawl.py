"""A multi-process Bitcoin P2P crawler that records everything it sees through shmdiag.

``python -m tools.crawler --ring NAME --seed HOST:PORT --processes P --connections C --duration S``
(from the repository root; ``--help`` for the rest). P worker processes, each an asyncio loop with
up to C connections at once, attach to the ring by name and crawl: TCP connect, the version
handshake, ``getaddr`` -> ``addr``/``addrv2`` to discover more peers, ``ping``/``pong`` round
trips, ``getheaders`` -> ``headers``, ``inv`` of blocks -> ``getdata`` -> ``block``, and a
disconnect with its reason.

**Discovery without a central server.** Every address belongs to one process:
``crc32(endpoint) % P``. A process that learns an address it does not own puts it in the
owner's inbox (a ``multiprocessing.Queue`` per process, polled every 50 ms); only the owner
keeps a set of addresses already seen, so each address is visited once per run, whoever heard
of it and however often. Seeds are routed the same way by the main process.

**What is recorded** (through shmdiag's public ``Recorder`` API only): every message each way
with ``record_message`` at its exact wire size (24-byte header + payload), counted where it is
written to or parsed from the socket; ``record_peer_connection``/``record_peer_disconnection``
with the reason; ``record_error`` for refused or unreachable connections, timeouts, bad magic,
bad checksum, oversized or truncated messages, malformed payloads and peers that close or reset
the connection; spans for ``connect``, ``handshake`` and ``ping`` (a failed span is counted in
its operation's ``errors`` as well). The peer id is the peer's endpoint (``host:port``).

**The crawler's own counts** (bytes read from and written to each socket, bytes per message
type each way) are reported at the end (``--json``), so they can be compared with shmdiag's
figures and with the node's own (``getpeerinfo``). ``--hold`` keeps the connections open and
idle after the crawl: the main process prints one JSON line ``{"holding": {...}}`` once no
bytes have moved for ``--settle`` seconds, and closes them when its stdin reaches end of file
(or gets a line) -- the moment to read the nodes' accounting.

``--record off|attached|logging|jsonl`` replaces shmdiag by nothing, nothing with the ring
attached, ``logging`` to ``--log-file`` or orjson lines appended to ``--log-file``: the
benchmark's alternatives (``tools/crawler/bench.py``). ``--record alternate`` switches shmdiag
on and off every 50 ms (each poll of the main loop) and reports the CPU time per message of
each phase (``alternate`` in the JSON summary): the cost of recording measured within one crawl;
``--alternate-only METHOD`` switches only that Recorder method (``record_message`` or ``span``: what
each costs), the others staying off. ``--batch N`` has each crawl process write its messages and
spans N at a time (``Recorder.set_batch``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import json
import math
import multiprocessing as mp
import os
import queue
import random
import resource
import signal
import struct
import sys
import time
import zlib
from typing import Any

from tools.crawler import wire
from tools.crawler.sinks import ALTERNATE_ONLY, MODES, Alternating, make_sink

POLL = 0.05  # seconds between inbox polls


def owner_of(endpoint: str, processes: int) -> int:
    """The process that owns an address: the same answer in every process, no coordination."""
    return zlib.crc32(endpoint.encode()) % processes


def parse_endpoint(text: str, default_port: int) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or a bare host (default port) -> (host, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
    elif text.count(":") == 1:
        host, p = text.split(":")
        port = int(p)
    else:
        host, port = text, default_port
    ipaddress.ip_address(host)  # numeric addresses only: a crawler does not resolve names
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return host, port


def endpoint_of(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class PeerClosed(Exception):
    pass


class PeerConn(asyncio.BufferedProtocol):
    """One connection: counts every byte each way, frames and checks messages as they arrive,
    records each one, and answers what must be answered (verack, pong, getdata for new blocks)."""

    def __init__(self, worker: Worker, peer: str) -> None:
        self.w, self.peer, self.rec, self.magic = worker, peer, worker.rec, worker.magic
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray(1 << 16)  # unparsed bytes are buf[start:end]
        self.start = self.end = 0
        self.rx = self.tx = 0  # bytes read from / written to the socket
        self.msgs_in = self.msgs_out = 0
        self.recv_per_msg: dict[str, int] = {}
        self.sent_per_msg: dict[str, int] = {}
        self.last_rx = time.monotonic()
        loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[str] = loop.create_future()  # result: why it closed
        self.got_version: asyncio.Future[wire.Version] = loop.create_future()
        self.got_verack: asyncio.Future[None] = loop.create_future()
        self.got_addr: asyncio.Future[int] = loop.create_future()
        self.got_headers: asyncio.Future[int] = loop.create_future()
        self.pong: asyncio.Future[None] | None = None
        self.ping_nonce = 0
        self.failure = ""  # set when we drop the peer for what it sent
        self.closing = False  # we decided to close
        self.active = True  # still requesting (getdata for announced blocks)
        self.version: wire.Version | None = None
        self.headers = self.blocks = self.blocks_announced = self.addrs = 0

    # -- socket events ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    # Received bytes go straight into our own buffer (BufferedProtocol): no allocation per read.
    # asyncio's default Protocol reads into a fresh 256 KiB bytes object each time, which glibc
    # serves with mmap/munmap in a small process: that doubled the crawler's kernel time per message.
    def get_buffer(self, sizehint: int) -> memoryview:
        if self.end == len(self.buf):  # full: compact, or grow if compacting frees nothing
            size = len(self.buf) if self.start else 2 * len(self.buf)
            new = bytearray(size)
            new[:self.end - self.start] = memoryview(self.buf)[self.start:self.end]
            self.buf, self.end, self.start = new, self.end - self.start, 0
        return memoryview(self.buf)[self.end:]

    def buffer_updated(self, nbytes: int) -> None:
        self.rx += nbytes
        self.end += nbytes
        self.last_rx = time.monotonic()
        if self.failure:
            self.start = self.end = 0
            return  # already dropping this peer; the bytes are counted, not parsed
        buf = self.buf
        magic, rec, peer = self.magic, self.rec, self.peer
        while self.end - self.start >= 24:
            start = self.start
            try:
                cmd, n, ck = wire.parse_header(bytes(buf[start:start + 24]), magic)
            except wire.WireError as e:
                self.fail(e)
                return
            total = 24 + n
            if self.end - start < total:
                break
            payload = bytes(memoryview(buf)[start + 24:start + total])
            self.start = start + total
            try:
                wire.check_payload(cmd, payload, ck)
            except wire.WireError as e:
                self.fail(e)
                return
            self.msgs_in += 1
            self.w.msgs += 1
            self.recv_per_msg[cmd] = self.recv_per_msg.get(cmd, 0) + total
            rec.record_message(peer, cmd, "inbound", total)
            try:
                self.handle(cmd, payload)
            except wire.WireError as e:
                self.fail(e, f"{cmd}: ")
                return
            except (ValueError, struct.error) as e:  # a field out of range: malformed too
                self.fail(wire.WireError(str(e)), f"{cmd}: ")
                return
        if self.start == self.end:
            self.start = self.end = 0

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.end > self.start and not self.failure:
            self.failure = "truncated"
            self.rec.record_error(self.peer, f"truncated: {self.end - self.start} bytes of an unfinished message "
                                  f"when the connection closed", "recv")
        if self.failure:
            reason = self.failure
        elif self.closing:
            reason = ""
        elif exc is None:
            reason = "closed by peer"
            self.rec.record_error(self.peer, "closed by peer", "recv")
        else:
            reason = f"connection lost: {exc}"
            self.rec.record_error(self.peer, exc, "recv")
        for fut in (self.got_version, self.got_verack, self.got_addr, self.got_headers, self.pong):
            if fut is not None and not fut.done():
                fut.cancel()
        if not self.closed.done():
            self.closed.set_result(reason)

    # -- protocol --------------------------------------------------------------------------
    def fail(self, e: wire.WireError, prefix: str = "") -> None:
        """Drop a peer for what it sent: one error record naming the fault, then abort."""
        self.failure = e.kind
        self.rec.record_error(self.peer, f"{e.kind}: {prefix}{e}", "recv")
        assert self.transport is not None
        self.transport.abort()

    def send(self, cmd: str, payload: bytes = b"") -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        data = wire.frame(self.magic, cmd, payload)
        t.write(data)
        n = len(data)
        self.tx += n
        self.msgs_out += 1
        self.w.msgs += 1
        self.sent_per_msg[cmd] = self.sent_per_msg.get(cmd, 0) + n
        self.rec.record_message(self.peer, cmd, "outbound", n)

    def handle(self, cmd: str, payload: bytes) -> None:
        if cmd == "ping":
            wire.decode_nonce(payload)
            self.send("pong", payload)
        elif cmd == "pong":
            if wire.decode_nonce(payload) == self.ping_nonce and self.pong is not None and not self.pong.done():
                self.pong.set_result(None)
        elif cmd == "inv":
            blocks = [(wire.MSG_BLOCK, h) for t, h in wire.decode_inv(payload)
                      if t in (wire.MSG_BLOCK, wire.MSG_WITNESS_BLOCK)]
            self.blocks_announced += len(blocks)
            if blocks and self.active:
                self.send("getdata", wire.encode_inv(blocks))
        elif cmd == "block":
            wire.decode_block_header(payload)
            self.blocks += 1
        elif cmd == "headers":
            self.headers += len(wire.decode_headers(payload))
            if not self.got_headers.done():
                self.got_headers.set_result(self.headers)
        elif cmd in ("addr", "addrv2"):
            addrs = wire.decode_addr(payload) if cmd == "addr" else wire.decode_addrv2(payload)
            self.addrs += len(addrs)
            self.w.discovered(addrs, self.peer)
            if not self.got_addr.done():
                self.got_addr.set_result(len(addrs))
        elif cmd == "version":
            if self.version is not None:
                raise wire.WireError("second version message")
            self.version = wire.decode_version(payload)
            self.send("verack")
            self.got_version.set_result(self.version)
        elif cmd == "verack":
            if not self.got_verack.done():
                self.got_verack.set_result(None)
        # sendheaders, sendcmpct, feefilter, wtxidrelay, sendaddrv2, getheaders, ...: counted, not needed

    async def wait(self, fut: asyncio.Future, timeout: float, what: str) -> Any:
        """``fut``'s result, or PeerClosed if the connection ends first, TimeoutError after ``timeout``."""
        done, _ = await asyncio.wait({fut, self.closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if fut in done and not fut.cancelled():
            return fut.result()
        if self.closed.done():
            raise PeerClosed(self.closed.result())
        raise TimeoutError(f"no {what} within {timeout:g}s")

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def counts(self) -> dict:
        return {"bytes_sent": self.tx, "bytes_received": self.rx, "messages_sent": self.msgs_out,
                "messages_received": self.msgs_in, "sent_per_msg": dict(self.sent_per_msg),
                "recv_per_msg": dict(self.recv_per_msg)}


class Worker:
    """One crawl process: its share of the addresses, up to ``connections`` at once."""

    def __init__(self, index: int, cfg: dict, inboxes: list, results: Any, release: Any) -> None:
        self.index, self.cfg, self.inboxes, self.results, self.release_evt = index, cfg, inboxes, results, release
        self.P = cfg["processes"]
        self.magic = wire.MAGIC[cfg["network"]]
        self.genesis = wire.hash_from_hex(wire.GENESIS[cfg["network"]])
        self.allow = [ipaddress.ip_network(n) for n in cfg["allow"]]
        self.rec = make_sink(cfg["record"], cfg["ring"], cfg["log_file"], cfg.get("alternate_only"),
                             cfg.get("batch", 0))
        self.seen: dict[str, str] = {}  # endpoint (owned by this process) -> who told us ("seed" or a peer)
        self.heard: dict[str, set[str]] = {}  # endpoint (owned) -> everyone who told us, first or not
        self.outbox: dict[int, list[tuple[str, str]]] = {}
        self.peers: dict[str, dict] = {}  # per visited endpoint: outcome and counts
        self.conns: dict[str, PeerConn] = {}
        self.tasks: set[asyncio.Task] = set()
        self.dup = self.filtered = self.late = 0
        self.msgs = 0  # messages each way on every connection of this process

    # -- discovery -------------------------------------------------------------------------
    def discovered(self, addrs: list[wire.Addr], via: str) -> None:
        for a in addrs:
            if a.network not in ("ipv4", "ipv6") or a.port == 0:
                self.filtered += 1
                continue
            if not any(ipaddress.ip_address(a.host) in n for n in self.allow):
                self.filtered += 1
                continue
            self.route(endpoint_of(a.host, a.port), via)

    def route(self, endpoint: str, via: str) -> None:
        o = owner_of(endpoint, self.P)
        if o == self.index:
            self.offer(endpoint, via)
        else:
            self.outbox.setdefault(o, []).append((endpoint, via))

    def offer(self, endpoint: str, via: str) -> None:
        self.heard.setdefault(endpoint, set()).add(via)
        if endpoint in self.seen:
            self.dup += 1
            return
        if time.monotonic() >= self.crawl_end:
            self.late += 1
            return
        self.seen[endpoint] = via
        t = asyncio.get_running_loop().create_task(self.visit(endpoint))
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    def flush(self) -> None:
        for o, items in self.outbox.items():
            if items:
                self.inboxes[o].put(items)
        self.outbox.clear()

    # -- one peer ----------------------------------------------------------------------------
    async def visit(self, endpoint: str) -> None:
        async with self.slots:
            if time.monotonic() >= self.crawl_end:
                self.late += 1
                return
            try:
                await self._visit(endpoint)
            except Exception as e:  # a bug here must not end the crawl: record it, carry on
                self.rec.record_error(endpoint, e, "crawler")
                self.peers.setdefault(endpoint, {}).update(outcome="crawler error", reason=repr(e))

    async def _visit(self, peer: str) -> None:
        cfg, rec = self.cfg, self.rec
        host, port = parse_endpoint(peer, 0)
        info: dict[str, Any] = {"via": self.seen.get(peer, ""), "process": self.index}
        self.peers[peer] = info
        loop = asyncio.get_running_loop()
        conn = PeerConn(self, peer)
        timeout = cfg["timeout"]
        try:
            with rec.span("connect", peer):
                await asyncio.wait_for(loop.create_connection(lambda: conn, host, port), timeout)
        except (OSError, asyncio.TimeoutError) as e:
            if isinstance(e, ConnectionRefusedError):
                kind = "refused"
            elif isinstance(e, (asyncio.TimeoutError, TimeoutError)):
                kind = "timeout"
            else:
                kind = "unreachable"
            rec.record_error(peer, f"{kind}: {e}" if str(e) else kind, "connect")
            info.update(outcome=kind, reason=kind, **conn.counts())
            return
        rec.record_peer_connection(peer, peer)
        self.conns[peer] = conn
        reason = "crawl finished"
        op = "handshake"
        try:
            with rec.span("handshake", peer):
                conn.send("version", wire.encode_version(self.version_for(host, port)))
                await conn.wait(conn.got_version, timeout, "version")
                conn.send("sendaddrv2")  # BIP155: allowed only between version and verack
                await conn.wait(conn.got_verack, timeout, "verack")
            info["user_agent"] = conn.version.user_agent if conn.version else ""
            op = "getaddr"
            conn.send("getaddr")
            op = "ping"
            await self.ping(conn)
            op = "getheaders"
            # Not awaited: a node that thinks it is still syncing (bcoin, Bitcoin Core in IBD) ignores it.
            conn.send("getheaders", wire.encode_getheaders([self.genesis]))
            op = "crawl"
            dwell_end = time.monotonic() + cfg["dwell"] if cfg["dwell"] else math.inf
            interval = cfg["ping_interval"]
            next_ping = time.monotonic() + interval
            while True:
                now = time.monotonic()
                end = min(self.crawl_end, dwell_end)  # crawl_end moves earlier on a stop request
                if now >= end:
                    break
                if now >= next_ping:
                    op = "ping"
                    await self.ping(conn)
                    next_ping = time.monotonic() + interval
                    continue
                done, _ = await asyncio.wait({conn.closed}, timeout=min(next_ping, end) - now)
                if done:
                    raise PeerClosed(conn.closed.result())
            op = "hold"
            conn.active = False
            if cfg["hold"]:
                await asyncio.wait({conn.closed, self.released}, return_when=asyncio.FIRST_COMPLETED)
                if conn.closed.done():
                    raise PeerClosed(conn.closed.result())
        except PeerClosed as e:
            reason = str(e) or "closed by peer"
        except TimeoutError as e:
            reason = f"{op} timeout"
            rec.record_error(peer, f"timeout: {e}", op)
        except asyncio.CancelledError:
            reason = "crawler stopped"
            raise
        finally:
            info.setdefault("outcome", "connected")
            info["reason"] = reason
            conn.active = False
            if not conn.closed.done():
                conn.close()
                try:
                    await asyncio.wait_for(asyncio.shield(conn.closed), 2.0)
                except (asyncio.TimeoutError, asyncio.CancelledError):
                    pass
            rec.record_peer_disconnection(peer, peer, reason)
            info.update(conn.counts(), headers=conn.headers, blocks=conn.blocks,
                        blocks_announced=conn.blocks_announced, addrs=conn.addrs)
            self.conns.pop(peer, None)

    async def ping(self, conn: PeerConn) -> None:
        loop = asyncio.get_running_loop()
        conn.ping_nonce = random.getrandbits(64)
        conn.pong = loop.create_future()
        with self.rec.span("ping", conn.peer):
            conn.send("ping", wire.encode_nonce(conn.ping_nonce))
            await conn.wait(conn.pong, self.cfg["timeout"], "pong")

    def version_for(self, host: str, port: int) -> wire.Version:
        return wire.Version(services=0, timestamp=int(time.time()), recv_services=wire.NODE_NETWORK,
                            recv_host=host, recv_port=port, nonce=random.getrandbits(64), start_height=0,
                            relay=False)

    # -- the process -------------------------------------------------------------------------
    async def run(self) -> None:
        cfg = self.cfg
        self.slots = asyncio.Semaphore(cfg["connections"])
        self.released = asyncio.get_running_loop().create_future()
        self.crawl_end = time.monotonic() + cfg["duration"]
        cpu0, t0, ru0 = time.process_time(), time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
        gc0, gcn0 = GC.seconds, list(GC.collections)
        inbox = self.inboxes[self.index]
        crawl_figures: dict | None = None
        held = False
        alt = self.rec if isinstance(self.rec, Alternating) else None
        phase_cpu, phase_msgs, phase_n = {True: 0.0, False: 0.0}, {True: 0, False: 0}, {True: 0, False: 0}
        pc0, pm0 = cpu0, 0
        while True:
            if alt is not None and crawl_figures is None:  # charge the phase that ends, then switch
                if alt.on:
                    alt.flush()  # what the on phase staged is its own to write, not the next phase's
                c = time.process_time()
                phase_cpu[alt.on] += c - pc0
                phase_msgs[alt.on] += self.msgs - pm0
                phase_n[alt.on] += 1
                pc0, pm0 = c, self.msgs
                alt.flip()
            try:
                while True:
                    for endpoint, via in inbox.get_nowait():
                        self.offer(endpoint, via)
            except queue.Empty:
                pass
            self.flush()
            now = time.monotonic()
            if crawl_figures is None and self.release_evt.is_set():
                self.crawl_end = min(self.crawl_end, now)  # the main process asks us to stop early
            if crawl_figures is None and now >= self.crawl_end:
                ru = resource.getrusage(resource.RUSAGE_SELF)
                crawl_figures = {"cpu_s": time.process_time() - cpu0, "wall_s": now - t0, "messages": self.msgs,
                                 "user_s": ru.ru_utime - ru0.ru_utime, "sys_s": ru.ru_stime - ru0.ru_stime,
                                 "voluntary_switches": ru.ru_nvcsw - ru0.ru_nvcsw,
                                 "involuntary_switches": ru.ru_nivcsw - ru0.ru_nivcsw,
                                 "minor_faults": ru.ru_minflt - ru0.ru_minflt,
                                 "gc_s": GC.seconds - gc0,
                                 "gc_collections": [a - b for a, b in zip(GC.collections, gcn0, strict=True)]}
                if alt is not None:
                    phase_cpu[alt.on] += time.process_time() - pc0
                    phase_msgs[alt.on] += self.msgs - pm0
                    phase_n[alt.on] += 1
                    crawl_figures["alternate"] = {k: {"cpu_s": phase_cpu[on], "messages": phase_msgs[on],
                                                      "phases": phase_n[on]}
                                                  for k, on in (("on", True), ("off", False))}
            if crawl_figures is not None:
                if not cfg["hold"]:
                    if not self.tasks:
                        break
                else:
                    # Held: every visit left is a connection idle in its hold phase, and quiet.
                    idle = [c for c in self.conns.values() if not c.active]
                    if not held and len(idle) == len(self.tasks) and all(
                            now - c.last_rx >= cfg["settle"] for c in idle):
                        held = True
                        self.results.put(("holding", self.index, {p: c.counts() for p, c in self.conns.items()}))
                    if held and self.release_evt.is_set() and not self.released.done():
                        self.released.set_result(None)
                    if held and not self.tasks:
                        break
            await asyncio.sleep(POLL)
        self.flush()
        assert crawl_figures is not None
        for endpoint, info in self.peers.items():
            info["heard_from"] = sorted(self.heard.get(endpoint, ()))
        self.results.put(("done", self.index, {
            "pid": os.getpid(), **crawl_figures, "peers": self.peers, "duplicates": self.dup,
            "filtered": self.filtered, "late": self.late, "seen": len(self.seen)}))


class GcClock:
    """Time this process spends in the garbage collector (a crawler makes many short-lived cycles)."""

    def __init__(self) -> None:
        self.seconds, self.collections, self._t0 = 0.0, [0, 0, 0], 0.0
        gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.process_time()
        else:
            self.seconds += time.process_time() - self._t0
            self.collections[info["generation"]] += 1


GC = GcClock()


def worker_main(index: int, cfg: dict, inboxes: list, results: Any, release: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides when to stop
    w = Worker(index, cfg, inboxes, results, release)
    try:
        asyncio.run(w.run())
    finally:
        if hasattr(w.rec, "close"):
            w.rec.close()


# -- the command ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.crawler", description=__doc__.split("\n\n")[0])
    p.add_argument("--ring", help="shmdiag ring to record into (attached; created, persistent, if missing)")
    p.add_argument("--max-events", type=int, default=100_000, help="capacity if the ring is created")
    p.add_argument("--seed", action="append", default=[], required=True, help="HOST:PORT to start from (repeatable)")
    p.add_argument("--processes", type=int, default=2, help="crawl processes (default 2)")
    p.add_argument("--connections", type=int, default=64, help="concurrent connections per process (default 64)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds to crawl (default 10)")
    p.add_argument("--network", choices=sorted(wire.MAGIC), default="regtest")
    p.add_argument("--timeout", type=float, default=5.0, help="connect/handshake/pong timeout, seconds")
    p.add_argument("--ping-interval", type=float, default=2.0, help="seconds between pings; 0: back to back")
    p.add_argument("--dwell", type=float, default=0.0, help="seconds to stay connected (0: until the end)")
    p.add_argument("--allow", action="append", default=None,
                   help="network peers may be in (repeatable; default loopback only: 127.0.0.0/8, ::1/128)")
    p.add_argument("--hold", action="store_true",
                   help="after the crawl keep connections open and idle; print a holding line, close at stdin EOF")
    p.add_argument("--settle", type=float, default=0.5, help="with --hold: seconds without traffic first")
    p.add_argument("--record", choices=MODES, default="shmdiag",
                   help="where diagnostics go (default shmdiag; the others are the benchmark's)")
    p.add_argument("--batch", type=int, default=0, metavar="N",
                   help="shmdiag writes each process's messages and spans N at a time (Recorder.set_batch; "
                        "default 0: each at once)")
    p.add_argument("--alternate-only", choices=ALTERNATE_ONLY, default=None,
                   help="with --record alternate: switch only this method on and off (the rest stay off)")
    p.add_argument("--log-file", help="file for --record logging / jsonl")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    return p


class UsageError(Exception):
    pass


def _config(a: argparse.Namespace) -> dict:
    if a.processes < 1 or a.processes > 64:
        raise UsageError("--processes must be from 1 to 64")
    if a.connections < 1:
        raise UsageError("--connections must be at least 1")
    if a.duration <= 0 or a.timeout <= 0:
        raise UsageError("--duration and --timeout must be positive")
    if a.record in ("shmdiag", "attached", "alternate") and not a.ring:
        raise UsageError(f"--ring is needed with --record {a.record}")
    if not 0 <= a.batch <= 1024:
        raise UsageError("--batch must be from 0 to 1024")
    if a.alternate_only and a.record != "alternate":
        raise UsageError("--alternate-only needs --record alternate")
    if a.record in ("logging", "jsonl") and not a.log_file:
        raise UsageError(f"--record {a.record} needs --log-file")
    allow = a.allow or ["127.0.0.0/8", "::1/128"]
    try:
        for n in allow:
            ipaddress.ip_network(n)
        seeds = [endpoint_of(*parse_endpoint(s, wire.DEFAULT_PORT[a.network])) for s in a.seed]
    except ValueError as e:
        raise UsageError(str(e)) from None
    return {"ring": a.ring, "processes": a.processes, "connections": a.connections, "duration": a.duration,
            "network": a.network, "timeout": a.timeout, "ping_interval": a.ping_interval, "dwell": a.dwell,
            "allow": allow, "hold": a.hold, "settle": a.settle, "record": a.record, "log_file": a.log_file,
            "alternate_only": a.alternate_only, "batch": a.batch, "seeds": seeds}


def run(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        cfg = _config(a)
    except UsageError as e:
        print(f"crawler: {e}", file=sys.stderr)
        return 2
    creator = None
    if cfg["record"] in ("shmdiag", "attached", "alternate"):
        from shmdiag import Recorder, RingNotFoundError, ShmDiagError

        try:
            Recorder.attach(cfg["ring"]).close()
        except RingNotFoundError:
            creator = Recorder(max_events=a.max_events, name=cfg["ring"], persist=True, collector=False)
            print(f"crawler: created ring {cfg['ring']} (remove it with: shmdiag rm {cfg['ring']})", file=sys.stderr)
        except ShmDiagError as e:
            print(f"crawler: {e}", file=sys.stderr)
            return 1
    ctx = mp.get_context("spawn")
    P = cfg["processes"]
    inboxes = [ctx.Queue() for _ in range(P)]
    results = ctx.Queue()
    release = ctx.Event()
    for s in cfg["seeds"]:
        inboxes[owner_of(s, P)].put([(s, "seed")])
    procs = [ctx.Process(target=worker_main, args=(i, cfg, inboxes, results, release), name=f"crawler-{i}")
             for i in range(P)]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    deadline = [t0 + cfg["duration"] + 4 * cfg["timeout"] + 30]  # for the workers to report, once stopping
    stopping: list[int] = []

    def stop(signum: int, frame: object) -> None:
        # First SIGINT/SIGTERM: end the crawl now, disconnect cleanly, print the summary. Second: abort.
        if stopping:
            raise KeyboardInterrupt
        stopping.append(signum)
        deadline[0] = time.monotonic() + 4 * cfg["timeout"] + 30
        release.set()
        print("crawler: stopping (again to abort)", file=sys.stderr)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    done: dict[int, dict] = {}
    holding: dict[int, dict] = {}
    try:
        while len(done) < P:
            try:
                kind, idx, payload = results.get(timeout=0.2)
            except queue.Empty:
                if any(not p.is_alive() and p.exitcode not in (0, None) for p in procs):
                    print("crawler: a crawl process died: " + ", ".join(
                        f"{p.name} exit {p.exitcode}" for p in procs if p.exitcode), file=sys.stderr)
                    return 1
                if (stopping or not cfg["hold"]) and time.monotonic() > deadline[0]:
                    print("crawler: crawl processes did not finish in time", file=sys.stderr)
                    return 1
                continue
            if kind == "holding":
                holding[idx] = payload
                if len(holding) == P and not release.is_set():
                    merged = {k: v for h in holding.values() for k, v in h.items()}
                    sys.stdout.write(json.dumps({"holding": merged}) + "\n")
                    sys.stdout.flush()
                    sys.stdin.readline()  # a line or end of file
                    release.set()
            else:
                done[idx] = payload
        wall = time.monotonic() - t0
    except KeyboardInterrupt:
        print("crawler: aborted", file=sys.stderr)
        return 130
    finally:
        release.set()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
        if creator is not None:
            creator.close()
    summary = _summary(cfg, done, wall)
    if a.json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        _print_summary(summary)
    return 0


def _summary(cfg: dict, done: dict[int, dict], wall: float) -> dict:
    peers = {k: v for d in done.values() for k, v in d["peers"].items()}
    workers = [{"index": i, "pid": d["pid"], "cpu_s": d["cpu_s"], "user_s": d["user_s"], "sys_s": d["sys_s"],
                "voluntary_switches": d["voluntary_switches"], "involuntary_switches": d["involuntary_switches"],
                "gc_s": d["gc_s"], "gc_collections": d["gc_collections"], "minor_faults": d["minor_faults"],
                "wall_s": d["wall_s"], "messages": d["messages"],
                "duplicates": d["duplicates"], "filtered": d["filtered"], "late": d["late"], "seen": d["seen"]}
               for i, d in sorted(done.items())]
    msgs = sum(w["messages"] for w in workers)
    cpu = sum(w["cpu_s"] for w in workers)
    crawl_wall = max((w["wall_s"] for w in workers), default=0.0)
    alternate = None
    if all("alternate" in d for d in done.values()) and done:
        alternate = {}
        for k in ("on", "off"):
            c = sum(d["alternate"][k]["cpu_s"] for d in done.values())
            n = sum(d["alternate"][k]["messages"] for d in done.values())
            alternate[k] = {"cpu_s": c, "messages": n, "cpu_us_per_message": c / n * 1e6 if n else None,
                            "phases": sum(d["alternate"][k]["phases"] for d in done.values())}
    outcomes: dict[str, int] = {}
    for p in peers.values():
        outcomes[p.get("outcome", "?")] = outcomes.get(p.get("outcome", "?"), 0) + 1
    return {"record": cfg["record"], "ring": cfg["ring"], "processes": cfg["processes"], "wall_s": wall,
            "crawl_s": crawl_wall, "messages": msgs, "cpu_s": cpu,
            "cpu_us_per_message": cpu / msgs * 1e6 if msgs else None,
            "messages_per_s": msgs / crawl_wall if crawl_wall else None,
            "outcomes": outcomes, "workers": workers, "peers": peers,
            **({"alternate": alternate} if alternate else {})}


def _print_summary(s: dict) -> None:
    print(f"crawled {len(s['peers'])} peers with {s['processes']} processes in {s['crawl_s']:.1f}s: "
          + ", ".join(f"{k} {v}" for k, v in sorted(s["outcomes"].items())))
    if s["messages"]:
        print(f"{s['messages']} messages, {s['messages_per_s']:.0f}/s, "
              f"{s['cpu_us_per_message']:.1f} us CPU per message (recording: {s['record']})")
    for peer, p in sorted(s["peers"].items()):
        print(f"  {peer:<24} {p.get('outcome', '?'):<10} {p.get('reason', ''):<20} "
              f"sent {p.get('bytes_sent', 0)} B / {p.get('messages_sent', 0)} msgs, "
              f"received {p.get('bytes_received', 0)} B / {p.get('messages_received', 0)} msgs  "
              f"{p.get('user_agent', '')}")
