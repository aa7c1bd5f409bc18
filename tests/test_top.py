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


class Term:
    """A child in a pty, and the screen it draws."""

    def __init__(self, args: list[str], rows: int = 24, cols: int = 80) -> None:
        env = {**os.environ, "TERM": "xterm", "LANG": "C.UTF-8"}
        self.child = pexpect.spawn(sys.executable, args, dimensions=(rows, cols), env=env, timeout=10)
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
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
