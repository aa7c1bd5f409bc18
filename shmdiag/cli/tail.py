"""``shmdiag tail [-f]``: the last events, and following new ones."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from shmdiag.cli._common import (
    attached,
    dumps,
)
from shmdiag.cli.format import format_event_line, terminal_width, use_color
from shmdiag.core.follow import Gap
from shmdiag.core.models import DiagnosticEvent

_POLL = 0.025  # tail -f: a new event shows within ~25 ms plus the time to print it


# -- tail ----------------------------------------------------------------------------------
def format_event(e: DiagnosticEvent, **kw: Any) -> str:
    """One event for a person; the format (zone, colour, width) is cli.format.format_event_line's."""
    return format_event_line(e, **kw)


def format_gap(gap: Gap) -> str:
    parts = []
    if gap.overwritten:
        parts.append(f"-- {gap.overwritten} events overwritten before they could be read --")
    if gap.unreadable:
        parts.append(f"-- {gap.unreadable} events never completed by their writers (stopped, died or dropped) "
                     "or expired --")
    return "\n".join(parts)


def cmd_tail(args: argparse.Namespace) -> int:
    from shmdiag.export.dicts import event_to_dict

    types, peers = set(args.type or ()), set(args.peer or ())

    def accept(e: DiagnosticEvent) -> bool:
        return (not types or e.event_type in types) and (not peers or e.peer_id in peers)

    out = sys.stdout.buffer
    as_json = args.json
    human = {"width": terminal_width(sys.stdout), "color": use_color(getattr(args, "color", "auto"), sys.stdout),
             "local": getattr(args, "local", False)}

    def write(items: list) -> None:
        buf = []
        for it in items:
            if isinstance(it, Gap):
                if as_json:
                    buf.append(dumps({"skipped": it.skipped, "overwritten": it.overwritten,
                                       "unreadable": it.unreadable, "first_seq": it.first_seq,
                                       "last_seq": it.last_seq}))
                else:
                    buf.append(format_gap(it).encode())
            elif as_json:
                buf.append(dumps(event_to_dict(it)))
            else:
                buf.append(format_event(it, **human).encode("utf-8", "replace"))
        if buf:
            out.write(b"\n".join(buf) + b"\n")
            out.flush()

    filt = accept if (types or peers) else None
    with attached(args.name) as insp:
        path = f"/dev/shm/{args.name}"
        ino = os.fstat(insp.fileno()).st_ino  # the segment we mapped, even if it was removed already
        events, cursor = insp.history(args.n, args.min_severity, filt, follow=args.follow)
        write(events)
        if not args.follow:
            return 0
        follower = insp.follower(cursor, min_severity=args.min_severity, accept=filt)
        next_check = time.monotonic() + 1.0
        try:
            while True:
                write(follower.poll())
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + 1.0
                    try:
                        gone = os.stat(path).st_ino != ino
                    except FileNotFoundError:
                        gone = True
                    if gone:
                        write(follower.poll())
                        sys.stderr.write(f"shmdiag: ring {args.name!r} was removed; stopping\n")
                        return 0
                time.sleep(_POLL)
        except KeyboardInterrupt:
            return 0


_TAIL_EPILOG = """\
With -f, every event recorded after the last one shown is printed once, in sequence order,
within about 50 ms. Events tail could not read are reported where they were, in order:
  -- N events overwritten before they could be read --
      the ring went round before tail read them (tail was slower than the writers, or stopped)
  -- N events never completed by their writers (stopped, died or dropped) or expired --
      a writer claimed a sequence number and did not finish its record within 2 s, or the
      record was removed by retention cleanup
With --json these are JSON lines of their own:
  {"skipped": N, "overwritten": N1, "unreadable": N2, "first_seq": A, "last_seq": B}
A clear does not interrupt following. When the ring is removed, tail -f says so and exits 0."""
