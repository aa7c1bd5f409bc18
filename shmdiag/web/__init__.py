"""The HTTP endpoint of a ring: ``/metrics`` (Prometheus), a JSON API and a live dashboard.

Read-only: everything goes through an ``Inspector`` (the ring mapped read-only). Built on
aiohttp, in the ``web`` extra (``pip install 'shmdiag[web]'``). Layout:

* ``app.py``: the route table and the middleware (errors as JSON, security headers);
* ``api.py``: the JSON handlers and their query parsing (cached for half a second);
* ``live.py``: the one follower behind every ``/api/events/stream`` client;
* ``server.py``: binding and running, in a thread (``shmdiag serve --http``) or in the
  foreground (``shmdiag web``);
* ``static/``: the dashboard's page, script and style, shipped in the package (no CDN).
"""

from shmdiag.web.app import make_app
from shmdiag.web.server import WebServer, bind, parse_address

__all__ = ["WebServer", "bind", "make_app", "parse_address"]
