"""Seeded fuzz: damaged rings, read through every API call and every inspecting CLI command.

Each case builds a ring (a creator Recorder kept open in this process, sometimes a second
writer shard and some clears), records a mix of events, checks that the undamaged books
balance, then damages the segment by writing bytes into /dev/shm/<name>: live header words,
the CRC-protected static header (with and without a fixed-up CRC), writer shards (counters,
journals of "dead" owners, runs), the peer table, the latency histograms, slots (with and
without a recomputed checksum, including crafted out-of-spec records), random bytes, single
bit flips and truncated or extended copies of the file.

The damaged ring is read only in subprocesses, with timeouts: first one command through a real
``python -m shmdiag`` (rotating over the commands by seed), then a driver (``_DRIVER``) that
attaches with ``Inspector.attach`` (read-only) and ``Recorder.attach`` and calls every read API
(``health_check`` of a Recorder settles dead writers' shards), then runs each CLI command --
stats, health, peers (plain and --json), tail -n, tail -f (stopped with SIGINT), export (json,
ndjson), ls --json and, last, rm, which must refuse -- in a forked child (the ``python -m
shmdiag`` entry point via runpy: a real process, its exit status and output, at a fraction of
an interpreter start). The contract checked:

* API: a clean result within sane bounds, or a ShmDiagError (a refusal), never anything else;
  results agree with each other (get_events(10) is the newest 10 of get_events(0), exports
  hold the same events as get_events, JSON always serialises).
* CLI: exit 0 (health: 0/1/2 matching the status it prints), or exit 1 with exactly one line
  ``shmdiag: error: ...`` on stderr; never a traceback, never "unexpected"; refused exactly
  when the API refuses; outputs agree with the API (tail -n N and get_events(N) show the same
  sequence numbers).

Reproduce one case: ``python -m pytest tests/test_fuzz.py -k 'test_fuzz_damaged_ring[17]'``;
the failure message names the ring, the damage (offsets, fields, old and new bytes) and each
problem. A longer hunt: ``SHMDIAG_FUZZ_SEEDS=600 python -m pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import re
import secrets
import struct
import subprocess
import sys

import numpy as np
import orjson
import pytest

import shmdiag
from shmdiag import DiagnosticEvent, Severity
from shmdiag.core import layout as L  # the one line naming the layout module

pytestmark = pytest.mark.slow  # each case ~1 s, the module about a minute: -m 'not slow' leaves it out

SHM = "/dev/shm"
N_SEEDS = int(os.environ.get("SHMDIAG_FUZZ_SEEDS", "40"))  # more for a longer hunt
DRIVER_TIMEOUT = 60
CLI_TIMEOUT = 20
REFUSALS = ("NotARingError", "CorruptRingError", "LayoutVersionError")
HEALTH_EXIT = {"healthy": 0, "warning": 1, "degraded": 2, "error": 2}
U64 = (1 << 64) - 1
_QUIET = logging.getLogger("shmdiag-fuzz-quiet")  # the rings' own log lines are noise here
_QUIET.disabled = True
EXTREMES = (0, 1, 2, (1 << 48) - 1, 1 << 48, (1 << 63) - 1, 1 << 63, (1 << 64) - 2, U64)


# ------------------------------------------------------------------------------------------
# The reader: one subprocess per case. argv: ring name, output directory.
# ------------------------------------------------------------------------------------------
_DRIVER = r'''
import dataclasses, json, math, os, runpy, signal, sys, time, traceback
from datetime import datetime

import orjson
import shmdiag
from shmdiag import Severity

NAME, OUT = sys.argv[1], sys.argv[2]
CLI_TIMEOUT = float(sys.argv[3])
FOLLOW_FOR = 0.1
U64 = (1 << 64) - 1
problems = []
summary = {"refused": None, "refused_msg": None, "refusals": {}}
J = orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS


def fail(text):
    problems.append(text)


def call(label, fn):
    """fn(), or None after a clean refusal (ShmDiagError) or a problem (anything else)."""
    try:
        return fn()
    except shmdiag.ShmDiagError as e:
        summary["refusals"][label] = f"{type(e).__name__}: {e}"
    except Exception as e:
        fail(f"{label} raised {type(e).__name__}: {e}\n{traceback.format_exc()}")
    return None


def checked(label, fn, *args):
    try:
        fn(*args)
    except AssertionError as e:
        fail(f"{label}: {e}")
    except Exception as e:
        fail(f"{label}: checking it raised {type(e).__name__}: {e}\n{traceback.format_exc()}")


def is_int(v, lo=0, hi=U64):
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def is_num(v, lo=0.0, hi=math.inf):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi


def edict(e):
    """An event as exports render it (the per-event reference the fast export must match)."""
    return orjson.loads(orjson.dumps({
        "schema_version": 1, "kind": "event", "timestamp": e.timestamp, "event_type": e.event_type,
        "peer_id": e.peer_id, "message": e.message,
        "severity": str(e.severity), "metadata": e.metadata, "error": e.error, "pid": e.pid, "seq": e.seq,
        "truncated": e.truncated}, option=orjson.OPT_UTC_Z))


def ts_norm(v):
    if isinstance(v, str) and v.endswith("Z"):
        try:
            return datetime.fromisoformat(v[:-1] + "+00:00")
        except ValueError:
            return v
    return v


def same(a, b, path="event"):
    """None, or where a and b (parsed JSON) differ; floats within 1e-9, timestamps by instant."""
    if isinstance(a, float) or isinstance(b, float):
        if is_num(a, -math.inf) and is_num(b, -math.inf) and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12):
            return None
        return f"{path}: {a!r} != {b!r}"
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            d = same(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = same(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    if path.endswith(".timestamp"):
        a, b = ts_norm(a), ts_norm(b)
    return None if a == b and type(a) is type(b) else f"{path}: {a!r} != {b!r}"


def seqs(evs):
    return [e.seq for e in evs]


# -- sanity of each result -----------------------------------------------------------------
def check_events(evs, cap, limit=0, min_sev=0):
    assert isinstance(evs, list), type(evs)
    assert len(evs) <= cap, f"{len(evs)} events from a ring of {cap}"
    assert limit <= 0 or len(evs) <= limit, f"{len(evs)} events, limit {limit}"
    prev = -1
    for e in evs:
        assert isinstance(e, shmdiag.DiagnosticEvent), type(e)
        assert is_int(e.seq, 0, (1 << 48) - 1), f"seq {e.seq!r}"
        assert e.seq > prev, f"seq {e.seq} after {prev}: not increasing"
        prev = e.seq
        assert isinstance(e.severity, Severity) and e.severity >= min_sev, f"severity {e.severity!r}"
        for f in ("event_type", "message", "peer_id"):
            assert isinstance(getattr(e, f), str), f"{f} {getattr(e, f)!r}"
        assert e.error is None or isinstance(e.error, str), f"error {e.error!r}"
        assert isinstance(e.timestamp, datetime) and e.timestamp.tzinfo is not None, f"timestamp {e.timestamp!r}"
        assert is_int(e.pid, 0, (1 << 32) - 1), f"pid {e.pid!r}"
        assert isinstance(e.truncated, bool)
        edict(e)  # serialisable


def check_stats(s):
    assert isinstance(s, shmdiag.DiagnosticStats), type(s)
    assert is_int(s.total_events), f"total_events {s.total_events!r}"
    assert is_num(s.error_rate, 0.0, 1.0), (f"error_rate {s.error_rate!r} (total {s.total_events}, "
                                            f"by severity {s.events_by_severity})")
    assert is_int(s.active_peers), f"active_peers {s.active_peers!r}"
    assert set(s.events_by_severity) <= set(Severity), s.events_by_severity
    assert all(is_int(v) for v in s.events_by_severity.values()), s.events_by_severity
    assert all(isinstance(k, str) and is_int(v) for k, v in s.events_by_type.items()), s.events_by_type
    for f in ("first_event", "last_event"):
        v = getattr(s, f)
        assert v is None or isinstance(v, datetime), f"{f} {v!r}"
    orjson.dumps(dataclasses.asdict(s), option=J)


def check_accounting(a):
    for f in ("recorded", "overwritten", "lost", "abandoned", "expired", "in_flight"):
        assert is_int(getattr(a, f)), f"{f} {getattr(a, f)!r}"


def check_health(h, cap):
    assert isinstance(h, shmdiag.HealthStatus), type(h)
    assert h.status in ("healthy", "warning", "degraded", "error"), f"status {h.status!r}"
    assert isinstance(h.message, str)
    assert h.max_events == cap, f"max_events {h.max_events} != capacity {cap}"
    assert is_int(h.event_count, 0, cap), f"event_count {h.event_count!r} of {cap}"
    assert is_num(h.error_rate, 0.0, 1.0), f"error_rate {h.error_rate!r}"
    assert is_num(h.uptime, -math.inf), f"uptime {h.uptime!r}"
    for f in ("total_events", "writers_alive", "writers_dead", "events_overwritten", "events_lost",
              "events_abandoned", "events_expired"):
        assert is_int(getattr(h, f)), f"{f} {getattr(h, f)!r}"
    orjson.dumps(dataclasses.asdict(h), option=J)


def check_peer(p):
    assert isinstance(p, shmdiag.PeerDiagnostic), type(p)
    assert isinstance(p.peer_id, str) and isinstance(p.address, str)
    assert p.status in ("connected", "disconnected", "never_connected"), f"status {p.status!r}"
    for f in ("messages_sent", "messages_received", "bytes_sent", "bytes_received", "error_count"):
        assert is_int(getattr(p, f)), f"{p.peer_id!r}.{f} {getattr(p, f)!r}"
    for f in ("bytes_sent_per_msg", "bytes_recv_per_msg"):
        d = getattr(p, f)
        assert all(isinstance(k, str) and is_int(v) for k, v in d.items()), f"{p.peer_id!r}.{f} {d!r}"
    assert p.latency is None or is_num(p.latency), f"{p.peer_id!r}.latency {p.latency!r}"
    for f in ("connected_at", "last_activity"):
        v = getattr(p, f)
        assert v is None or isinstance(v, datetime), f"{f} {v!r}"


def check_network(nd):
    assert isinstance(nd, shmdiag.NetworkDiagnostic), type(nd)
    for p in nd.peer_diagnostics:
        check_peer(p)
    assert nd.total_peers == len(nd.peer_diagnostics), f"total_peers {nd.total_peers} != {len(nd.peer_diagnostics)}"
    assert nd.active_peers + nd.disconnected_peers == nd.total_peers
    assert is_int(nd.untracked_peers) and is_int(nd.untracked_events), (nd.untracked_peers, nd.untracked_events)
    assert nd.network_latency is None or is_num(nd.network_latency), f"network_latency {nd.network_latency!r}"
    orjson.dumps(dataclasses.asdict(nd), option=J)  # what 'shmdiag peers --json' prints


def check_latency(d):
    assert isinstance(d, dict)
    for op, st in d.items():
        assert isinstance(op, str) and isinstance(st, shmdiag.LatencyStats), (op, st)
        assert is_int(st.count) and is_int(st.errors), f"{op!r}: count {st.count!r} errors {st.errors!r}"
        for f in ("mean", "p50", "p90", "p99", "max"):
            assert is_num(getattr(st, f)), f"{op!r}.{f} {getattr(st, f)!r}"
        assert st.p50 <= st.p90 <= st.p99 <= st.max * (1 + 1e-12), f"{op!r}: percentiles out of order {st}"
    orjson.dumps({k: dataclasses.asdict(v) for k, v in d.items()})


def check_writers(ws):
    assert isinstance(ws, list)
    for w in ws:
        assert isinstance(w, shmdiag.WriterInfo), type(w)
        assert is_int(w.pid), f"pid {w.pid!r}"
        assert w.state in ("active", "exited", "dead"), f"state {w.state!r}"
        assert isinstance(w.alive, bool)
        for f in ("recorded", "overwritten", "lost", "abandoned"):
            assert is_int(getattr(w, f)), f"{f} {getattr(w, f)!r}"


def check_export(raw, fmt, want):
    assert isinstance(raw, bytes), type(raw)
    if fmt == "json":
        doc = orjson.loads(raw)
        assert isinstance(doc, dict) and doc.get("name") == NAME, "export head"
        events = doc["events"]
    else:
        lines = raw.split(b"\n")
        assert lines[-1] == b"", "ndjson does not end with a newline"
        events = [orjson.loads(x) for x in lines[:-1]]  # events only: no header line
        assert all(isinstance(e, dict) and e.get("kind") == "event" for e in events), "ndjson: a line is no event"
    d = same(events, want, "export")
    assert d is None, f"{fmt} export differs from get_events(0): {d}"


def check_relations(label, all_, ten, sev3):
    if all_ is not None and ten is not None:
        assert seqs(ten) == seqs(all_)[-10:], (f"{label}: get_events(10) seqs {seqs(ten)} != newest 10 of "
                                               f"get_events(0) {seqs(all_)[-10:]}")
    if all_ is not None and sev3 is not None:
        want = [e.seq for e in all_ if e.severity >= 3][-10:]
        assert seqs(sev3) == want, f"{label}: get_events(10, min_severity=3) seqs {seqs(sev3)} != {want}"


def check_follow_items(items, known, after=-1):
    """Follower output: events in increasing seq order, each retained (get_events(0)), gaps in place."""
    last = after
    for it in items:
        if isinstance(it, shmdiag.DiagnosticEvent):
            assert is_int(it.seq) and it.seq > last, f"seq {it.seq!r} after {last}"
            assert known is None or it.seq in known, f"delivered seq {it.seq}, which get_events(0) does not retain"
            last = it.seq
        else:
            assert it.skipped == it.overwritten + it.unreadable > 0, f"gap {it}"
            assert last < it.first_seq <= it.last_seq, f"gap {it} after seq {last}"
            last = it.last_seq
    return last


def api(obj, who):
    """Every reading call of a Recorder or an Inspector (``who``), with sanity checks."""
    L_ = lambda label: f"{who}.{label}"  # noqa: E731
    cap = obj.config.max_events
    summary["capacity"] = cap
    summary["export_format"] = obj.config.export_format
    created = getattr(obj, "created_ns", None)
    if created is None and hasattr(obj, "_seg"):
        created = obj._seg.created_ns
    summary["creator"] = [obj.creator_pid, created]
    # Before any health_check (a Recorder's settles dead writers' shards).
    all_ = call(L_("get_events(0)"), lambda: obj.get_events(0))
    ten = call(L_("get_events(10)"), lambda: obj.get_events(10))
    sev3 = call(L_("get_events(10, min_severity=3)"), lambda: obj.get_events(10, min_severity=3))
    for label, evs, lim, ms in (("get_events(0)", all_, 0, 0), ("get_events(10)", ten, 10, 0),
                                ("get_events(10, min_severity=3)", sev3, 10, 3)):
        if evs is not None:
            checked(L_(label), check_events, evs, cap, lim, ms)
    checked(L_("get_events"), check_relations, "", all_, ten, sev3)
    known = None if all_ is None else set(seqs(all_))
    if hasattr(obj, "history"):  # the paths of tail -n and tail -f
        got = call(L_("history(10, follow=False)"), lambda: obj.history(10, follow=False))
        if got is not None and ten is not None:
            checked(L_("history(10, follow=False)"), lambda: _eq(seqs(got[0]), seqs(ten), "get_events(10)"))
        got = call(L_("history(10)"), lambda: obj.history(10))
        if got is not None:
            evs, cursor = got
            checked(L_("history(10)"), check_events, evs, cap, 10, 0)
            fol = call(L_(f"follower({cursor})"), lambda: obj.follower(cursor))
            last = evs[-1].seq if evs else -1
            for k in range(2):
                items = None if fol is None else call(L_("follower().poll()"), fol.poll)
                if items is not None:
                    try:
                        last = check_follow_items(items, known, last)
                    except AssertionError as e:
                        fail(f"{L_('follower().poll()')}: {e}")
    got = {}
    for label, fn, chk in (("get_stats()", obj.get_stats, check_stats),
                           ("accounting()", obj.accounting, check_accounting),
                           ("get_writers()", obj.get_writers, check_writers),
                           ("get_latency_stats()", obj.get_latency_stats, check_latency),
                           ("get_network_diagnostic()", obj.get_network_diagnostic, check_network),
                           ("get_peer_diagnostics()", obj.get_peer_diagnostics,
                            lambda ps: [check_peer(p) for p in ps])):
        v = got[label] = call(L_(label), fn)
        if v is not None:
            checked(L_(label), chk, v)
    if "pre" not in summary:  # the ring as found, before anything settled a dead writer
        summary["pre"] = pre = {}
        for key, evs in (("seqs_all", all_), ("seqs10", ten), ("seqs10_sev3", sev3)):
            if evs is not None:
                pre[key] = seqs(evs)
        if got["get_stats()"] is not None:
            pre["total_events"] = got["get_stats()"].total_events
        if got["get_network_diagnostic()"] is not None:
            pre["total_peers"] = got["get_network_diagnostic()"].total_peers
    h = call(L_("health_check()"), obj.health_check)
    if h is not None:
        checked(L_("health_check()"), check_health, h, cap)
        summary["health_status"] = h.status
    # After it: the state the CLI commands will see.
    all_ = call(L_("get_events(0) [after health_check]"), lambda: obj.get_events(0))
    ten = call(L_("get_events(10) [after health_check]"), lambda: obj.get_events(10))
    sev3 = call(L_("get_events(10, 3) [after health_check]"), lambda: obj.get_events(10, min_severity=3))
    checked(L_("get_events"), check_relations, "after health_check", all_, ten, sev3)
    s = call(L_("get_stats() [after health_check]"), obj.get_stats)
    nd = call(L_("get_network_diagnostic() [after health_check]"), obj.get_network_diagnostic)
    if all_ is not None:
        summary["seqs_all"] = seqs(all_)
        want = [edict(e) for e in all_]
        for fmt in ("json", "ndjson"):
            raw = call(L_(f"export_events({fmt!r})"), lambda: obj.export_events(fmt))
            if raw is not None:
                checked(L_(f"export_events({fmt!r})"), check_export, raw, fmt, want)
    if ten is not None:
        summary["seqs10"] = seqs(ten)
    if sev3 is not None:
        summary["seqs10_sev3"] = seqs(sev3)
    if s is not None:
        summary["total_events"] = s.total_events
    if nd is not None:
        summary["total_peers"] = nd.total_peers


def _eq(got, want, what):
    assert got == want, f"seqs {got} != {what} seqs {want}"


# -- the CLI, in forked children -------------------------------------------------------------
def cli(args):
    """Run 'python -m shmdiag ARGS' in a forked child: exit status, stdout, stderr."""
    outp, errp = os.path.join(OUT, "cli.out"), os.path.join(OUT, "cli.err")
    for path in (outp, errp):
        open(path, "wb").close()  # empty before the child starts: the parent watches stdout's size
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            for fd, path in ((1, outp), (2, errp)):
                f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(f, fd)
                os.close(f)
            sys.argv = ["shmdiag", *args]
            try:
                runpy.run_module("shmdiag", run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as e:
                c = e.code
                if c is None:
                    code = 0
                elif isinstance(c, int):
                    code = c
                else:
                    sys.stderr.write(f"{c}\n")
                    code = 1
            except BaseException:
                traceback.print_exc()  # what the interpreter would print
                code = 1
            for s in (sys.stdout, sys.stderr):
                try:
                    s.flush()
                except BaseException:
                    pass
        finally:
            os._exit(code)
    start = time.monotonic()
    deadline = start + CLI_TIMEOUT
    # tail -f: Ctrl-C once it is following (it printed its history; or after a while if it has
    # none), and a few polls later. Not sooner: a Ctrl-C while Python is still starting up
    # prints a KeyboardInterrupt traceback whatever the program does.
    interrupt = start + 2.0 if "-f" in args else None
    while True:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got:
            rc = os.waitstatus_to_exitcode(status)
            break
        now = time.monotonic()
        if interrupt is not None and interrupt > now + FOLLOW_FOR and os.path.getsize(outp):
            interrupt = now + FOLLOW_FOR
        if interrupt is not None and now > interrupt:
            os.kill(pid, signal.SIGINT)
            interrupt = None
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            rc = "timeout"
            break
        time.sleep(0.002)
    with open(outp, "rb") as f:
        out = f.read(200_000).decode("utf-8", "replace")
    with open(errp, "rb") as f:
        err = f.read(20_000).decode("utf-8", "replace")
    return {"argv": list(args), "rc": rc, "out": out, "err": err}


def attach(cls):
    """cls.attach(NAME), or None after a refusal (recorded) or a problem."""
    try:
        return cls.attach(NAME)
    except shmdiag.ShmDiagError as e:
        if summary["refused"] is None:
            summary["refused"], summary["refused_msg"] = type(e).__name__, str(e)
        elif summary["refused"] != type(e).__name__:
            fail(f"{cls.__name__}.attach refused with {type(e).__name__}, another attach with {summary['refused']}")
    except Exception as e:
        fail(f"{cls.__name__}.attach raised {type(e).__name__}, not a ShmDiagError: {e}\n{traceback.format_exc()}")
        summary["attach_crashed"] = f"{type(e).__name__}: {e}"  # not a refusal: the CLI is judged on its own
    return None


def main():
    # The read-only Inspector first (it never writes), then an attached Recorder (whose
    # health_check settles dead writers' shards, as the collector would).
    classes = [c for c in (getattr(shmdiag, "Inspector", None), shmdiag.Recorder) if c is not None]
    for cls in classes:
        obj = attach(cls)
        if obj is not None:
            if summary["refused"] is not None:
                fail(f"{cls.__name__}.attach accepted a ring another attach refused ({summary['refused']})")
            try:
                api(obj, cls.__name__)
            finally:
                call(f"{cls.__name__}.close()", obj.close)
    results = [cli(args) for args in json.loads(os.environ["SHMDIAG_FUZZ_CLI"])]
    with open(os.path.join(OUT, "result.json"), "w") as f:
        json.dump({"summary": summary, "problems": problems, "cli": results}, f)
    for p in problems:
        sys.stderr.write(p.rstrip() + "\n")
    sys.exit(1 if problems else 0)


main()
'''


def _cli_commands(name: str, outdir: str) -> list[list[str]]:
    return [
        ["stats", name], ["stats", name, "--json"],
        ["health", name], ["health", name, "--json"],
        ["peers", name], ["peers", name, "--json"],
        ["tail", name, "-n", "10"], ["tail", name, "-n", "10", "--json"],
        ["tail", name, "-n", "10", "--json", "--min-severity", "error"],
        ["export", name, "-o", os.path.join(outdir, "export.out")],
        ["export", name, "-o", os.path.join(outdir, "export.ndjson"), "--format", "ndjson"],
        ["tail", name, "-f", "-n", "10", "--json"],  # interrupted with SIGINT after a few polls
        ["ls", "--json"],  # (plain ls scans the same rings)
        ["rm", name],  # last: it must refuse (creator alive, or not a good ring), but if it does not...
    ]


def _env() -> dict:
    env = dict(os.environ)
    env.pop("SHMDIAG_DEBUG", None)
    env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = "1"  # the driver forks: keep it single-threaded
    return env


def read_ring(name: str, outdir, real: list[str] | None = None, creator: tuple[int, int] | None = None,
              timeout: float = DRIVER_TIMEOUT) -> tuple[dict, list[str]]:
    """Read ring ``name`` in subprocesses: ``real`` (if given) through a real ``python -m
    shmdiag``, then the API and every CLI command in the driver. ``creator`` is the ring's
    (creator pid, created_ns) before damage: ``rm`` must refuse a ring that still names them.
    Returns the driver's summary and the list of every problem found (empty: the contract held)."""
    outdir = str(outdir)
    cmds = _cli_commands(name, outdir)
    env = _env()
    env["SHMDIAG_FUZZ_CLI"] = json.dumps(cmds)
    problems: list[str] = []
    real_run = None
    if real is not None:
        try:
            q = subprocess.run([sys.executable, "-m", "shmdiag", *real], env=_env(), capture_output=True, text=True,
                               timeout=timeout, errors="replace")
            real_run = {"argv": real, "rc": q.returncode, "out": q.stdout, "err": q.stderr}
        except subprocess.TimeoutExpired:
            real_run = {"argv": real, "rc": "timeout", "out": "", "err": ""}
    try:
        p = subprocess.run([sys.executable, "-c", _DRIVER, name, outdir, str(CLI_TIMEOUT)], env=env,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {}, [f"reader subprocess: no answer within {timeout} s (a hang)",
                    *_real_problems(real_run, name, outdir)]
    try:
        with open(os.path.join(outdir, "result.json")) as f:
            res = json.load(f)
    except (OSError, ValueError):
        return {}, [f"reader subprocess died: exit {p.returncode}, stderr:\n{p.stderr[-4000:]}",
                    *_real_problems(real_run, name, outdir)]
    os.unlink(os.path.join(outdir, "result.json"))
    summary = res["summary"]
    summary["original_creator"] = list(creator) if creator else None
    problems += ["API: " + x for x in res["problems"]]
    if p.returncode not in (0, 1) or (p.returncode == 1) != bool(res["problems"]):
        problems.append(f"reader subprocess: exit {p.returncode}, stderr:\n{p.stderr[-2000:]}")
    for r in res["cli"]:
        problems += check_cli(r, summary, name, outdir)
    # The real command ran first, on the ring as found: judge it by the API's first reads.
    problems += _real_problems(real_run, name, outdir, {**summary, **summary.get("pre", {})})
    return summary, problems


def _real_problems(run: dict | None, name: str, outdir: str, summary: dict | None = None) -> list[str]:
    """check_cli for the real ``python -m shmdiag`` run; if the driver died, without the API's
    view (any clean refusal is then fine)."""
    if run is None:
        return []
    if summary is None:
        summary = {"refused": None, "refusals": {"?": "the reader died: either outcome is clean"}}
        if run["argv"][0] in ("ls", "rm"):
            return []
    return [x.replace("CLI shmdiag", "CLI (python -m) shmdiag", 1) for x in check_cli(run, summary, name, outdir)]


_EXPORT_NOTE = re.compile(r"shmdiag: \d+ events were overwritten by writers while exporting, or failed validation, "
                          r"and are not in the export\n")


def check_cli(r: dict, summary: dict, name: str, outdir: str) -> list[str]:
    """Problems with one CLI run, judged against the API's view of the same ring."""
    argv, rc, out, err = r["argv"], r["rc"], r["out"], r["err"]
    cmd = argv[0]
    label = "CLI shmdiag " + " ".join(a if not a.startswith(outdir) else os.path.basename(a) for a in argv)
    if rc == "timeout":
        return [f"{label}: no answer before its timeout (a hang)"]
    probs = []
    lines = err.splitlines()
    if isinstance(rc, int) and rc < 0:
        probs.append(f"{label}: killed by signal {-rc}")
    if "Traceback" in err:
        probs.append(f"{label}: traceback on stderr:\n{err[-3000:]}")
    if "unexpected" in err:
        probs.append(f"{label}: exit {rc}, 'unexpected' error: {err.strip()[:500]}")
    if probs:
        return probs
    refused_api = summary.get("refused") is not None
    refused_any = refused_api or bool(summary.get("refusals"))
    if cmd == "ls":
        if rc != 0 or err:
            return [f"{label}: exit {rc}, stderr {err.strip()[:500]!r}"]
        if "--json" in argv:
            try:
                rows = json.loads(out)["rings"]
            except (ValueError, KeyError, TypeError) as e:
                return [f"{label}: output is not JSON ({e})"]
            mine = [x for x in rows if x.get("name") == name]
            listed = bool(mine) and mine[0].get("capacity") == summary.get("capacity") and not mine[0]["note"]
            if not refused_api and not listed:
                probs.append(f"{label}: the ring the API read is listed as {mine}")
        return probs
    if cmd == "rm":
        if rc == 1 and len(lines) == 1 and lines[0].startswith("shmdiag: error: "):
            return []
        mine = summary.get("original_creator")
        stale = not refused_api and mine is not None and summary.get("creator") != mine
        if rc == 0 and stale:
            return []  # the damage named another creator: removing a stale ring is right
        return [f"{label}: exit {rc}, stdout {out.strip()[:200]!r}, stderr {err.strip()[:300]!r}: it must refuse "
                f"({'its creator is alive' if not refused_api else summary['refused']})"]
    health_ok = cmd == "health" and rc in (1, 2) and not err
    follow = cmd == "tail" and "-f" in argv
    if rc == 0 and cmd == "export" and _EXPORT_NOTE.fullmatch(err):
        err = ""  # the one thing export may say on success (see the report about what it means here)
    if follow and rc == 130 and not err:
        return []  # interrupted before it was following: nothing to judge
    if rc == 0 or health_ok:
        if err:
            probs.append(f"{label}: exit {rc} with stderr {err.strip()[:500]!r}")
        if refused_api:
            probs.append(f"{label}: exit {rc} on a ring the API refused ({summary['refused']})")
        elif not refused_any:
            probs += _check_output(label, cmd, argv, rc, out, summary, outdir)
    elif rc == (3 if cmd == "health" else 1) and len(lines) == 1 and lines[0].startswith("shmdiag: error: "):
        if not refused_any:  # (health is a probe: a ring it cannot read is UNKNOWN, 3)
            probs.append(f"{label}: refused ({lines[0]!r}) a ring the API read without refusal")
    else:
        probs.append(f"{label}: exit {rc}, stderr {err.strip()[:1000]!r} "
                     "(want 0, or 1 (health: 3) and one 'shmdiag: error:' line)")
    return probs


def _check_output(label: str, cmd: str, argv: list[str], rc: int, out: str, summary: dict, outdir: str) -> list[str]:
    """What a successful command printed, against the API's answers (read just before)."""
    js = "--json" in argv
    try:
        if cmd == "stats" and js:
            d = json.loads(out)
            if "total_events" in summary and d["total_events"] != summary["total_events"]:
                return [f"{label}: total_events {d['total_events']} != API's {summary['total_events']}"]
        elif cmd == "health":
            if js:
                st = json.loads(out)["status"]
            else:
                st = out.split(" - ", 1)[-1].split(":", 1)[0]  # SHMDIAG <STATE> - <status>: ...
            if HEALTH_EXIT.get(st) != rc:
                return [f"{label}: status {st!r} with exit {rc}"]
        elif cmd == "peers" and js:
            d = json.loads(out)
            if "total_peers" in summary and d["total_peers"] != summary["total_peers"]:
                return [f"{label}: total_peers {d['total_peers']} != API's {summary['total_peers']}"]
        elif cmd == "tail" and "-f" in argv:
            return _check_follow(label, out, summary)
        elif cmd == "tail":
            key = "seqs10_sev3" if "--min-severity" in argv else "seqs10"
            if key not in summary:
                return []
            want = summary[key]
            if js:
                got = [json.loads(x)["seq"] for x in out.splitlines()]
                if got != want:
                    api = "get_events(10, min_severity=3)" if key == "seqs10_sev3" else "get_events(10)"
                    return [f"{label}: seqs {got} != {api} seqs {want}"]
            elif len(out.splitlines()) != len(want):
                return [f"{label}: {len(out.splitlines())} lines != {len(want)} events of get_events(10)"]
        elif cmd == "export":
            path = argv[argv.index("-o") + 1]
            with open(path, "rb") as f:
                raw = f.read()
            os.unlink(path)
            fmt = argv[argv.index("--format") + 1] if "--format" in argv else summary.get("export_format", "json")
            if fmt == "json":
                got = [e["seq"] for e in orjson.loads(raw)["events"]]
            else:
                got = [orjson.loads(x)["seq"] for x in raw.splitlines()]
            if "seqs_all" in summary and got != summary["seqs_all"]:
                return [f"{label}: {len(got)} events {got[:5]}... != get_events(0)'s {len(summary['seqs_all'])} "
                        f"{summary['seqs_all'][:5]}..."]
        elif not out.strip() and cmd != "tail":
            return [f"{label}: printed nothing"]
    except (ValueError, KeyError, TypeError, OSError) as e:
        return [f"{label}: unreadable output ({type(e).__name__}: {e}): {out[:300]!r}"]
    return []


def _check_follow(label: str, out: str, summary: dict) -> list[str]:
    """tail -f --json: events in increasing sequence order, gap lines in their places, every
    event one the API retains."""
    last, known = -1, set(summary.get("seqs_all", ()))
    for line in out.splitlines():
        d = json.loads(line)
        if d["kind"] == "gap":
            ok = d["skipped"] == d["overwritten"] + d["unreadable"] > 0 and last < d["first_seq"] <= d["last_seq"]
            if not ok:
                return [f"{label}: bad gap line {line} after seq {last}"]
            last = d["last_seq"]
            continue
        if d["seq"] <= last:
            return [f"{label}: seq {d['seq']} after {last}"]
        if "seqs_all" in summary and d["seq"] not in known:
            return [f"{label}: delivered seq {d['seq']}, which get_events(0) does not retain"]
        last = d["seq"]
    return []


# ------------------------------------------------------------------------------------------
# Building rings
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Ring:
    name: str
    path: str
    creator: shmdiag.Recorder
    desc: str
    recorded: int  # events recorded since the last clear

    @property
    def creator_id(self) -> tuple[int, int]:
        hdr = np.frombuffer(_read(self.path, 0, L.HEADER_SIZE), L.HEADER, 1)[0]
        return self.creator.creator_pid, int(hdr["created_ns"])


@pytest.fixture
def rings():
    """Factory of rings (creator kept open, so the segment stays); closes everything after,
    and removes any copies made for truncation."""
    recs: list[shmdiag.Recorder] = []
    paths: list[str] = []

    def make(seed: int, rng: random.Random, **kw) -> Ring:
        return _build(seed, rng, recs, **kw)

    make.paths = paths
    yield make
    for p in paths:
        _unlink(p)
    for r in reversed(recs):
        r.close()


def _read(path: str, off: int, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(n)


def _unlink(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def _name(tag: str) -> str:
    return f"shmdiag-fuzz-{os.getpid()}-{tag}-{secrets.token_hex(3)}"


_MSG_TYPES = ("version", "verack", "ping", "pong", "inv", "getdata", "tx", "block", "headers", "addr",
              "sendcmpct", "a-message-type-name-longer-than-16")
_OPS = ("ping", "pong", "handshake", "getheaders", "validate", "op-\u00e9\u00e8-\"quoted\"")
_TEXTS = ("plain", "", "quote \" and backslash \\", "tab\tnew\nline", "\u00fcnic\u00f8de \u2603 \U0001F600",
          "x" * 150, "\x00nul\x1b[31m", "\u65e5\u672c\u8a9e" * 20)


def _build(seed: int, rng: random.Random, recs: list, *, cap: int | None = None, n_events: int | None = None,
           clears: int | None = None, second_writer: bool | None = None) -> Ring:
    cap = cap or rng.choice((64, 100, 257, 1000, 2048, 5000))
    name = _name(str(seed))
    variant = rng.random()
    if variant < 0.7:
        creator = _no_collector(shmdiag.Recorder, max_events=cap, logger=_QUIET, name=name)
        how = "Recorder"
    else:  # the other header flags and table sizes
        cfg = shmdiag.RecorderConfig(max_events=cap, name=name, enable_metrics=rng.random() < 0.5,
                                     max_peers=rng.choice((0, 1, 4, 64)), max_writers=rng.choice((1, 2, 8)),
                                     export_format=rng.choice(("json", "ndjson")), log_level="critical")
        creator = _no_collector(shmdiag.Recorder.with_config, cfg, _QUIET)
        how = f"with_config(metrics={cfg.enable_metrics}, max_peers={cfg.max_peers}, max_writers={cfg.max_writers}, " \
              f"export_format={cfg.export_format})"
    recs.append(creator)
    writers = [creator]
    creator.record_peer_connection("peer-0", "198.51.100.1:8333")  # the creator takes its shard first
    recorded = 1
    if (second_writer if second_writer is not None else rng.random() < 0.3) and creator.config.max_writers > 1:
        other = shmdiag.Recorder.attach(name, _QUIET)  # a second shard (same pid)
        recs.insert(0, other)
        writers.append(other)
    n_events = n_events if n_events is not None else rng.choice((3, 12, cap // 2, cap - 1, cap + 5, 2 * cap + 7))
    n_events = min(n_events, 6000)
    clears = clears if clears is not None else rng.choice((0, 0, 0, 0, 0, 1, 2))
    clear_at = sorted(rng.randrange(n_events + 1) for _ in range(clears))
    peers = [f"peer-{i}" for i in range(rng.randint(1, 9))] + ["\u00fc-peer \"q\""]
    for k in range(n_events + 1):
        while clear_at and clear_at[0] == k:
            clear_at.pop(0)
            creator.clear_events()
            recorded = 0
        if k == n_events:
            break
        _record_one(rng, rng.choice(writers), rng.choice(peers), k)
        recorded += 1
    if len(writers) > 1 and rng.random() < 0.5:
        writers[1].close()  # an exited shard
    desc = (f"{how} cap={cap} events={n_events} clears={clears} writers={len(writers)} "
            f"peers={len(peers)} name={name}")
    ring = Ring(name, os.path.join(SHM, name), creator, desc, recorded)
    _check_books(ring)
    return ring


def _no_collector(make, *args, **kw) -> shmdiag.Recorder:
    """A creating Recorder without its background collector: nothing in this process reads the
    ring once it is damaged (only the subprocesses do)."""
    try:
        return make(*args, collector=False, **kw)
    except TypeError:  # a shmdiag whose creator runs no collector thread, or cannot be told not to
        rec = make(*args, **kw)
        stop = getattr(rec, "_stop", None)
        if stop is not None:
            stop.set()
        return rec


def _record_one(rng: random.Random, w: shmdiag.Recorder, peer: str, k: int) -> None:
    r = rng.random()
    if r < 0.08:
        w.record_peer_connection(peer, f"203.0.113.{k % 256}:8333")
    elif r < 0.12:
        w.record_peer_disconnection(peer, f"203.0.113.{k % 256}:8333", rng.choice(_TEXTS))
    elif r < 0.55:
        w.record_message(peer, rng.choice(_MSG_TYPES), rng.choice(("inbound", "outbound")),
                         rng.choice((0, 8, 37, 250, 30_003, 1_500_000, 2**40)))
    elif r < 0.62:
        w.record_error(rng.choice((peer, "")), TimeoutError(rng.choice(_TEXTS) or "timeout"), rng.choice(_OPS))
    elif r < 0.78:
        w.record_latency(rng.choice(_OPS), rng.choice((0.0, 1e-9, 0.042, 1.5, 3600.0)), peer_id=rng.choice((peer, "")))
    elif r < 0.82:
        try:
            with w.span(rng.choice(_OPS), peer_id=peer):
                if rng.random() < 0.5:
                    raise ValueError(rng.choice(_TEXTS))
        except ValueError:
            pass
    else:
        meta = rng.choice((None, {"height": k, "ms": 41}, {"nested": {"a": [1, 2, None]}, "s": rng.choice(_TEXTS)},
                           {f"k{i}": "v" * 30 for i in range(8)}, {"big": 2**63, "neg": -(2**63), "f": 1.5e300}))
        w.record_event(DiagnosticEvent(
            rng.choice(("block_validated", "custom", "\u00e9v\u00e9nement", "t" * 40)), rng.choice(_TEXTS),
            Severity(rng.randrange(5)), peer_id=rng.choice((peer, "")), metadata=meta,
            error=rng.choice((None, None, "boom", "\u2603" * 40))))


def _check_books(ring: Ring) -> None:
    """Before any damage, the ring must add up (read in this process: it is intact)."""
    rec = ring.creator
    acct = rec.accounting()
    h = rec.health_check()
    evs = rec.get_events(0)
    parts = (h.event_count, acct.overwritten, acct.lost, acct.abandoned, acct.expired)
    assert acct.recorded == ring.recorded == sum(parts), (
        f"intact ring does not add up before damage ({ring.desc}): recorded {acct.recorded}, events recorded "
        f"since the last clear {ring.recorded}, retained/overwritten/lost/abandoned/expired {parts}")
    assert len(evs) == h.event_count <= ring.recorded, (len(evs), h.event_count, ring.recorded)


# ------------------------------------------------------------------------------------------
# Damaging rings
# ------------------------------------------------------------------------------------------
class Damager:
    """Writes into /dev/shm/<name> and logs every write (offset, what, old -> new bytes)."""

    def __init__(self, ring: Ring, rng: random.Random) -> None:
        self.ring, self.rng, self.path = ring, rng, ring.path
        self.log: list[str] = []
        self.static_changed = False  # bytes of the CRC-protected part changed and the CRC not fixed
        self.fixed_crc = False
        with open(self.path, "rb") as f:
            self.hdr = np.frombuffer(f.read(L.HEADER_SIZE), dtype=L.HEADER, count=1)[0].copy()
        self.size = os.path.getsize(self.path)
        self.cap = int(self.hdr["capacity"])
        self.max_shards, self.max_peers = int(self.hdr["max_shards"]), int(self.hdr["max_peers"])
        self.off = {k: int(self.hdr[k]) for k in ("shards_off", "peers_off", "ops_off", "slots_off")}
        self.off["pindex_off"] = L.pindex_offset(self.hdr)
        self.head = int(self.hdr["head"])

    # -- raw access --------------------------------------------------------------------------
    def read(self, off: int, n: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(off)
            return f.read(n)

    def write(self, off: int, data: bytes, what: str) -> None:
        old = self.read(off, len(data))
        with open(self.path, "r+b") as f:
            f.seek(off)
            f.write(data)
        if old != data:
            if off < L.HEADER_STATIC_SIZE + 4:
                self.static_changed = True
            self.log.append(f"@{off} {what}: {_hx(old)} -> {_hx(data)}")

    def fix_crc(self) -> None:
        crc = L.header_crc(self.read(0, L.HEADER_STATIC_SIZE))
        off = L.HEADER.fields["header_crc"][1]
        self.write(off, struct.pack("<I", crc), "header_crc (fixed up)")
        self.static_changed, self.fixed_crc = False, True

    # -- values ------------------------------------------------------------------------------
    def value(self, dt: np.dtype, old: bytes) -> bytes:
        rng = self.rng
        n = dt.itemsize
        if dt.kind == "S":
            return rng.choice((
                lambda: bytes(rng.randrange(256) for _ in range(n)),
                lambda: b"\xff\xfe" * (n // 2) + b"\xc3" * (n % 2),
                lambda: (b'"\\\n\x00\x1b' * n)[:n],
                lambda: b"A" * n,
                lambda: b"\x00" * n,
                lambda: _flip(rng, old),
            ))()
        if dt.kind == "f":
            return struct.pack("<d", rng.choice((math.nan, math.inf, -math.inf, 0.0, -1.0, 5e-324, 1e308,
                                                 rng.uniform(-1e9, 1e9))))
        bits = 8 * n
        mask = (1 << bits) - 1
        o = int.from_bytes(old, "little")
        if n == 8:
            cands = (*EXTREMES, rng.getrandbits(64), o + 1, o - 1, o * 2, o | (1 << 47), o + self.cap,
                     o ^ (1 << rng.randrange(64)), o + (1 << 48))
        elif n == 4:
            cands = (0, 1, 2, 1 << 31, mask, rng.getrandbits(32), o + 1, o ^ (1 << rng.randrange(32)))
        elif n == 2:
            cands = (0, 1, mask, rng.getrandbits(16))
        else:
            cands = (0, 1, 5, 6, 7, 32, 33, 64, 65, 72, 73, 196, 197, 255, rng.getrandbits(8))
        return (rng.choice(cands) & mask).to_bytes(n, "little")

    def field(self, dtype: np.dtype, base: int, what: str, only: tuple[str, ...] | None = None,
              index_hint: list[int] | None = None) -> None:
        """Damage one leaf field (one element of an array field) of a struct at ``base``."""
        leaves = [x for x in _leaves(dtype) if only is None or x[0].split("[")[0] in only]
        path, off, dt, count = self.rng.choice(leaves)
        i = self.rng.choice(index_hint) if index_hint and count > 1 and self.rng.random() < 0.7 else \
            self.rng.randrange(count)
        at = base + off + i * dt.itemsize
        self.write(at, self.value(dt, self.read(at, dt.itemsize)), f"{what}.{path}" + (f"[{i}]" if count > 1 else ""))

    # -- categories ----------------------------------------------------------------------------
    def header_live(self) -> None:
        rng = self.rng
        which = rng.choice(("head", "head", "head_gen", "base_of", "base_of", "peers_untracked",
                            "peer_events_untracked", "peers_used", "clear_lock", "msg_state", "msg_name"))
        if which == "head_gen":  # another clear generation (8 and 9 index base_of[8], base_of[9])
            gen = rng.choice((1, 2, 8, 9, 15, 16, 17, (1 << 16) - 1))
            v = (gen << L.SEQ_BITS) | (self.head & L.SEQ_MASK)
            self.write(L.HEADER.fields["head"][1], struct.pack("<Q", v), f"head (generation {gen})")
        elif which == "base_of":
            gen = self.head >> L.SEQ_BITS
            i = rng.choice((gen % L.BASE_SLOTS, gen % L.BASE_SLOTS, rng.randrange(L.BASE_SLOTS)))
            at = L.HEADER.fields["base_of"][1] + 8 * i
            self.write(at, self.value(np.dtype("<u8"), self.read(at, 8)), f"base_of[{i}] (current generation {gen})")
        elif which in ("msg_state", "msg_name"):
            self.field(L.HEADER, 0, "header", only=(which,), index_hint=list(range(8)))
        else:
            at = L.HEADER.fields[which][1]
            self.write(at, self.value(np.dtype("<u8"), self.read(at, 8)), which)

    def header_static(self) -> None:
        static = tuple(n for n in L.HEADER.names if L.HEADER.fields[n][1] < L.HEADER_STATIC_SIZE)
        self.field(L.HEADER, 0, "header", only=static)
        if self.rng.random() < 0.6:
            self.fix_crc()

    def shard(self) -> None:
        rng, off = self.rng, self.off["shards_off"]
        shards = np.frombuffer(self.read(off, self.max_shards * L.SHARD.itemsize), dtype=L.SHARD)
        used = [i for i in range(self.max_shards) if int(shards[i]["owner"]) & 0xFF]
        i = rng.choice(used) if used and rng.random() < 0.85 else rng.randrange(self.max_shards)
        base = off + i * L.SHARD.itemsize
        for _ in range(rng.choice((1, 1, 2, 4))):
            self.field(L.SHARD, base, f"shard[{i}]", index_hint=list(range(8)))

    def dead_owner(self) -> None:
        """A writer that died inside a record: a dead owner and a journal, for health_check to settle."""
        rng, off = self.rng, self.off["shards_off"]
        owners = np.frombuffer(self.read(off, self.max_shards * L.SHARD.itemsize), dtype=L.SHARD)["owner"]
        used = [k for k in range(self.max_shards) if int(owners[k]) & 0xFF]
        i = rng.choice(used) if used and rng.random() < 0.85 else rng.randrange(self.max_shards)
        base = off + i * L.SHARD.itemsize
        pid = rng.choice((0, 1, 4194305, 1 << 31, (1 << 56) - 1))
        self.write(base + L.SHARD.fields["owner"][1], struct.pack("<Q", ((pid << 8) | L.SH_ACTIVE) & U64),
                   f"shard[{i}].owner (dead pid {pid}, ACTIVE)")
        head = self.head & L.SEQ_MASK
        seq = rng.choice((max(head - 1, 0), max(head - 1, 0), max(head - 2, 0), rng.randrange(max(head, 1)),
                          head, head + 5, (1 << 48) - 2, rng.getrandbits(61)))
        phase = rng.randrange(4)
        self.write(base + L.SHARD.fields["journal"][1], struct.pack("<Q", L.j_make(seq, phase) & U64),
                   f"shard[{i}].journal (seq {seq}, phase {phase})")
        for f in rng.sample(("jmeta", "jts", "jprev", "jbefore", "base", "start_time", "recorded", "sev"),
                            rng.choice((0, 1, 2, 3))):
            self.field(L.SHARD, base, f"shard[{i}]", only=(f,))
        if rng.random() < 0.6:  # a counter the settling reaper adds one to, at its limit
            f = rng.choice(("recorded", "recorded", "abandoned", "sev", "type_count", "jbefore"))
            k = rng.randrange(L.SHARD.fields[f][0].shape[0]) if L.SHARD.fields[f][0].shape else 0
            at = base + L.SHARD.fields[f][1] + 8 * k
            what = f"shard[{i}].{f}" + (f"[{k}]" if L.SHARD.fields[f][0].shape else "")
            self.write(at, struct.pack("<Q", rng.choice((U64, U64, U64 - 1, 1 << 63))), f"{what} near 2**64")
        if rng.random() < 0.5:  # its record left busy in its slot, as a writer killed mid-record leaves it
            sev = rng.randrange(8)
            slot = seq % self.cap
            self.write(self.off["slots_off"] + slot * L.SLOT_SIZE,
                       struct.pack("<Q", L.w_make(seq, sev, L.ST_BUSY) & U64), f"slot[{slot}].w (busy, seq {seq})")

    def peer(self) -> None:
        rng, off, n = self.rng, self.off["peers_off"], L.PEER_TABLE_FACTOR * self.max_peers
        if n == 0:
            return self.random_bytes()
        xoff = self.off["pindex_off"]
        ks = np.frombuffer(self.read(xoff, n * L.PEER_INDEX.itemsize), dtype=L.PEER_INDEX)["key_state"]
        used = np.flatnonzero((ks & 3) == 2).tolist()
        i = rng.choice(used) if used and rng.random() < 0.85 else rng.randrange(n)
        base, xbase = off + i * L.PEER.itemsize, xoff + i * L.PEER_INDEX.itemsize
        if i not in used and rng.random() < 0.7:  # make an empty entry look published
            self.write(xbase, struct.pack("<Q", (rng.getrandbits(40) << 2) | 2), f"peer[{i}].key_state (ready)")
        names = np.frombuffer(self.read(0, L.HEADER_SIZE), dtype=L.HEADER, count=1)[0]["msg_state"]
        hint = np.flatnonzero(names).tolist() + [L.MSG_TYPES - 1]
        r = rng.random()
        if r < 0.2:  # several per-message byte counts at once, named or not (unnamed ones share *other*)
            f = rng.choice(("bytes_sent_per_msg", "bytes_recv_per_msg"))
            for j in rng.sample(range(L.MSG_TYPES), 3):
                at = base + L.PEER.fields[f][1] + 8 * j
                self.write(at, struct.pack("<Q", rng.choice((U64, 1 << 63, U64 - 1))), f"peer[{i}].{f}[{j}]")
            return
        if r < 0.3 and len(used) > 1:  # two entries with one key (racing inserts leave that; merged on read)
            j = rng.choice([u for u in used if u != i])
            src, xsrc = off + j * L.PEER.itemsize, xoff + j * L.PEER_INDEX.itemsize
            self.write(xbase, self.read(xsrc, 8), f"peer[{i}].key_state = peer[{j}]'s")
            for f in ("key_len", "key"):
                sz = L.PEER.fields[f][0].itemsize
                self.write(base + L.PEER.fields[f][1], self.read(src + L.PEER.fields[f][1], sz),
                           f"peer[{i}].{f} = peer[{j}]'s")
        for _ in range(rng.choice((1, 1, 2, 3))):
            if rng.random() < 0.25:
                self.field(L.PEER_INDEX, xbase, f"peer_index[{i}]")
            else:
                self.field(L.PEER, base, f"peer[{i}]", index_hint=hint)

    def op(self) -> None:
        rng, off = self.rng, self.off["ops_off"]
        st = np.frombuffer(self.read(off, L.OP_SLOTS * L.OP.itemsize), dtype=L.OP)
        used = np.flatnonzero((st["name_state"] & 3) == 2).tolist()
        i = rng.choice(used) if used and rng.random() < 0.8 else rng.choice((L.OP_SLOTS - 1, rng.randrange(L.OP_SLOTS)))
        base = off + i * L.OP.itemsize
        bank = (self.head >> L.SEQ_BITS) & 1
        bank_off = base + L.OP.fields["banks"][1] + bank * L.OP_BANK.itemsize
        nz = np.flatnonzero(st[i]["banks"][bank]["buckets"]).tolist()
        for _ in range(rng.choice((1, 2, 3))):
            if rng.random() < 0.8:
                self.field(L.OP_BANK, bank_off, f"op[{i}].banks[{bank}]", index_hint=nz + [0, 1, L.OP_BUCKETS - 1])
            else:
                self.field(L.OP, base, f"op[{i}]", only=("name_state", "name"))

    def _slots(self) -> tuple[np.ndarray, list[int]]:
        s = np.frombuffer(self.read(self.off["slots_off"], self.cap * L.SLOT_SIZE), dtype=L.SLOT)
        live = np.flatnonzero(s["w"] != 0)
        live = live[np.argsort(L.w_seq(s["w"][live]))].tolist()
        return s, live

    def _pick_slot(self) -> int:
        _, live = self._slots()
        if not live:
            return self.rng.randrange(self.cap)
        return self.rng.choice((live[-1], live[-1], live[0], self.rng.choice(live), self.rng.randrange(self.cap)))

    def slot(self) -> None:
        """Damage a record; its checksum is left as it was, so the record must be skipped."""
        i = self._pick_slot()
        base = self.off["slots_off"] + i * L.SLOT_SIZE
        if self.rng.random() < 0.3:
            self.slot_word(i, base)
        else:
            self.field(L.SLOT, base, f"slot[{i}]", only=tuple(n for n in L.SLOT.names if n != "w"))

    def slot_word(self, i: int, base: int) -> None:
        rng = self.rng
        w = struct.unpack("<Q", self.read(base, 8))[0]
        seq, sev = (int(L.w_seq(w)), int(L.w_severity(w))) if w else (i, 1)
        v = rng.choice((
            L.w_make(seq + self.cap, sev, L.ST_COMMITTED),          # a lap later: same slot, checksum blind to it
            L.w_make(seq + self.cap * rng.randint(2, 5), sev, L.ST_COMMITTED),
            L.w_make(max(seq - self.cap, 0), sev, L.ST_COMMITTED),
            L.w_make(seq, (sev + 1) % 8, L.ST_COMMITTED),
            L.w_make(seq, rng.choice((5, 6, 7)), L.ST_COMMITTED),
            L.w_make(seq, sev, rng.choice((L.ST_BUSY, L.ST_DELETED, 3))),
            L.w_make((1 << 48) - 1 - (((1 << 48) - 1 - i) % self.cap), sev, L.ST_COMMITTED),
            rng.choice(EXTREMES), rng.getrandbits(64)))
        self.write(base, struct.pack("<Q", v & U64), f"slot[{i}].w (was seq {seq} sev {sev})")

    def slot_crafted(self) -> None:
        """Rewrite a record's payload and recompute its checksum: an out-of-spec record that
        passes every integrity check, for the decoders and the fast export."""
        rng = self.rng
        i = self._pick_slot()
        base = self.off["slots_off"] + i * L.SLOT_SIZE
        arr = np.frombuffer(bytearray(self.read(base, L.SLOT_SIZE)), dtype=L.SLOT).copy()
        r = arr[0]
        what = []
        for _ in range(rng.choice((1, 2, 3))):
            f = rng.choice(("ts_ns", "value", "lens", "kind", "flags", "pid", "text", "metadata", "severity"))
            what.append(f)
            if f in ("ts_ns", "value"):
                r[f] = np.array(rng.choice((*EXTREMES, rng.getrandbits(64))) & U64, dtype=np.uint64).view(np.int64)
            elif f == "pid":
                r[f] = rng.choice((0, 1, (1 << 32) - 1))
            elif f == "kind":
                r[f] = rng.randrange(L.KIND_MAX + 1)
            elif f == "flags":
                r[f] = rng.randrange(256)
            elif f == "lens":
                lens = [rng.randrange(L.TYPE_CAP + 1), rng.randrange(L.PEER_CAP + 1), 0, 0, 0]
                room = L.TEXT_SIZE - lens[0] - lens[1]
                for k in (2, 3, 4):
                    lens[k] = rng.randrange(room + 1)
                    room -= lens[k]
                r["lens"] = lens
            elif f == "text":
                t = bytearray(r["text"].tobytes())
                for _ in range(rng.randint(1, 12)):
                    t[rng.randrange(L.TEXT_SIZE)] = rng.choice((0, 0x22, 0x5C, 0x0A, 0x1B, 0x7F, 0x80, 0xC3, 0xE2, 0xED,
                                                               0xF0, 0xFF, rng.randrange(256)))
                r["text"] = np.frombuffer(bytes(t), dtype=np.uint8)
            elif f == "metadata":
                meta = rng.choice((b"[1,2,3]", b'"s"', b"null", b"1e400", b'{"a":', b'{"a":NaN}', b'{"\\ud800":1}',
                                   b'{"a":18446744073709551616}', b'{"a":-9223372036854775809}', b'{"a":1}',
                                   b"[" * 90 + b"]" * 90, b'{"a":"\x00"}', b'{"a":1.7976931348623157e308}',
                                   b"\xff\xfe", b"{}", b'{"":{"":{}}}', b" {\"a\" : 1} "))
                et, peer = b"crafted", b"p\xffeer"
                r["kind"] = L.KIND_EVENT
                r["flags"] = int(r["flags"]) | L.F_HAS_METADATA
                r["lens"] = [len(et), len(peer), len(meta), 0, 3]
                r["text"] = np.frombuffer((et + peer + meta + b"msg").ljust(L.TEXT_SIZE, b"\0"), dtype=np.uint8)
                what[-1] = f"metadata {meta[:40]!r}"
            elif f == "severity":
                s = rng.randrange(8)
                r["severity"] = s
                w = int(r["w"])
                r["w"] = (w & ~(((1 << L.W_SEV_BITS) - 1) << L.W_STATE_BITS)) | (s << L.W_STATE_BITS)
                what[-1] = f"severity {s}"
        words = arr.view("<u8").reshape(-1)
        r["checksum"] = int(words @ L.CHECKSUM_KEYS)
        new = arr.tobytes()
        self.write(base + 8, new[8:], f"slot[{i}] crafted ({', '.join(what)}), checksum recomputed")
        self.write(base, new[:8], f"slot[{i}].w")

    def random_bytes(self) -> None:
        rng = self.rng
        region = rng.choice(("any", "header", "shards", "slots", "slots"))
        lo, hi = {"any": (0, self.size), "header": (0, L.HEADER_SIZE),
                  "shards": (self.off["shards_off"], self.off["peers_off"]),
                  "slots": (self.off["slots_off"], self.size)}[region]
        n = rng.choice((1, 2, 8, 16, 64, 256))
        at = rng.randrange(lo, max(lo + 1, hi - n))
        self.write(at, bytes(rng.randrange(256) for _ in range(n)), f"{n} random bytes ({region})")

    def bit_flip(self) -> None:
        at = self.rng.randrange(self.size)
        old = self.read(at, 1)[0]
        self.write(at, bytes([old ^ (1 << self.rng.randrange(8))]), "one bit flipped")


_CATEGORIES = (("header_live", 4), ("header_static", 2), ("shard", 3), ("dead_owner", 2), ("peer", 3), ("op", 2),
               ("slot", 3), ("slot_crafted", 4), ("random_bytes", 2), ("bit_flip", 1))


def damage(ring: Ring, rng: random.Random) -> Damager:
    d = Damager(ring, rng)
    names, weights = zip(*_CATEGORIES, strict=True)
    for cat in rng.choices(names, weights, k=rng.choice((1, 1, 2, 3))):
        getattr(d, cat)()
    return d


def _leaves(dtype: np.dtype, prefix: str = "", base: int = 0) -> list[tuple[str, int, np.dtype, int]]:
    """(path, offset, element dtype, element count) of every leaf field, nested structs flattened."""
    out = []
    for name in dtype.names:
        fdt, off = dtype.fields[name][:2]
        elem, shape = (fdt.subdtype if fdt.subdtype else (fdt, ()))
        count = int(np.prod(shape)) if shape else 1
        if elem.names:
            for k in range(count):
                out += _leaves(elem, f"{prefix}{name}[{k}].", base + off + k * elem.itemsize)
        else:
            out.append((prefix + name, base + off, elem, count))
    return out


def _flip(rng: random.Random, b: bytes) -> bytes:
    if not b:
        return b
    i = rng.randrange(len(b))
    return b[:i] + bytes([b[i] ^ (1 << rng.randrange(8))]) + b[i + 1:]


def _hx(b: bytes) -> str:
    return b.hex() if len(b) <= 16 else f"{b[:16].hex()}..({len(b)} bytes)"


def _truncated_copy(ring: Ring, rng: random.Random, paths: list[str]) -> tuple[str, str]:
    """A copy of the ring, cut or extended (never the creator's own file: its mapping would fault)."""
    size = os.path.getsize(ring.path)
    new = rng.choice((0, 1, 8, L.HEADER_STATIC_SIZE, L.HEADER_SIZE - 1, L.HEADER_SIZE, L.HEADER_SIZE + 1,
                      rng.randrange(size), size - L.SLOT_SIZE, size - 1, size + 1, size + 4096))
    name = ring.name + "-cut"
    path = os.path.join(SHM, name)
    paths.append(path)
    with open(ring.path, "rb") as src, open(path, "wb") as dst:
        dst.write(src.read(min(size, new)))
        dst.truncate(new)
    os.chmod(path, 0o600)
    return name, f"copy of the ring cut from {size} to {new} bytes"


# ------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------
def _fail(ring_desc: str, damage_log: list[str], problems: list[str]) -> None:
    text = "\n".join(f"  - {p}" for p in problems)
    dmg = "\n".join(f"    {x}" for x in damage_log) or "    (none)"
    pytest.fail(f"{len(problems)} problem(s) reading {ring_desc}\n  damage:\n{dmg}\n{text}", pytrace=False)


_REAL = [c for c in _cli_commands("NAME", "OUT") if c[0] not in ("ls", "rm") and "-f" not in c] + [["ls", "--json"]]


@pytest.mark.parametrize("seed", range(N_SEEDS))
def test_fuzz_damaged_ring(seed, rings, tmp_path):
    rng = random.Random(seed)
    ring = rings(seed, rng)
    creator = ring.creator_id  # before any damage
    if rng.random() < 0.08:
        name, log = _truncated_copy(ring, rng, rings.paths)
        log, must_refuse = [log], os.path.getsize(os.path.join(SHM, name)) != os.path.getsize(ring.path)
    else:
        d = damage(ring, rng)
        name, log, must_refuse = ring.name, d.log, d.static_changed
    (tmp_path / "real").mkdir()
    real = [a.replace("NAME", name).replace("OUT", str(tmp_path / "real")) for a in _REAL[seed % len(_REAL)]]
    summary, problems = read_ring(name, tmp_path, real=real, creator=creator)
    if must_refuse and summary.get("refused") not in REFUSALS:
        problems.insert(0, f"damage to the CRC-protected header (or a cut file) was not refused: "
                           f"attach gave {summary.get('refused') or 'a ring'}")
    if problems:
        _fail(f"seed {seed}: {ring.desc}", log, problems)


# -- deterministic cases of the bugs the fuzz found -------------------------------------------
def _ring(rings, cap=64, n=40, **kw) -> Ring:
    return rings(1000 + cap + n, random.Random(cap * 7919 + n), cap=cap, n_events=n, **kw)


def _slot_of_newest(ring: Ring) -> tuple[int, int]:
    d = Damager(ring, random.Random(0))
    s, live = d._slots()
    i = live[-1]
    return i, d.off["slots_off"] + i * L.SLOT_SIZE


@pytest.mark.parametrize("where", ["text", "checksum", "ts_ns"])
def test_newest_record_damaged_limit_still_filled(rings, tmp_path, where):
    """get_events(10) and tail -n 10 return the 10 newest intact records when one of the newest
    is damaged (skipped), not 9."""
    ring = _ring(rings, cap=64, n=40, clears=0, second_writer=False)
    d = Damager(ring, random.Random(1))
    seqs = [e.seq for e in ring.creator.get_events(0)]
    i, base = _slot_of_newest(ring)
    at = base + L.SLOT.fields[where][1]
    d.write(at, bytes([d.read(at, 1)[0] ^ 0x5A]), f"slot[{i}].{where} byte flipped (newest record)")
    summary, problems = read_ring(ring.name, tmp_path, real=["tail", ring.name, "-n", "10", "--json"])
    want = seqs[:-1][-10:]
    if summary.get("seqs10") != want:
        problems.insert(0, f"get_events(10) seqs {summary.get('seqs10')} != the 10 newest intact {want}")
    if summary.get("seqs_all") != seqs[:-1]:
        problems.insert(0, f"get_events(0) should be every record but the damaged one: {summary.get('seqs_all')}")
    if problems:
        _fail(ring.desc, d.log, problems)


@pytest.mark.parametrize("head", [(1 << 48) - 1, (1 << 48) - 2, 1 << 40])
def test_tail_n_matches_get_events_with_a_garbage_head(rings, tmp_path, head):
    """tail -n N and get_events(N) return the same events, whatever the head word says."""
    ring = _ring(rings, cap=64, n=30, clears=0, second_writer=False)
    d = Damager(ring, random.Random(2))
    gen = d.head >> L.SEQ_BITS
    d.write(L.HEADER.fields["head"][1], struct.pack("<Q", (gen << L.SEQ_BITS) | head), f"head = {head}")
    summary, problems = read_ring(ring.name, tmp_path, real=["tail", ring.name, "-n", "10", "--json"])
    if problems:
        _fail(ring.desc, d.log, problems)


@pytest.mark.parametrize("kind", ["directory", "symlink-to-ring", "dangling-symlink", "fifo"])
def test_attach_to_a_non_file_is_refused(rings, tmp_path, kind):
    """A directory, a symlink or a FIFO in /dev/shm under the ring's name: a ShmDiagError (and,
    from the CLI, one line), never a bare OSError or a hang."""
    ring = _ring(rings, cap=64, n=5)
    name = _name(kind)
    path = os.path.join(SHM, name)
    rings.paths.append(path)
    if kind == "directory":
        os.mkdir(path, 0o700)
    elif kind == "symlink-to-ring":
        os.symlink(ring.path, path)
    elif kind == "dangling-symlink":
        os.symlink(os.path.join(SHM, name + "-nowhere"), path)
    else:
        os.mkfifo(path, 0o600)
    summary, problems = read_ring(name, tmp_path, real=["stats", name], timeout=10)
    if summary.get("refused") is None and kind != "symlink-to-ring":
        problems.insert(0, f"attach to a {kind} was not refused")
    if problems:
        _fail(f"/dev/shm/{name} is a {kind}", [], problems)


@pytest.mark.parametrize("phase", [L.PH_CLAIMED, L.PH_OWNED, L.PH_COUNTING])
def test_dead_writer_with_a_counter_at_its_limit(rings, tmp_path, phase):
    """A shard whose owner died inside a record is settled by the first health_check (or
    export, or writer looking for a shard); a counter of 2**64-1 there (foreign bytes) must not
    make that reader raise, nor leave the shard stuck half-settled."""
    ring = _ring(rings, cap=64, n=5, clears=0, second_writer=False)
    d = Damager(ring, random.Random(3))
    sh = d.off["shards_off"]  # shard 0: the creator's
    seq = (d.head & L.SEQ_MASK) - 1  # its last record, committed
    d.write(sh + L.SHARD.fields["owner"][1], struct.pack("<Q", L.SH_ACTIVE), "shard[0].owner = pid 0, ACTIVE (dead)")
    d.write(sh + L.SHARD.fields["journal"][1], struct.pack("<Q", L.j_make(seq, phase)),
            f"shard[0].journal (seq {seq}, phase {phase})")
    f = "jbefore" if phase == L.PH_COUNTING else "recorded"
    d.write(sh + L.SHARD.fields[f][1], struct.pack("<Q", U64), f"shard[0].{f} = 2**64-1")
    summary, problems = read_ring(ring.name, tmp_path, real=["health", ring.name, "--json"])
    owner = struct.unpack("<Q", d.read(sh + L.SHARD.fields["owner"][1], 8))[0]
    if owner & 0xFF != L.SH_DEAD:
        problems.append(f"after the reads the dead writer's shard is in state {owner & 0xFF}, not settled "
                        f"(SH_DEAD = {L.SH_DEAD}; SH_REAPING = {L.SH_REAPING}: a reaper gave up half-way)")
    if problems:
        _fail(ring.desc, d.log, problems)


@pytest.mark.parametrize("clears", [1, 7, 8, 9, 16, 17])
def test_clears_across_generations(rings, tmp_path, clears):
    """After any number of clears, only the events recorded since the last one are retained
    and counted (each generation has its own base_of word)."""
    ring = _ring(rings, cap=256, n=0, clears=0, second_writer=False)
    rec = ring.creator
    for _ in range(clears):
        for j in range(3):
            rec.record_message(f"p{j}", "inv", "inbound", 37)
        rec.clear_events()
    for j in range(5):
        rec.record_event(DiagnosticEvent("after", f"event {j}", Severity.WARNING))
    summary, problems = read_ring(ring.name, tmp_path, real=["tail", ring.name, "-n", "10", "--json"])
    got = summary.get("seqs_all")
    if got is None or len(got) != 5 or summary.get("total_events") != 5:
        problems.insert(0, f"after {clears} clears and 5 events: get_events(0) seqs {got}, "
                           f"total_events {summary.get('total_events')}")
    if problems:
        _fail(f"{ring.desc}, then {clears} clears", [], problems)
