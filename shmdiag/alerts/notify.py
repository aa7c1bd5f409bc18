"""Sending alerts out: Alertmanager's API v2 and a generic JSON webhook.

Sends happen on a thread of their own behind a bounded queue, so an unreachable or slow receiver
never delays an evaluation (nor, through it, the collector). Each notification is tried
``1 + retries`` times with a short backoff, each attempt bounded by ``timeout``; what still
fails is counted in ``failed``, and what does not fit in the queue in ``dropped``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import orjson

QUEUE_BOUND = 1000


@dataclass
class Counts:
    """Per receiver ("alertmanager", "webhook"): notifications sent, failed, dropped."""

    sent: dict[str, int] = field(default_factory=lambda: {"alertmanager": 0, "webhook": 0})
    failed: dict[str, int] = field(default_factory=lambda: {"alertmanager": 0, "webhook": 0})
    dropped: dict[str, int] = field(default_factory=lambda: {"alertmanager": 0, "webhook": 0})
    last_error: str = ""


def iso(d: datetime) -> str:
    return d.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alertmanager_alert(*, labels: dict[str, str], annotations: dict[str, str], starts: datetime,
                       ends: datetime, generator_url: str | None) -> dict:
    """One element of the list POSTed to ``/api/v2/alerts``. A firing alert carries an ``endsAt``
    in the future (Alertmanager resolves it by itself if the collector stops re-sending, as
    Prometheus does); a resolved one, the time it resolved."""
    a = {"labels": labels, "annotations": annotations, "startsAt": iso(starts), "endsAt": iso(ends)}
    if generator_url:
        a["generatorURL"] = generator_url
    return a


def firing_ends(now: datetime, resend: float) -> datetime:
    return now + timedelta(seconds=4 * resend)


class Notifier:
    """Delivers JSON POSTs to the configured receivers from a background thread."""

    def __init__(self, *, alertmanager: str | None, webhook: str | None, timeout: float, retries: int,
                 logger: logging.Logger) -> None:
        self.urls = {"alertmanager": f"{alertmanager}/api/v2/alerts" if alertmanager else None,
                     "webhook": webhook}
        self.timeout, self.retries, self.log = timeout, retries, logger
        self.counts = Counts()
        self._q: queue.Queue[tuple[str, bytes] | None] = queue.Queue(QUEUE_BOUND)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def send(self, receiver: str, body: object) -> None:
        """Queue a POST of ``body`` (as JSON) to ``receiver``, if it is configured."""
        if self.urls.get(receiver) is None:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="shmdiag-alert-notifier", daemon=True)
            self._thread.start()
        try:
            self._q.put_nowait((receiver, orjson.dumps(body)))
        except queue.Full:
            with self._lock:
                self.counts.dropped[receiver] += 1

    def close(self, wait: float = 2.0) -> None:
        """Deliver what is queued, for at most ``wait`` seconds, then stop the thread."""
        if self._thread is None:
            return
        try:
            self._q.put(None, timeout=wait)
        except queue.Full:
            return
        self._thread.join(wait)

    def _post(self, url: str, data: bytes) -> None:
        req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 (http(s) URLs checked)
            resp.read()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            receiver, data = item
            url = self.urls[receiver]
            assert url is not None
            for attempt in range(self.retries + 1):
                try:
                    self._post(url, data)
                except (OSError, urllib.error.URLError, ValueError) as e:
                    err = f"{receiver} {url}: {getattr(e, 'reason', e)}"
                    if attempt < self.retries:
                        time.sleep(min(0.25 * 2 ** attempt, 2.0))
                        continue
                    with self._lock:
                        self.counts.failed[receiver] += 1
                        first = self.counts.last_error != err
                        self.counts.last_error = err
                    if first:  # one line per new kind of failure, not one per alert
                        self.log.warning("shmdiag alerts: sending to %s failed", err)
                else:
                    with self._lock:
                        self.counts.sent[receiver] += 1
                    break
