"""``shmdiag health`` as a Nagios/Icinga probe, judged over a recent window; ``serve``'s health log.

Real processes throughout: writers killed with SIGKILL, a real ``serve``, the CLI as a user runs
it. Windows are short (1-2 s) and every wait polls against a deadline: nothing asserts a timing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from shmdiag import DiagnosticEvent, Inspector, Recorder, Severity
from shmdiag.core import layout as L
from shmdiag.core.models import HealthStatus
from shmdiag.views import health as H

from helpers import (
    CLI,
    LineReader,
    assert_one_error_line,
    fix_header_crc,
    raw_segment,
    run_cli,
    shm_path,
    unique_name,
    write,
    write_field,
)

# A writer process: attaches, records INFO and ERROR events, says "ready", then either waits to be
# killed or ("steady") keeps recording one INFO event every 20 ms until killed.
WRITER = textwrap.dedent(
    """
    import sys, time
    from shmdiag import DiagnosticEvent, Recorder, Severity
    name, infos, errors, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    rec = Recorder.attach(name)
    for i in range(infos):
        rec.record_event(DiagnosticEvent("progress", str(i), Severity.INFO))
    for i in range(errors):
        rec.record_error("p", "boom", "read")
    print("ready", flush=True)
    while True:
        if mode == "steady":
            rec.record_event(DiagnosticEvent("progress", "tick", Severity.INFO))
            time.sleep(0.02)
        else:
            time.sleep(1)
    """
)


def start_writer(name: str, procs: list, infos: int = 0, errors: int = 0, mode: str = "wait") -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", WRITER, name, str(infos), str(errors), mode],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(p)
    LineReader(p).lines_until(lambda line, _: line == b"ready")
    return p


def kill(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=20)


def health(name: str, *args: str) -> tuple[int, dict]:
    cp = run_cli("health", name, "--json", *args)
    assert cp.returncode in (0, 1, 2), (cp.returncode, cp.stdout, cp.stderr)
    assert cp.stderr == "", cp.stderr
    d = json.loads(cp.stdout)
    assert H.exit_code(d["status"]) == cp.returncode
    return cp.returncode, d


def poll(what: str, fn, timeout: float = 30.0):
    """Call ``fn`` until it returns something truthy; that value. Fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def aged(name: str, seconds: float) -> None:
    """Wait until the ring is older than ``seconds`` (so a window that long is not 'since creation')."""
    with Inspector.attach(name) as ins:
        created = ins.created_ns
    poll("the ring to age", lambda: time.time_ns() - created > seconds * 1e9)


# -- exit codes ----------------------------------------------------------------------------------
@pytest.mark.multiprocess
def test_exit_0_ok_with_the_plugin_line(make_recorder):
    rec = make_recorder(1000)
    write(rec.name, [["event", "progress", "m", 1, "p"]] * 20)
    cp = run_cli("health", rec.name)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    first = cp.stdout.splitlines()[0]
    assert first.startswith("SHMDIAG OK - healthy: 20 events since creation"), first
    assert " | window_error_rate=0.00%;5;20;0;100 window_events=20c" in first
    assert cp.stderr == ""


@pytest.mark.multiprocess
def test_exit_1_warning_for_a_writer_killed_with_sigkill(make_recorder, procs):
    rec = make_recorder(1000)
    p = start_writer(rec.name, procs, infos=30)
    kill(p)
    code, d = health(rec.name)
    assert code == 1 and d["status"] == "warning", d["message"]
    assert [r["condition"] for r in d["reasons"]] == ["writers_died"]
    assert d["window_writers_died"] == 1 and d["writers_dead"] == 1
    assert d["dead_writers"] == [{"pid": p.pid, "total_events": 30, "lost": 0, "abandoned": 0,
                                  "last_event": d["dead_writers"][0]["last_event"], "in_window": True}]
    cp = run_cli("health", rec.name)
    assert cp.returncode == 1
    assert cp.stdout.startswith(f"SHMDIAG WARNING - warning: 1 writer process(es) died without detaching since "
                                f"creation (pid {p.pid})"), cp.stdout


@pytest.mark.multiprocess
def test_exit_2_critical_for_an_error_rate_and_a_killed_collector(ring_name, procs):
    write_ops = [["event", "progress", "m", 1, "p"]] * 5 + [["err", "p", "boom", "read"]] * 5
    serve = subprocess.Popen([*CLI, "serve", ring_name, "--max-events", "500"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    procs.append(serve)
    LineReader(serve).lines_until(lambda line, _: line.startswith(b"shmdiag: "))
    write(ring_name, write_ops)
    code, d = health(ring_name)
    assert (code, d["status"]) == (2, "error"), d["message"]
    assert d["reasons"][0]["condition"] == "error_rate" and d["window_error_rate"] == 0.5
    # A healthy ring whose collector is killed: CRITICAL too.
    write(ring_name, [["event", "progress", "m", 1, "p"]] * 200)
    assert health(ring_name)[0] == 0
    kill(serve)
    code, d = health(ring_name)
    assert (code, d["status"]) == (2, "error")
    assert [r["condition"] for r in d["reasons"]] == ["collector_dead"]
    assert f"collector (pid {serve.pid}) is not running" in d["message"]


def test_exit_2_critical_for_a_closed_recorder(make_recorder):
    rec = make_recorder(10)
    rec.close()
    h = rec.health_check()
    assert h.status == "stopped" and H.exit_code(h.status) == 2
    assert [(r.condition, r.status) for r in h.reasons] == [("stopped", "stopped")]


def _unknown(cp: subprocess.CompletedProcess, *needles: str) -> None:
    line = assert_one_error_line(cp, 3, *needles)
    assert cp.stdout == f"SHMDIAG UNKNOWN - {line.removeprefix('shmdiag: error: ')}\n"
    assert run_cli(*cp.args[3:], "--json").stdout == ""  # JSON: nothing on stdout, the line on stderr


def test_exit_3_unknown_for_no_such_ring():
    name = unique_name("nosuch")
    _unknown(run_cli("health", name), name, "no shmdiag ring")


def test_exit_3_unknown_for_a_foreign_segment(shm_names):
    name = unique_name("foreign")
    shm_names.append(name)
    with open(shm_path(name), "wb") as f:
        f.write(b"\x01" * 10000)
    _unknown(run_cli("health", name), "not a shmdiag ring")
    with open(shm_path(name), "wb") as f:
        f.write(b"tiny")
    _unknown(run_cli("health", name), "not a shmdiag ring")


def test_exit_3_unknown_for_another_layout_version_and_a_corrupt_header(make_recorder):
    rec = make_recorder(100)
    with raw_segment(rec.name) as mm:
        write_field(mm, L.HEADER, "version", 99)
        fix_header_crc(mm)
    _unknown(run_cli("health", rec.name), "layout version 99")
    with raw_segment(rec.name) as mm:
        write_field(mm, L.HEADER, "version", L.VERSION)
        write_field(mm, L.HEADER, "capacity", 7)
    _unknown(run_cli("health", rec.name), "corrupt header")


def test_exit_3_unknown_when_the_ring_cannot_be_opened(make_recorder, monkeypatch, capsys):
    """Permission denied (simulated: the tests may run as root, who may open anything)."""
    from shmdiag.cli import main as _cli
    from shmdiag.core import segment as _segment

    rec = make_recorder(100)

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(_segment._posixshmem, "shm_open", denied)
    assert _cli.main(["health", rec.name]) == 3
    cap = capsys.readouterr()
    assert cap.err == f"shmdiag: error: permission denied opening ring {rec.name!r}\n"
    assert cap.out.startswith("SHMDIAG UNKNOWN - permission denied")


# -- the window ------------------------------------------------------------------------------------
@pytest.mark.multiprocess
def test_a_dead_writer_stops_counting_once_outside_the_window_one_shot(make_recorder, procs):
    """No history (each CLI run is a new process): from the writers' timestamps."""
    rec = make_recorder(1000)
    aged(rec.name, 1.5)
    p = start_writer(rec.name, procs, infos=10, errors=10)
    kill(p)
    code, d = health(rec.name, "--window", "1.5s")
    assert code == 2 and d["window_source"] == "timestamps", d
    assert {r["condition"] for r in d["reasons"]} == {"error_rate", "writers_died"}
    assert d["window"] == 1.5
    # Once the death and the errors are older than the window: OK, the totals still there.
    code, d = poll("health to return to OK", lambda: (r := health(rec.name, "--window", "1.5"))[0] == 0 and r)
    assert d["status"] == "healthy" and d["reasons"] == []
    assert (d["window_total_events"], d["window_writers_died"], d["window_error_rate"]) == (0, 0, 0.0)
    assert (d["total_events"], d["writers_dead"], d["error_rate"], d["errors"]) == (20, 1, 0.5, 10)
    assert d["dead_writers"][0]["pid"] == p.pid and d["dead_writers"][0]["in_window"] is False
    assert "since creation: 20 events" in d["message"] and "1 writer(s) dead" in d["message"]
    # A longer window still sees them.
    assert health(rec.name, "--window", "1h")[0] == 2


@pytest.mark.multiprocess
def test_a_long_lived_inspector_judges_the_window_from_its_history(make_recorder, procs):
    """A writer that errs, then keeps recording INFO: its timestamps cannot split its counts,
    but an Inspector that checks repeatedly has samples older than the window."""
    rec = make_recorder(100_000)
    aged(rec.name, 1.0)
    p = start_writer(rec.name, procs, infos=0, errors=20, mode="steady")
    with Inspector.attach(rec.name) as ins:
        first = ins.health_check(1.0)
        assert first.status == "error" and first.window_source == "timestamps"

        def recovered() -> HealthStatus | None:
            h = ins.health_check(1.0)
            return h if h.status == "healthy" and h.window_source == "history" else None

        h = poll("the inspector's window to pass the errors", recovered)
    assert h.window_errors == 0 and h.window_rated_events > 0 and h.window_covered >= 1.0
    assert h.errors == 20 and h.error_rate > 0  # since creation: still there
    kill(p)


@pytest.mark.multiprocess
def test_one_shot_error_rate_of_a_writer_still_recording_leaves_the_window(make_recorder, procs):
    """The writer's counters cannot be split at the window's start; the retained events can."""
    rec = make_recorder(100_000)
    aged(rec.name, 1.5)
    p = start_writer(rec.name, procs, infos=0, errors=20, mode="steady")
    code, d = health(rec.name, "--window", "1.5")
    assert code == 2 and d["reasons"][0]["condition"] == "error_rate", d["message"]
    code, d = poll("the errors to leave the window", lambda: (r := health(rec.name, "--window", "1.5"))[0] == 0 and r)
    assert d["window_source"] == "timestamps" and d["window_errors"] == 0 and d["window_rated_events"] > 0
    assert d["window_error_rate_covered"] == 1.5
    assert d["errors"] == 20  # since creation
    # The window's writer counters are an upper bound: everything the live writer recorded. Its
    # sample is copied after the books that give total_events, so the writer, still recording,
    # may have added events in between: never fewer.
    assert d["window_total_events"] >= d["total_events"]
    kill(p)


def test_error_rate_over_what_the_ring_retains_when_it_wrapped_within_the_window(make_recorder):
    from shmdiag.core.recent import severities_since

    rec = make_recorder(100)
    for _ in range(50):
        rec.record_error("p", "boom", "read")
    for i in range(300):
        rec.record_event(DiagnosticEvent("progress", str(i), Severity.INFO))
    with Inspector.attach(rec.name) as ins:
        rc = severities_since(ins._seg, ins.created_ns - 10**9)
        assert not rc.complete and rc.by_severity == (0, 100, 0, 0, 0) and rc.from_ns > rc.since_ns
        rc = severities_since(ins._seg, time.time_ns() + 10**9)
        assert rc.complete and rc.by_severity == (0, 0, 0, 0, 0)


@pytest.mark.multiprocess
def test_serve_logs_deaths_and_transitions_and_recovers_after_the_window(ring_name, procs):
    serve = subprocess.Popen([*CLI, "serve", ring_name, "--max-events", "1000", "--health-interval", "0.2",
                              "--window", "1.5", "--stall-after", "0"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    procs.append(serve)
    banner = LineReader(serve).lines_until(lambda line, _: line.startswith(b"  retention"))
    assert b"health check every 0.2s over the last 1.5s" in banner[-1], banner
    log = LineReader(serve, serve.stderr)
    log.lines_until(lambda line, _: b"health: healthy (no events recorded yet)" in line)
    p = start_writer(ring_name, procs, infos=40, errors=1)
    kill(p)
    got = log.lines_until(lambda line, _: b"-> healthy" in line)
    text = [line.decode() for line in got]
    deaths = [x for x in text if f"writer pid {p.pid} died" in x and ": alert " not in x]  # (not the alert's line)
    assert len(deaths) == 1, text
    assert (f"writer pid {p.pid} died without detaching: 41 events recorded, 0 lost, 0 abandoned" in deaths[0]
            and "its last event at 20" in deaths[0]), deaths
    transitions = [x for x in text if " health: " in x]
    assert "health: healthy -> warning (" in transitions[0] and f"(pid {p.pid})" in transitions[0], transitions
    assert "health: warning -> healthy (" in transitions[-1] and "1 writer(s) dead" in transitions[-1], transitions
    # One line per death and per transition: nothing logged twice while nothing changes.
    assert len(transitions) == len({x.split(" ", 2)[2] for x in transitions})
    serve.send_signal(signal.SIGTERM)
    assert serve.wait(timeout=20) == 0


# -- what else is reported ---------------------------------------------------------------------------
@pytest.mark.multiprocess
def test_a_stalled_ring_with_live_writers_is_a_warning(make_recorder, procs):
    rec = make_recorder(1000)
    start_writer(rec.name, procs, infos=5)  # alive, silent from now on
    assert health(rec.name, "--stall-after", "0")[0] == 0
    code, d = poll("the stall", lambda: (r := health(rec.name, "--stall-after", "1"))[0] == 1 and r)
    assert [r["condition"] for r in d["reasons"]] == ["stalled"]
    assert d["idle_seconds"] >= 1 and d["stall_after"] == 1 and d["writers_alive"] == 1
    assert "no event for" in d["message"] and "while 1 writer process(es) are alive" in d["message"]


def test_debug_volume_does_not_move_the_error_rate(make_recorder):
    rec = make_recorder(100_000)
    rec.record_error("p", "boom", "read")
    for i in range(19):
        rec.record_event(DiagnosticEvent("progress", str(i), Severity.INFO))
    for i in range(5000):
        rec.record_message("p", "inv", "inbound", i)  # DEBUG
    code, d = health(rec.name)
    assert code == 1 and d["error_rate"] == 0.05 and d["window_error_rate"] == 0.05, d["message"]
    assert d["error_rate_min_severity"] == "INFO" and (d["errors"], d["rated_events"]) == (1, 20)
    assert "1 errors of 20 events at INFO and above" in d["message"]
    code, d = health(rec.name, "--error-rate-min-severity", "debug")
    assert code == 0 and d["error_rate_min_severity"] == "DEBUG" and d["rated_events"] == 5020
    assert rec.get_stats().error_rate == pytest.approx(1 / 5020)  # stats: over everything, as before


def test_a_full_peer_table_is_a_warning(make_recorder):
    rec = make_recorder(1000, max_peers=2)
    for i in range(3):
        rec.record_peer_connection(f"p{i}", f"10.0.0.{i}:8333")
    h = rec.health_check()
    assert h.status == "warning" and [r.condition for r in h.reasons] == ["peer_table_full"], h.message
    assert h.active_peers == 3 and h.max_peers == 2


# -- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, needle", [
    (["--window", "0"], "--window"),
    (["--window", "-5"], "--window"),
    (["--window", "soon"], "not a duration"),
    (["--window", "nan"], "--window"),
    (["--stall-after", "-1"], "--stall-after"),
    (["--error-rate-min-severity", "loud"], "severity"),
])
def test_health_bad_flags_exit_2_with_one_line(args, needle):
    assert_one_error_line(run_cli("health", "R", *args), 2, needle)


@pytest.mark.parametrize("args, needle", [
    (["--health-interval", "0"], "--health-interval"),
    (["--window", "-1m"], "--window"),
])
def test_serve_bad_health_flags_exit_2_with_one_line(ring_name, args, needle):
    assert_one_error_line(run_cli("serve", ring_name, *args, timeout=30), 2, needle)
    assert not os.path.exists(shm_path(ring_name))


def test_health_check_bad_parameters_raise_precisely(make_recorder):
    rec = make_recorder(10)
    with pytest.raises(ValueError, match="window must be positive"):
        rec.health_check(0)
    with pytest.raises(ValueError, match="window must be positive"):
        rec.health_check(float("inf"))
    with pytest.raises(TypeError, match="window must be a number"):
        rec.health_check("5m")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stall_after must be >= 0"):
        rec.health_check(stall_after=-1)
    with pytest.raises(ValueError, match="error_rate_min_severity"):
        rec.health_check(error_rate_min_severity=9)
    with Inspector.attach(rec.name) as ins:
        with pytest.raises(ValueError, match="error_rate_min_severity"):
            ins.health_check(error_rate_min_severity="loud")
        assert ins.health_check(error_rate_min_severity="warning").error_rate_min_severity == "WARNING"


# -- the pure evaluation (what alert rules build on) -----------------------------------------------
def _sample(t: float, *, recorded=0, lost=0, errors=0, infos=0, dead=False, last: float | None = None,
            created: float = 0.0) -> H.Sample:
    s = 1_000_000_000
    w = H.WriterSample(pid=42, start_time=1, state="dead" if dead else "active", believed=True,
                       recorded=recorded, lost=lost, sev=(0, infos, 0, errors, 0),
                       last_ts=int((t if last is None else last) * s))
    return H.Sample(taken_ns=int(t * s), created_ns=int(created * s), era=0, metrics=True, writers=(w,))


def _base(**kw) -> HealthStatus:
    return HealthStatus(status="", message="", max_events=1000, **kw)


def test_evaluate_from_history_judges_only_the_window():
    policy = H.Policy(window=60, stall_after=0)
    old = _sample(1000, recorded=100, lost=5, errors=50, infos=50)
    now = _sample(1100, recorded=200, errors=50, infos=150, lost=5)
    h = H.evaluate(_base(total_events=200, events_lost=5), now, old, policy)
    assert h.status == "healthy" and h.window_source == "history" and h.window_covered == 100
    assert (h.window_events, h.window_events_lost, h.window_errors, h.window_rated_events) == (100, 0, 0, 100)
    assert h.error_rate == 0.25 and "since creation: 200 events, 5 lost or abandoned" in h.message
    # The same counters with no baseline: the one writer recorded within the window, so all of it counts.
    h = H.evaluate(_base(total_events=200, events_lost=5), now, None, policy)
    assert h.window_source == "timestamps" and h.status == "degraded"  # 50 errors of 200: 25%
    assert [r.condition for r in h.reasons] == ["error_rate", "events_lost"]


@pytest.mark.parametrize("lost, recorded, status", [(1, 1000, "warning"), (10, 1000, "degraded"),
                                                    (100, 1000, "error")])
def test_evaluate_loss_levels(lost, recorded, status):
    now = _sample(500, recorded=recorded, lost=lost, infos=recorded)
    h = H.evaluate(_base(), now, _sample(100), H.Policy(window=60))
    assert h.status == status and h.reasons[0].condition == "events_lost"


def test_evaluate_deaths_from_history_and_from_timestamps():
    before, after = _sample(0, recorded=5, infos=5), _sample(100, recorded=5, infos=5, dead=True, last=0)
    h = H.evaluate(_base(writers_dead=1), after, before, H.Policy(window=60))
    assert h.status == "warning" and h.window_writers_died == 1 and h.dead_writers[0].in_window
    # No history: its last event is older than the window, so it is taken to have died before it.
    h = H.evaluate(_base(writers_dead=1), after, None, H.Policy(window=60))
    assert h.status == "healthy" and h.window_writers_died == 0 and not h.dead_writers[0].in_window


def test_history_keeps_a_bounded_number_of_samples():
    hist = H.History(keep=20)
    for i in range(2000):
        hist.add(_sample(i * 0.5), window=60)
    assert len(hist) <= 25
    base = hist.baseline(int(999.5e9), 60)
    assert base is not None and 999.5 - 60 - 60 / 20 * 2 <= base.taken_ns / 1e9 <= 999.5 - 60
    assert hist.baseline(int(999.5e9), 3600) is None  # nothing that old is kept: timestamps then


def test_recorder_health_check_passes_the_window(make_recorder):
    rec: Recorder = make_recorder(100)
    rec.record_event(DiagnosticEvent("x", severity=Severity.INFO))
    h = rec.health_check(2.5, stall_after=0)
    assert (h.window, h.stall_after, h.window_source) == (2.5, 0.0, "creation")
