"""Where the crawler's diagnostics go: shmdiag (the point), or, for the benchmark, nowhere,
nowhere but with the ring attached (what importing and mapping shmdiag costs by itself),
``logging`` to a file, orjson JSON lines to one O_APPEND file, or shmdiag switched on and off
every few tens of milliseconds within one crawl (``alternate``: the in-process A/B).

The alternatives have the methods of ``shmdiag.Recorder`` the crawler calls, so the crawl code
is the same in every mode (the shmdiag mode is the Recorder itself, with no wrapper around it).
Each process opens the shared file itself, as a Bitnodes-style crawler's processes do.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import orjson

MODES = ("shmdiag", "off", "attached", "logging", "jsonl", "alternate")
_METHODS = ("record_peer_connection", "record_peer_disconnection", "record_message", "record_error",
            "record_latency", "span")
ALTERNATE_ONLY = ("record_message", "span")  # what --alternate-only can single out


class _NoSpan:
    __slots__ = ()

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> bool:
        return False


_NO_SPAN = _NoSpan()


class NullSink:
    """Recording off: the crawler's own counting only."""

    def record_peer_connection(self, peer_id: str, address: str) -> None:
        pass

    def record_peer_disconnection(self, peer_id: str, address: str, reason: str) -> None:
        pass

    def record_message(self, peer_id: str, msg_type: str, direction: str, size: int) -> None:
        pass

    def record_error(self, peer_id: str, err: BaseException | str, operation: str) -> None:
        pass

    def record_latency(self, op: str, seconds: float, peer_id: str = "") -> None:
        pass

    def span(self, op: str, peer_id: str = "") -> Any:
        return _NO_SPAN

    def close(self) -> None:
        pass


class AttachedNullSink(NullSink):
    """Records nothing, but holds an attached Recorder: shmdiag imported, the ring mapped."""

    def __init__(self, rec: Any) -> None:
        self._rec = rec

    def close(self) -> None:
        self._rec.close()


class _TimedSpan:
    __slots__ = ("_sink", "_op", "_peer", "_t0")

    def __init__(self, sink: Any, op: str, peer: str) -> None:
        self._sink, self._op, self._peer = sink, op, peer

    def __enter__(self) -> _TimedSpan:
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> bool:
        dt = time.perf_counter() - self._t0
        if exc is None:
            self._sink.record_latency(self._op, dt, self._peer)
        else:
            self._sink.record_error(self._peer, f"{self._op} failed after {dt:.3f}s: {exc!r}", self._op)
        return False


class LoggingSink(NullSink):
    """``logging`` at DEBUG for messages (INFO/WARNING/ERROR for the rest) to a FileHandler in
    append mode, one per process on the same file, with a timestamped format."""

    def __init__(self, path: str) -> None:
        self._log = logging.getLogger(f"crawler.{os.getpid()}")
        self._log.propagate = False
        self._log.setLevel(logging.DEBUG)
        self._handler = logging.FileHandler(path, mode="a")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(message)s"))
        self._log.addHandler(self._handler)

    def record_peer_connection(self, peer_id: str, address: str) -> None:
        self._log.info("[%s] Peer connected: %s", peer_id, address)

    def record_peer_disconnection(self, peer_id: str, address: str, reason: str) -> None:
        self._log.warning("[%s] Peer disconnected: %s (%s)", peer_id, address, reason)

    def record_message(self, peer_id: str, msg_type: str, direction: str, size: int) -> None:
        self._log.debug("[%s] Message %s: %s (%d bytes)", peer_id, direction, msg_type, size)

    def record_error(self, peer_id: str, err: BaseException | str, operation: str) -> None:
        self._log.error("[%s] Error in %s: %s", peer_id, operation, err)

    def record_latency(self, op: str, seconds: float, peer_id: str = "") -> None:
        self._log.debug("[%s] %s took %.6f s", peer_id, op, seconds)

    def span(self, op: str, peer_id: str = "") -> Any:
        return _TimedSpan(self, op, peer_id)

    def close(self) -> None:
        self._log.removeHandler(self._handler)
        self._handler.close()


class JsonlSink(NullSink):
    """One orjson line per event, ``os.write`` to a file opened O_APPEND by each process (a
    line under PIPE_BUF-ish sizes lands whole)."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._pid = os.getpid()

    def _put(self, d: dict) -> None:
        d["ts"] = time.time()
        d["pid"] = self._pid
        os.write(self._fd, orjson.dumps(d) + b"\n")

    def record_peer_connection(self, peer_id: str, address: str) -> None:
        self._put({"type": "peer_connected", "peer": peer_id, "address": address})

    def record_peer_disconnection(self, peer_id: str, address: str, reason: str) -> None:
        self._put({"type": "peer_disconnected", "peer": peer_id, "address": address, "reason": reason})

    def record_message(self, peer_id: str, msg_type: str, direction: str, size: int) -> None:
        self._put({"type": "message", "peer": peer_id, "msg": msg_type, "dir": direction, "size": size})

    def record_error(self, peer_id: str, err: BaseException | str, operation: str) -> None:
        self._put({"type": "error", "peer": peer_id, "op": operation, "error": str(err)})

    def record_latency(self, op: str, seconds: float, peer_id: str = "") -> None:
        self._put({"type": "latency", "peer": peer_id, "op": op, "s": seconds})

    def span(self, op: str, peer_id: str = "") -> Any:
        return _TimedSpan(self, op, peer_id)

    def close(self) -> None:
        os.close(self._fd)


class Alternating:
    """shmdiag and recording off in turns, within one process: ``flip()`` rebinds every method to
    the Recorder's or to NullSink's bound method, so a call costs what it costs in that mode (an
    instance attribute lookup, no wrapper). The crawler charges its CPU time and messages to the
    phase they fall in: both phases see the same load from the rest of the machine, which an A/B
    of separate crawls cannot promise (on a shared 2-vCPU machine crawls of the same mode differ
    by +-5 us per message)."""

    def __init__(self, rec: Any, only: str | None = None) -> None:
        self._rec, self._null, self.on = rec, NullSink(), False
        self._methods = (only,) if only else _METHODS  # only: the one method switched; the rest stay off
        for name in _METHODS:
            setattr(self, name, getattr(self._null, name))
        self.flip()

    def flip(self) -> None:
        self.on = not self.on
        target = self._rec if self.on else self._null
        for name in self._methods:
            setattr(self, name, getattr(target, name))

    def flush(self) -> None:
        """Write what the Recorder staged (Recorder.set_batch): at the end of an on phase, so that
        the flusher does not write it during the off phase and charge it there."""
        self._rec.flush()

    def close(self) -> None:
        self._rec.close()


def _attach(ring: str | None, batch: int) -> Any:
    from shmdiag import Recorder

    assert ring is not None
    rec = Recorder.attach(ring)
    if batch:
        rec.set_batch(batch)
    return rec


def make_sink(mode: str, ring: str | None, log_file: str | None, alternate_only: str | None = None,
              batch: int = 0) -> Any:
    """The recorder the crawl code calls in one worker process (``batch``: Recorder.set_batch)."""
    if mode == "shmdiag":
        return _attach(ring, batch)
    if mode == "off":
        return NullSink()
    if mode == "attached":
        from shmdiag import Recorder

        assert ring is not None
        return AttachedNullSink(Recorder.attach(ring))
    if mode == "alternate":
        return Alternating(_attach(ring, batch), alternate_only)
    if log_file is None:
        raise ValueError(f"--record {mode} needs --log-file")
    if mode == "logging":
        return LoggingSink(log_file)
    if mode == "jsonl":
        return JsonlSink(log_file)
    raise ValueError(f"unknown recording mode {mode!r}")
