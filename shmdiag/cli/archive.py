"""``shmdiag query``, ``shmdiag replay`` and ``shmdiag archive --from-nats``: the on-disk archive."""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import datetime

from shmdiag.cli._common import UsageError, dumps

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def size_arg(text: str) -> int:
    """1000, 64K, 256M, 1G (powers of 1024)."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)i?b?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (like 256M or 1G)")
    v = int(m.group(1)) * _UNITS[m.group(2)]
    if v < 1 << 16:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 64K")
    return v


def duration_arg(text: str) -> float:
    """Seconds: 90, 90s, 30m, 12h, 7d, 2w."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text.lower())
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive duration (like 90s, 30m, 12h, 7d)")
    return float(m.group(1)) * _SECONDS[m.group(2) or "s"]


def time_arg(text: str) -> int:
    """A point in time as ns since the epoch: ISO 8601 (local time unless it names its zone), or
    a duration ago (30m, 2h, 1d)."""
    try:
        return time.time_ns() - int(duration_arg(text) * 1e9)
    except argparse.ArgumentTypeError:
        pass
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time (ISO 8601 like 2026-11-30T07:00:00Z, "
                                         "or a duration ago like 30m)") from None
    if dt.tzinfo is None:
        dt = dt.astimezone()
    return int(dt.timestamp() * 1_000_000) * 1000


def _filter(args: argparse.Namespace) -> object:
    from shmdiag.archive.query import Filter

    if args.since is not None and args.until is not None and args.until <= args.since:
        raise UsageError("--until must be after --since")
    return Filter(since_ns=args.since, until_ns=args.until, types=args.type or [], peers=args.peer or [],
                  hosts=args.host or [], rings=args.ring or [], min_severity=int(args.min_severity),
                  grep=args.grep)


def cmd_query(args: argparse.Namespace) -> int:
    from shmdiag.archive.query import query
    from shmdiag.archive.rows import row_event
    from shmdiag.cli.tail import format_event
    from shmdiag.export.dicts import event_to_dict

    filt = _filter(args)
    out = sys.stdout.buffer
    buf: list[bytes] = []
    for row in query(args.dir, filt, args.limit):  # type: ignore[arg-type]
        e = row_event(row)
        if args.json:
            d = event_to_dict(e)
            d["host"], d["ring"], d["generation"] = row[10], row[11], row[12]
            buf.append(dumps(d))
        else:
            buf.append(f"{row[10]}/{row[11]}  {format_event(e)}".encode("utf-8", "replace"))
        if len(buf) >= 1000:
            out.write(b"\n".join(buf) + b"\n")
            buf.clear()
    if buf:
        out.write(b"\n".join(buf) + b"\n")
    out.flush()
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from shmdiag.archive.replay import replay
    from shmdiag.cli._common import attached_recorder

    if args.speed < 0:
        raise UsageError("--speed must be >= 0 (0: as fast as possible)")
    filt = _filter(args)
    with attached_recorder(args.into) as rec:
        n = replay(args.dir, rec, filt, speed=args.speed, limit=args.limit)  # type: ignore[arg-type]
    sys.stderr.write(f"shmdiag: replayed {n} events into {args.into!r}\n")
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    from shmdiag.archive.nats import NatsError, check_url, run_central

    try:
        check_url(args.from_nats)
    except NatsError as e:
        raise UsageError(str(e)) from None

    return run_central(args.from_nats, args.dir, max_bytes=args.archive_max_bytes, max_age=args.archive_max_age,
                       keep=args.archive_keep, stream=args.nats_stream, durable=args.durable)


def add_filters(sp: argparse.ArgumentParser) -> None:
    from shmdiag.cli._common import count_arg, severity_arg
    from shmdiag.core.models import Severity

    sp.add_argument("dir", metavar="DIR", help="the archive directory")
    sp.add_argument("--since", type=time_arg, metavar="T", help="from this time (ISO 8601, or a duration ago: 2h)")
    sp.add_argument("--until", type=time_arg, metavar="T", help="before this time (same forms)")
    sp.add_argument("--type", action="append", metavar="T", help="only events of this type (repeatable)")
    sp.add_argument("--peer", action="append", metavar="P", help="only events of this peer (repeatable)")
    sp.add_argument("--host", action="append", metavar="H", help="only events of this host (repeatable)")
    sp.add_argument("--ring", action="append", metavar="R", help="only events of this ring (repeatable)")
    sp.add_argument("--min-severity", type=severity_arg, default=Severity.DEBUG, metavar="S",
                    help="debug, info, warning, error or critical (default debug)")
    sp.add_argument("--grep", metavar="TEXT", help="only events whose message or error contains TEXT")
    sp.add_argument("--limit", type=count_arg, default=0, metavar="N", help="at most N events, oldest first (0: all)")


def add_rotation(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--archive-max-bytes", type=size_arg, default=256 << 20, metavar="SIZE",
                    help="start a new archive file past this size (default 256M)")
    sp.add_argument("--archive-max-age", type=duration_arg, default=3600.0, metavar="DURATION",
                    help="start a new archive file after this long (default 1h)")
    sp.add_argument("--archive-keep", type=duration_arg, default=None, metavar="DURATION",
                    help="delete archive files whose newest event is older than this (default: keep all)")


ARCHIVE_EPILOG = """\
Files: DIR/shmdiag-<UTC time>-<n>.sqlite, one SQLite database each, tables events (ts in ns since
the epoch UTC, seq, pid, type, severity 0-4, peer, message, error, metadata JSON, truncated, host,
ring, generation), gaps (sequence numbers not archived, counted by cause), notes (clears, new
generations, full disks) and sources (where each ring's archive resumes). Open one with
  sqlite3 FILE "select datetime(ts/1e9,'unixepoch'), type, peer, message from events limit 10"
DIR must hold nothing but the archive's own files (retention deletes files there)."""


def cmd_tail_nats(args: argparse.Namespace) -> int:
    """``tail --nats URL --host H --ring R [-f]``: a remote ring, through the stream."""
    from shmdiag.archive.nats import NatsError, check_url, follow_remote
    from shmdiag.archive.rows import row_event
    from shmdiag.archive.store import Batch
    from shmdiag.cli.tail import format_event
    from shmdiag.export.dicts import event_to_dict

    if not args.host or not args.ring:
        raise UsageError("tail --nats needs --host and --ring (the remote ring's host id and name)")
    if args.name:
        raise UsageError("tail --nats takes no NAME: the ring is --host/--ring")
    try:
        check_url(args.nats)
    except NatsError as e:
        raise UsageError(str(e)) from None
    out = sys.stdout.buffer
    types, peers = set(args.type or ()), set(args.peer or ())
    sev = int(args.min_severity)

    def emit(batches: list[Batch], last: int) -> None:
        lines: list[bytes] = []
        for b in batches:
            for g in ([b.dropped] if b.dropped else []) + b.gaps:
                if args.json:
                    lines.append(dumps({"skipped": g.count, "overwritten": g.overwritten, "unreadable": g.unreadable,
                                        "undelivered": g.undelivered, "first_seq": g.first_seq,
                                        "last_seq": g.last_seq}))
                else:
                    lines.append(f"-- {g.count} events not archived: {g.reason} --".encode())
            rows = [r for r in b.rows if r[4] >= sev and (not types or r[3] in types) and (not peers or r[5] in peers)]
            if last:
                rows = rows[-last:]
            for r in rows:
                e = row_event(r)
                if args.json:
                    d = event_to_dict(e)
                    d["host"], d["ring"], d["generation"] = b.source.host, b.source.ring, b.source.generation
                    lines.append(dumps(d))
                else:
                    lines.append(format_event(e).encode("utf-8", "replace"))
        if lines:
            out.write(b"\n".join(lines) + b"\n")
            out.flush()

    try:
        follow_remote(args.nats, args.host, args.ring, n=args.n, follow=args.follow, emit=emit)
    except KeyboardInterrupt:
        return 0
    return 0
