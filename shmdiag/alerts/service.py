"""The alert loop the collector runs: evaluate, then tell everyone who should know.

Each firing or resolved transition becomes one log line, an ``alert`` event recorded into the
ring itself (WARNING for a ``warning`` rule, CRITICAL for a ``critical`` one, so ``tail``, ``top``
and the dashboard show it), a POST to Alertmanager and one to the webhook. While an alert fires it
is re-sent to Alertmanager every ``resend`` seconds, so it does not expire there.

After every evaluation the rules' states go to a small JSON file (:func:`state_path`), written
atomically, which ``shmdiag alerts NAME`` reads: the states live in the collector process, and the
ring's memory is for events.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone

import orjson

from shmdiag.alerts.engine import AlertEngine, AlertState, Source, Transition
from shmdiag.alerts.notify import Notifier, alertmanager_alert, firing_ends, iso
from shmdiag.alerts.rules import AlertingConfig
from shmdiag.core.models import DiagnosticEvent, Severity

STATE_SCHEMA_VERSION = 1


def state_path(ring: str) -> str:
    """Where the collector of ``ring`` keeps its alerts' states."""
    return os.path.join(tempfile.gettempdir(), f"shmdiag-alerts-{os.getuid()}", f"{ring}.json")


def read_state(ring: str) -> dict | None:
    """The last states written by the collector of ``ring``, or None if there are none."""
    try:
        with open(state_path(ring), "rb") as f:
            doc = orjson.loads(f.read())
    except (OSError, orjson.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) and doc.get("ring") == ring else None


def live_state(ring: str, collector_pid: int, collector_alive: bool | None) -> dict | None:
    """The states of ``ring``'s alerts if its running collector (as the ring's header names it:
    ``HealthStatus.collector_pid``/``collector_alive``) wrote them; None otherwise (no collector,
    or a file left by one that was killed)."""
    doc = read_state(ring)
    if doc is None or not collector_alive or doc.get("collector_pid") != collector_pid:
        return None
    return doc


def health_summary(doc: dict) -> dict:
    """What ``shmdiag health`` and ``/api/health`` say of the alerts in ``doc`` (a
    :func:`live_state`): the rules firing and the notifications that could not be delivered."""
    n = doc["notifications"]
    return {"rules": len(doc["alerts"]), "firing": [a["name"] for a in doc["alerts"] if a["state"] == "firing"],
            "notifications_failed": sum(n["failed"].values()), "notifications_dropped": sum(n["dropped"].values()),
            "last_error": n["last_error"]}


class AlertService:
    """Runs an :class:`AlertEngine` every ``config.interval`` seconds on a thread of its own."""

    def __init__(self, source: Source, config: AlertingConfig, *, ring: str,
                 record: Callable[[DiagnosticEvent], object] | None, logger: logging.Logger,
                 instance: str | None = None) -> None:
        self.engine = AlertEngine(source, config)
        self.config, self.ring, self.record, self.log = config, ring, record, logger
        self.instance = instance or socket.gethostname()
        self.notifier = Notifier(alertmanager=config.alertmanager, webhook=config.webhook,
                                 timeout=config.timeout, retries=config.retries, logger=logger)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- one round -------------------------------------------------------------------------------
    def run_once(self) -> list[Transition]:
        with self._lock:
            transitions = self.engine.evaluate()
            for t in transitions:
                self._announce(t)
            now = time.monotonic()
            for st in self.engine.states.values():
                if st.state == "firing" and now - st.last_sent >= self.config.resend:
                    self._send_alertmanager(st, "firing", datetime.now(timezone.utc))
                    st.last_sent = now
            self._write_state()
        return transitions

    def _labels(self, st: AlertState) -> dict[str, str]:
        r = st.rule
        return {**r.labels, "alertname": r.name, "severity": r.severity, "ring": self.ring, "instance": self.instance}

    def _send_alertmanager(self, st: AlertState, state: str, at: datetime) -> None:
        r = st.rule
        started = st.fired_at or at
        ends = firing_ends(at, self.config.resend) if state == "firing" else at
        ann = {"summary": r.summary or r.describe(), "description": r.description or r.describe(),
               "value": f"{st.value:g}" if st.value is not None else "", "found": st.text}
        self.notifier.send("alertmanager", [alertmanager_alert(labels=self._labels(st), annotations=ann,
                                                               starts=started, ends=ends,
                                                               generator_url=self.config.dashboard_url)])

    def _announce(self, t: Transition) -> None:
        st, r = t.alert, t.alert.rule
        summary = r.summary or r.describe()
        level = logging.WARNING if t.state == "firing" else logging.INFO
        self.log.log(level, "shmdiag %s: alert %s %s (%s): %s", self.ring, r.name, t.state.upper(), r.severity,
                     st.text)
        if self.record is not None:
            sev = Severity.CRITICAL if r.severity == "critical" else Severity.WARNING
            meta = {"alertname": r.name, "state": t.state, "severity": r.severity, "value": st.value,
                    "started_at": iso(t.started)}
            try:
                self.record(DiagnosticEvent("alert", f"alert {r.name} {t.state}: {summary} ({st.text})",
                                            sev if t.state == "firing" else Severity.INFO, metadata=meta))
            except Exception:  # a closed or removed ring must not stop alerting
                self.log.exception("shmdiag %s: recording alert %s into the ring failed", self.ring, r.name)
        self._send_alertmanager(st, t.state, t.at)
        st.last_sent = time.monotonic()
        self.notifier.send("webhook", {"ring": self.ring, "instance": self.instance, "alertname": r.name,
                                       "state": t.state, "severity": r.severity, "summary": summary,
                                       "found": st.text, "value": st.value, "startsAt": iso(t.started),
                                       "endsAt": iso(t.at) if t.state == "resolved" else None,
                                       "labels": self._labels(st)})

    def snapshot(self) -> dict:
        """Rules, states and delivery counts, as ``shmdiag alerts --json`` and ``/api/alerts`` show them."""
        c = self.notifier.counts
        return {"schema_version": STATE_SCHEMA_VERSION, "ring": self.ring, "collector_pid": os.getpid(),
                "updated_at": iso(datetime.now(timezone.utc)), "interval": self.config.interval,
                "receivers": {"alertmanager": self.config.alertmanager, "webhook": self.config.webhook},
                "notifications": {"sent": dict(c.sent), "failed": dict(c.failed), "dropped": dict(c.dropped),
                                  "last_error": c.last_error},
                "alerts": self.engine.snapshot()}

    def _write_state(self) -> None:
        path = state_path(self.ring)
        try:
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                f.write(orjson.dumps(self.snapshot()))
            os.replace(tmp, path)  # readers see the old file or the new one, never half of one
        except OSError as e:
            self.log.warning("shmdiag %s: cannot write alert states to %s: %s", self.ring, path, e.strerror)

    # -- the thread ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"shmdiag-alerts-{self.ring}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is None:
            return  # never started: the state file, if any, is another collector's
        self._thread.join()
        self.notifier.close()
        try:
            os.unlink(state_path(self.ring))
        except OSError:
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.config.interval):
            try:
                self.run_once()
            except Exception:  # keep evaluating: one bad round must not end alerting
                self.log.exception("shmdiag %s: alert evaluation failed", self.ring)
