"""Human output, shared by the CLI and the load generator: aligned tables and key-value lines
(no dependency for a few columns), terminal-safe text, the one set of human-unit formatters
(counts, rates, bytes, durations), and the one place that decides how an event looks to a
person: its timestamp (UTC with a ``Z`` by default, local time with its offset under
``--local``), its colour (by severity, only on a terminal, ``NO_COLOR`` honoured) and its fit to
the terminal's width (80 columns is the design target).

Machine output (``--json``) never goes through here."""

from __future__ import annotations

import argparse
import os
import shutil
import textwrap
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import IO

import orjson

from shmdiag.core.kinds import BUILTIN_TYPES
from shmdiag.core.models import DiagnosticEvent, Severity

# Text read from a ring is untrusted: control characters (an escape sequence, a NUL) must not
# reach the terminal. They are shown escaped, like repr() would.
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}
_CONTROL.update({0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"})


def clean(text: object) -> str:
    """``text`` for a terminal: control characters escaped."""
    return str(text).translate(_CONTROL)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, right: Sequence[int] = (),
          indent: str = "") -> str:
    """Rows under headers, columns padded to their widest cell; columns in ``right`` (indices) are
    right-aligned, which is what numbers want. The last column is never padded on the right."""
    cells = [[clean(h) for h in headers]] + [["" if c is None else clean(c) for c in r] for r in rows]
    ncol = len(headers)
    widths = [max(len(r[i]) for r in cells) for i in range(ncol)]
    lines = []
    for r in cells:
        parts = []
        for i, c in enumerate(r):
            if i in right:
                parts.append(c.rjust(widths[i]))
            elif i == ncol - 1:
                parts.append(c)
            else:
                parts.append(c.ljust(widths[i]))
        lines.append((indent + "  ".join(parts)).rstrip())
    return "\n".join(lines)


def kv(pairs: Sequence[tuple[str, object]], indent: str = "") -> str:
    """``key  value`` lines with the keys padded to one width."""
    if not pairs:
        return ""
    w = max(len(k) for k, _ in pairs)
    return "\n".join(f"{indent}{k + ':':<{w + 1}}  {v}" for k, v in pairs)


def human_count(n: float | None) -> str:
    """1234 -> '1234', 12345 -> '12.3k', 1234567 -> '1.23M': fits a narrow column; '-' for None."""
    if n is None:
        return "-"
    n = float(n)
    for unit, div, at_least in (("G", 1e9, 1e9), ("M", 1e6, 1e6), ("k", 1e3, 1e4)):
        if abs(n) >= at_least:
            v = n / div
            return f"{v:.3g}{unit}" if v < 100 else f"{v:.0f}{unit}"
    return f"{n:.0f}" if n == int(n) else f"{n:.1f}"


def human_rate(per_second: float | None) -> str:
    """Events (or anything) per second as human_count shows it, to a tenth; '-' for None."""
    return human_count(None if per_second is None else round(per_second, 1))


def human_bytes(n: float | None) -> str:
    """1023 -> '1023 B', 1536 -> '1.5 KiB', ... up to TiB; '-' for None."""
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float | None) -> str:
    """Seconds as '850ms', '12.3s', '4m05s', '3h12m', '2d04h'; '-' for None."""
    if seconds is None:
        return "-"
    s = float(seconds)
    if s < 0:
        s = 0.0
    if s < 1e-3:
        return f"{s * 1e6:.0f}us"
    if s < 1:
        return f"{s * 1e3:.3g}ms"
    if s < 60:
        return f"{s:.3g}s"
    m, sec = divmod(int(s), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


# -- timestamps ------------------------------------------------------------------------------
def human_time(ts: datetime | None, *, local: bool = False, clock: bool = False, ms: bool = True) -> str:
    """``2026-11-30T07:12:03.123Z`` (UTC, the default), or local time with its offset
    (``2026-11-30T08:12:03.123+01:00``) when ``local``: a human timestamp always says its zone.
    ``clock`` leaves the date out (``07:12:03.123Z``), for screens where the day is known; '-' for None."""
    if ts is None:
        return "-"
    t = ts.astimezone() if local else ts.astimezone(timezone.utc)
    text = t.strftime("%H:%M:%S" if clock else "%Y-%m-%dT%H:%M:%S")
    if ms:
        text += f".{t.microsecond // 1000:03d}"
    if not local:
        return text + "Z"
    off = t.utcoffset()
    minutes = int(off.total_seconds() // 60) if off is not None else 0
    sign = "+" if minutes >= 0 else "-"
    return f"{text}{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def human_time_epoch(seconds: float, **kw: bool) -> str:
    """:func:`human_time` of a ``time.time()`` value."""
    return human_time(datetime.fromtimestamp(seconds, timezone.utc), **kw)


# -- colour ----------------------------------------------------------------------------------
# SGR parameters by severity: DEBUG dim, INFO plain, WARNING yellow, ERROR red, CRITICAL bold red.
SEVERITY_SGR: dict[Severity, str] = {Severity.DEBUG: "2", Severity.INFO: "", Severity.WARNING: "33",
                                     Severity.ERROR: "31", Severity.CRITICAL: "1;31"}
COLOR_MODES = ("auto", "always", "never")


def use_color(mode: str = "auto", stream: IO | None = None) -> bool:
    """Whether to colour what goes to ``stream``: ``always``/``never`` say so (a flag on the
    command line overrides the environment); ``auto`` colours only a terminal, and not when
    ``NO_COLOR`` is set to anything non-empty (https://no-color.org) or ``TERM`` is ``dumb``."""
    if mode not in COLOR_MODES:
        raise ValueError(f"color mode must be one of {', '.join(COLOR_MODES)}, not {mode!r}")
    if mode != "auto":
        return mode == "always"
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # closed, or not a file
        return False


def paint(text: str, severity: Severity | int) -> str:
    """``text`` in the colour of ``severity`` (ANSI SGR, reset at the end); INFO stays plain."""
    sgr = SEVERITY_SGR.get(Severity(severity), "")
    return f"\x1b[{sgr}m{text}\x1b[0m" if sgr and text else text


def terminal_width(stream: IO | None) -> int | None:
    """The width of the terminal ``stream`` writes to (``COLUMNS`` wins, as everywhere), or None
    when it is not a terminal: a pipe gets whole lines."""
    try:
        if stream is None or not stream.isatty():
            return None
    except (AttributeError, ValueError):
        return None
    return shutil.get_terminal_size((80, 24)).columns


def add_human_args(p: argparse.ArgumentParser, *, color: bool = True) -> None:
    """The flags of every command with human output: ``--local`` (and ``--color``)."""
    p.add_argument("--local", action="store_true",
                   help="human timestamps in local time with the zone's offset (default: UTC, with a Z)")
    if color:
        p.add_argument("--color", choices=COLOR_MODES, default="auto", metavar="WHEN",
                       help="colour by severity: auto (on a terminal, unless NO_COLOR is set), always, never")


# -- one event, one line -----------------------------------------------------------------------
_BUILTIN = frozenset(BUILTIN_TYPES)  # their message already says what their metadata holds
_INDENT = "    "  # continuation lines of a wrapped event


def fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, a ``~`` marking the cut."""
    return text if len(text) <= width else text[: max(0, width - 1)] + "~"


def format_event_line(e: DiagnosticEvent, *, width: int | None = None, color: bool = False,
                      local: bool = False, wrap: bool = True, clock: bool = False) -> str:
    """An event for a person: time (with its zone), severity, pid, type, peer, message, error
    (and the metadata of a custom event, whose message does not already say it)::

        2026-11-30T07:12:03.123Z ERROR      4242 error peer-a: read failed  error: ValueError: bad checksum

    ``width`` None gives one line whatever its length (a pipe, grep). With a ``width`` the text
    fits it: ``wrap`` continues on indented lines (the operator's text is never cut), otherwise
    the line is cut with a ``~``. ``color`` paints it by severity (ANSI; the caller decides, see
    :func:`use_color`). ``clock`` shows the time of day only. Control characters are escaped."""
    ts = human_time(e.timestamp, local=local, clock=clock)
    who = clean(e.event_type) + (" " + clean(e.peer_id) if e.peer_id else "")
    line = f"{ts} {str(e.severity):<8} {e.pid or '-':>7} {who}: {clean(e.message)}"
    if e.metadata and e.event_type not in _BUILTIN:
        line += "  " + clean(orjson.dumps(e.metadata).decode())
    if e.error:
        line += "  error: " + clean(e.error)
    if e.truncated:
        line += "  [truncated]"
    if width is not None and len(line) > width:
        width = max(width, 2 * len(_INDENT))
        if wrap:
            parts = textwrap.wrap(line, width, subsequent_indent=_INDENT, break_on_hyphens=False,
                                  drop_whitespace=True) or [line[:width]]
        else:
            parts = [fit(line, width)]
    else:
        parts = [line]
    if color:
        parts = [paint(x, e.severity) for x in parts]
    return "\n".join(parts)
