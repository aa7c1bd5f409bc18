"""Running the application: bind first (so a busy port is one line before anything starts), then
serve in a thread of its own (``shmdiag serve --http``: the collector's thread is never held
up by a client) or in the calling thread (``shmdiag web``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import threading
from typing import TYPE_CHECKING

from aiohttp import web

from shmdiag.web.app import make_app

if TYPE_CHECKING:
    from shmdiag.inspector import Inspector

DEFAULT_HOST = "127.0.0.1"
# aiohttp logs a traceback for every request it cannot parse (a huge request line, garbage): that
# is the client's problem, answered with a 400; the operator's terminal is not the place for it.
logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``PORT`` (loopback) as (host, port); ValueError otherwise."""
    t = text.strip()
    if t.isdigit():
        host, port_s = DEFAULT_HOST, t
    elif t.startswith("["):
        host, sep, port_s = t[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r}: expected [IPV6]:PORT")
    else:
        host, sep, port_s = t.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r}: expected HOST:PORT or PORT")
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 0 to 65535")
    return host, int(port_s)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); OSError with a one-line message if it cannot be had."""
    try:
        ip = ipaddress.ip_address(host)
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        addr = str(ip)
    except ValueError:  # a host name: resolve it
        try:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        except socket.gaierror as e:
            raise OSError(f"cannot resolve {host!r}: {e.strerror}") from None
        family, addr = info[0], str(info[4][0])
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


class WebServer:
    """The endpoint over ``inspector`` on the bound socket ``sock``: ``start()`` serves it in a
    daemon thread with its own event loop, ``stop()`` ends it (and closes the socket). The
    caller owns the Inspector."""

    def __init__(self, inspector: Inspector, sock: socket.socket) -> None:
        self.sock = sock
        self.url = url_of(sock)
        self._app = make_app(inspector)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failed: BaseException | None = None

    async def _start(self) -> None:
        self._runner = web.AppRunner(self._app, handle_signals=False, access_log=None,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, self.sock).start()

    def start(self) -> None:
        """Serve in a daemon thread; returns once the server accepts connections."""
        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start())
            except BaseException as e:
                self._failed = e
                self._ready.set()
                return
            self._ready.set()
            loop.run_forever()
            assert self._runner is not None
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="shmdiag-web", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failed is not None:
            raise self._failed

    def stop(self) -> None:
        """Stop serving and wait for the thread (about a second at most). Idempotent."""
        loop, t = self._loop, self._thread
        if loop is not None and t is not None and t.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            t.join(5.0)
        self.sock.close()

    def run_forever(self) -> None:
        """Serve in this thread until KeyboardInterrupt (SIGINT) or SIGTERM."""
        import signal

        async def main() -> None:
            await self._start()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.add_signal_handler(s, stop.set)
            try:
                await stop.wait()
            finally:
                assert self._runner is not None
                await self._runner.cleanup()

        asyncio.run(main())
        self.sock.close()
