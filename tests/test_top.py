"""``shmdiag top`` in a real pseudo-terminal (pexpect), its screen read back through a terminal
emulator (pyte): it shows what the ring holds, survives small and resized terminals, quits on
q with status 0 and restores the terminal. Plus the pure renderer at many sizes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pexpect
import pyte
import pytest

from shmdiag import Recorder

# A writer that keeps recording (slowly) until killed: the screen must show its pid and rate.
SLOW_WRITER = textwrap.dedent(
    """
    import sys, time
    from shmdiag import Recorder
    with Recorder.attach(sys.argv[1]) as rec:
        rec.record_peer_connection("peer-a", "203.0.113.5:8333")
        rec.record_latency("handshake", 0.012, "peer-a")
        rec.record_error("peer-a", "bad checksum", "read")
        print("ready", flush=True)
        i = 0
        while True:
            rec.record_message("peer-a", "inv", "inbound", 37)
            rec.record_message("peer-a", "tx", "outbound", 250)
            i += 1
            time.sleep(0.005)
    """
)

RMCUP = b"\x1b[?1049l"  # xterm's "leave the alternate screen", sent by endwin()
SMCUP = b"\x1b[?1049h"


@pytest.fixture
def busy_ring(make_recorder):
    rec = make_recorder(5000)
    w = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, rec.name], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        assert w.stdout.readline() == b"ready\n", w.stderr.read()
        yield rec, w.pid
    finally:
        w.kill()
        w.wait(timeout=10)
        w.stdout.close()
        w.stderr.close()


class _Screen(pyte.Screen):
    """pyte's screen plus SU and SD (CSI n S, CSI n T: scroll the region up or down), which it
    lacks and ncurses uses on xterm (``indn``/``rin``) when a pane grows or shrinks."""

    def _at_top(self, op, count) -> None:
        y, x = self.cursor.y, self.cursor.x
        self.cursor.y = self.margins.top if self.margins else 0
        op(count or 1)
        self.cursor.y, self.cursor.x = y, x

    def scroll_up(self, count=None, *args, **kw) -> None:
        self._at_top(self.delete_lines, count)

    def scroll_down(self, count=None, *args, **kw) -> None:
        self._at_top(self.insert_lines, count)


class _Stream(pyte.ByteStream):
    csi = {**pyte.ByteStream.csi, "S": "scroll_up", "T": "scroll_down"}


class Term:
    """A child in a pty, and the screen it draws."""

    def __init__(self, args: list[str], rows: int = 24, cols: int = 80) -> None:
        env = {**os.environ, "TERM": "xterm", "LANG": "C.UTF-8"}
        self.child = pexpect.spawn(sys.executable, args, dimensions=(rows, cols), env=env, timeout=10)
        self.screen = _Screen(cols, rows)
        self.stream = _Stream(self.screen)
        self.raw = bytearray()

    def pump(self, wait: float = 0.1) -> bool:
        """Read what is there; False at EOF."""
        try:
            data = self.child.read_nonblocking(65536, timeout=wait)
        except pexpect.TIMEOUT:
            return True
        except pexpect.EOF:
            return False
        self.raw += data
        self.stream.feed(data)
        return True

    def text(self) -> str:
        return "\n".join(self.screen.display)

    def wait_for(self, cond, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond(self.text()):
            if not self.pump() or time.monotonic() > deadline:
                raise AssertionError(f"screen never matched; it shows:\n{self.text()}\nexit: {self.child.exitstatus}")

    def resize(self, rows: int, cols: int) -> None:
        self.screen.resize(rows, cols)
        self.child.setwinsize(rows, cols)

    def quit(self) -> int:
        self.child.send("q")
        deadline = time.monotonic() + 20
        while self.pump():
            assert time.monotonic() < deadline, "top did not quit on q"
        self.child.close()
        return self.child.exitstatus

    def kill(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)


@pytest.fixture
def terms():
    made: list[Term] = []
    yield made
    for t in made:
        t.kill()


def _row_of(text: str, word: str) -> str:
    return next(line for line in text.splitlines() if word in line)


@pytest.mark.multiprocess
def test_top_shows_the_ring_and_quits_cleanly(busy_ring, terms):
    rec, writer_pid = busy_ring
    t = Term(["-m", "shmdiag", "top", rec.name, "--interval", "0.3"])
    terms.append(t)
    # Health, the writer's pid with a non-zero rate (a second sample), event types, the peer.
    t.wait_for(lambda s: "HEALTHY" in s or "WARNING" in s)
    t.wait_for(lambda s: str(writer_pid) in s and "message" in s and "peer-a" in s and "handshake" in s)

    def writer_rate_shown(s: str) -> bool:
        row = _row_of(s, str(writer_pid)).split()
        return len(row) >= 3 and row[1] == "active" and row[2] not in ("-", "0")

    t.wait_for(writer_rate_shown)
    screen = t.text()
    assert rec.name in screen.splitlines()[0]
    assert "EVENTS BY SEVERITY" in screen and "EVENTS BY TYPE" in screen and "LATENCY" in screen
    assert "203.0.113.5:8333" in screen
    assert all(len(line.rstrip()) <= 80 for line in screen.splitlines())
    assert t.quit() == 0
    raw = bytes(t.raw)
    assert SMCUP in raw and raw.rfind(RMCUP) > raw.rfind(SMCUP), "the terminal must be restored"
    assert b"Traceback" not in raw


@pytest.mark.multiprocess
def test_top_survives_small_and_resized_terminals(busy_ring, terms):
    rec, writer_pid = busy_ring
    t = Term(["-m", "shmdiag", "top", rec.name, "--interval", "0.2"], rows=8, cols=30)
    terms.append(t)
    t.wait_for(lambda s: "shmdiag top" in s)
    for rows, cols in ((5, 12), (1, 1), (40, 132), (24, 80), (3, 200)):
        t.resize(rows, cols)
        time.sleep(0.3)  # a refresh or two at this size
        assert t.pump(), f"top died at {rows}x{cols}: {bytes(t.raw[-500:])!r}"
        assert t.child.isalive()
    t.resize(24, 80)
    t.wait_for(lambda s: str(writer_pid) in s)
    assert t.quit() == 0
    raw = bytes(t.raw)
    assert raw.rfind(RMCUP) > raw.rfind(SMCUP)
    assert b"Traceback" not in raw


def test_top_ctrl_c_restores_the_terminal(make_recorder, terms):
    rec = make_recorder(100)
    t = Term(["-m", "shmdiag", "top", rec.name])
    terms.append(t)
    t.wait_for(lambda s: "HEALTHY" in s)
    t.child.kill(signal.SIGINT)
    deadline = time.monotonic() + 20
    while t.pump():
        assert time.monotonic() < deadline
    t.child.close()
    assert t.child.exitstatus == 0
    raw = bytes(t.raw)
    assert raw.rfind(RMCUP) > raw.rfind(SMCUP) and b"Traceback" not in raw


def test_top_shows_hostile_ring_text_escaped(make_recorder, terms):
    """Text in a ring is untrusted: a NUL (which curses refuses) or an escape sequence in a peer
    id or event type must neither crash top nor reach the terminal."""
    from shmdiag import DiagnosticEvent

    rec = make_recorder(100)
    rec.record_peer_connection("evil\x00\x1b[2Jpeer", "10.0.0.9:8333")
    rec.record_message("evil\x00\x1b[2Jpeer", "inv", "inbound", 5000)
    rec.record_event(DiagnosticEvent("ty\x1b]0;pwned\x07pe", "m"))
    t = Term(["-m", "shmdiag", "top", rec.name, "--interval", "0.3"])
    terms.append(t)
    t.wait_for(lambda s: "evil\\x00\\x1b[2Jpeer" in s and "ty\\x1b]0;pwned\\x07pe" in s)
    assert b"pwned\x07" not in bytes(t.raw) and b"\x1b[2Jpeer" not in bytes(t.raw)
    assert t.quit() == 0


def test_top_unknown_ring_is_one_line(terms):
    t = Term(["-m", "shmdiag", "top", "shmdiag-test-no-such-ring"])
    terms.append(t)
    while t.pump():
        pass
    t.child.close()
    assert t.child.exitstatus == 1
    out = bytes(t.raw).decode()
    assert out.strip().splitlines() == ["shmdiag: error: no shmdiag ring named 'shmdiag-test-no-such-ring' "
                                        "(no /dev/shm/shmdiag-test-no-such-ring)"]


def test_render_fits_any_size_and_computes_rates(make_recorder):
    from shmdiag.cli import top as _top

    rec = make_recorder(1000)
    rec.record_peer_connection("p1", "10.0.0.1:8333")
    rec.record_latency("handshake", 0.01, "p1")
    a = _top.sample(rec)
    for _ in range(50):
        rec.record_message("p1", "inv", "inbound", 100)
    rec.record_error("p1", "boom", "read")
    b = _top.sample(rec)
    b.t = a.t + 2.0  # 51 events in 2 s
    for w, h in ((80, 24), (1, 1), (20, 5), (200, 60), (79, 23), (60, 30), (59, 30)):
        lines = _top.render(rec.name, b, a, w, h)
        assert len(lines) == h
        assert all(len(text) <= w for text, _ in lines), (w, h)
    text = "\n".join(t for t, _ in _top.render(rec.name, b, a, 80, 24))
    assert text.splitlines()[2].startswith("25.5 ev/s")
    assert _row_of(text, "DEBUG").split()[:3] == ["DEBUG", "25", "51"]  # 50 messages and the latency event
    assert _row_of(text, "message").split()[-3:] == ["message", "25", "50"]
    me = _row_of(text, f"{os.getpid()} ").split()
    assert me[:4] == [str(os.getpid()), "active", "25.5", "53"]
    lat = _row_of(text, "handshake").split()
    assert lat[lat.index("handshake") + 1] == "1"  # one timed handshake (right-hand column)
    assert "10.0.0.1:8333" in text
    # A clear between samples: no negative rates, just no rate.
    rec.clear_events()
    c = _top.sample(rec)
    text = "\n".join(t for t, _ in _top.render(rec.name, c, b, 80, 24))
    assert text.splitlines()[2].startswith("- ev/s")


@pytest.mark.multiprocess
def test_attached_top_never_writes(busy_ring):
    rec, _ = busy_ring
    from shmdiag.cli import top as _top

    with Recorder.attach(rec.name) as viewer:
        _top.sample(viewer)
        assert viewer._shards.index is None  # no writer shard taken


# -- an operator's tool: help, sort, pause, the warnings/errors pane, a wide terminal, batch ----
def _peer_rows(text: str, title: str) -> list[str]:
    """The peer ids of the peers pane, in screen order."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = []
    for line in lines[at + 2:]:
        if not line.strip() or line.startswith("q quit"):
            break
        rows.append(line.split()[0])
    return rows


def _three_peers(rec) -> None:
    """Three peers whose order differs by each sort key."""
    rec.record_peer_connection("bytes-peer", "10.0.0.1:8333")
    rec.record_peer_connection("msgs-peer", "10.0.0.2:8333")
    rec.record_peer_connection("errs-peer", "10.0.0.3:8333")
    rec.record_message("bytes-peer", "block", "inbound", 2_000_000)
    for _ in range(30):
        rec.record_message("msgs-peer", "inv", "inbound", 10)
    rec.record_message("errs-peer", "tx", "inbound", 100)
    for i in range(3):
        rec.record_error("errs-peer", ValueError(f"bad tx {i}"), "read")
    rec.record_latency("ping", 0.002, "bytes-peer")
    rec.record_latency("ping", 0.9, "msgs-peer")
    rec.record_latency("ping", 0.05, "errs-peer")


@pytest.mark.multiprocess
def test_top_keys_help_sort_and_pause(busy_ring, terms):
    rec, writer_pid = busy_ring
    _three_peers(rec)
    t = Term(["-m", "shmdiag", "top", rec.name, "--interval", "0.2"], rows=30, cols=80)
    terms.append(t)
    t.wait_for(lambda s: "PEERS BY BYTES" in s and str(writer_pid) in s and "? help" in s.splitlines()[-1]
               and _peer_rows(s, "PEERS BY BYTES")[:2] == ["bytes-peer", "peer-a"])

    # ? shows the keys over the screen; any key closes it (and does nothing else).
    t.child.send("?")
    t.wait_for(lambda s: "shmdiag top: keys" in s and "space" in s and "reverse" in s)
    t.child.send("m")
    t.wait_for(lambda s: "shmdiag top: keys" not in s and "PEERS BY BYTES" in s)

    # Sort keys, and r to reverse.
    for key, title, first in (("m", "PEERS BY MESSAGES", "peer-a"), ("e", "PEERS BY ERRORS", "errs-peer"),
                              ("p", "PEERS BY PING", "msgs-peer"), ("b", "PEERS BY BYTES", "bytes-peer")):
        t.child.send(key)
        t.wait_for(lambda s, title=title, first=first: title in s and _peer_rows(s, title)[:1] == [first])
    t.child.send("m")
    t.wait_for(lambda s: "PEERS BY MESSAGES" in s)
    t.child.send("r")
    # One message each, then by id.
    t.wait_for(lambda s: "PEERS BY MESSAGES, fewest first" in s
               and _peer_rows(s, "PEERS BY MESSAGES")[:2] == ["bytes-peer", "errs-peer"])

    # Space freezes the screen (the writer keeps writing); space again shows it live.
    def recorded(s: str) -> str:
        return _row_of(s, f"{writer_pid} ").split()[3]

    t.child.send(" ")
    t.wait_for(lambda s: "PAUSED" in s)
    t.pump(0.3)  # the rest of that frame
    frozen, screen = recorded(t.text()), t.text()
    deadline = time.monotonic() + 1.5  # several refreshes' worth, at 0.2 s
    while time.monotonic() < deadline:
        t.pump(0.1)
    assert recorded(t.text()) == frozen and t.text() == screen
    t.child.send(" ")
    t.wait_for(lambda s: "PAUSED" not in s and recorded(s) != frozen)
    assert t.quit() == 0


@pytest.mark.multiprocess
def test_top_pane_of_latest_warnings_and_errors(busy_ring, terms):
    """The errors pane starts with what is retained (the writer's "bad checksum") and then
    shows the warnings/errors recorded while top runs, newest last, and not the DEBUG flood."""
    from shmdiag import DiagnosticEvent, Severity

    rec, _ = busy_ring
    t = Term(["-m", "shmdiag", "top", rec.name, "--interval", "0.2"], rows=30, cols=80)
    terms.append(t)
    t.wait_for(lambda s: "LATEST WARNINGS/ERRORS" in s and "bad checksum" in s)
    rec.record_event(DiagnosticEvent("stall", "headers stalled", Severity.WARNING, "peer-z"))
    rec.record_error("peer-z", KeyError("feefilter"), "handle")
    def pane(s: str) -> list[str]:
        lines = s.splitlines()
        at = [i for i, x in enumerate(lines) if x.startswith("LATEST WARNINGS")]
        rows = lines[at[0] + 1:] if at else []
        return rows[: next((i for i, x in enumerate(rows) if not x.strip() or x.startswith("PEERS")), len(rows))]

    # (Conditions on the whole screen: curses may be half-way through drawing one.)
    t.wait_for(lambda s: len(pane(s)) >= 2 and "KeyError" in pane(s)[-1] and "headers stalled" in pane(s)[-2])
    pane_now = pane(t.text())
    assert all(("WARNING" in x or "ERROR" in x) and x.split()[0].endswith("Z") for x in pane_now)
    assert t.quit() == 0


@pytest.mark.multiprocess
def test_top_uses_a_wide_terminal(busy_ring, terms):
    rec, writer_pid = busy_ring
    long_id = "peer-with-a-long-identifier-000000000042"
    v6 = "[2001:db8:85a3::8a2e:370:7334]:18444"
    rec.record_peer_connection(long_id, v6)
    rec.record_message(long_id, "block", "inbound", 5_000_000)
    t = Term(["-m", "shmdiag", "top", rec.name, "--interval", "0.3"], rows=50, cols=200)
    terms.append(t)
    t.wait_for(lambda s: long_id in s and v6 in s and str(writer_pid) in s)
    screen = t.text()
    assert "MSGS OUT" in screen and "BYTES IN" in screen and "LAST" in screen  # more columns
    assert "OVERWRITTEN" in screen and "ABANDONED" in screen
    assert "2026" in screen.splitlines()[0] or "20" in screen.splitlines()[0]  # the date in the title
    assert all(len(line.rstrip()) <= 200 for line in screen.splitlines())
    # The same ring at 80 columns: cut, not wrapped.
    t.resize(24, 80)
    t.wait_for(lambda s: "peer-with-a-lon~" in s and v6 not in s)
    assert all(len(line.rstrip()) <= 80 for line in t.text().splitlines())
    assert t.quit() == 0


EXITING_WRITER = textwrap.dedent(
    """
    import sys
    from shmdiag import Recorder
    with Recorder.attach(sys.argv[1]) as rec:
        rec.record_message("p", "inv", "inbound", 1)
    """
)


@pytest.mark.multiprocess
def test_top_batch_snapshot_for_a_ticket(busy_ring):
    from helpers import run_cli

    rec, writer_pid = busy_ring
    _three_peers(rec)
    for _ in range(6):
        subprocess.run([sys.executable, "-c", EXITING_WRITER, rec.name], check=True, timeout=60)
    cp = run_cli("top", rec.name, "--batch", "-n", "1", "--delay", "0.3", env={**os.environ, "COLUMNS": "80"})
    assert cp.returncode == 0, cp.stderr
    out = cp.stdout
    assert "\x1b" not in out and "q quit" not in out  # no curses, no key help
    lines = out.splitlines()
    assert lines[0].startswith(f"shmdiag top  {rec.name}  20") and lines[0].endswith("Z")
    assert all(len(x) <= 80 for x in lines), [x for x in lines if len(x) > 80]
    assert "(rates over 0.3" in out
    row = _row_of(out, f"{writer_pid} ").split()
    assert row[1] == "active" and float(row[2].rstrip("k")) > 0  # a real rate: two samples
    assert "WRITERS (2 alive, 6 exited)" in out  # the busy writer and this process
    assert "... 3 more (3 exited)" in out  # three shown, the rest collapsed
    assert "LATEST WARNINGS/ERRORS" in out and "bad tx 2" in out and "bad checksum" in out
    assert _peer_rows(out, "PEERS BY BYTES") == ["bytes-peer", "peer-a", "msgs-peer", "errs-peer", "p"]

    cp = run_cli("top", rec.name, "--batch", "-n", "2", "-d", "0.2", "--width", "200", "--sort", "errors")
    assert cp.returncode == 0, cp.stderr
    snaps = cp.stdout.split("\nshmdiag top  ")
    assert len(snaps) == 2 and "MSGS OUT" in snaps[1]
    assert _peer_rows(snaps[1], "PEERS BY ERRORS")[0] == "errs-peer"


def test_top_bad_flags_are_one_line(make_recorder):
    from helpers import assert_one_error_line, run_cli

    rec = make_recorder(100)
    for args, needle in ((["--delay", "0"], "--delay"), (["--delay", "x"], "seconds"), (["-n", "-1"], "-n"),
                         (["--batch", "--width", "5"], "--width"), (["--sort", "age"], "--sort"),
                         (["-n", "1"], "--batch")):
        assert_one_error_line(run_cli("top", rec.name, *args), 2, needle)
    # Not a terminal and no --batch: says what to use instead.
    assert_one_error_line(run_cli("top", rec.name), 1, "--batch -n 1")


def test_writers_collapse_and_peer_sorts():
    from shmdiag.cli import top as _top
    from shmdiag.core.models import PeerDiagnostic, WriterInfo

    ws = [WriterInfo(pid=i, state="active", alive=True, recorded=i) for i in range(1, 3)]
    ws += [WriterInfo(pid=100 + i, state="exited", alive=False, recorded=5) for i in range(5)]
    ws += [WriterInfo(pid=200, state="dead", alive=False, recorded=1)]
    shown, more = _top._writer_rows(ws, 10)
    assert [w.pid for w in shown] == [2, 1, 200, 100, 101] and more == "... 3 more (3 exited)"
    shown, more = _top._writer_rows(ws, 2)
    assert [w.pid for w in shown] == [2] and more == "... 7 more (1 alive, 5 exited, 1 dead)"
    shown, more = _top._writer_rows(ws[:3], 3)
    assert len(shown) == 3 and more == ""

    ps = [PeerDiagnostic("a", bytes_sent=10, messages_sent=1, latency=None, error_count=0),
          PeerDiagnostic("b", bytes_sent=5, messages_sent=9, latency=0.3, error_count=2),
          PeerDiagnostic("c", bytes_sent=7, messages_sent=3, latency=0.1, error_count=2)]
    order = {k: [p.peer_id for p in _top.sort_peers(ps, k)] for k in ("bytes", "messages", "ping", "errors")}
    assert order == {"bytes": ["a", "c", "b"], "messages": ["b", "c", "a"], "ping": ["b", "c", "a"],
                     "errors": ["b", "c", "a"]}
    assert [p.peer_id for p in _top.sort_peers(ps, "ping", reverse=True)] == ["a", "c", "b"]


def test_pane_follows_warnings_and_says_what_went_by_unread(make_recorder):
    """In-process, two refreshes: the pane keeps the latest warnings/errors across them, forgets
    them at a clear, and says when the ring lapped between two refreshes."""
    from shmdiag import DiagnosticEvent, Inspector, Severity
    from shmdiag.cli import top as _top

    rec = make_recorder(100)
    rec.record_error("p1", "first", "read")
    with Inspector.attach(rec.name) as ins:
        s = _top.Sampler(ins)
        assert [e.error for e in s.take().problems] == ["first"]
        for _ in range(30):
            rec.record_message("p1", "inv", "inbound", 1)
        rec.record_event(DiagnosticEvent("stall", "slow", Severity.WARNING))
        cur = s.take()
        assert [e.event_type for e in cur.problems] == ["error", "stall"] and cur.problems_missed == 0
        for _ in range(300):  # three laps of the ring before the next refresh
            rec.record_message("p1", "inv", "inbound", 1)
        rec.record_error("p1", "last", "read")
        prev, cur = cur, s.take()
        assert cur.problems[-1].error == "last" and cur.problems_missed > 0
        text = "\n".join(t for t, _ in _top.render(rec.name, cur, prev, 80, 24))
        assert "went by unread" in text and "last" in _row_of(text, "Error in read  error: last")
        rec.clear_events()
        assert s.take().problems == []
