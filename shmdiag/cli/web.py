"""``shmdiag web NAME --http ADDR`` and the ``--http`` of ``shmdiag serve``: the HTTP endpoint."""

from __future__ import annotations

import argparse
import socket
import sys

from shmdiag.cli._common import UsageError, attached, err, out

WEB_HELP = ("serve /metrics, the JSON API and the dashboard on ADDR (HOST:PORT, [IPV6]:PORT or PORT for "
            "127.0.0.1:PORT; port 0 picks a free one)")


def http_arg(text: str) -> tuple[str, int]:
    from shmdiag.web.server import parse_address

    try:
        return parse_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def need_web() -> None:
    """UsageError naming the extra if aiohttp or prometheus_client is missing."""
    try:
        import aiohttp  # noqa: F401
        import prometheus_client  # noqa: F401
    except ImportError as e:
        raise UsageError(f"--http needs the 'web' extra: pip install 'shmdiag[web]' ({e.name} is missing)") from None


def listen(addr: tuple[str, int]) -> socket.socket:
    """Bind ``addr``; one line and exit status 1 (SystemExit) if it cannot be had."""
    from shmdiag.web.server import bind

    try:
        return bind(*addr)
    except OSError as e:
        err(str(e))
        raise SystemExit(1) from None


def announce(url: str) -> None:
    out(f"shmdiag: dashboard at {url}  (metrics: {url}metrics, API: {url}api)")
    sys.stdout.flush()


def cmd_web(args: argparse.Namespace) -> int:
    from shmdiag.web.server import WebServer

    need_web()
    with attached(args.name) as insp:  # read-only: nothing served writes to the ring
        sock = listen(args.http)
        server = WebServer(insp, sock)
        announce(server.url)
        server.run_forever()
    return 0
