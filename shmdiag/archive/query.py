"""Reading an archive directory: events across its rotated files, in time order, filtered in SQL."""

from __future__ import annotations

import heapq
import sqlite3
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field

from shmdiag.archive.store import ArchiveError, archive_files, check_file

_COLS = "ts, seq, pid, type, severity, peer, message, error, metadata, truncated, host, ring, generation"


@dataclass
class Filter:
    """Which events to read: bounds in ns since the epoch (inclusive since, exclusive until)."""

    since_ns: int | None = None
    until_ns: int | None = None
    types: list[str] = field(default_factory=list)
    peers: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    rings: list[str] = field(default_factory=list)
    min_severity: int = 0
    grep: str | None = None

    def sql(self) -> tuple[str, list]:
        where: list[str] = []
        args: list[object] = []
        if self.since_ns is not None:
            where.append("ts >= ?")
            args.append(self.since_ns)
        if self.until_ns is not None:
            where.append("ts < ?")
            args.append(self.until_ns)
        for col, vals in (("type", self.types), ("peer", self.peers), ("host", self.hosts), ("ring", self.rings)):
            if vals:
                where.append(f"{col} IN ({','.join('?' * len(vals))})")
                args += vals
        if self.min_severity:
            where.append("severity >= ?")
            args.append(self.min_severity)
        if self.grep:
            where.append("(instr(message, ?) > 0 OR instr(coalesce(error, ''), ?) > 0)")
            args += [self.grep, self.grep]
        return (" WHERE " + " AND ".join(where)) if where else "", args


def _rows(db: sqlite3.Connection, filt: Filter) -> Generator[tuple, None, None]:
    where, args = filt.sql()
    try:
        yield from db.execute(f"SELECT {_COLS} FROM events{where} ORDER BY ts, seq", args)
    except sqlite3.Error as e:
        raise ArchiveError(f"reading the archive failed: {e}") from None
    finally:
        db.close()


def query(directory: str, filt: Filter | None = None, limit: int = 0) -> Iterator[tuple]:
    """Event rows (``store.EVENT_COLUMNS`` order) of every archive file of ``directory`` that pass
    ``filt``, oldest first across files (a merge: files overlap in time when several hosts feed
    one archive), at most ``limit`` (0: all). Raises ArchiveError for a directory that is not an
    archive, or a file in it that is not an archive file."""
    filt = filt or Filter()
    streams = []
    for path in archive_files(directory):
        db = check_file(path)
        if filt.since_ns is not None or filt.until_ns is not None:
            lo, hi = db.execute("SELECT min(ts), max(ts) FROM event_rows").fetchone()
            if lo is None or (filt.since_ns is not None and hi < filt.since_ns) or \
                    (filt.until_ns is not None and lo >= filt.until_ns):
                db.close()
                continue
        streams.append(_rows(db, filt))
    merged = heapq.merge(*streams, key=lambda r: (r[0], r[1]))
    n = 0
    for row in merged:
        yield row
        n += 1
        if limit and n >= limit:
            break
    for s in streams:
        s.close()


def totals(directory: str) -> dict[tuple[str, str, int], dict[str, int]]:
    """Per source (host, ring, generation): events archived, gap counts by cause, the next seq."""
    out: dict[tuple[str, str, int], dict[str, int]] = {}
    files = archive_files(directory)

    def entry(key: tuple[str, str, int]) -> dict[str, int]:
        return out.setdefault(key, {"events": 0, "overwritten": 0, "unreadable": 0, "undelivered": 0, "next_seq": 0})

    for i, path in enumerate(files):
        db = check_file(path)
        try:
            for h, r, g, n in db.execute("SELECT host, ring, generation, count(*) FROM events "
                                         "GROUP BY host, ring, generation"):
                entry((h, r, g))["events"] += n
            for h, r, g, o, u, d in db.execute("SELECT host, ring, generation, sum(overwritten), sum(unreadable), "
                                               "sum(undelivered) FROM gaps GROUP BY host, ring, generation"):
                e = entry((h, r, g))
                e["overwritten"] += o
                e["unreadable"] += u
                e["undelivered"] += d
            if i == len(files) - 1:
                for h, r, g, n in db.execute("SELECT host, ring, generation, next_seq FROM sources"):
                    entry((h, r, g))["next_seq"] = n
        finally:
            db.close()
    return out
