"""Following a ring into sinks (the SQLite archive, NATS): what ``serve --archive/--nats`` runs.

A ``RingArchiver`` follows the ring through a read-only Inspector from the sequence number the
archive says comes next (so a collector killed and started again resumes exactly after the last
committed event), and hands every poll to its sinks as a ``Batch``. It never writes to the ring
and never waits for it: writers are never slowed. When it falls behind, what the ring overwrote
first is counted as a gap, and its lag is logged.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Protocol

from shmdiag.archive.rows import caught_up, read_batch
from shmdiag.archive.store import ArchiveError, ArchiveFullError, ArchiveWriter, Batch, GapRow, Source
from shmdiag.inspector import Inspector

_CHUNK = 50_000  # rows per transaction at most

# The archivers running in this process, by ring name: what /metrics of the same process (serve
# --archive/--nats --http) reports about them (metrics/collector.py, live_counters).
_LIVE: dict[str, RingArchiver] = {}
_LIVE_LOCK = threading.Lock()


def live_reasons(ring: str) -> list[dict]:
    """Health reasons ({condition, status, message}) of the archiver following ``ring`` in this
    process: what ``/api/health`` of the same process adds to the ring's own."""
    with _LIVE_LOCK:
        arc = _LIVE.get(ring)
    return [] if arc is None else arc.reasons()


def live_counters(ring: str) -> dict | None:
    """The counters of the archiver following ``ring`` in this process, or None when there is none."""
    with _LIVE_LOCK:
        arc = _LIVE.get(ring)
    return None if arc is None else arc.counters()
_QUEUED = 8  # batches waiting for the sink thread at most


class Sink(Protocol):
    def resume(self, src: Source) -> int | None: ...
    def generations(self, host: str, ring: str) -> dict[int, int]: ...
    def write(self, batch: Batch) -> None: ...
    def note(self, src: Source, kind: str, detail: str) -> None: ...
    def close(self) -> None: ...


class SqliteSink:
    """An ArchiveWriter that survives a full disk: the batches it cannot write are counted into
    one pending ``undelivered`` gap, written (with a note) as soon as the disk has room again."""

    def __init__(self, writer: ArchiveWriter, logger: logging.Logger | None = None) -> None:
        self.writer = writer
        self.log = logger or logging.getLogger("shmdiag")
        self._pending: Batch | None = None
        self.not_archived = 0  # events lost to a full disk
        self.full_episodes = 0
        self._full = False  # from a failed write until a batch of events is written again

    def resume(self, src: Source) -> int | None:
        return self.writer.next_seq(src)

    def generations(self, host: str, ring: str) -> dict[int, int]:
        return {s.generation: n for s, n in self.writer.sources().items() if s.host == host and s.ring == ring}

    def _hold(self, batch: Batch) -> None:
        self.not_archived += len(batch.rows)
        ow = sum(g.overwritten for g in batch.gaps)
        ur = sum(g.unreadable for g in batch.gaps)
        if not self._full:
            self._full = True
            self.full_episodes += 1
            self.log.error("shmdiag %s: archive disk full in %s: events are counted, not archived, until "
                           "there is room", batch.source.ring, self.writer.directory)
        p = self._pending
        if p is None:
            p = self._pending = Batch(batch.source, batch.lo, batch.hi, [], [GapRow(batch.lo, batch.lo - 1)])
        g = p.gaps[0]
        end = batch.end
        p.hi = end
        g.last_seq = end - 1
        g.overwritten += ow
        g.unreadable += ur
        # Counted in sequence numbers, as every gap: what the ring lost before we read it, and
        # the rest of the range (events, their continuation slots) not archived. Counting one
        # per event would leave an event of several slots short (the gap's count must equal its range).
        g.undelivered = (g.last_seq - g.first_seq + 1) - g.overwritten - g.unreadable

    def _flush_pending(self) -> bool:
        p = self._pending
        if p is None:
            return True
        g = p.gaps[0]
        g.reason = f"not archived: the disk was full ({g.undelivered} events)"
        try:
            self.writer.write(p)
            self.writer.note(p.source, "disk_full", f"{g.undelivered} events not archived, seqs "
                                                    f"{g.first_seq}-{g.last_seq}")
        except ArchiveFullError:
            return False
        self._pending = None
        return True

    def write(self, batch: Batch) -> None:
        if not self._flush_pending():
            self._hold(batch)
            return
        try:
            self.writer.write(batch)
        except ArchiveFullError:
            self._hold(batch)
            return
        if self._full and batch.rows:
            self._full = False
            self.log.warning("shmdiag %s: archive writable again; %d events were not archived so far "
                             "(recorded as gaps)", batch.source.ring, self.not_archived)

    def note(self, src: Source, kind: str, detail: str) -> None:
        try:
            self.writer.note(src, kind, detail)
        except ArchiveFullError:
            pass  # the disk_full note says it later

    def close(self) -> None:
        self._flush_pending()
        self.writer.close()


class RingArchiver:
    """Follows the ring of ``inspector`` into ``sinks`` in a background thread (``start``/``stop``)
    or a poll at a time (``run_once``)."""

    def __init__(self, inspector: Inspector, sinks: list[Sink], *, host: str, ring: str | None = None,
                 logger: logging.Logger | None = None, poll_interval: float = 0.05,
                 owns_inspector: bool = False) -> None:
        self.insp = inspector
        self._owns = owns_inspector
        self.sinks = sinks
        self.log = logger or logging.getLogger("shmdiag")
        self.poll_interval = poll_interval
        self.source = Source(host, ring or inspector.name, inspector.created_ns)
        src = self.source
        starts = [n for n in (s.resume(src) for s in sinks) if n is not None]
        cursor = min(starts) if starts else 0
        for s in sinks:
            old = {g: n for g, n in s.generations(src.host, src.ring).items() if g != src.generation}
            if old and s.resume(src) is None:
                prev = max(old)
                s.note(src, "generation", f"a new ring {src.ring!r} (created {src.generation}); the previous "
                                          f"generation {prev} was archived up to seq {old[prev] - 1}")
                self.log.warning("shmdiag %s: the ring was created again: archiving a new generation", src.ring)
        self.resumed_at = cursor
        self._follower = inspector.follower(cursor)
        self._clears = inspector.clear_generation()
        self.archived = 0
        self.overwritten = 0
        self.unreadable = 0
        self.lag = 0
        self._next_check = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reported = 0
        self._losses: dict[str, tuple[int, float]] = {}  # condition -> (count, when it last grew)
        self._q: queue.Queue | None = None
        self._sink_thread: threading.Thread | None = None

    @property
    def cursor(self) -> int:
        return self._follower.cursor

    def run_once(self) -> int:
        """One poll into every sink; returns the number of events it read."""
        batch = read_batch(self._follower, self.source)
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + 1.0
            self._check()
        if batch.hi == batch.lo:
            return 0
        self.archived += len(batch.rows)
        self.overwritten += sum(g.overwritten for g in batch.gaps)
        self.unreadable += sum(g.unreadable for g in batch.gaps)
        for part in _split(batch):
            self._to_sinks("write", part)
        return len(batch.rows)

    def _to_sinks(self, method: str, *args: object) -> None:
        """Hand a write or note to the sinks: directly, or through the queue to the sink thread
        when running (it blocks when the queue is full: the follower then lags, the ring
        overwrites, and that is counted; writers are never slowed)."""
        if self._q is not None:
            self._q.put((method, args))
            return
        for s in self.sinks:
            getattr(s, method)(*args)

    def _sink_loop(self) -> None:
        """The sink thread: SQLite and NATS work here, overlapping the follower's decoding
        (sqlite3 releases the GIL while it steps)."""
        assert self._q is not None
        while True:
            item = self._q.get()
            if item is None:
                return
            method, args = item
            for s in self.sinks:
                try:
                    getattr(s, method)(*args)
                except ArchiveError as e:
                    self.log.error("shmdiag %s: archive: %s", self.source.ring, e)
                except Exception:  # keep archiving: a bug here must not stop it for good
                    self.log.exception("shmdiag %s: archive failed", self.source.ring)

    def _check(self) -> None:
        """Once a second: a clear is noted; the lag is measured, and reported when events were lost."""
        gen = self.insp.clear_generation()
        if gen != self._clears:
            self._clears = gen
            self._to_sinks("note", self.source, "clear", f"the ring was cleared (clear generation {gen}); "
                                                         f"archiving goes on at seq {self.cursor}")
            self.log.info("shmdiag %s: ring cleared; archived so far: %d", self.source.ring, self.archived)
        _, head = self.insp.history(0)
        self.lag = max(0, head - self.cursor)
        self.reasons()  # note when a loss count grew
        lost = self.overwritten
        if lost > self._reported:
            self.log.warning("shmdiag %s: the archive fell behind the writers: %d events overwritten before they "
                             "were archived so far (counted as gaps); lag now %d events",
                             self.source.ring, lost, self.lag)
            self._reported = lost

    def counters(self) -> dict:
        """What it archived and counted so far: ``archived`` (events), ``overwritten``,
        ``unreadable`` (gaps read from the ring), ``disk_full`` (events not archived for a full
        disk), ``lag`` (sequence numbers between its cursor and the head, refreshed each second),
        and ``nats`` (published, dropped, buffered, retries) when it publishes."""
        out: dict = {"archived": self.archived, "overwritten": self.overwritten, "unreadable": self.unreadable,
                     "disk_full": 0, "lag": self.lag, "nats": None}
        for s in self.sinks:
            if isinstance(s, SqliteSink):
                out["disk_full"] += s.not_archived
            elif hasattr(s, "counters"):
                out["nats"] = s.counters()
        return out

    def reasons(self, window: float = 60.0) -> list[dict]:
        """Warnings while events are being lost on the archive's side: NATS dropping (its buffer
        full), a full disk, the ring overwriting what the archive had not read, each within the
        last ``window`` seconds (as seen by the once-a-second check)."""
        now = time.monotonic()
        out = []
        c = self.counters()
        for cond, n, text in (("nats_dropping", (c["nats"] or {}).get("dropped", 0),
                               "NATS buffer full: {n} events dropped so far (counted as undelivered)"),
                              ("archive_disk_full", c["disk_full"],
                               "archive disk full: {n} events not archived so far"),
                              ("archive_behind", c["overwritten"],
                               "the archive fell behind the writers: {n} events overwritten before it read them")):
            seen, at = self._losses.get(cond, (0, -1e18))
            if n > seen:
                self._losses[cond] = (n, now)
                at = now
            if now - at <= window:
                out.append({"condition": cond, "status": "warning", "message": text.format(n=n)})
        return out

    def start(self) -> None:
        """Follow in one thread, write to the sinks in another."""
        with _LIVE_LOCK:
            _LIVE[self.source.ring] = self
        self._q = queue.Queue(maxsize=_QUEUED)
        self._sink_thread = threading.Thread(target=self._sink_loop, name=f"shmdiag-sink-{self.source.ring}",
                                             daemon=True)
        self._sink_thread.start()
        self._thread = threading.Thread(target=self._run, name=f"shmdiag-archive-{self.source.ring}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                n = self.run_once()
            except ArchiveError as e:
                self.log.error("shmdiag %s: archive: %s", self.source.ring, e)
                n = 0
            except Exception:  # keep archiving: a bug here must not stop it for good
                self.log.exception("shmdiag %s: archive failed", self.source.ring)
                n = 0
            if n < 1000 and caught_up(self._follower):
                self._stop.wait(self.poll_interval)

    def stop(self) -> None:
        """Stop the thread, archive what is left in the ring, and close the sinks."""
        with _LIVE_LOCK:
            if _LIVE.get(self.source.ring) is self:
                del _LIVE[self.source.ring]
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            deadline = time.monotonic() + 10.0  # up to the head as of now (bounded polls), within reason
            self.run_once()
            while not caught_up(self._follower) and time.monotonic() < deadline:
                self.run_once()
        finally:
            if self._q is not None:
                self._q.put(None)
                assert self._sink_thread is not None
                self._sink_thread.join()
                self._q = None
            for s in self.sinks:
                s.close()
            if self._owns:
                self.insp.close()


def _split(batch: Batch) -> list[Batch]:
    """A large batch as several of at most _CHUNK rows, each ending where the next begins."""
    rows = batch.rows
    if len(rows) <= _CHUNK:
        return [batch]
    out = []
    lo = batch.lo
    gaps = sorted(batch.gaps, key=lambda g: g.first_seq)
    gi = 0
    for i in range(0, len(rows), _CHUNK):
        part = rows[i: i + _CHUNK]
        hi = rows[i + _CHUNK][1] if i + _CHUNK < len(rows) else batch.hi
        mine = []
        while gi < len(gaps) and gaps[gi].first_seq < hi:
            mine.append(gaps[gi])
            gi += 1
        out.append(Batch(batch.source, lo, hi, part, mine, batch.dropped if i == 0 else None))
        lo = hi
    return out
