"""``shmdiag top``: a live full-screen view of a ring, refreshed about once a second, and its
batch mode (``--batch -n 1``: plain-text snapshots on stdout, for a ticket; no curses at all).

Rates are deltas of the ring's exact counters (get_stats, get_writers) between two refreshes,
so they cover every event, overwritten ones included. The pane of the latest warnings and
errors is the only part that reads events: it starts from the newest retained ones (looked for
only when the counters say there are any) and then follows the ring at WARNING and above, so a
refresh reads the slot words of the events recorded since the last one and decodes only the
warnings and errors among them: the same cost on a ring of a thousand or four million.

The screen is built as plain lines by ``render`` (a pure function of two samples, the
terminal size and the operator's choices in a ``View``, easy to test) and drawn by ``_draw``,
which never lets a write at the terminal's edge raise: any size works, 80x24 is the design
target, and a wide terminal gets full peer ids and addresses and more columns.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shmdiag.cli._common import UsageError, attached, count_arg
from shmdiag.cli.format import (
    clean,
    fit,
    format_event_line,
    human_bytes,
    human_count,
    human_duration,
    human_rate,
    human_time,
    human_time_epoch,
    table,
    terminal_width,
)
from shmdiag.core.errors import ShmDiagError
from shmdiag.core.models import (
    DiagnosticEvent,
    DiagnosticStats,
    HealthStatus,
    LatencyStats,
    NetworkDiagnostic,
    PeerDiagnostic,
    Severity,
    WriterInfo,
)

if TYPE_CHECKING:
    import curses

    from shmdiag.inspector import Inspector
    from shmdiag.recorder import Recorder

_HEALTH_STYLE = {"healthy": "ok", "warning": "warn"}
_SEV_STYLE = {Severity.WARNING: "warn", Severity.ERROR: "bad", Severity.CRITICAL: "bad"}
PROBLEMS_KEPT = 50  # latest warnings/errors kept for the pane
WIDE = 120  # from this width on: full peer ids and addresses, more columns, dates in the pane

# Sort keys of the peers pane: key -> (name, sort key, "busiest first" means descending).
SORTS: dict[str, str] = {"b": "bytes", "m": "messages", "p": "ping", "e": "errors"}


def _peer_key(sort: str) -> Any:
    if sort == "messages":
        return lambda p: p.messages_sent + p.messages_received
    if sort == "ping":
        return lambda p: -1.0 if p.latency is None else p.latency  # never pinged: last
    if sort == "errors":
        return lambda p: p.error_count
    return lambda p: p.bytes_sent + p.bytes_received


def sort_peers(peers: list[PeerDiagnostic], sort: str = "bytes", reverse: bool = False) -> list[PeerDiagnostic]:
    """Peers by ``sort`` (bytes, messages, ping, errors), largest first (``reverse``: smallest
    first); ties by peer id."""
    key = _peer_key(sort)
    ordered = sorted(peers, key=lambda p: p.peer_id)
    return sorted(ordered, key=key, reverse=not reverse)


@dataclass
class View:
    """What the operator chose (keys on the screen, flags in batch mode)."""

    sort: str = "bytes"
    reverse: bool = False
    paused: bool = False
    help: bool = False
    local: bool = False


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
    problems: list[DiagnosticEvent] = field(default_factory=list)  # latest warnings/errors, oldest first
    problems_missed: int = 0  # events (any severity) the pane's follower could not read: overwritten, expired


def _problem_count(st: DiagnosticStats) -> int:
    sev = st.events_by_severity
    return sev.get(Severity.WARNING, 0) + sev.get(Severity.ERROR, 0) + sev.get(Severity.CRITICAL, 0)


def sample(rec: Inspector | Recorder, path: str | None = None) -> Sample:
    """One look at the ring's counters (no event read)."""
    stats = rec.get_stats()
    writers = rec.get_writers()
    s = Sample(t=time.monotonic(), wall=time.time(), stats=stats, health=rec.health_check(),
               network=rec.get_network_diagnostic(), latency=rec.get_latency_stats(), writers=writers)
    for w in writers:
        s.recorded_by_pid[w.pid] = s.recorded_by_pid.get(w.pid, 0) + w.recorded
    if path is not None:
        s.removed = not os.path.exists(path)
    return s


class Sampler:
    """Samples, plus the latest warnings/errors kept across them (see the module docstring)."""

    def __init__(self, rec: Inspector | Recorder, path: str | None = None, keep: int = PROBLEMS_KEPT) -> None:
        self.rec = rec
        self.path = path
        self.problems: collections.deque[DiagnosticEvent] = collections.deque(maxlen=keep)
        self.keep = keep
        self.follower: Any = None
        self.missed = 0
        self._last_count: int | None = None
        self._last_total = 0

    def _update_problems(self, st: DiagnosticStats) -> None:
        count = _problem_count(st)
        if st.total_events < self._last_total:  # cleared: what the pane showed is forgotten too
            self.problems.clear()
        self._last_total = st.total_events
        history = getattr(self.rec, "history", None)
        if history is None:  # a Recorder: no follower; look again only when the counters moved
            if count != self._last_count:
                self.problems.clear()
                self.problems.extend(self.rec.get_events(self.keep, Severity.WARNING) if count else [])
            self._last_count = count
            return
        if self.follower is None:
            # Only when the counters say there are any: on a large ring without one, looking
            # for the newest warnings would read every slot word.
            events, cursor = history(self.keep if count else 0, Severity.WARNING)
            self.problems.extend(events)
            self.follower = self.rec.follower(cursor, min_severity=Severity.WARNING)  # type: ignore[union-attr]
            return
        for item in self.follower.poll():
            if isinstance(item, DiagnosticEvent):
                self.problems.append(item)
        self.missed = self.follower.overwritten + self.follower.unreadable

    def take(self) -> Sample:
        s = sample(self.rec, self.path)
        self._update_problems(s.stats)
        s.problems = list(self.problems)
        s.problems_missed = self.missed
        return s


def _rate(now: int, before: int | None, dt: float) -> float | None:
    if before is None or dt <= 0 or now < before:
        return None
    return (now - before) / dt


_fit = fit


def _table(headers: list[str], rows: list[list], right: tuple[int, ...], width: int) -> str:
    """A table that fits ``width``: trailing columns are dropped rather than cut in half."""
    n = len(headers)
    while True:
        text = table(headers[:n], [r[:n] for r in rows], right=tuple(i for i in right if i < n))
        if n <= 1 or max(len(x) for x in text.split("\n")) <= width:
            return text
        n -= 1


Line = tuple[str, str]


def _block(title: str, body: str, width: int, extra: list[Line] | None = None) -> list[Line]:
    lines = body.split("\n") if body else []
    out = [(_fit(title, width), "title")]
    if lines:
        out.append((_fit(lines[0], width), "header"))
        out.extend((_fit(x, width), "") for x in lines[1:])
    out.extend(extra or [])
    return out


def _share(rest: int, needs: list[int]) -> list[int]:
    """``rest`` rows dealt one at a time to the sections in turn, each up to what it needs."""
    got = [0] * len(needs)
    while rest > 0:
        moved = False
        for i, n in enumerate(needs):
            if rest > 0 and got[i] < n:
                got[i] += 1
                rest -= 1
                moved = True
        if not moved:
            break
    return got


def _writer_rows(writers: list[WriterInfo], k: int, max_gone: int = 3) -> tuple[list[WriterInfo], str]:
    """The writers to list in ``k`` rows and the "... N more" line for the others: the live
    ones first (busiest first), then at most ``max_gone`` of those that exited or died (dead
    first: a crash is what the operator looks for); the rest collapsed into one line, whose row
    is part of ``k``."""
    alive = sorted((w for w in writers if w.alive), key=lambda w: (-w.recorded, w.pid))
    gone = sorted((w for w in writers if not w.alive), key=lambda w: (w.state != "dead", -w.recorded, w.pid))
    k = max(k, 1)
    if len(alive) + min(len(gone), max_gone) <= k and len(gone) <= max_gone:
        return alive + gone, ""
    if len(alive) >= k:
        shown = alive[: k - 1]
    else:
        shown = alive + gone[: min(k - 1 - len(alive), max_gone)]
    ids = {id(w) for w in shown}
    hidden = [w for w in alive + gone if id(w) not in ids]
    n_alive = sum(w.alive for w in hidden)
    n_dead = sum(w.state == "dead" for w in hidden)
    n_exited = len(hidden) - n_alive - n_dead
    parts = [f"{n} {what}" for n, what in ((n_alive, "alive"), (n_exited, "exited"), (n_dead, "dead")) if n]
    return shown, f"... {len(hidden)} more ({', '.join(parts)})"


def _clock(cur: Sample, view: View, date: bool) -> str:
    return human_time_epoch(cur.wall, local=view.local, clock=not date, ms=False)


def render(name: str, cur: Sample, prev: Sample | None, width: int, height: int | None,
           interval: float = 1.0, view: View | None = None) -> list[Line]:
    """The screen as (text, style) lines, each at most ``width`` characters, at most ``height``
    lines; the last line is the key help. Styles: "", "title", "header", "ok", "warn", "bad".

    ``height`` None is batch mode: every section at its full size (peers up to 20, writers
    collapsed past 3 gone ones), no padding and no key help: the text of a ticket."""
    view = view or View()
    batch = height is None
    width = max(width, 1)
    h_rows = 10_000 if height is None else max(height, 1)
    wide = width >= WIDE
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

    lines: list[Line] = []
    title = f"shmdiag top  {name}  {_clock(cur, view, batch or wide)}"
    if view.paused:
        title += "  PAUSED (space resumes)"
    status = "RING REMOVED" if cur.removed else h.status.upper()
    style = "bad" if cur.removed else _HEALTH_STYLE.get(h.status, "bad")
    lines.append((_fit(title, width), "title"))
    lines.append((_fit(f"health: {status} - {clean(h.message)}", width), style))
    nd = cur.network
    # total and retained come from the same copy of the books (the health sample), so the
    # screen never shows more retained than recorded.
    summary = (f"{human_rate(total_rate)} ev/s  total {human_count(h.total_events)}  "
               f"errors {st.error_rate:.1%}" + (f" (now {recent_err:.1%})" if recent_err is not None else "")
               + f"  peers {nd.active_peers}/{nd.total_peers}")
    if batch and prev is not None:
        summary += f"  (rates over {dt:.3g}s)"
    lines.append((_fit(summary, width), ""))
    loss = (f"retained {human_count(h.event_count)}/{human_count(h.max_events)}  overwritten "
            f"{human_count(h.events_overwritten)}  lost {h.events_lost}  abandoned {h.events_abandoned}  "
            f"expired {human_count(h.events_expired)}")
    lines.append((_fit(loss, width), ""))

    two = width >= 60
    col = (width - 2) // 2 if two else width
    wide_col = col >= 60

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
    n_types = 15 if batch else 5
    t_rows = [[t if wide_col else _fit(t, 20), human_rate(r), human_count(n)] for _, n, t, r in type_rows[:n_types]]
    more_types = len(type_rows) - len(t_rows)
    types = _block(f"EVENTS BY TYPE ({len(type_rows)})" if more_types > 0 else "EVENTS BY TYPE",
                   _table(["TYPE", "EV/S", "TOTAL"], t_rows, (1, 2), col), col)

    def writer_row(w: WriterInfo) -> list:
        before = prev.recorded_by_pid.get(w.pid) if prev is not None else None
        r = _rate(cur.recorded_by_pid.get(w.pid, 0), before, dt) if w.alive else None
        if wide_col:
            return [w.pid, w.state, human_rate(r), human_count(w.recorded), human_count(w.overwritten),
                    w.lost, w.abandoned]
        return [w.pid, w.state, human_rate(r), human_count(w.recorded), w.lost + w.abandoned]

    w_head = (["PID", "STATE", "EV/S", "RECORDED", "OVERWRITTEN", "LOST", "ABANDONED"] if wide_col
              else ["PID", "STATE", "EV/S", "RECORDED", "LOST"])
    l_rows = [[op if wide_col else _fit(op, 12), human_count(ls.count), human_duration(ls.p50),
               human_duration(ls.p90), human_duration(ls.p99), human_duration(ls.max)]
              for op, ls in sorted(cur.latency.items(), key=lambda kv: (-kv[1].count, kv[0]))]
    peers = sort_peers(nd.peer_diagnostics, view.sort, view.reverse)
    problems = cur.problems

    def pair(a: list[Line], b: list[Line]) -> None:
        if not two:
            lines.extend(a)
            lines.extend(b)
            return
        for i in range(max(len(a), len(b))):
            la, sa = a[i] if i < len(a) else ("", "")
            lb, sb = b[i] if i < len(b) else ("", "")
            lines.append((la.ljust(col) + "  " + lb, sa or sb))

    # Rows left for the writer/latency pair, the warnings/errors and the peers, dealt between
    # them: blank separators only on a tall terminal; the severity/type pair is fixed.
    spacer = not batch and h_rows >= 30
    gap: list[Line] = [("", "")] if spacer or batch else []
    w_need = len(cur.writers) if batch else max(len(cur.writers), len(l_rows), 1)
    if batch:
        w_need = max(w_need, len(l_rows), 1)
    p_need = max(len(problems), 1)
    peer_need = len(peers)
    if batch:
        k, m, r = min(w_need, 50), min(p_need, 10), min(peer_need, 20)
    else:
        fixed = len(lines) + 4 * len(gap) + (7 if two else 14) + 1
        fixed += 2 + 1 + (2 if peers else 1)  # titles and headers of the three shared sections
        if not two:
            fixed += 2  # latency's title and header on lines of their own
        rest = max(0, h_rows - fixed)
        k, m, r = _share(rest, [min(w_need, 7), min(p_need, 8), peer_need])
        # Rows nobody took (a tall terminal): more warnings, then more writers.
        more_m, more_k = _share(rest - k - m - r, [p_need - m, w_need - k])
        k, m = k + more_k, m + more_m
        k = max(k, 1)

    shown, more = _writer_rows(cur.writers, k)
    if more and len(l_rows) >= k:  # the latency table has the room the "more" line takes
        l_rows = l_rows[: k - 1]
    dead = sum(w.state == "dead" for w in cur.writers)
    exited = sum(w.state == "exited" for w in cur.writers)
    w_title = f"WRITERS ({sum(w.alive for w in cur.writers)} alive"
    w_title += (f", {exited} exited" if exited else "") + (f", {dead} dead" if dead else "") + ")"
    writers = _block(w_title, _table(w_head, [writer_row(w) for w in shown], (0, 2, 3, 4, 5, 6), col), col,
                     [(_fit(more, col), "")] if more else None)
    latency = _block("LATENCY", _table(["OP", "N", "P50", "P90", "P99", "MAX"], l_rows[:k], (1, 2, 3, 4, 5), col)
                     if l_rows else "(no timed operations)", col)
    lines.extend(gap)
    pair(sev, types)
    lines.extend(gap)
    pair(writers, latency)
    lines.extend(gap)

    # The latest warnings and errors, newest last (as tail shows them).
    p_title = (f"LATEST WARNINGS/ERRORS ({human_count(_problem_count(st))} since "
               f"{'creation or the last clear' if wide else 'clear'}")
    # The follower cannot tell the severity of what it could not read: counted as events.
    p_title += (f"; {human_count(cur.problems_missed)} events went by unread, overwritten or expired)"
                if cur.problems_missed else ")")
    lines.append((_fit(p_title, width), "title"))
    if problems:
        for e in problems[-m:] if m else []:
            text = format_event_line(e, width=width, wrap=batch, clock=not (wide or batch), local=view.local)
            lines.extend((x, _SEV_STYLE.get(e.severity, "")) for x in text.split("\n"))
    elif m:
        lines.append(("(no warnings or errors retained)", ""))
    lines.extend(gap)

    if wide:
        def p_status(p: PeerDiagnostic) -> str:
            return "never" if p.status == "never_connected" else p.status

        last = [human_time(p.last_activity, local=view.local, clock=True, ms=False) for p in peers[:r]]
        if width >= 160:
            p_rows = [[p.peer_id, p.address or "-", p_status(p), human_count(p.messages_sent),
                       human_count(p.messages_received), human_bytes(p.bytes_sent), human_bytes(p.bytes_received),
                       human_duration(p.latency), p.error_count, t] for p, t in zip(peers, last, strict=False)]
            p_head = ["PEER", "ADDRESS", "STATUS", "MSGS OUT", "MSGS IN", "BYTES OUT", "BYTES IN", "PING", "ERR",
                      "LAST"]
            p_right: tuple[int, ...] = (3, 4, 5, 6, 7, 8)
        else:
            p_rows = [[p.peer_id, p.address or "-", p_status(p), human_bytes(p.bytes_sent),
                       human_bytes(p.bytes_received), human_count(p.messages_sent + p.messages_received),
                       human_duration(p.latency), p.error_count, t] for p, t in zip(peers, last, strict=False)]
            p_head = ["PEER", "ADDRESS", "STATUS", "OUT", "IN", "MSGS", "PING", "ERR", "LAST"]
            p_right = (3, 4, 5, 6, 7)
        # Full ids and addresses when they fit; else the id gives way first, then the address,
        # and only then trailing columns.
        for c, least in ((0, 16), (1, 21)):
            over = max(len(x) for x in table(p_head, p_rows).split("\n")) - width if p_rows else 0
            longest = max((len(str(x[c])) for x in p_rows), default=0)
            if over > 0 and longest > least:
                cap = max(least, longest - over)
                for x in p_rows:
                    x[c] = _fit(str(x[c]), cap)
    else:
        p_rows = [[_fit(p.peer_id, 16), _fit(p.address or "-", 21), p.status[:4], human_bytes(p.bytes_sent),
                   human_bytes(p.bytes_received), human_count(p.messages_sent + p.messages_received),
                   human_duration(p.latency), p.error_count] for p in peers[:r]]
        p_head = ["PEER", "ADDRESS", "STAT", "OUT", "IN", "MSGS", "PING", "ERR"]
        p_right = (3, 4, 5, 6, 7)
    order = ("fewest" if view.sort != "ping" else "lowest") if view.reverse else \
        ("most" if view.sort != "ping" else "highest")
    p_title = f"PEERS BY {view.sort.upper()}, {order} first ({nd.total_peers})"
    if len(peers) > len(p_rows) and (batch or p_rows):
        p_title += f"; {len(p_rows)} shown"
    lines.extend(_block(p_title, _table(p_head, p_rows, p_right, width) if p_rows else "", width))

    if batch:
        while lines and not lines[-1][0]:
            lines.pop()
        return lines
    body = lines[: h_rows - 1]
    body.extend([("", "")] * (h_rows - 1 - len(body)))
    keys = ("q quit  ? help  space pause  peers by: b bytes  m msgs  p ping  e errors  r reverse"
            if width >= 100 else "q quit  ? help  space pause  sort: b m p e r")
    body.append((_fit(f"{keys}  refresh {interval:g}s", width), "header"))
    return body[:h_rows]


HELP = """\
shmdiag top: keys
q           quit (Ctrl-C too)
? or h      this help; any key closes it
space       pause the screen (sampling goes on); again to resume
b           peers by bytes (in + out), most first
m           peers by messages (in + out), most first
p           peers by ping (latest round trip), highest first
e           peers by errors, most first
r           reverse the peers' order
Rates are per second between two refreshes, from the ring's
exact counters (overwritten events count). Times are UTC
(Z) unless --local. The warnings/errors pane shows the
latest retained ones, newest last. --batch -n 1 prints
one snapshot as text (for a ticket)."""


def help_box(width: int, height: int) -> tuple[int, int, list[str]]:
    """The help overlay: its top-left corner and its lines (boxed), centred, cut to fit."""
    body = HELP.split("\n")
    inner = max(len(x) for x in body)
    box = ["+" + "-" * (inner + 2) + "+"] + [f"| {x:<{inner}} |" for x in body] + ["+" + "-" * (inner + 2) + "+"]
    box = [x[:width] for x in box[:height]]
    y = max(0, (height - len(box)) // 2)
    x = max(0, (width - len(box[0])) // 2) if box else 0
    return y, x, box


def _styles() -> dict[str, int]:
    import curses

    out = {"": curses.A_NORMAL, "title": curses.A_BOLD, "header": curses.A_REVERSE,
           "ok": curses.A_BOLD, "warn": curses.A_BOLD, "bad": curses.A_BOLD, "help": curses.A_REVERSE}
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


def _put(win: curses.window, y: int, x: int, text: str, attr: int) -> None:
    import curses

    height, width = win.getmaxyx()
    # The bottom-right cell cannot be written without curses moving the cursor past the end
    # (an error): leave the last column of the last line alone.
    n = min(len(text), (width - 1 if y == height - 1 else width) - x)
    if n <= 0 or y >= height:
        return
    try:
        win.addnstr(y, x, text, n, attr)
    except curses.error:
        pass


def _draw(win: curses.window, lines: list[Line], styles: dict[str, int], view: View | None = None) -> None:
    win.erase()
    height, width = win.getmaxyx()
    for y, (text, style) in enumerate(lines[:height]):
        _put(win, y, 0, clean(text), styles.get(style, 0))
    if view is not None and view.help:
        y0, x0, box = help_box(width, height)
        for i, text in enumerate(box):
            _put(win, y0 + i, x0, text, styles.get("help", 0))
    win.refresh()


def _loop(win: curses.window, rec: Inspector | Recorder, interval: float, view: View) -> int:
    import curses

    try:
        curses.curs_set(0)
    except curses.error:
        pass
    styles = _styles()
    win.timeout(100)
    sampler = Sampler(rec, f"/dev/shm/{rec.name}")
    prev: Sample | None = None
    cur = sampler.take()
    shown = (cur, prev)  # what the screen shows: frozen while paused
    next_at = cur.t + interval
    redraw = True
    while True:
        if redraw:
            height, width = win.getmaxyx()
            _draw(win, render(rec.name, shown[0], shown[1], width, height, interval, view), styles, view)
            redraw = False
        ch = win.getch()
        if ch != -1:
            redraw = True
            if view.help and ch != curses.KEY_RESIZE:
                view.help = False  # any key closes the help
                if ch not in (ord("q"), ord("Q")):
                    continue
            if ch in (ord("q"), ord("Q")):
                return 0
            if ch in (ord("?"), ord("h"), ord("H"), curses.KEY_F1):
                view.help = True
            elif ch == ord(" "):
                view.paused = not view.paused
                shown = (cur, prev)
            elif 0 <= ch < 256 and chr(ch).lower() in SORTS:
                view.sort, view.reverse = SORTS[chr(ch).lower()], False
            elif ch in (ord("r"), ord("R")):
                view.reverse = not view.reverse
            elif ch == curses.KEY_RESIZE:
                try:
                    curses.update_lines_cols()
                except AttributeError:
                    pass
        if time.monotonic() >= next_at:
            # Sampling goes on while paused, so rates are right the moment it resumes and
            # the warnings pane's follower never falls behind.
            prev, cur = cur, sampler.take()
            next_at = cur.t + interval
            if not view.paused:
                shown = (cur, prev)
                redraw = True


def run(rec: Inspector | Recorder, interval: float = 1.0, view: View | None = None) -> int:
    """Show ``rec`` until q (or Ctrl-C); curses.wrapper restores the terminal either way."""
    import curses

    try:
        return curses.wrapper(_loop, rec, max(0.1, interval), view or View())
    except KeyboardInterrupt:
        return 0
    except curses.error as e:
        raise ShmDiagError(f"cannot run the full-screen view on this terminal ({e}); is TERM right?") from None


def batch(rec: Inspector | Recorder, count: int, delay: float, width: int, view: View) -> int:
    """``count`` snapshots (0: until interrupted) as plain text on stdout, ``delay`` seconds
    apart; the first one after ``delay`` too, so that its rates are real. No curses."""
    sampler = Sampler(rec, f"/dev/shm/{rec.name}")
    prev = sampler.take()
    i = 0
    try:
        while count == 0 or i < count:
            time.sleep(delay)
            cur = sampler.take()
            text = "\n".join(x.rstrip() for x, _ in render(rec.name, cur, prev, width, None, delay, view))
            sys.stdout.write(("\n" if i else "") + clean_lines(text) + "\n")
            sys.stdout.flush()
            prev = cur
            i += 1
            if cur.removed:  # said on the snapshot; nothing more will come
                return 0
    except KeyboardInterrupt:
        return 0
    return 0


def clean_lines(text: str) -> str:
    """Lines already escaped by the renderer: only newlines between them."""
    return "\n".join(clean(x) for x in text.split("\n"))


# -- top -----------------------------------------------------------------------------------
def interval_arg(text: str) -> float:
    """A refresh period in seconds: a finite number above zero."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < v < 86400:
        raise argparse.ArgumentTypeError(f"must be above 0 and below a day, got {text}")
    return v


def width_arg(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 20 <= v <= 1000:
        raise argparse.ArgumentTypeError(f"must be 20-1000 columns, got {v}")
    return v


def add_top_args(sp: argparse.ArgumentParser) -> None:
    from shmdiag.cli.format import add_human_args

    sp.add_argument("-d", "--delay", "--interval", dest="interval", type=interval_arg, default=1.0, metavar="S",
                    help="refresh period in seconds (default 1)")
    sp.add_argument("-b", "--batch", action="store_true",
                    help="print plain-text snapshots to stdout instead of the full-screen view")
    sp.add_argument("-n", type=count_arg, default=None, metavar="N",
                    help="with --batch: how many snapshots (default 1; 0 = until interrupted)")
    sp.add_argument("--width", type=width_arg, default=None, metavar="COLS",
                    help="with --batch: the snapshot's width (default: the terminal's, $COLUMNS, or 120)")
    sp.add_argument("--sort", choices=tuple(SORTS.values()), default="bytes",
                    help="the peers' order at start (keys b, m, p, e on the screen)")
    add_human_args(sp, color=False)


def cmd_top(args: argparse.Namespace) -> int:
    view = View(local=getattr(args, "local", False), sort=getattr(args, "sort", "bytes"))
    if args.batch:
        width = args.width or terminal_width(sys.stdout) or int(os.environ.get("COLUMNS", "0") or 0) or WIDE
        with attached(args.name) as rec:
            return batch(rec, 1 if args.n is None else args.n, args.interval, width, view)
    if args.n is not None or args.width is not None:
        raise UsageError("-n and --width are for --batch")
    if not (sys.stdout.isatty() and sys.stdin.isatty()):
        raise ShmDiagError("top needs a terminal (stdin and stdout must be a tty); "
                           f"for a snapshot as text use 'shmdiag top {args.name} --batch -n 1'")
    with attached(args.name) as rec:
        return run(rec, interval=args.interval, view=view)


_TOP_EPILOG = """\
keys: q quit, ? help, space pause (sampling goes on), peers sorted by b bytes, m messages,
p ping, e errors, r reverse. Rates are per second between two refreshes, from the ring's
exact counters. The warnings/errors pane reads only what was recorded since the previous
refresh (and decodes only its warnings and errors), so top costs the same on any ring size.

--batch prints plain-text snapshots instead (no curses, no terminal needed): -n 1 (the
default) one snapshot after one delay, -n N that many, -n 0 until interrupted. Its width is
--width, else the terminal's or $COLUMNS, else 120 (full peer ids and addresses)."""
