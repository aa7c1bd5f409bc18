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


def _traceback_within(exc_info: tuple, room: int) -> str:
    """The exception's traceback as logging prints it, in at most ``room`` UTF-8 bytes: when
    longer, its first line, a line saying how many lines were left out, then as many of its
    last lines (the innermost frames and the exception's own line) as fit; when not even those
    fit, the exception's line alone (which the writer then cuts)."""
    text = "".join(traceback.format_exception(*exc_info)).rstrip("\n")
    if len(text.encode("utf-8", "surrogatepass")) <= room:
        return text
    head, *lines = text.split("\n")
    size = len(head.encode("utf-8", "surrogatepass")) + 1 + 40  # the marker line takes under 40 bytes
    kept: list[str] = []
    for line in reversed(lines):
        n = len(line.encode("utf-8", "surrogatepass")) + 1
        if size + n > room:
            break
        kept.append(line)
        size += n
    last = "".join(traceback.format_exception_only(exc_info[0], exc_info[1])).rstrip("\n")
    if len(kept) < last.count("\n") + 1:
        return last
    kept.reverse()
    return "\n".join([head, f"  ... ({len(lines) - len(kept)} lines left out)", *kept])


class LoggingHandler(logging.Handler):
    """Record each LogRecord as an event.

    The level becomes the severity (DEBUG..CRITICAL); the logger name is the event type unless
    ``extra={"event_type": ...}`` names one; ``extra={"peer_id": ...}`` sets the peer; other
    ``extra`` fields become metadata (values that JSON cannot hold are recorded as their str);
    an exception's traceback becomes the event's ``error`` (within the ring's text budget, after
    the message, which is kept whole: a traceback too long loses its outer frames).

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
        etype = getattr(record, "event_type", None)
        etype = etype if isinstance(etype, str) and etype else record.name or "root"
        peer = getattr(record, "peer_id", "")
        peer = peer if isinstance(peer, str) else str(peer)
        message = record.getMessage()
        error = None
        if record.exc_info and record.exc_info[1] is not None:
            # The traceback, within what the message leaves of the event's text: the message has
            # priority (the writer's rule), and a traceback too long loses its outer frames, not
            # the exception's own line at its end.
            room = self.recorder.text_budget(etype, peer) - len(message.encode("utf-8", "surrogatepass"))
            error = _traceback_within(record.exc_info, room)
        return DiagnosticEvent(
            event_type=etype,
            message=message,
            severity=_severity(record.levelno),
            peer_id=peer,
            metadata=metadata or None,
            error=error,
            timestamp=datetime.fromtimestamp(record.created, timezone.utc),
        )
