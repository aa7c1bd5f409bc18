"""``shmdiag top``: a live full-screen view of a ring, refreshed about once a second.

Rates are deltas of the ring's exact counters (get_stats, get_writers) between two refreshes,
so they cover every event, overwritten ones included. The screen is built as plain lines by
``render`` (a pure function of two samples and the terminal size, easy to test) and drawn by
``_draw``, which never lets a write at the terminal's edge raise: any size works, 80x24 is the
design target.
"""

from __future__ import annotations

import argparse
import curses
import os
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shmdiag.cli._common import attached
from shmdiag.cli.format import clean, human_bytes, human_count, human_duration, human_rate, table
from shmdiag.core.errors import ShmDiagError
from shmdiag.core.models import (
    DiagnosticStats,
    HealthStatus,
    LatencyStats,
    NetworkDiagnostic,
    Severity,
    WriterInfo,
)

if TYPE_CHECKING:
    from shmdiag.inspector import Inspector
    from shmdiag.recorder import Recorder

_HEALTH_STYLE = {"healthy": "ok", "warning": "warn"}


@dataclass
class Sample:
    """Everything one refresh shows, read from the ring at time ``t`` (monotonic seconds)."""

    t: float
    wall: float
    stats: DiagnosticStats
    health: HealthStatus
    network: NetworkDiagnostic
    latency: dict[str, LatencyStats]
    writers: list[WriterInfo]
    removed: bool = False
    recorded_by_pid: dict[int, int] = field(default_factory=dict)


def sample(rec: Inspector | Recorder, path: str | None = None) -> Sample:
    stats = rec.get_stats()
    writers = rec.get_writers()
    s = Sample(t=time.monotonic(), wall=time.time(), stats=stats, health=rec.health_check(),
               network=rec.get_network_diagnostic(), latency=rec.get_latency_stats(), writers=writers)
    for w in writers:
        s.recorded_by_pid[w.pid] = s.recorded_by_pid.get(w.pid, 0) + w.recorded
    if path is not None:
        s.removed = not os.path.exists(path)
    return s


def _rate(now: int, before: int | None, dt: float) -> float | None:
    if before is None or dt <= 0 or now < before:
        return None
    return (now - before) / dt


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "~"


def _table(headers: list[str], rows: list[list], right: tuple[int, ...], width: int) -> str:
    """A table that fits ``width``: trailing columns are dropped rather than cut in half."""
    n = len(headers)
    while True:
        text = table(headers[:n], [r[:n] for r in rows], right=tuple(i for i in right if i < n))
        if n <= 1 or max(len(x) for x in text.split("\n")) <= width:
            return text
        n -= 1


def _block(title: str, body: str, width: int) -> list[tuple[str, str]]:
    lines = body.split("\n") if body else []
    out = [(_fit(title, width), "title")]
    if lines:
        out.append((_fit(lines[0], width), "header"))
        out.extend((_fit(x, width), "") for x in lines[1:])
    return out


def render(name: str, cur: Sample, prev: Sample | None, width: int, height: int,
           interval: float = 1.0) -> list[tuple[str, str]]:
    """The screen as (text, style) lines, each at most ``width`` characters, at most ``height``
    lines; the last line is the key help. Styles: "", "title", "header", "ok", "warn", "bad"."""
    width, height = max(width, 1), max(height, 1)
    st, h = cur.stats, cur.health
    if prev is not None and prev.stats.total_events > st.total_events:
        prev = None  # the ring was cleared: counters started again
    dt = cur.t - prev.t if prev is not None else 0.0
    p_stats = prev.stats if prev is not None else None

    total_rate = _rate(st.total_events, p_stats.total_events if p_stats else None, dt)
    errs = st.events_by_severity.get(Severity.ERROR, 0) + st.events_by_severity.get(Severity.CRITICAL, 0)
    p_errs = None
    if p_stats is not None:
        p_sev = p_stats.events_by_severity
        p_errs = p_sev.get(Severity.ERROR, 0) + p_sev.get(Severity.CRITICAL, 0)
    err_rate = _rate(errs, p_errs, dt)
    recent_err = None
    if total_rate and err_rate is not None:
        recent_err = err_rate / total_rate

    lines: list[tuple[str, str]] = []
    clock = time.strftime("%H:%M:%S", time.localtime(cur.wall))
    left = f"shmdiag top  {name}"
    status = "RING REMOVED" if cur.removed else h.status.upper()
    style = "bad" if cur.removed else _HEALTH_STYLE.get(h.status, "bad")
    lines.append((_fit(f"{left}  {clock}", width), "title"))
    lines.append((_fit(f"health: {status} - {h.message}", width), style))
    nd = cur.network
    # total and retained come from the same copy of the books (the health sample), so the
    # screen never shows more retained than recorded.
    summary = (f"{human_rate(total_rate)} ev/s  total {human_count(h.total_events)}  "
               f"errors {st.error_rate:.1%}" + (f" (now {recent_err:.1%})" if recent_err is not None else "")
               + f"  peers {nd.active_peers}/{nd.total_peers}")
    lines.append((_fit(summary, width), ""))
    loss = (f"retained {human_count(h.event_count)}/{human_count(h.max_events)}  overwritten "
            f"{human_count(h.events_overwritten)}  lost {h.events_lost}  abandoned {h.events_abandoned}  "
            f"expired {human_count(h.events_expired)}")
    lines.append((_fit(loss, width), ""))

    two = width >= 60
    col = (width - 2) // 2 if two else width

    sev_rows = []
    for s in Severity:
        n = st.events_by_severity.get(s, 0)
        r = _rate(n, p_stats.events_by_severity.get(s, 0) if p_stats else None, dt)
        sev_rows.append([str(s), human_rate(r), human_count(n)])
    sev = _block("EVENTS BY SEVERITY", _table(["SEVERITY", "EV/S", "TOTAL"], sev_rows, (1, 2), col), col)

    type_rows = []
    for t, n in st.events_by_type.items():
        r = _rate(n, p_stats.events_by_type.get(t, 0) if p_stats else None, dt)
        type_rows.append((r or 0.0, n, t, r))
    type_rows.sort(key=lambda x: (-x[0], -x[1], x[2]))
    t_rows = [[_fit(t, 20), human_rate(r), human_count(n)] for _, n, t, r in type_rows[:5]]
    types = _block("EVENTS BY TYPE", _table(["TYPE", "EV/S", "TOTAL"], t_rows, (1, 2), col), col)

    w_rows = []
    for w in sorted(cur.writers, key=lambda w: (not w.alive, -w.recorded, w.pid)):
        before = prev.recorded_by_pid.get(w.pid) if prev is not None else None
        r = _rate(cur.recorded_by_pid.get(w.pid, 0), before, dt) if w.alive else None
        w_rows.append([w.pid, w.state, human_rate(r), human_count(w.recorded), w.lost + w.abandoned])
    l_rows = [[_fit(op, 12), human_count(ls.count), human_duration(ls.p50), human_duration(ls.p90),
               human_duration(ls.p99), human_duration(ls.max)]
              for op, ls in sorted(cur.latency.items(), key=lambda kv: (-kv[1].count, kv[0]))]
    peers = sorted(nd.peer_diagnostics, key=lambda p: (-(p.bytes_sent + p.bytes_received), p.peer_id))

    def pair(a: list, b: list) -> None:
        if not two:
            lines.extend(a)
            lines.extend(b)
            return
        for i in range(max(len(a), len(b))):
            la, sa = a[i] if i < len(a) else ("", "")
            lb, sb = b[i] if i < len(b) else ("", "")
            lines.append((la.ljust(col) + "  " + lb, sa or sb))

    # Rows left for the writer/latency tables and the peers, shared between them: blank
    # separators only on a tall terminal, the severity/type pair is fixed (title, header, 5).
    spacer = height >= 30
    gap = [("", "")] if spacer else []
    used = len(lines) + len(gap) + (7 if two else 14) + 2 * len(gap) + 2 + 2 + 1
    if not two:
        used += 2  # latency's title and header on lines of their own
    rest = max(0, height - used)
    wl = max(len(w_rows), len(l_rows), 1)
    k = min(wl, max(1, rest // 2), 7) if peers else min(wl, max(1, rest), 7)
    room = max(0, rest - k)

    writers = _block(f"WRITERS ({sum(w.alive for w in cur.writers)} alive)",
                     _table(["PID", "STATE", "EV/S", "RECORDED", "LOST"], w_rows[:k], (0, 2, 3, 4), col), col)
    latency = _block("LATENCY", _table(["OP", "N", "P50", "P90", "P99", "MAX"], l_rows[:k], (1, 2, 3, 4, 5), col)
                     if l_rows else "(no timed operations)", col)
    lines.extend(gap)
    pair(sev, types)
    lines.extend(gap)
    pair(writers, latency)
    lines.extend(gap)
    p_rows = [[_fit(p.peer_id, 16), _fit(p.address or "-", 21), p.status[:4], human_bytes(p.bytes_sent),
               human_bytes(p.bytes_received), human_count(p.messages_sent + p.messages_received),
               human_duration(p.latency), p.error_count] for p in peers[:room]]
    lines.extend(_block(f"TOP PEERS BY BYTES ({nd.total_peers})",
                        _table(["PEER", "ADDRESS", "STAT", "OUT", "IN", "MSGS", "PING", "ERR"], p_rows,
                               (3, 4, 5, 6, 7), width) if p_rows else "", width))

    body = lines[: height - 1]
    body.extend([("", "")] * (height - 1 - len(body)))
    body.append((_fit(f"q quit  refresh {interval:g}s", width), "header"))
    return body[:height]


def _styles() -> dict[str, int]:
    out = {"": curses.A_NORMAL, "title": curses.A_BOLD, "header": curses.A_REVERSE,
           "ok": curses.A_BOLD, "warn": curses.A_BOLD, "bad": curses.A_BOLD}
    try:
        if curses.has_colors():
            curses.start_color()
            curses.use_default_colors()
            for i, (k, c) in enumerate((("ok", curses.COLOR_GREEN), ("warn", curses.COLOR_YELLOW),
                                        ("bad", curses.COLOR_RED)), start=1):
                curses.init_pair(i, c, -1)
                out[k] = curses.color_pair(i) | curses.A_BOLD
    except curses.error:
        pass
    return out


def _draw(win: curses.window, lines: list[tuple[str, str]], styles: dict[str, int]) -> None:
    win.erase()
    height, width = win.getmaxyx()
    for y, (text, style) in enumerate(lines[:height]):
        # The bottom-right cell cannot be written without curses moving the cursor past the end
        # (an error): leave the last column of the last line alone.
        n = width - 1 if y == height - 1 else width
        if n <= 0:
            continue
        try:
            win.addnstr(y, 0, clean(text), n, styles.get(style, 0))
        except curses.error:
            pass
    win.refresh()


def _loop(win: curses.window, rec: Inspector | Recorder, interval: float) -> int:
    try:
        curses.curs_set(0)
    except curses.error:
        pass
    styles = _styles()
    win.timeout(100)
    path = f"/dev/shm/{rec.name}"
    prev: Sample | None = None
    cur = sample(rec, path)
    next_at = cur.t + interval
    redraw = True
    while True:
        if redraw:
            height, width = win.getmaxyx()
            _draw(win, render(rec.name, cur, prev, width, height, interval), styles)
            redraw = False
        ch = win.getch()
        if ch in (ord("q"), ord("Q")):
            return 0
        if ch == curses.KEY_RESIZE:
            try:
                curses.update_lines_cols()
            except AttributeError:
                pass
            redraw = True
        if time.monotonic() >= next_at:
            prev, cur = cur, sample(rec, path)
            next_at = cur.t + interval
            redraw = True


def run(rec: Inspector | Recorder, interval: float = 1.0) -> int:
    """Show ``rec`` until q (or Ctrl-C); curses.wrapper restores the terminal either way."""
    try:
        return curses.wrapper(_loop, rec, max(0.1, interval))
    except KeyboardInterrupt:
        return 0
    except curses.error as e:
        raise ShmDiagError(f"cannot run the full-screen view on this terminal ({e}); is TERM right?") from None


# -- top -----------------------------------------------------------------------------------
def cmd_top(args: argparse.Namespace) -> int:
    if not (sys.stdout.isatty() and sys.stdin.isatty()):
        raise ShmDiagError("top needs a terminal (stdin and stdout must be a tty); "
                           f"for scripts use 'shmdiag stats {args.name} --json'")
    with attached(args.name) as rec:
        return run(rec, interval=args.interval)
