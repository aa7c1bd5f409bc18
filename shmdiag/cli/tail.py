"""``shmdiag tail [-f|-F]``: the last events, and following new ones, filtered on the stored fields.

The filters (``--type --peer --min-severity --pid --since --until --grep``) are one
``core.filter.EventFilter``, applied with numpy to the records before any is decoded. Following
renders ``--json`` lines for a whole batch at once with the export's numpy renderer
(``export.templates.render_events``), so it keeps up with a writer at full speed; a follower
behind the writers reads a bounded batch at a time, prints it at once and shows how far behind it
is (a status line on a terminal, ``{"kind": "lag", ...}`` lines with ``--json``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from shmdiag.cli._common import (
    UsageError,
    attached,
    check_name,
    dumps,
)
from shmdiag.cli.format import format_event_line, terminal_width, use_color
from shmdiag.core.errors import RingNotFoundError, ShmDiagError
from shmdiag.core.follow import Batch, Gap
from shmdiag.core.models import DiagnosticEvent

if TYPE_CHECKING:
    from shmdiag.core.filter import EventFilter
    from shmdiag.inspector import Following, Inspector

_POLL = 0.025  # tail -f: a new event shows within ~25 ms plus the time to print it
_BATCH = 1 << 16  # sequence numbers read per poll while catching up: printed before reading on
_RENDER = 1 << 14  # events rendered at once: 64Ki at once took twice as long (cache misses)
_STATUS_EVERY = 0.2  # s between redraws of the terminal's status line
_LAG_EVERY = 1.0  # s between {"kind": "lag"} lines while behind
_REATTACH_EVERY = 0.5  # s between looks for a ring that went away, with -F


# -- tail ----------------------------------------------------------------------------------
def format_event(e: DiagnosticEvent, **kw: Any) -> str:
    """One event for a person; the format (zone, colour, width) is cli.format.format_event_line's."""
    return format_event_line(e, **kw)


def _matched_note(gap: Gap, filtered: bool) -> str:
    if not filtered:
        return ""
    if gap.unknown:
        return f" ({gap.matched} of them matched the filter, {gap.unknown} could not be told)"
    return f" ({gap.matched} of them matched the filter)"


def format_gap(gap: Gap, filtered: bool = False) -> str:
    parts = []
    note = _matched_note(gap, filtered)
    if gap.overwritten:
        parts.append(f"-- {gap.overwritten} events overwritten before they could be read --")
    if gap.unreadable:
        parts.append(f"-- {gap.unreadable} events never completed by their writers (stopped, died or dropped) "
                     "or expired --")
    if note and parts:
        parts[-1] = parts[-1][:-3] + note + " --"
    return "\n".join(parts)


def gap_record(gap: Gap) -> dict:
    """A gap as a JSON line (``export.dicts.gap_to_dict``: ``kind`` "gap", matched, unknown)."""
    from shmdiag.export.dicts import gap_to_dict

    return gap_to_dict(gap)


# -- arguments -----------------------------------------------------------------------------
def parse_time(text: str, what: str, now: datetime | None = None) -> datetime:
    """``--since``/``--until`` (``inspector.parse_when``, which the web API's ?since= shares):
    "now", a duration back from now ("10m", "1h30m", "2d ago", "500ms"), or an ISO-8601 time
    (without a zone: UTC). UsageError naming ``what`` otherwise."""
    from shmdiag.inspector import parse_when

    try:
        return parse_when(text, what, now)
    except ValueError as e:
        raise UsageError(str(e)) from None


def tail_filter(args: argparse.Namespace) -> EventFilter:
    """The filter of ``tail``'s (and ``export``'s) flags; UsageError for a bad one."""
    from shmdiag.inspector import event_filter

    now = datetime.now(timezone.utc)
    since = None if args.since is None else parse_time(args.since, "--since", now)
    until = None if args.until is None else parse_time(args.until, "--until", now)
    if since is not None and since > now + timedelta(seconds=1):
        raise UsageError(f"--since {args.since!r} is in the future ({since.isoformat()}): no event can match yet")
    if since is not None and until is not None and until < since:
        raise UsageError(f"--until {args.until!r} is before --since {args.since!r}")
    grep = None
    if args.grep is not None:
        try:
            grep = re.compile(args.grep)
        except re.error as e:
            raise UsageError(f"--grep: bad regular expression {args.grep!r}: {e}") from None
    try:
        return event_filter(args.min_severity, event_type=args.type, peer_id=args.peer, since=since, until=until,
                            pid=args.pid, grep=grep)
    except (TypeError, ValueError) as e:
        raise UsageError(str(e)) from None


def add_filter_args(sp: argparse.ArgumentParser, severity_type: object) -> None:
    """The filter flags ``tail`` and ``export`` share."""
    from shmdiag.core.models import Severity

    sp.add_argument("--min-severity", type=severity_type, default=Severity.DEBUG, metavar="S",  # type: ignore[arg-type]
                    help="debug, info, warning, error or critical (default debug)")
    sp.add_argument("--type", action="append", metavar="T", help="only events of this type (repeatable)")
    sp.add_argument("--peer", action="append", metavar="P", help="only events of this peer (repeatable)")
    sp.add_argument("--pid", action="append", type=_pid_arg, metavar="PID",
                    help="only events written by this process (repeatable)")
    sp.add_argument("--since", metavar="T", help="only events at or after T: a time (2026-11-30T07:00:00Z; "
                    "UTC without a zone) or a duration back from now (10m, 1h30m, 2d)")
    sp.add_argument("--until", metavar="T", help="only events at or before T (as --since)")
    sp.add_argument("--grep", metavar="REGEX", help="only events whose message or error matches REGEX (Python re)")


def _pid_arg(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a process id") from None
    if not 0 < v < 1 << 32:
        raise argparse.ArgumentTypeError(f"{v} is not a process id")
    return v


# -- output --------------------------------------------------------------------------------
class _Out:
    """Where tail writes: events and gaps on stdout, and the lag (a status line on stderr when it
    is a terminal; ``{"kind": "lag"}`` lines with --json)."""

    def __init__(self, as_json: bool, filtered: bool, human: dict | None = None) -> None:
        self.fp = sys.stdout.buffer
        self.human = human or {}
        self.following: Following | None = None  # renders Batches (set by _follow)
        self.as_json = as_json
        self.filtered = filtered
        self.status_tty = not as_json and sys.stderr.isatty()
        self.status_shown = False
        self.last_status = 0.0
        self.lag_reported = False

    def _clear_status(self) -> None:
        if self.status_shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.status_shown = False

    def events(self, events: list[DiagnosticEvent]) -> None:
        from shmdiag.export.dicts import event_to_dict

        if not events:
            return
        if self.as_json:
            self._write(b"\n".join(dumps(event_to_dict(e)) for e in events) + b"\n")
        else:
            self._write(("\n".join(format_event(e, **self.human) for e in events) + "\n").encode("utf-8", "replace"))

    def items(self, items: Sequence[Batch | Gap]) -> None:
        for it in items:
            if isinstance(it, Gap):
                if self.as_json:
                    self._write(dumps(gap_record(it)) + b"\n")
                else:
                    self._write(format_gap(it, self.filtered).encode() + b"\n")
            elif self.as_json:
                assert self.following is not None
                for lo in range(0, len(it), _RENDER):  # the renderer's working set stays in cache
                    self._write(self.following.render(Batch(it.raw[lo: lo + _RENDER])).data)
            else:
                self.events(it.events())

    def _write(self, data: bytes | memoryview) -> None:
        self._clear_status()
        self.fp.write(data)

    def flush(self) -> None:
        self.fp.flush()

    def lag(self, behind: int, lag_seconds: float) -> None:
        now = time.monotonic()
        if self.as_json:
            if behind and now - self.last_status >= _LAG_EVERY or not behind and self.lag_reported:
                from shmdiag.export.dicts import lag_to_dict

                self.fp.write(dumps(lag_to_dict(behind, round(lag_seconds, 3))) + b"\n")
                self.lag_reported = bool(behind)
                self.last_status = now
            return
        if not self.status_tty:
            return
        if not behind:
            self._clear_status()
        elif now - self.last_status >= _STATUS_EVERY:
            self.fp.flush()
            sys.stderr.write(f"\r\x1b[K-- catching up: {behind} events behind ({lag_seconds:.1f} s) --")
            sys.stderr.flush()
            self.status_shown = True
            self.last_status = now


# -- the command ---------------------------------------------------------------------------
def cmd_tail(args: argparse.Namespace) -> int:
    follow = args.follow or args.follow_name
    if args.n == 0 and not follow:
        raise UsageError("-n must be at least 1 (or 0 with -f: only new events)")
    filt = tail_filter(args)
    name = check_name(args.name)
    human = {"width": terminal_width(sys.stdout), "color": use_color(getattr(args, "color", "auto"), sys.stdout),
             "local": getattr(args, "local", False)}
    out = _Out(args.json, not filt.selects_all, human)
    first = True
    while True:
        try:
            insp = attached(name)
        except RingNotFoundError:
            if not args.follow_name:
                raise
            if first:
                sys.stderr.write(f"shmdiag: ring {name!r} does not exist; waiting for it (-F)\n")
                first = False
            time.sleep(_REATTACH_EVERY)
            continue
        with insp:
            why = insp.unrecorded(filt)
            if why is not None:
                if not follow:
                    raise _Unrecorded(why)
                sys.stderr.write(f"shmdiag: note: {why}; following for new ones\n")
            if first:
                events, cursor = insp.history(args.n, filt=filt, follow=follow)
                out.events(events)
                out.flush()
            else:  # a new ring under the name: all of it
                cursor = insp.seq_range()[0]
            first = False
            if not follow:
                return 0
            follower = insp.follower(cursor, filt=filt)
            ended = _follow(insp, follower, out, name)
        if not args.follow_name or ended == "interrupted":
            return 0
        sys.stderr.write(f"shmdiag: ring {name!r} {ended}; waiting for it (-F)\n")


class _Unrecorded(ShmDiagError):
    """A type or peer the ring never recorded (one line, exit 1)."""


def _follow(insp: Inspector, follower: Following, out: _Out, name: str) -> str:
    """Follow until interrupted or the ring is removed or replaced; say which."""
    out.following = follower
    path = f"/dev/shm/{name}"
    ino = os.fstat(insp.fileno()).st_ino  # the segment we mapped, even if it was removed already
    next_check = time.monotonic() + 1.0
    try:
        while True:
            before = follower.cursor
            out.items(follower.poll_raw(_BATCH))
            behind = follower.behind
            out.lag(behind, follower.lag_seconds)
            out.flush()
            if not follower.waiting and follower.cursor != before:
                continue  # catching up: the next batch at once
            now = time.monotonic()
            if now >= next_check:
                next_check = now + 1.0
                try:
                    gone = "was replaced" if os.stat(path).st_ino != ino else ""
                except FileNotFoundError:
                    gone = "was removed"
                if gone:
                    while True:  # what the ring got before it went
                        before = follower.cursor
                        out.items(follower.poll_raw(_BATCH))
                        if follower.waiting or follower.cursor == before:
                            break
                    out.items(follower.flush())
                    out.lag(0, 0.0)
                    out.flush()
                    sys.stderr.write(f"shmdiag: ring {name!r} {gone}; stopping\n")
                    return gone
            time.sleep(_POLL)
    except KeyboardInterrupt:
        out.items(follower.flush())
        out.flush()
        return "interrupted"


_TAIL_EPILOG = """\
Filters (all that are given must hold): --type, --peer, --pid (each repeatable: any of them),
--min-severity, --since/--until (a time, UTC without a zone, or a duration back from now such as
10m or 1h30m), --grep (a regex searched in the message and the error). They are applied to the
stored records before any is decoded, so a selective filter is fast on a large ring. A type or
peer the ring never recorded is said at once (exit 1; with -f, a note, and tail follows).

With -f, every event recorded after the last one shown is printed once, in sequence order,
within about 50 ms. Behind the writers, tail prints a batch at a time as it reads and shows how
far behind it is: a status line on stderr when it is a terminal, and with --json lines
  {"kind": "lag", "behind": N, "lag_seconds": S}
(at most one a second while behind, then one with behind 0). Events tail could not read are
reported where they were, in order:
  -- N events overwritten before they could be read --
      the ring went round before tail read them (tail was slower than the writers, or stopped)
  -- N events never completed by their writers (stopped, died or dropped) or expired --
      a writer claimed a sequence number and did not finish its record within 2 s, or the
      record was removed by retention cleanup
With --json every line is one JSON object whose "kind" says what it is: "event", "gap" for
events that could not be read, "lag" while behind (see docs/json.md):
  {"schema_version": 1, "kind": "gap", "skipped": N, "overwritten": N1, "unreadable": N2,
   "matched": M, "unknown": U, "first_seq": A, "last_seq": B}
"matched": how many of them the filter selects (all of them without a filter), as far as can be
told: "unknown" could not be (an overwritten event is gone). Under a filter, a gap with no known
match is reported at most once a second, summed (its seq range may then span events printed).
A clear does not interrupt following. When the ring is removed or replaced, tail -f says so and
exits 0; tail -F waits for the ring to come back (a collector restarted) and follows the new one
from its first event."""
