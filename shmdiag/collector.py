"""The collector: a ring's upkeep, run by the process that owns the ring.

Writers keep the ring's counters exact as they record, so nothing here computes stats. What is
left is upkeep that no single writer can be trusted to do:

* **retention**: every ``cleanup_interval``, records older than ``retention_period`` are retired
  (``core.maintenance``) and counted as expired;
* **dead writers**: a writer that died without detaching leaves its shard active and maybe a
  record half-claimed; the collector reaps it (``core.shards``), so its counts and that record
  are settled (abandoned). Readers (``Inspector``) only report such writers;
* **health**: with ``enable_health_check``, a health check every ``health_period`` seconds (5;
  ``shmdiag serve --health-interval``), judged over a recent window (``window``, 300 s; see
  ``views/health.py``); it reaps dead writers first. Every change of status is logged with its
  reasons, and every writer found dead is logged once, with what it recorded and abandoned.
  The collector's checks keep a history of the counters, so its windows are exact;

* **ownership**: while it runs (``start()`` to ``stop()``) the collector is named in the ring's
  header (pid and start time), so readers can tell a ring whose collector was killed (``health``
  says ``error``, ``ls`` shows it dead) from one that never had one, and ``shmdiag serve`` can
  adopt the first. Only one live process collects a ring: ``start()`` raises RingInUseError if
  another does;
* **the ring's name**: every round checks that /dev/shm/<name> still leads to this ring (the
  recorder logs a warning once if it was removed or replaced).

A creating ``Recorder`` starts one; ``shmdiag serve`` creates the ring without one and runs its
own, logging to stderr. The collector drives anything that can clean up, reap and check health
(:class:`Maintained`, which ``Recorder`` is), so it sits below the Recorder and imports nothing
of it. ``run_once()`` is one round, for tests and for callers
that schedule the work themselves.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from shmdiag.core.config import RecorderConfig
from shmdiag.core.errors import RecorderClosedError
from shmdiag.core.models import DeadWriter, HealthStatus, Severity
from shmdiag.views import health as _health

HEALTH_PERIOD = 5.0  # seconds between health checks, when enabled (at most cleanup_interval)


class Maintained(Protocol):
    """What a collector needs of its ring: a writable handle (a ``Recorder``)."""

    @property
    def name(self) -> str: ...
    @property
    def config(self) -> RecorderConfig: ...
    @property
    def closed(self) -> bool: ...
    def cleanup_old_events(self) -> int: ...
    def health_check(self, window: float = ..., *, stall_after: float = ...,
                     error_rate_min_severity: Severity | int | str = ...) -> HealthStatus: ...
    def reap_dead_writers(self) -> int: ...
    def check_ring(self) -> str: ...
    def claim_collector(self) -> None: ...
    def release_collector(self) -> None: ...


class Collector:
    """Retention cleanup, dead-writer reaping and health checks for the ring of ``recorder``
    (which must be writable: created, or attached with ``Recorder.attach``), in a background
    thread between ``start()`` and ``stop()``, or a round at a time with ``run_once()``.
    ``window``, ``stall_after`` and ``error_rate_min_severity`` are passed to every health
    check (``Recorder.health_check``)."""

    def __init__(self, recorder: Maintained, logger: logging.Logger | None = None, *,
                 health_period: float = HEALTH_PERIOD, window: float = _health.DEFAULT_WINDOW,
                 stall_after: float = _health.DEFAULT_STALL_AFTER,
                 error_rate_min_severity: Severity | int | str = _health.DEFAULT_ERROR_RATE_MIN_SEVERITY,
                 ) -> None:
        if not all(callable(getattr(recorder, m, None)) for m in ("cleanup_old_events", "health_check",
                                                                  "reap_dead_writers", "check_ring",
                                                                  "claim_collector", "release_collector")):
            raise TypeError(f"recorder must be a Recorder, not {type(recorder).__name__}")
        if isinstance(health_period, bool) or not isinstance(health_period, (int, float)) or not health_period > 0:
            raise ValueError(f"health_period must be a positive number of seconds, got {health_period!r}")
        self.policy = _health.Policy(window, stall_after, error_rate_min_severity)  # type: ignore[arg-type]
        self._rec = recorder
        self._logger = logger if logger is not None else logging.getLogger("shmdiag")
        cfg = recorder.config
        self.period = min(cfg.cleanup_interval, health_period) if cfg.enable_health_check else cfg.cleanup_interval
        self._next_cleanup = time.monotonic() + cfg.cleanup_interval
        self.last_health: str | None = None  # the status of the last health check (logged when it changes)
        self.last_status: HealthStatus | None = None
        self._dead_seen: set[int] = set()  # pids of dead writers already logged
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._claimed = False

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run_once(self, now: float | None = None) -> None:
        """One round: retention cleanup if ``cleanup_interval`` has passed since the last one (as
        of ``now``, time.monotonic() seconds), then a health check (logged when its status
        changes) or, with health checks off, reaping. Raises RecorderClosedError once the
        recorder is closed."""
        rec, cfg = self._rec, self._rec.config
        if rec.closed:
            raise RecorderClosedError(f"recorder {rec.name!r} is closed")
        rec.check_ring()  # logs once if the ring's name was removed or replaced
        if now is None:
            now = time.monotonic()
        if now >= self._next_cleanup:
            n = rec.cleanup_old_events()
            self._next_cleanup = now + cfg.cleanup_interval
            if n:
                self._logger.info("shmdiag %s: retention cleanup dropped %d events", rec.name, n)
        if cfg.enable_health_check:
            p = self.policy
            h = rec.health_check(p.window, stall_after=p.stall_after,
                                 error_rate_min_severity=p.error_rate_min_severity)  # reaps dead writers first
            self._log_deaths(h.dead_writers)
            if h.status != self.last_health:
                level = logging.INFO if h.status == "healthy" else logging.WARNING
                was = f"{self.last_health} -> " if self.last_health is not None else ""
                self._logger.log(level, "shmdiag %s health: %s%s (%s)", rec.name, was, h.status, h.message)
                self.last_health = h.status
            self.last_status = h
        else:
            rec.reap_dead_writers()

    def _log_deaths(self, dead: list[DeadWriter]) -> None:
        """One line per writer found dead, the first time it is seen (a pid that leaves the dead
        list, its shard taken by a new process, is logged again if it dies again)."""
        now = {d.pid for d in dead}
        for d in dead:
            if d.pid in self._dead_seen:
                continue
            last = d.last_event.isoformat().replace("+00:00", "Z") if d.last_event else "unknown"
            self._logger.warning("shmdiag %s: writer pid %d died without detaching: %d events recorded, "
                                 "%d lost, %d abandoned (in flight when it died); its last event at %s",
                                 self._rec.name, d.pid, d.recorded, d.lost, d.abandoned, last)
        self._dead_seen = now

    def start(self) -> None:
        """Name this process the ring's collector (RingInUseError if another live process is),
        then run rounds every ``period`` seconds in a daemon thread, until stop() or the
        recorder closes."""
        if self.running:
            return
        self._rec.claim_collector()
        self._claimed = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"shmdiag-collector-{self._rec.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for its current round to end. Idempotent, any thread."""
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join()
        if self._claimed:
            self._claimed = False
            self._rec.release_collector()  # a clean stop: the ring no longer expects this collector

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.run_once()
            except RecorderClosedError:
                return
            except Exception:  # keep collecting; a bug here must not stop cleanup for good
                self._logger.exception("shmdiag %s: maintenance failed", self._rec.name)
