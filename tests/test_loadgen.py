"""The load generator: its profile, and small runs in real processes whose report must agree with
what the test itself reads from the ring."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from shmdiag.loadgen import generator as _loadgen
from shmdiag.loadgen import profile as P

ROOT = Path(__file__).resolve().parent.parent
TOOL = [sys.executable, str(ROOT / "tools" / "loadgen.py")]


def _tool(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*TOOL, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _consistent(report: dict) -> None:
    """What every report must say about itself."""
    a = report["accounting"]
    assert report["reconciles"], a
    assert a["recorded"] == a["retained"] + a["overwritten"] + a["lost"] + a["abandoned"] + a["expired"], a
    assert a["in_flight"] == 0
    assert sum(w["events"] for w in report["writers"]) == report["events"] == report["writers_total"]
    assert report["failed_writers"] == 0, report["writers"]


# -- the profile ----------------------------------------------------------------------------------
def test_profile_sizes_within_documented_bounds():
    rng = random.Random(1)
    for t, s in P.SIZES.items():
        assert 0 <= s.lo <= s.hi <= P.MAX_PROTOCOL_MESSAGE_LENGTH, t
        draws = [P.draw_size(t, rng) for _ in range(3000)]
        assert all(s.lo <= d <= s.hi for d in draws), (t, min(draws), max(draws), s)
    # The figures the docstring promises.
    assert P.SIZES["ping"] == P.SIZES["pong"] and P.SIZES["ping"].lo == P.SIZES["ping"].hi == 8
    assert P.SIZES["inv"].lo == 37 and P.SIZES["getdata"].lo == 37  # one entry: 1 + 36
    assert P.SIZES["addr"].hi == 30_003  # 1000 entries: 3 + 30 * 1000
    assert (P.SIZES["version"].lo, P.SIZES["version"].hi) == (102, 126)
    assert (P.SIZES["block"].lo, P.SIZES["block"].hi) == (1_000_000, 2_000_000)
    for t in ("verack", "sendaddrv2", "wtxidrelay"):
        assert P.SIZES[t].hi == 0
    headers = [P.draw_size("headers", rng) for _ in range(3000)]
    assert all((h - 1) % 81 == 0 if h < 253 * 81 else (h - 3) % 81 == 0 for h in headers)
    assert Counter(headers).most_common(1)[0][0] == 82  # mostly one announced header
    tx = sorted(P.draw_size("tx", rng) for _ in range(5000))
    assert 200 <= tx[len(tx) // 2] <= 300 and tx[-1] > 2000  # median ~250, a long tail
    rtts = [P.draw_rtt(rng) for _ in range(2000)]
    assert all(P.RTT_BOUNDS[0] <= r <= P.RTT_BOUNDS[1] for r in rtts)


class _Counting:
    """A stand-in for a Recorder that keeps what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def record_message(self, peer, t, d, size):
        assert d in ("inbound", "outbound") and t in P.SIZES
        assert P.SIZES[t].lo <= size <= P.SIZES[t].hi, (t, size)
        self.calls.append(("message", peer, t))

    def record_peer_connection(self, peer, addr):
        self.calls.append(("connect", peer, addr))

    def record_peer_disconnection(self, peer, addr, reason):
        self.calls.append(("disconnect", peer, reason))

    def record_error(self, peer, err, op):
        self.calls.append(("error", peer, op))

    def record_latency(self, op, seconds, peer_id=""):
        assert op == "ping" and peer_id and seconds > 0
        self.calls.append(("latency", peer_id, seconds))

    def record_event(self, ev):
        self.calls.append(("event", ev.peer_id, ev.event_type))


def test_simulated_mix_errors_are_a_few_percent_and_lifecycles_make_sense():
    fake = _Counting()
    sim = _loadgen.Simulation(fake, 3, 8, random.Random(7), tape_len=20_000)
    n = 0
    for b in range(400):
        n += sim.ping_due(float(b), 1 << 30)  # a second passes per batch: pings come due
        n += sim.steps(256)
    assert n == len(fake.calls)
    kinds = Counter(c[0] for c in fake.calls)
    assert 0.01 <= kinds["error"] / n <= 0.06, kinds
    assert kinds["message"] / n > 0.85 and kinds["latency"] > 100 and kinds["event"] > 0, kinds
    assert 0 < kinds["disconnect"] <= kinds["connect"] <= kinds["disconnect"] + 8
    # Each peer: connect, handshake (version first), traffic, disconnect; never traffic while down.
    up: dict[str, bool] = defaultdict(bool)
    last_connect: dict[str, int] = {}
    for i, (kind, peer, what) in enumerate(fake.calls):
        assert peer.startswith("w3-p")
        if kind == "connect":
            assert not up[peer]
            up[peer], last_connect[peer] = True, i
            assert fake.calls[i + 1][:3] == ("message", peer, "version")
        elif kind == "disconnect":
            assert up[peer]
            up[peer] = False
        elif kind in ("message", "latency", "event"):
            assert up[peer], (i, kind, peer, what)
    # Ending on an exact quota: single() records exactly what it is asked for.
    before = len(fake.calls)
    assert sim.single(5) == 5 and len(fake.calls) == before + 5


# -- runs in real processes -------------------------------------------------------------------------
@pytest.mark.multiprocess
def test_cli_json_reconciles():
    r = _tool("--writers", "2", "--duration", "1", "--seed", "3", "--max-events", "20000", "--json")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and r.stderr == ""  # not a terminal: no progress line
    report = json.loads(r.stdout)
    _consistent(report)
    assert report["created"] and report["capacity"] == 20_000
    assert report["writers_match_ring"] is True and report["ring_recorded_delta"] == report["events"]
    assert report["accounting"]["overwritten"] > 0  # 1 s at full speed laps a 20,000-event ring
    assert report["stats"]["total_events"] == report["accounting"]["recorded"]
    assert report["stats"]["active_peers"] == 0 and report["stats"]["events_by_type"]["peer_disconnected"] > 0
    assert report["health"]["total_events"] == report["accounting"]["recorded"]
    assert len(report["writers"]) == 2 and all(w["status"] == "exited" for w in report["writers"])
    assert all(w["events"] > 0 and w["cpu_s"] > 0 and w["rss_bytes"] > 0 for w in report["writers"])
    assert report["cpu"]["collector"]["pid"] != report["writers"][0]["pid"]
    assert report["settings"]["seed"] == 3
    assert not os.path.exists(f"/dev/shm/{report['ring']}")  # created, so removed at the end


@pytest.mark.multiprocess
def test_run_load_against_the_tests_ring(make_recorder):
    rec = make_recorder(5000)
    report = _loadgen.run_load(ring=rec.name, writers=3, events=7000, seed=11)
    _consistent(report)
    assert not report["created"] and report["events"] == 7000
    # What the test reads itself, now that the writers are gone.
    stats, acct, health = rec.get_stats(), rec.accounting(), rec.health_check()
    assert stats.total_events == acct.recorded == 7000 == report["ring_recorded_delta"]
    a = report["accounting"]
    assert (a["recorded"], a["overwritten"], a["lost"], a["abandoned"], a["expired"]) == (
        acct.recorded, acct.overwritten, acct.lost, acct.abandoned, acct.expired)
    # The ring holds the last 5000 sequence numbers; on a busy machine a writer paused mid-run
    # may leave k of them unused (counted: acct.unused), and then holds k fewer events.
    k = 5000 - a["retained"]
    assert 0 <= k <= acct.unused, (a, acct)
    assert a["retained"] == health.event_count and a["overwritten"] == 2000 + k
    assert report["stats"]["events_by_type"] == stats.events_by_type
    assert report["stats"]["active_peers"] == stats.active_peers == 0  # clean stops disconnect their peers
    assert sum(stats.events_by_type.values()) == 7000
    assert {"message", "peer_connected", "latency"} <= set(stats.events_by_type)
    assert [w["events"] for w in report["writers"]] == [2334, 2333, 2333]  # the total, split evenly
    # Per writer, the ring's count (the test's own get_writers()) equals the writer's.
    ring_by_pid = {i.pid: i.recorded for i in rec.get_writers()}
    assert all(ring_by_pid[w["pid"]] == w["ring_recorded"] == w["events"] for w in report["writers"])
    assert report["ring_per_writer"]["exact"] and report["ring_per_writer"]["sum_equals_delta"]
    # The collector is the ring's creator: this process.
    assert report["cpu"]["collector"]["pid"] == os.getpid()
    # Each peer's events come from one process only, and it is the writer that owns the peer.
    pid_of = {f"w{w['writer']}": w["pid"] for w in report["writers"]}
    seen: dict[str, set[int]] = defaultdict(set)
    for e in rec.get_events(0):
        if e.peer_id:
            seen[e.peer_id].add(e.pid)
    assert seen
    for peer, pids in seen.items():
        assert pids == {pid_of[peer.split("-")[0]]}, (peer, pids)


@pytest.mark.multiprocess
def test_rate_limits_roughly():
    report = _loadgen.run_load(writers=2, duration=1.5, rate=1000, seed=5)
    _consistent(report)
    assert report["writers_match_ring"]
    for w in report["writers"]:
        assert 300 <= w["events"] <= 1000 * w["seconds"] * 1.5 + 200, w  # full speed would be ~1e6/s
        assert w["cpu_pct"] < 85, w  # it sleeps rather than spins (start-up included)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_chaos_kills_and_replaces_writers_and_the_ring_reconciles():
    report = _loadgen.run_load(writers=3, duration=3.0, chaos=0.7, seed=2, max_events=50_000)
    _consistent(report)
    statuses = Counter(w["status"] for w in report["writers"])
    assert report["kills"] >= 1 and statuses["killed"] == report["kills"]
    replaced = {w["replaces"] for w in report["writers"] if "replaces" in w}
    killed = {w["writer"] for w in report["writers"] if w["status"] == "killed"}
    # Every kill is replaced, except one in the last half second (its replacement would start late).
    assert replaced <= killed and len(killed - replaced) <= 1 and replaced
    assert len(report["writers"]) == 3 + len(replaced)
    assert report["writers_match_ring"] is None  # a killed writer cannot report its last events
    assert report["writers_within_bound"], report
    # The ring's own per-process counts say exactly what the killed writers did after their last report.
    pw = report["ring_per_writer"]
    assert pw["exact"] and pw["sum_equals_delta"] and pw["clean_exits_equal"], pw
    assert sum(pw["killed_unreported"]) == report["unreported_by_killed"]
    assert all(k >= 0 for k in pw["killed_unreported"])
    assert 0 <= report["unreported_by_killed"] <= report["unreported_bound"]
    h = report["health"]
    assert h["abandoned"] == report["accounting"]["abandoned"]  # settled, and in the books
    assert h["writers_dead"] >= report["kills"]


@pytest.mark.parametrize("args, code, text", [
    (["--writers", "0"], 2, "--writers must be from 1 to 64"),
    (["--writers", "65"], 2, "--writers must be from 1 to 64"),
    (["--duration", "-1"], 2, "--duration must be a positive number"),
    (["--writers", "2", "--events", "1"], 2, "--events must be an integer of at least"),
    (["--ring", "shmdiag-no-such-ring-for-loadgen", "--duration", "1"], 1, "no shmdiag ring named"),
])
def test_bad_arguments_one_line_no_traceback(args, code, text):
    r = _tool(*args)
    assert r.returncode == code, r.stderr
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and text in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.multiprocess
def test_progress_line_on_a_terminal():
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(TOOL[0], TOOL[1:] + ["--writers", "1", "--duration", "1.5"], cwd=str(ROOT),
                          encoding="utf-8", timeout=60, dimensions=(24, 200))
    child.expect(r"ev/s\s+writers 1/1")
    child.expect(r"\r\x1b\[K")  # cleared before the report
    child.expect("reconciles")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
