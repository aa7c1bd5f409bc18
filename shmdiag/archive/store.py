"""The on-disk archive: a directory of SQLite files, one written at a time, rotated by size and age.

Every file has the same schema, whether a local collector (``serve --archive``) or the central
archiver (``archive --from-nats``) wrote it, so ``query`` and any SQLite client read both:

* ``events`` (a view): one row per event, typed columns ``ts`` (nanoseconds since the Unix epoch,
  UTC), ``seq``, ``pid``, ``type``, ``severity`` (0 debug .. 4 critical), ``peer``, ``message``,
  ``error``, ``metadata`` (JSON text), ``truncated``, and the source: ``host``, ``ring`` and
  ``generation`` (the ring's creation time in ns: a ring removed and created again under the
  same name starts its sequence numbers afresh, as a new generation), then ``slots``: the
  sequence numbers the event takes (``seq`` .. ``seq + slots - 1``; more than 1 for an event
  whose text continues in the slots after its first). The rows are stored in
  ``event_rows`` with a small ``source`` id instead of the three source columns (a quarter
  fewer bytes per event with a long ring name); the view joins them back;
* ``gaps``: sequence numbers that are not in ``events``, counted (in sequence numbers: an event
  of several slots lost whole counts as several) by cause: ``overwritten`` (the
  ring went round before the collector read them), ``unreadable`` (never completed by their
  writer, or expired), ``undelivered`` (dropped on the way: NATS down beyond the buffer, or the
  disk full). ``events`` + ``gaps`` of a source cover every sequence number it used exactly once;
* ``notes``: what happened to a source that is not an event: a clear, a new generation, a full
  disk, a start or a stop;
* ``sources``: per (host, ring, generation), its id and the next sequence number to archive. It is
  committed in the same transaction as the rows, which is what makes a restart resume exactly
  after the last archived event, and what drops a redelivered batch (central archive).

The file being written has an index on ``ts``; the indexes on type, peer and severity (each
with ``ts``) are built in bulk when the file is sealed (rotated, or at a clean stop, or at the
next start after a crash), several times cheaper than keeping them up to date row by row.
A sealed file is switched out of WAL mode, so it is one self-contained file.

Writes are batched: one transaction per batch (WAL, ``synchronous=NORMAL``: a killed process
loses nothing committed; a power cut may lose the last transactions, never the file).
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from shmdiag.core.errors import ShmDiagError

FORMAT = "shmdiag-archive"
VERSION = 2  # 2: event_rows.slots (1 was the same without it; read, never written)
_READABLE = ("1", "2")
FILE_RE = re.compile(r"^shmdiag-(\d{8}T\d{6})-(\d{6})\.sqlite$")
LOCK = ".shmdiag-archive.lock"
_COMPANIONS = ("-wal", "-shm", "-journal")
_SQLITE_FULL = 13  # SQLITE_FULL, the primary result code of "database or disk is full"

# An event row as written, in ROW_COLUMNS order (the source is the batch's). ``slots``: the sequence
# numbers the event takes, seq .. seq + slots - 1 (an event longer than one slot continues in the
# slots after its first: core/layout.py, CONT); 1 for most.
ROW_COLUMNS = ("ts", "seq", "pid", "type", "severity", "peer", "message", "error", "metadata", "truncated", "slots")
# What query() yields (the ``events`` view's first columns; the view ends with ``slots``).
EVENT_COLUMNS = (*ROW_COLUMNS[:10], "host", "ring", "generation")
Row = tuple

_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE event_rows(
    ts INTEGER NOT NULL, seq INTEGER NOT NULL, pid INTEGER, type TEXT NOT NULL, severity INTEGER NOT NULL,
    peer TEXT NOT NULL, message TEXT NOT NULL, error TEXT, metadata TEXT, truncated INTEGER NOT NULL,
    slots INTEGER NOT NULL DEFAULT 1, source INTEGER NOT NULL);
CREATE INDEX events_ts ON event_rows(ts);
CREATE TABLE gaps(
    ts INTEGER NOT NULL, host TEXT NOT NULL, ring TEXT NOT NULL, generation INTEGER NOT NULL,
    first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL,
    overwritten INTEGER NOT NULL, unreadable INTEGER NOT NULL, undelivered INTEGER NOT NULL, reason TEXT NOT NULL);
CREATE TABLE notes(
    ts INTEGER NOT NULL, host TEXT NOT NULL, ring TEXT NOT NULL, generation INTEGER NOT NULL,
    kind TEXT NOT NULL, detail TEXT NOT NULL);
CREATE TABLE sources(
    id INTEGER PRIMARY KEY, host TEXT NOT NULL, ring TEXT NOT NULL, generation INTEGER NOT NULL,
    next_seq INTEGER NOT NULL, UNIQUE(host, ring, generation));
CREATE VIEW events AS SELECT e.ts, e.seq, e.pid, e.type, e.severity, e.peer, e.message, e.error, e.metadata,
    e.truncated, s.host, s.ring, s.generation, e.slots FROM event_rows e JOIN sources s ON s.id = e.source;
"""
_SEAL_INDEXES = (
    "CREATE INDEX IF NOT EXISTS events_type ON event_rows(type, ts)",
    "CREATE INDEX IF NOT EXISTS events_peer ON event_rows(peer, ts)",
    "CREATE INDEX IF NOT EXISTS events_severity ON event_rows(severity, ts)",
)
_ROW_SQL = f"({','.join('?' * len(ROW_COLUMNS))}, {{source}})"  # source: an int
_INSERT = "INSERT INTO event_rows VALUES" + _ROW_SQL
# Rows per INSERT statement: one statement of many rows binds the same parameters with a
# fraction of the per-statement work (step, reset, and the GIL given up and taken back around
# each step), 1.2-1.7x the rows/s of one row per statement here.
_MULTI = 128
_INSERT_MULTI = "INSERT INTO event_rows VALUES" + ",".join([_ROW_SQL] * _MULTI)


def _insert(db: sqlite3.Connection, sid: int, rows: list[Row]) -> None:
    full = len(rows) // _MULTI * _MULTI
    if full:
        flat = list(itertools.chain.from_iterable(rows[:full] if full < len(rows) else rows))
        w = _MULTI * len(ROW_COLUMNS)
        db.executemany(_INSERT_MULTI.format(source=sid), [flat[i: i + w] for i in range(0, len(flat), w)])
    if full < len(rows):
        db.executemany(_INSERT.format(source=sid), rows[full:])


class ArchiveError(ShmDiagError):
    """The archive directory cannot be used (unwritable, holds foreign files, another writer)."""


class ArchiveFullError(ArchiveError):
    """The disk (or the file system's quota) is full: the batch was not written, nothing committed changed."""


@dataclass(frozen=True)
class Source:
    """Where events come from: a ring on a host, in one generation (the ring's creation time, ns)."""

    host: str
    ring: str
    generation: int


@dataclass
class GapRow:
    """Sequence numbers [first_seq, last_seq] of a source that are not archived, and why."""

    first_seq: int
    last_seq: int
    overwritten: int = 0
    unreadable: int = 0
    undelivered: int = 0
    reason: str = ""

    @property
    def count(self) -> int:
        return self.overwritten + self.unreadable + self.undelivered


@dataclass
class Batch:
    """Everything a follower delivered for one source between sequence numbers ``lo`` (the cursor
    before) and ``hi`` (after): event rows in seq order and gaps. ``dropped``: what the sender
    could not deliver just before ``lo`` (its NATS buffer was full), as it counted it."""

    source: Source
    lo: int
    hi: int
    rows: list[Row] = field(default_factory=list)
    gaps: list[GapRow] = field(default_factory=list)
    dropped: GapRow | None = None

    @property
    def end(self) -> int:
        """The sequence number after everything this batch accounts for: ``hi``, or past it when
        its last event's continuation slots lie beyond (a poll that ended inside an event)."""
        if self.rows:
            last = self.rows[-1]
            return max(self.hi, last[1] + (last[10] if len(last) > 10 else 1))
        return self.hi

    def span(self) -> int:
        """Sequence numbers from ``lo`` to ``end``."""
        return self.end - self.lo


def archive_files(directory: str) -> list[str]:
    """The archive files of ``directory`` (full paths), oldest first. Raises ArchiveError if it
    holds anything else: retention deletes files there, so it must be the archive's own."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        raise ArchiveError(f"{directory}: no such directory") from None
    except NotADirectoryError:
        raise ArchiveError(f"{directory}: not a directory") from None
    except PermissionError:
        raise ArchiveError(f"{directory}: permission denied") from None
    files = []
    for n in names:
        if n == LOCK:
            continue
        m = FILE_RE.match(n)
        base = n
        for c in _COMPANIONS:
            if n.endswith(c):
                base = n[: -len(c)]
        if m is None and not FILE_RE.match(base):
            raise ArchiveError(f"{os.path.join(directory, n)} is not a shmdiag archive file; an archive "
                               "directory holds only its own files (use an empty directory)")
        if m is not None:
            files.append(os.path.join(directory, n))
    return files


def check_file(path: str) -> sqlite3.Connection:
    """Open an archive file (read-only) and check it is one; ArchiveError if it is not."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise ArchiveError(f"{path}: cannot open: {e}") from None
    try:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.Error as e:
        db.close()
        raise ArchiveError(f"{path} is not a shmdiag archive file ({e})") from None
    if meta.get("format") != FORMAT:
        db.close()
        raise ArchiveError(f"{path} is not a shmdiag archive file (no format marker)")
    if meta.get("version") not in _READABLE:
        db.close()
        raise ArchiveError(f"{path} is a shmdiag archive of version {meta.get('version')}, not {VERSION}")
    return db


def _connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA busy_timeout=5000")
    return db


def seal(path: str) -> None:
    """Build the type/peer/severity indexes of a file no longer written, and make it one plain
    file (journal_mode DELETE). Idempotent: safe on a file sealed already, or half sealed by a
    process that was killed."""
    db = _connect(path)
    try:
        if db.execute("SELECT value FROM meta WHERE key='sealed'").fetchone():
            return
        db.execute("BEGIN")
        for sql in _SEAL_INDEXES:
            db.execute(sql)
        db.execute("INSERT OR REPLACE INTO meta VALUES('sealed', '1')")
        db.execute("COMMIT")
        db.execute("PRAGMA journal_mode=DELETE")
    finally:
        db.close()


def _clip(g: GapRow, first: int) -> GapRow:
    """The part of ``g`` from ``first`` on (a batch that overlaps what was archived already)."""
    n = min(g.count, g.last_seq - first + 1)
    ow = min(g.overwritten, n)
    ur = min(g.unreadable, n - ow)
    return GapRow(first, g.last_seq, ow, ur, n - ow - ur, g.reason)


def _is_full(e: BaseException) -> bool:
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    return getattr(e, "sqlite_errorcode", None) == _SQLITE_FULL or "disk is full" in str(e)


class ArchiveWriter:
    """Appends batches to the newest file of ``directory``, rotating it at ``max_bytes`` or
    ``max_age`` seconds and deleting files whose newest event is older than ``keep`` seconds.

    One writer per directory (an exclusive lock on ``.shmdiag-archive.lock``, released by the
    kernel if the process dies). Each start writes a new file; files a killed writer left unsealed
    are sealed in a background thread. Not thread-safe: one thread appends.
    """

    def __init__(self, directory: str, *, max_bytes: int = 256 << 20, max_age: float = 3600.0,
                 keep: float | None = None, page_limit: int | None = None) -> None:
        if max_bytes < 1 << 16:
            raise ValueError(f"max_bytes must be at least 64 KiB, got {max_bytes}")
        if not max_age > 0:
            raise ValueError(f"max_age must be positive, got {max_age!r}")
        if keep is not None and not keep > 0:
            raise ValueError(f"keep must be positive, got {keep!r}")
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.keep = keep
        self._page_limit = page_limit  # tests: SQLite's max_page_count, to make the disk "full"
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise ArchiveError(f"{directory}: cannot create the archive directory: {e.strerror}") from None
        if not os.access(directory, os.W_OK | os.X_OK):
            raise ArchiveError(f"{directory}: not writable")
        existing = archive_files(directory)
        for p in existing:  # refuse before touching anything: a foreign file among ours
            check_file(p).close()
        try:
            self._lock_fd = os.open(os.path.join(directory, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ArchiveError(f"{directory}: cannot create its lock file: {e.strerror}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise ArchiveError(f"{directory}: another process is writing this archive") from None
        self._state: dict[Source, int] = {}  # the next seq to archive, per source
        self._ids: dict[Source, int] = {}    # its id in the sources table (the same in every file written)
        if existing:
            db = check_file(existing[-1])
            try:
                for i, h, r, g, n in db.execute("SELECT id, host, ring, generation, next_seq FROM sources"):
                    self._state[Source(h, r, g)] = n
                    self._ids[Source(h, r, g)] = i
            finally:
                db.close()
        self._sealers: list[threading.Thread] = []
        self._seal_in_background(existing)
        self._db: sqlite3.Connection | None = None
        self._path = ""
        self._opened = 0.0
        self._counter = 0
        self.rows_written = 0
        self._open_new()

    # -- files -------------------------------------------------------------------------------
    def _seal_in_background(self, paths: Iterable[str]) -> None:
        """Seal ``paths``, then apply retention, in a thread (retention after sealing: a file
        being sealed is locked)."""
        paths = list(paths)
        if not paths and self.keep is None:
            return

        def run() -> None:
            for p in paths:
                try:
                    seal(p)
                except sqlite3.Error:
                    pass  # a full disk: the file stays readable, only slower to query; sealed next start
            self._retain()

        t = threading.Thread(target=run, name="shmdiag-archive-seal", daemon=True)
        t.start()
        self._sealers.append(t)

    def _open_new(self) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        while True:
            self._counter += 1
            path = os.path.join(self.directory, f"shmdiag-{stamp}-{self._counter:06d}.sqlite")
            if not any(os.path.exists(path + c) for c in ("", *_COMPANIONS)):
                break
        try:
            db = _connect(path)
            db.execute("PRAGMA page_size=16384")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA cache_size=-32768")
            if self._page_limit:
                db.execute(f"PRAGMA max_page_count={self._page_limit}")
            db.execute("BEGIN")
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    db.execute(stmt)
            db.executemany("INSERT INTO meta VALUES(?, ?)",
                           [("format", FORMAT), ("version", str(VERSION)), ("created_ns", str(time.time_ns()))])
            db.executemany("INSERT INTO sources VALUES(?, ?, ?, ?, ?)",
                           [(self._ids[s], s.host, s.ring, s.generation, n) for s, n in self._state.items()])
            db.execute("COMMIT")
        except (sqlite3.Error, OSError) as e:
            for c in ("", *_COMPANIONS):
                try:
                    os.unlink(path + c)
                except OSError:
                    pass
            if _is_full(e):
                raise ArchiveFullError(f"{self.directory}: disk full, cannot start a new archive file") from None
            raise ArchiveError(f"{path}: cannot create: {e}") from None
        self._db, self._path, self._opened = db, path, time.monotonic()

    @property
    def path(self) -> str:
        """The file being written."""
        return self._path

    def next_seq(self, source: Source) -> int | None:
        """The next sequence number to archive from ``source``, or None if it was never archived."""
        return self._state.get(source)

    def sources(self) -> dict[Source, int]:
        return dict(self._state)

    def _maybe_rotate(self) -> None:
        try:
            size = os.path.getsize(self._path) + os.path.getsize(self._path + "-wal")
        except OSError:
            size = 0
        if size < self.max_bytes and time.monotonic() - self._opened < self.max_age:
            return
        self.rotate()

    def rotate(self) -> None:
        """Start a new file now; the old one is sealed in the background; retention runs."""
        old_db, old = self._db, self._path
        self._open_new()  # raises with nothing changed (the old file stays the one written)
        if old_db is not None:
            old_db.close()
        self._seal_in_background([old])

    def _retain(self) -> None:
        if self.keep is None:
            return
        cutoff = time.time_ns() - int(self.keep * 1e9)
        try:
            files = archive_files(self.directory)[:-1]  # never the newest: the one being written
        except ArchiveError:
            return
        for p in files:
            try:
                db = check_file(p)
                try:
                    newest = db.execute("SELECT max(ts) FROM event_rows").fetchone()[0]
                    created = int(db.execute("SELECT value FROM meta WHERE key='created_ns'").fetchone()[0])
                finally:
                    db.close()
            except (ArchiveError, sqlite3.Error):
                continue
            if max(newest or 0, created) < cutoff:
                for c in ("", *_COMPANIONS):
                    try:
                        os.unlink(p + c)
                    except FileNotFoundError:
                        pass

    # -- writing -----------------------------------------------------------------------------
    def write(self, batch: Batch) -> int:
        """Commit ``batch`` in one transaction (rows, gaps, and the source's next sequence
        number). Rows and gaps below what was archived already are dropped (a redelivery);
        sequence numbers skipped before ``batch.lo`` that the sender counted as dropped become
        an ``undelivered`` gap. Returns the number of rows written. Raises ArchiveFullError
        (nothing written) when the disk is full."""
        assert self._db is not None
        src = batch.source
        have = self._state.get(src)
        rows, gaps = batch.rows, list(batch.gaps)
        upto = batch.end
        if have is not None and upto <= have:
            return 0  # all archived already (a redelivery)
        if have is not None and batch.lo < have:  # partly archived already
            rows = [r for r in rows if r[1] >= have]
            gaps = [g if g.first_seq >= have else _clip(g, have) for g in gaps if g.last_seq >= have]
        elif batch.lo > (have or 0):
            # Sequence numbers that never arrived: what the sender dropped and counted, and before
            # that (or without that) what was lost on the way, counted here as sequence numbers.
            start = have or 0
            d = batch.dropped
            if d is not None and d.first_seq >= start and d.last_seq == batch.lo - 1:
                gaps.insert(0, d)
                end = d.first_seq
            else:
                end = batch.lo
            if end > start:
                gaps.insert(0, GapRow(start, end - 1, undelivered=end - start,
                                      reason="never received (discarded by the stream's limits, or sent "
                                             "before this archive began)" if have is not None
                                      else "never received: before the first batch of this source"))
        now = time.time_ns()
        db = self._db
        sid = self._ids.get(src)
        new = sid is None
        if sid is None:
            sid = max(self._ids.values(), default=0) + 1
        try:
            db.execute("BEGIN")
            if new:
                db.execute("INSERT INTO sources VALUES(?, ?, ?, ?, ?)", (sid, src.host, src.ring, src.generation, 0))
            if rows:
                _insert(db, int(sid), rows)
            if gaps:
                db.executemany("INSERT INTO gaps VALUES(?,?,?,?,?,?,?,?,?,?)",
                               [(now, src.host, src.ring, src.generation, g.first_seq, g.last_seq,
                                 g.overwritten, g.unreadable, g.undelivered, g.reason or "not read") for g in gaps])
            db.execute("UPDATE sources SET next_seq = ? WHERE id = ?", (upto, sid))
            db.execute("COMMIT")
        except (sqlite3.Error, OSError) as e:
            self._rollback()
            if _is_full(e):
                raise ArchiveFullError(f"{self._path}: disk full; {len(rows)} events not archived") from None
            raise ArchiveError(f"{self._path}: write failed: {e}") from None
        self._state[src] = upto
        self._ids[src] = sid
        self.rows_written += len(rows)
        try:
            self._maybe_rotate()
        except ArchiveError:
            pass  # a full disk: go on in the current file (the next write reports it if it persists)
        return len(rows)

    def note(self, source: Source, kind: str, detail: str) -> None:
        """Record something that happened to ``source`` (a clear, a new generation, a full disk)."""
        assert self._db is not None
        try:
            self._db.execute("INSERT INTO notes VALUES(?, ?, ?, ?, ?, ?)",
                             (time.time_ns(), source.host, source.ring, source.generation, kind, detail))
        except (sqlite3.Error, OSError) as e:
            self._rollback()
            if _is_full(e):
                raise ArchiveFullError(f"{self._path}: disk full") from None
            raise ArchiveError(f"{self._path}: write failed: {e}") from None

    def _rollback(self) -> None:
        try:
            assert self._db is not None
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _close_db(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None

    def close(self, *, seal_now: bool = True) -> None:
        """Close the file being written (sealing it, unless told not to) and release the lock."""
        if self._db is None:
            return
        path = self._path
        self._close_db()
        for t in self._sealers:
            t.join()
        if seal_now:
            try:
                seal(path)
            except sqlite3.Error:
                pass
        os.close(self._lock_fd)

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def count_rows(paths: Sequence[str]) -> dict[str, int]:
    """Totals over ``paths``: events, and gap counts by cause (for checks and tests)."""
    tot = {"events": 0, "overwritten": 0, "unreadable": 0, "undelivered": 0}
    for p in paths:
        db = check_file(p)
        try:
            tot["events"] += db.execute("SELECT count(*) FROM event_rows").fetchone()[0]
            o, u, d = db.execute("SELECT coalesce(sum(overwritten),0), coalesce(sum(unreadable),0), "
                                 "coalesce(sum(undelivered),0) FROM gaps").fetchone()
            tot["overwritten"] += o
            tot["unreadable"] += u
            tot["undelivered"] += d
        finally:
            db.close()
    return tot
