"""Human output as an operator sees it: timestamps that say their zone (UTC by default,
``--local``), colours by severity only on a terminal (``NO_COLOR`` and ``--color`` honoured),
lines that fit the terminal, and ``stats --watch`` rates from a real writer process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone

import orjson
import pexpect
import pytest

from shmdiag import DiagnosticEvent, Severity
from shmdiag.cli.format import format_event_line, human_time, paint, use_color

from helpers import assert_one_error_line, run_cli, write

SGR = re.compile(r"\x1b\[[0-9;]*m")
# A POSIX TZ rule (no tz database needed): five and a half hours east of UTC.
TZ_PLUS_0530 = "XYZ-05:30"


def _event(**kw) -> DiagnosticEvent:
    base = dict(event_type="error", message="read failed", severity=Severity.ERROR, peer_id="peer-a",
                error="ValueError: bad checksum", pid=4242,
                timestamp=datetime(2026, 11, 30, 7, 12, 3, 123456, tzinfo=timezone.utc))
    base.update(kw)
    return DiagnosticEvent(**base)


# -- the line, in-process --------------------------------------------------------------------
def test_event_line_is_utc_with_a_z_by_default():
    line = format_event_line(_event())
    assert line == ("2026-11-30T07:12:03.123Z ERROR       4242 error peer-a: read failed  "
                    "error: ValueError: bad checksum")
    assert human_time(_event().timestamp, clock=True, ms=False) == "07:12:03Z"
    assert human_time(None) == "-"


def test_event_line_fits_a_width_without_losing_text():
    e = _event(message="lost peer during IBD headers sync " * 6)
    for width in (80, 60, 132):
        lines = format_event_line(e, width=width).split("\n")
        assert len(lines) > 1 and all(len(x) <= width for x in lines), width
        assert lines[0].startswith("2026-11-30T07:12:03.123Z ERROR") and all(x.startswith("    ") for x in lines[1:])
        # Every word is still there, in order.
        assert " ".join(" ".join(lines).split()) == " ".join(format_event_line(e).split())
    cut = format_event_line(e, width=80, wrap=False)
    assert len(cut) == 80 and cut.endswith("~") and "\n" not in cut
    short = format_event_line(_event(message="ok", error=None), width=80)
    assert short == format_event_line(_event(message="ok", error=None))  # fits: unchanged


def test_colour_by_severity():
    assert format_event_line(_event(), color=True).startswith("\x1b[31m")
    assert format_event_line(_event(severity=Severity.WARNING), color=True).startswith("\x1b[33m")
    assert format_event_line(_event(severity=Severity.CRITICAL), color=True).startswith("\x1b[1;31m")
    assert format_event_line(_event(severity=Severity.DEBUG), color=True).startswith("\x1b[2m")
    assert "\x1b" not in format_event_line(_event(severity=Severity.INFO), color=True)
    wrapped = format_event_line(_event(message="x " * 60), width=80, color=True).split("\n")
    assert len(wrapped) > 1 and all(x.startswith("\x1b[31m") and x.endswith("\x1b[0m") for x in wrapped)
    assert paint("", Severity.ERROR) == ""


def test_use_color_decides_by_flag_tty_and_no_color(monkeypatch, tmp_path):
    class Tty:
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    with open(tmp_path / "f", "w") as f:
        assert not use_color("auto", f)  # a file is not a terminal
        assert use_color("always", f)
    assert use_color("auto", Tty()) and not use_color("never", Tty())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color("auto", Tty()) and use_color("always", Tty())  # the flag wins
    monkeypatch.setenv("NO_COLOR", "")  # set but empty: no effect (no-color.org)
    assert use_color("auto", Tty())
    monkeypatch.setenv("TERM", "dumb")
    assert not use_color("auto", Tty())
    with pytest.raises(ValueError, match="color mode"):
        use_color("sometimes", Tty())


# -- tail, run as a user runs it ---------------------------------------------------------------
def _ring_with_problems(make_recorder):
    rec = make_recorder(200)
    write(rec.name, [["err", "peer-a", "bad checksum", "read"],
                     ["event", "stall", "headers stalled " * 8, int(Severity.WARNING), "peer-b"],
                     ["msg", "peer-a", "inv", "inbound", 37]])
    return rec


@pytest.mark.multiprocess
def test_tail_times_utc_by_default_and_local_with_offset(make_recorder):
    rec = _ring_with_problems(make_recorder)
    env = {**os.environ, "TZ": TZ_PLUS_0530}
    [e] = rec.get_events(1)
    utc = e.timestamp.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{e.timestamp.microsecond // 1000:03d}"
    cp = run_cli("tail", rec.name, "-n", "1", env=env)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.startswith(utc + "Z DEBUG"), (utc, cp.stdout)
    cp = run_cli("tail", rec.name, "-n", "1", "--local", env=env)
    local = (e.timestamp + timedelta(hours=5, minutes=30)).astimezone(timezone.utc).replace(tzinfo=None)
    want = local.strftime("%Y-%m-%dT%H:%M:%S.") + f"{local.microsecond // 1000:03d}+05:30 DEBUG"
    assert cp.stdout.startswith(want), (want, cp.stdout)
    # stats and peers say their zone too.
    cp = run_cli("stats", rec.name, env=env)
    assert re.search(r"first event:\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", cp.stdout), cp.stdout
    cp = run_cli("stats", rec.name, "--local", env=env)
    assert re.search(r"first event:\s+\S+\+05:30$", cp.stdout, re.M), cp.stdout
    cp = run_cli("peers", rec.name, env=env)
    assert re.search(r"\d\d:\d\d:\d\dZ$", cp.stdout.splitlines()[-1]), cp.stdout


@pytest.mark.multiprocess
def test_tail_piped_is_plain_and_whole(make_recorder):
    rec = _ring_with_problems(make_recorder)
    cp = run_cli("tail", rec.name, env={**os.environ, "COLUMNS": "80", "TERM": "xterm"})
    lines = cp.stdout.splitlines()
    assert len(lines) == 3 and "\x1b" not in cp.stdout
    assert len(lines[1]) > 80 and lines[1].rstrip().endswith("headers stalled")  # not cut, not wrapped
    cp = run_cli("tail", rec.name, "--color", "always")
    assert SGR.search(cp.stdout) and "\x1b[31m" in cp.stdout.splitlines()[0]
    assert_one_error_line(run_cli("tail", rec.name, "--color", "maybe"), 2, "--color")


def _tail_in_a_terminal(name: str, *args: str, env: dict | None = None, cols: int = 80) -> str:
    child = pexpect.spawn(sys.executable, ["-m", "shmdiag", "tail", name, *args], dimensions=(40, cols),
                          env={**os.environ, "TERM": "xterm", "LANG": "C.UTF-8", **(env or {})}, timeout=30)
    try:
        child.expect(pexpect.EOF)
        return child.before.decode()
    finally:
        child.close(force=True)


@pytest.mark.multiprocess
def test_tail_on_a_terminal_colours_and_fits(make_recorder):
    rec = _ring_with_problems(make_recorder)
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS")}
    os_env = {"NO_COLOR": ""}
    out = _tail_in_a_terminal(rec.name, env={**env, **os_env})
    lines = out.replace("\r\n", "\n").rstrip("\n").split("\n")
    assert "\x1b[31m" in lines[0] and "ERROR" in lines[0]  # red error
    assert any("\x1b[33m" in x for x in lines)  # yellow warning
    plain = [SGR.sub("", x) for x in lines]
    assert all(len(x) <= 80 for x in plain), plain
    starts = [i for i, x in enumerate(plain) if x[:4].isdigit()]
    assert len(starts) == 3 and len(plain) > 3  # three events; the long ones continue, indented
    assert all(x.startswith("    ") for i, x in enumerate(plain) if i not in starts)
    warning = " ".join(plain[starts[1]: starts[2]])
    assert " ".join(warning.split()).endswith("peer-b: " + " ".join(["headers stalled"] * 8))

    out = _tail_in_a_terminal(rec.name, env={**env, "NO_COLOR": "1"})
    assert "\x1b[" not in out and "ERROR" in out
    out = _tail_in_a_terminal(rec.name, "--color", "never")
    assert "\x1b[" not in out
    out = _tail_in_a_terminal(rec.name, env={**env, **os_env}, cols=200)
    assert len(out.replace("\r\n", "\n").rstrip("\n").split("\n")) == 3  # wide enough: one line each


# -- stats --watch -------------------------------------------------------------------------------
PACED_WRITER = textwrap.dedent(
    """
    import sys, time
    from shmdiag import Recorder
    with Recorder.attach(sys.argv[1]) as rec:
        print("ready", flush=True)
        while True:
            for _ in range(10):
                rec.record_message("peer-a", "inv", "inbound", 37)
            rec.record_error("peer-a", "bad checksum", "read")
            time.sleep(0.01)
    """
)


@pytest.fixture
def paced_writer(make_recorder):
    rec = make_recorder(10_000)
    w = subprocess.Popen([sys.executable, "-c", PACED_WRITER, rec.name], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        assert w.stdout.readline() == b"ready\n", w.stderr.read()
        yield rec
    finally:
        w.kill()
        w.wait(timeout=10)
        w.stdout.close()
        w.stderr.close()


@pytest.mark.multiprocess
def test_stats_watch_rates(paced_writer):
    rec = paced_writer
    cp = run_cli("stats", rec.name, "--watch", "0.3", "--count", "3", "--json")
    assert cp.returncode == 0, cp.stderr
    snaps = [orjson.loads(x) for x in cp.stdout.splitlines()]
    assert len(snaps) == 3 and snaps[0]["rates"] is None  # no rate before a second sample
    for a, b in zip(snaps, snaps[1:], strict=False):
        r = b["rates"]
        dt = r["interval_seconds"]
        assert dt > 0
        # Rates are exactly the counters' deltas over the interval measured.
        assert r["events_per_second"] == pytest.approx((b["total_events"] - a["total_events"]) / dt)
        assert r["by_type"]["message"] == pytest.approx(
            (b["events_by_type"]["message"] - a["events_by_type"]["message"]) / dt)
        assert r["by_severity"]["ERROR"] == pytest.approx(
            (b["events_by_severity"]["ERROR"] - a["events_by_severity"]["ERROR"]) / dt)
        assert sum(r["by_severity"].values()) == pytest.approx(r["events_per_second"])
        assert r["by_type"]["message"] > 0 and r["by_severity"]["ERROR"] > 0  # the writer is writing
        assert b["sampled_at"].endswith("Z")

    cp = run_cli("stats", rec.name, "--watch", "0.3", "--count", "2")
    assert cp.returncode == 0, cp.stderr
    blocks = cp.stdout.split("\n\nshmdiag stats ")
    assert len(blocks) == 2 and "\x1b" not in cp.stdout  # piped: no screen clearing
    first, second = blocks
    assert "EV/S" in first and re.search(r"^message\s+\d+\s+-\s", first, re.M)
    assert "(rates over 0.3" in second
    m = re.search(r"^message\s+(\d+)\s+(\S+)\s", second, re.M)
    assert m and float(m.group(2).rstrip("k")) > 0, second
    assert re.search(r"^ERROR\s+\d+\s+\S+\s+\S+%$", second, re.M)


@pytest.mark.multiprocess
def test_stats_watch_until_interrupted_or_the_ring_is_removed(make_recorder, procs):
    rec = make_recorder(100)
    watch = [sys.executable, "-m", "shmdiag", "stats", rec.name, "--watch", "0.2"]
    a = subprocess.Popen(watch, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    b = subprocess.Popen(watch, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.extend([a, b])
    for p in (a, b):
        assert p.stdout.readline().startswith(f"shmdiag stats {rec.name}".encode())
    time.sleep(0.5)
    assert a.poll() is None and b.poll() is None  # they go on until told
    a.send_signal(signal.SIGINT)
    assert a.wait(timeout=20) == 0 and b"Traceback" not in a.stderr.read()
    rec.close()  # the creator unlinks the ring
    assert b.wait(timeout=20) == 0
    assert b"was removed" in b.stderr.read()


def test_stats_watch_bad_input(make_recorder):
    rec = make_recorder(100)
    for args, needle in ((["--watch", "0"], "--watch"), (["--watch", "soon"], "seconds"),
                         (["--count", "2"], "--watch"), (["--watch", "1", "--count", "-1"], "--count")):
        status = 2
        assert_one_error_line(run_cli("stats", rec.name, *args), status, needle)
