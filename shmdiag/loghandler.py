"""A ``logging.Handler`` that records log records into a ring, so code that already logs flows
into shmdiag from every process that attaches."""

from __future__ import annotations

import logging
import threading
import traceback
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from shmdiag.core.errors import RecorderClosedError
from shmdiag.core.models import DiagnosticEvent, Severity

if TYPE_CHECKING:
    from shmdiag.recorder import Recorder

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_OWN = {"event_type", "peer_id"}


def _severity(levelno: int) -> Severity:
    if levelno >= logging.CRITICAL:
        return Severity.CRITICAL
    if levelno >= logging.ERROR:
        return Severity.ERROR
    if levelno >= logging.WARNING:
        return Severity.WARNING
    if levelno >= logging.INFO:
        return Severity.INFO
    return Severity.DEBUG


class LoggingHandler(logging.Handler):
    """Record each LogRecord as an event.

    The level becomes the severity (DEBUG..CRITICAL); the logger name is the event type unless
    ``extra={"event_type": ...}`` names one; ``extra={"peer_id": ...}`` sets the peer; other
    ``extra`` fields become metadata (values that JSON cannot hold are recorded as their str);
    an exception's type and message become the event's ``error``.

    Records of shmdiag's own logger are ignored, so attaching this handler to the root logger
    cannot loop; events recorded through it are not logged again. A recorder that has been
    closed makes the handler drop records and count them in ``dropped``.
    """

    def __init__(self, recorder: Recorder, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.recorder = recorder
        self.dropped = 0
        self._busy = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "shmdiag" or record.name.startswith("shmdiag.") or getattr(self._busy, "on", False):
            return
        self._busy.on = True
        try:
            self.recorder.record_event(self._event(record), log=False)
        except RecorderClosedError:
            self.dropped += 1
        except Exception:
            self.handleError(record)
        finally:
            self._busy.on = False

    def _event(self, record: logging.LogRecord) -> DiagnosticEvent:
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD and k not in _OWN}
        metadata = {k: v if isinstance(v, (str, int, float, bool, type(None))) else str(v) for k, v in extra.items()}
        error = None
        if record.exc_info and record.exc_info[1] is not None:
            error = "".join(traceback.format_exception_only(record.exc_info[0], record.exc_info[1])).strip()
        etype = getattr(record, "event_type", None)
        peer = getattr(record, "peer_id", "")
        return DiagnosticEvent(
            event_type=etype if isinstance(etype, str) and etype else record.name or "root",
            message=record.getMessage(),
            severity=_severity(record.levelno),
            peer_id=peer if isinstance(peer, str) else str(peer),
            metadata=metadata or None,
            error=error,
            timestamp=datetime.fromtimestamp(record.created, timezone.utc),
        )
