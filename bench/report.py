#!/usr/bin/env python3
"""Run the shmdiag benchmarks and write bench/results/RESULTS.md.

    python bench/report.py                  # run `python -m pytest bench -q --benchmark-json=...`, then report
    python bench/report.py --from-json F    # report from an existing pytest-benchmark json (no run)

Figures are medians per operation: each benchmark round times an inner loop of
``extra_info["ops_per_round"]`` operations. The record_message / JSON-lines ratio is computed
from the same json, hence the same run. Speed is reported here, never asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from _benchlib import machine  # noqa: E402

ROOT = BENCH.parent
RESULTS = BENCH / "results"

# The Go original's published figures (one process, goroutines; machine not published).
GO = {"recording": 1234, "concurrent": 2345, "stats": 678}

# Targets of the issue: (benchmark name, limit in ns per op).
TARGET_RECORD_NS = 600
TARGET_RATIO = 0.45
TARGET_READ_NS = 50e6

# Benchmark name -> description, in table order. Names not listed are appended as they come.
LABELS = {
    "test_record_message": "`record_message`, steady state (100k ring, already lapped once)",
    "test_record_message_first_lap": "`record_message` into a fresh ring (first lap: page faults)",
    "test_baseline_jsonl_inline": "baseline: `orjson.dumps` + `os.write` JSON line, inline in the loop",
    "test_baseline_jsonl_call": "baseline: the same in a helper with record_message's signature",
    "test_helper[record_event-info]": "`record_event` with metadata (3 keys)",
    "test_helper[record_event-critical]": "`record_event` with metadata, log_level=critical",
    "test_helper[record_peer_connection-info]": "`record_peer_connection`",
    "test_helper[record_peer_connection-critical]": "`record_peer_connection`, log_level=critical",
    "test_helper[record_peer_disconnection-info]": "`record_peer_disconnection` (WARNING: logged by default)",
    "test_helper[record_peer_disconnection-critical]": "`record_peer_disconnection`, log_level=critical (not logged)",
    "test_helper[record_error-info]": "`record_error` (ERROR: logged by default)",
    "test_helper[record_error-critical]": "`record_error`, log_level=critical (not logged)",
    "test_concurrent_record_message[1]": "concurrent `record_message`, 1 writer process",
    "test_concurrent_record_message[2]": "concurrent `record_message`, 2 writer processes",
    "test_concurrent_record_message[4]": "concurrent `record_message`, 4 writer processes",
    "test_get_stats_1k": "`get_stats()`, ring of 1,000 events",
    "test_get_stats_full_1m": "`get_stats()`, FULL ring of 1,000,000 events",
    "test_get_events_100_full_1m": "`get_events(100)`, full 1M ring",
    "test_get_events_100_error_full_1m": "`get_events(100, Severity.ERROR)`, full 1M ring (0.1% errors)",
    "test_health_check_full_1m": "`health_check()`, full 1M ring",
    "test_export_events[1k]": "`export_events()`, 1,000-event ring",
    "test_export_events[100k]": "`export_events()`, 100,000-event ring",
}
TARGETS = {  # name -> (limit ns/op, text)
    "test_record_message": (TARGET_RECORD_NS, "<= 600 ns"),
    "test_get_stats_full_1m": (TARGET_READ_NS, "<= 50 ms"),
    "test_get_events_100_full_1m": (TARGET_READ_NS, "<= 50 ms"),
}


def run_benchmarks(json_path: Path) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pytest", "bench", f"--benchmark-json={json_path}", "-q"]
    print("+", " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc != 0:
        sys.exit(f"benchmarks failed (pytest exit {rc}); RESULTS.md not written")


def fmt_ns(ns: float) -> str:
    if ns < 10_000:
        return f"{ns:,.0f} ns"
    if ns < 1_000_000:
        return f"{ns / 1e3:,.0f} µs"
    return f"{ns / 1e6:,.2f} ms"


def per_op(b: dict) -> tuple[float, float, int]:
    """(median ns/op, min ns/op, ops per round) of one benchmark entry."""
    ops = int(b.get("extra_info", {}).get("ops_per_round", 1))
    st = b["stats"]
    return st["median"] / ops * 1e9, st["min"] / ops * 1e9, ops


def build(data: dict) -> str:  # noqa: C901 (one straight-line document)
    by_name = {b["name"]: b for b in data["benchmarks"]}
    names = [n for n in LABELS if n in by_name] + [n for n in by_name if n not in LABELS]
    med = {n: per_op(by_name[n])[0] for n in names}

    lines = ["# shmdiag benchmark results", ""]
    mach = data.get("machine_info", {}).get("shmdiag") or {**machine(), "note": "described at report time"}
    when = data.get("datetime", "")
    run_date = when[:16].replace("T", " ") + " UTC" if when else f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"
    pkgs = ", ".join(f"{k} {v}" for k, v in mach.get("packages", {}).items())
    lines += [
        f"- date: {run_date}",
        f"- machine: nproc {mach['nproc']} ({mach['cpus']} CPUs), {mach['cpu_model']}, Linux {mach['kernel']}"
        + (f" ({mach['note']})" if "note" in mach else ""),
        f"- Python {mach['python']}; {pkgs}",
        f"- shmdiag commit: {mach['shmdiag_commit']}",
        "- command: `python -m pytest bench -q --benchmark-json=bench/results/latest.json` "
        "(raw figures in `latest.json`)",
        "",
        "Medians per operation; every round times an inner loop (\"ops/round\"), so the harness's own "
        "overhead is spread over thousands of calls. One run on a small shared machine: figures move "
        "by 10-20% between runs; the ratios within a run are what matter.",
        "",
    ]

    # Headline: the targets, from this run.
    rm = med.get("test_record_message")
    bases = {n: med[n] for n in ("test_baseline_jsonl_inline", "test_baseline_jsonl_call") if n in med}
    if rm is not None and bases:
        lines += ["## record_message against the JSON-lines baseline (same run)", ""]
        lines += ["| | median ns/event | record_message / this |", "|---|---:|---:|"]
        lines.append(f"| `record_message` | {rm:,.0f} | 1.00 |")
        for n, v in bases.items():
            lines.append(f"| {LABELS.get(n, n)} | {v:,.0f} | **{rm / v:.2f}** |")
        strict_name = min(bases, key=bases.get)
        ratio = rm / bases[strict_name]
        ok_ns, ok_ratio = rm <= TARGET_RECORD_NS, ratio <= TARGET_RATIO
        lines += [
            "",
            f"Target: median <= {TARGET_RECORD_NS} ns/event — **{rm:,.0f} ns: {'met' if ok_ns else 'MISSED'}**; "
            f"<= {TARGET_RATIO} x the baseline — **{ratio:.2f} x the faster baseline "
            f"({LABELS[strict_name].split(': ', 1)[-1]}): {'met' if ok_ratio else 'MISSED'}**.",
            "",
        ]

    lines += ["## All benchmarks", "",
              "| benchmark | median per op | min per op | ops/round x rounds | target |",
              "|---|---:|---:|---:|---|"]
    for n in names:
        b = by_name[n]
        m, mn, ops = per_op(b)
        target = ""
        if n in TARGETS:
            limit, text = TARGETS[n]
            target = f"{text}: {'met' if m <= limit else '**MISSED**'}"
        extra = b.get("extra_info", {})
        if "events_per_s" in extra:
            target = f"{extra['events_per_s'] / 1e6:.2f} M events/s aggregate; lost {extra.get('lost', 0)}"
        label = LABELS.get(n, f"`{n}`")
        lines.append(f"| {label} | {fmt_ns(m)} | {fmt_ns(mn)} | {ops:,} x {b['stats']['rounds']} | {target} |")
    lines.append("")

    # The Go original's published figures.
    conc_name = f"test_concurrent_record_message[{mach['nproc']}]"
    if conc_name not in med:
        conc_name = next((n for n in names if n.startswith("test_concurrent")), None)
    rows = [
        ("recording", GO["recording"], "test_record_message", "`record_message`"),
        ("recording", GO["recording"], "test_helper[record_event-info]", "`record_event` with metadata"),
        ("concurrent", GO["concurrent"], conc_name, f"{LABELS.get(conc_name, conc_name)} (wall time / all events)"),
        ("stats", GO["stats"], "test_get_stats_1k", "`get_stats()`, 1,000-event ring"),
        ("stats", GO["stats"], "test_get_stats_full_1m", "`get_stats()`, full 1M ring"),
    ]
    lines += ["## Against the Go original's published figures", "",
              "| Go benchmark | Go ns/op | shmdiag here | shmdiag per op | shmdiag / Go |",
              "|---|---:|---|---:|---:|"]
    for go_name, go_ns, n, what in rows:
        if n in med:
            lines.append(f"| {go_name} | {go_ns:,} | {what} | {fmt_ns(med[n])} | {med[n] / go_ns:.2f} |")
    lines += [
        "",
        "The Go figures are as published (one process; machine not stated), not re-measured here. "
        "shmdiag's figures are across processes through shared memory: "
        "\"concurrent\" is the wall time of N spawned writer processes recording at full speed, divided "
        "by all their events (interpreter start-up and attach excluded by a barrier).",
        "",
        "## Notes",
        "",
        "- `record_message` steady state is measured on a ring that has been lapped once; the first lap of a "
        "fresh ring also pays a page fault per 4 KiB page (16 slots), shown separately.",
        "- Helpers at log_level \"info\" (the default) pass WARNING and ERROR events to the stdlib logger, "
        "which builds a `LogRecord` even with no handler configured (measured as an application that has "
        "not configured logging: shmdiag's NullHandler only). log_level=\"critical\" shows recording alone.",
        "- `record_event` is timed with one prebuilt `DiagnosticEvent` (building it is the caller's cost).",
        "- `get_events(100, ERROR)` is on a ring where 0.1% of events are errors.",
        "- The concurrent rows are the noisiest: on the 2-vCPU machine they were measured on, the 2-writer "
        "median moved between ~175 and ~345 ns/event from run to run (see the per-round data in latest.json).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from-json", type=Path, help="report from this pytest-benchmark json instead of running")
    ap.add_argument("--out", type=Path, default=RESULTS / "RESULTS.md")
    args = ap.parse_args()
    src = args.from_json
    if src is None:
        src = RESULTS / "latest.json"
        run_benchmarks(src)
    data = json.loads(src.read_text())
    text = build(data)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
