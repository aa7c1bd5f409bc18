"""The aiohttp application: every route in one table (``ROUTES`` in :func:`make_app`).

To add an endpoint: write a handler ``async def h(request) -> web.Response`` that reads through
``request.app[API]`` (an ``api.Api`` over the read-only Inspector) and add a line to the route
table. Static assets of the dashboard live in ``shmdiag/web/static/`` (shipped as package
data, no CDN) and are served under ``/static/``; ``/`` is ``static/index.html``.

Every response carries a Content-Security-Policy that allows only this origin's own scripts,
styles and connections: text that comes from the network (event messages, peer ids,
addresses) is inserted by the page as text, and even a slip there could not run a script.
Errors are JSON: 400 malformed query, 404 unknown path, 405 wrong method, 503 the ring cannot
be read (closed inspector), 500 a bug (logged, the server keeps serving).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from shmdiag.core.errors import RecorderClosedError, ShmDiagError
from shmdiag.export.dicts import OPTS
from shmdiag.web.api import Api, BadRequest, EventQuery, int_param
from shmdiag.web.live import Broadcaster

if TYPE_CHECKING:
    from shmdiag.inspector import Inspector

STATIC = Path(__file__).resolve().parent / "static"
API: web.AppKey[Api] = web.AppKey("api", Api)
LIVE: web.AppKey[Broadcaster] = web.AppKey("live", Broadcaster)
log = logging.getLogger("shmdiag.web")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SSE_KEEPALIVE = 15.0  # seconds between comment lines on an idle stream (proxies close silent ones)


def json_response(obj: object, status: int = 200) -> web.Response:
    body = orjson.dumps(obj, option=OPTS | orjson.OPT_NON_STR_KEYS)
    return web.Response(body=body, status=status, content_type="application/json")


def error(status: int, message: str) -> web.Response:
    return json_response({"error": message, "status": status}, status)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """JSON errors for everything, security headers on everything."""
    try:
        resp = await handler(request)
    except BadRequest as e:
        resp = error(400, str(e))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        resp = error(e.status, e.reason)
    except (RecorderClosedError, ShmDiagError) as e:
        resp = error(503, f"the ring cannot be read: {e}")
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as e:  # a bug: the server answers 500 and keeps serving
        if os.environ.get("SHMDIAG_DEBUG"):
            log.exception("shmdiag web: %s %s failed", request.method, request.path)
        else:
            log.error("shmdiag web: %s %s failed: %s: %s", request.method, request.path, type(e).__name__, e)
        resp = error(500, f"internal error: {type(e).__name__}")
    if not resp.prepared:
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers.setdefault("Cache-Control", "no-store")
    return resp


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html")


async def metrics(request: web.Request) -> web.Response:
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    from shmdiag.metrics import exposition

    body = request.app[API].cached(("metrics",), lambda: exposition(request.app[API].insp))
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


async def stats(request: web.Request) -> web.Response:
    return json_response(request.app[API].stats())


async def health(request: web.Request) -> web.Response:
    status, body = request.app[API].health()
    return json_response(body, status)


async def peers(request: web.Request) -> web.Response:
    return json_response(request.app[API].peers(request))


async def alerts(request: web.Request) -> web.Response:
    return json_response(request.app[API].alerts())


async def latency(request: web.Request) -> web.Response:
    return json_response(request.app[API].latency())


async def writers(request: web.Request) -> web.Response:
    return json_response(request.app[API].writers())


async def events(request: web.Request) -> web.Response:
    return json_response(request.app[API].events(request))


async def ring(request: web.Request) -> web.Response:
    return json_response(request.app[API].ring())


async def stream(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: ``data:`` lines of the event dicts ``/api/events`` returns, and gap
    records (``"kind": "gap"``) where events went by unread. ``?n=`` past events first (from
    the server's backlog), then live. Filters as /api/events."""
    q = EventQuery.from_request(request)
    n = int_param(request, "n", 0, 0, 500)
    live = request.app[LIVE]
    sub = live.subscribe(q.filt, n)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                       "X-Accel-Buffering": "no", "Content-Security-Policy": CSP,
                                       "X-Content-Type-Options": "nosniff"})
    try:
        await resp.prepare(request)
        await resp.write(b"retry: 1000\n\n")
        while True:
            chunk = await sub.take(SSE_KEEPALIVE)
            if not chunk:
                await resp.write(b": keepalive\n\n")
                continue
            await resp.write(b"".join(line for _, line in chunk))
            if chunk[-1][0].get("kind") == "end":
                break
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        live.unsubscribe(sub)
    return resp


async def api_index(request: web.Request) -> web.Response:
    return json_response({"endpoints": [r for r, _ in ROUTES]})


ROUTES = [
    ("/", index),
    ("/metrics", metrics),
    ("/api", api_index),
    ("/api/ring", ring),
    ("/api/stats", stats),
    ("/api/health", health),
    ("/api/peers", peers),
    ("/api/latency", latency),
    ("/api/alerts", alerts),
    ("/api/writers", writers),
    ("/api/events", events),
    ("/api/events/stream", stream),
]


def make_app(inspector: Inspector) -> web.Application:
    """The application over ``inspector`` (read-only; the caller keeps it open while serving
    and closes it after)."""
    app = web.Application(middlewares=[guard], client_max_size=64 * 1024)
    app[API] = Api(inspector)
    app[LIVE] = Broadcaster(inspector)
    for path, handler in ROUTES:
        app.router.add_get(path, handler, allow_head=handler is not stream)  # HEAD of a stream: 405
    app.router.add_static("/static/", STATIC, follow_symlinks=False, append_version=False)
    return app
