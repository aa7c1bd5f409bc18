"""Start and stop local bcoin full nodes (regtest, in memory, loopback) for the crawler's tests,
benchmark and demo. bcoin is installed by ``npm install`` in ``tools/crawler/node/`` (see
``.ci/run`` and the README); :func:`bcoin_bin` says whether it is there.

Nodes are connected in a ring (node i's only outbound peer is node i+1), so each answers
``getaddr`` with the next one's address and a crawler seeded with node 0 discovers them all.
The JSON-RPC listens on 127.0.0.1, where bcoin needs no API key.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

NODE_DIR = Path(__file__).resolve().parent / "node"
BCOIN = NODE_DIR / "node_modules" / "bcoin" / "bin" / "node"
# A bcoin regtest P2PKH address (prefix 0x3c, hash160 of twenty 0x01 bytes): mined coins go there, unspent.
MINE_TO = "R9NVxTj2ewfiTUzAfn7FSsq9kxNt6fjaaZ"


def bcoin_bin() -> str | None:
    """The bcoin node script if bcoin and Node.js are installed, else None."""
    return str(BCOIN) if BCOIN.exists() and shutil.which("node") else None


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if the process that started it dies (Linux), so a
    test runner killed outright leaves no node behind."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class BcoinNode:
    def __init__(self, index: int, port: int, http_port: int, prefix: Path, peers: list[int]) -> None:
        self.index, self.port, self.http_port, self.prefix, self.peers = index, port, http_port, prefix, peers
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        bin_ = bcoin_bin()
        if bin_ is None:
            raise RuntimeError("bcoin is not installed: npm install --prefix tools/crawler/node")
        self.prefix.mkdir(parents=True, exist_ok=True)
        only = ",".join(f"127.0.0.1:{p}" for p in self.peers) or "127.0.0.1"
        args = ["node", bin_, "--network=regtest", "--memory=true", f"--prefix={self.prefix}",
                f"--port={self.port}", f"--http-port={self.http_port}",
                "--http-host=127.0.0.1", "--no-wallet", f"--only={only}", "--log-level=debug",
                "--log-console=true", "--workers=false"]
        self.log = open(self.prefix / "node.log", "wb")  # closed in stop()
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=_die_with_parent)

    def rpc(self, method: str, *params: Any, timeout: float = 10.0) -> Any:
        body = json.dumps({"method": method, "params": list(params), "id": 1}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}/", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            reply = json.loads(r.read())
        if reply.get("error"):
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"bcoin node {self.index} exited: see {self.prefix / 'node.log'}")
        try:
            self.rpc("getblockchaininfo", timeout=2)
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                pass
        except OSError:
            return False
        return True

    def outbound_up(self) -> bool:
        want = {f"127.0.0.1:{p}" for p in self.peers}
        up = {p["addr"] for p in self.rpc("getpeerinfo") if not p["inbound"] and p.get("version")}
        return want <= up

    def mine(self, n: int = 1) -> list[str]:
        return list(self.rpc("generatetoaddress", n, MINE_TO, timeout=30))

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self.log.close()


@contextmanager
def bcoin_nodes(n: int, workdir: Path, *, ring: bool = True, timeout: float = 40.0) -> Iterator[list[BcoinNode]]:
    """``n`` regtest nodes on loopback, node i connected to node i+1 (``ring``), all up and
    connected on entry; every one stopped on exit, whatever happened."""
    ports = free_ports(2 * n)
    p2p, http = ports[:n], ports[n:]
    nodes = [BcoinNode(i, p2p[i], http[i], workdir / f"bcoin{i}", [p2p[(i + 1) % n]] if ring and n > 1 else [])
             for i in range(n)]
    try:
        for node in nodes:
            node.start()
        end = time.monotonic() + timeout
        for node in nodes:
            while not node.ready():
                if time.monotonic() > end:
                    raise TimeoutError(f"bcoin node {node.index} not up in {timeout:g}s: {node.prefix}/node.log")
                time.sleep(0.2)
        for node in nodes:
            while node.peers and not node.outbound_up():
                if time.monotonic() > end:
                    raise TimeoutError(f"bcoin node {node.index} did not connect to {node.peers} in {timeout:g}s")
                time.sleep(0.2)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.crawler.bcoin``: run local nodes until Ctrl-C, mining now and then."""
    import argparse
    import signal as _signal
    import tempfile

    p = argparse.ArgumentParser(prog="python -m tools.crawler.bcoin",
                                description="Run bcoin regtest nodes on loopback, connected in a ring.")
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--mine-every", type=float, default=5.0, help="seconds between blocks (0: never)")
    a = p.parse_args(argv)
    if bcoin_bin() is None:
        print("bcoin is not installed: (cd tools/crawler/node && npm ci)", file=sys.stderr)
        return 2
    _signal.signal(_signal.SIGTERM, lambda *_: sys.exit(0))
    with tempfile.TemporaryDirectory(prefix="bcoin-") as d, bcoin_nodes(a.nodes, Path(d)) as nodes:
        for n in nodes:
            print(f"node {n.index}: p2p {n.endpoint}  rpc http://127.0.0.1:{n.http_port}/  log {n.prefix}/node.log")
        print(f"seed: --seed {nodes[0].endpoint}   (Ctrl-C stops the nodes)", flush=True)
        try:
            nodes[0].mine(1)  # past genesis: bcoin answers getheaders once its tip is recent
            i = 0
            while True:
                time.sleep(a.mine_every or 3600)
                if a.mine_every:
                    i += 1
                    nodes[i % len(nodes)].mine(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
