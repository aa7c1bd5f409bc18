#!/usr/bin/env python3
"""Run the shmdiag benchmarks and write bench/results/RESULTS.md.

    python bench/report.py                  # run `pytest bench/test_bench_*.py --benchmark-json=...`, then report
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

from shmdiag.core.layout import SLOT_SIZE  # noqa: E402  (figures without it in their json: this build's)

ROOT = BENCH.parent
RESULTS = BENCH / "results"

# The Go original's published figures (one process, goroutines; machine not published).
GO = {"recording": 1234, "concurrent": 2345, "stats": 678}

# Targets (issue 4; the ratio to the JSON-lines baseline is the core issue's).
TARGET_RECORD_NS = 500
TARGET_RATIO = 0.45
TARGET_READ_NS = 50e6
TARGET_SCALING = 1.7          # 2 writer processes / 1 writer, aggregate events/s
TARGET_EXPORT_EPS = 1_000_000  # events/s
TARGET_SHM_BYTES = 256        # shared-memory bytes per retained event

SIZES = (("1k", "1,000"), ("100k", "100,000"), ("1m", "1,000,000"))

# Benchmark name -> description, in table order. Names not listed are appended as they come.
LABELS = {
    "test_record_message": "`record_message`, steady state (100k ring, already lapped once)",
    "test_record_message_first_lap": "`record_message` into a fresh ring (first lap: page faults)",
    "test_baseline_jsonl_inline": "baseline: `orjson.dumps` + `os.write` JSON line, inline in the loop",
    "test_baseline_jsonl_call": "baseline: the same in a helper with record_message's signature",
    "test_helper[record_event-info]": "`record_event` with metadata (3 keys)",
    "test_helper[record_event-critical]": "`record_event` with metadata, log_level=critical",
    "test_helper[record_event_nometa-info]": "`record_event` without metadata",
    "test_helper[record_event_nometa-critical]": "`record_event` without metadata, log_level=critical",
    "test_helper[record_peer_connection-info]": "`record_peer_connection`",
    "test_helper[record_peer_connection-critical]": "`record_peer_connection`, log_level=critical",
    "test_helper[record_peer_disconnection-info]": "`record_peer_disconnection` (WARNING: logged by default)",
    "test_helper[record_peer_disconnection-critical]": "`record_peer_disconnection`, log_level=critical (not logged)",
    "test_helper[record_error-info]": "`record_error` (ERROR: logged by default)",
    "test_helper[record_error-critical]": "`record_error`, log_level=critical (not logged)",
    "test_helper[record_latency-info]": "`record_latency(op, seconds, peer_id=...)`",
    "test_helper[record_latency-critical]": "`record_latency`, log_level=critical",
    "test_helper[span-info]": "`with rec.span(op, peer_id=...)` (empty body)",
    "test_helper[span-critical]": "`span`, log_level=critical",
    "test_concurrent_record_message[1]": "concurrent `record_message`, 1 writer process",
    "test_concurrent_record_message[2]": "concurrent `record_message`, 2 writer processes",
    "test_concurrent_record_message[4]": "concurrent `record_message`, 4 writer processes",
}
for _id, _n in SIZES:
    LABELS[f"test_get_stats[{_id}]"] = f"`get_stats()`, full ring of {_n} events"
    LABELS[f"test_get_events_100[{_id}]"] = f"`get_events(100)`, full ring of {_n}"
    LABELS[f"test_get_events_100_error[{_id}]"] = f"`get_events(100, Severity.ERROR)`, full ring of {_n} (0.1% errors)"
    LABELS[f"test_health_check[{_id}]"] = f"`health_check()`, full ring of {_n}"
    LABELS[f"test_export_events[{_id}]"] = f"`export_events()`, full ring of {_n}"
TARGETS = {  # name -> (limit ns/op, text)
    "test_record_message": (TARGET_RECORD_NS, "<= 500 ns"),
    "test_get_stats[1m]": (TARGET_READ_NS, "<= 50 ms"),
    "test_get_events_100[1m]": (TARGET_READ_NS, "<= 50 ms"),
    "test_export_events[1m]": (1e9, ">= 1M events/s"),
}


def run_benchmarks(json_path: Path) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    files = sorted(str(f.relative_to(ROOT)) for f in BENCH.glob("test_bench_*.py"))  # not the compare smoke test
    cmd = [sys.executable, "-m", "pytest", *files, f"--benchmark-json={json_path}", "-q"]
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


def issue4_targets(by_name: dict, med: dict) -> list[str]:
    """The issue-4 targets measured by this suite: met or missed, with the figure."""
    rows = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "**MISSED**"

    if "test_record_message" in med:
        v = med["test_record_message"]
        rows.append(("`record_message`, one process <= 500 ns/event", f"{v:,.0f} ns", verdict(v <= TARGET_RECORD_NS)))
    c1, c2 = (by_name.get(f"test_concurrent_record_message[{w}]") for w in (1, 2))
    if c1 and c2 and "events_per_s" in c1["extra_info"] and "events_per_s" in c2["extra_info"]:
        r = c2["extra_info"]["events_per_s"] / c1["extra_info"]["events_per_s"]
        rows.append(("2 writer processes >= 1.7 x one writer (aggregate events/s)",
                     f"{r:.2f} x ({c1['extra_info']['events_per_s'] / 1e6:.2f} -> "
                     f"{c2['extra_info']['events_per_s'] / 1e6:.2f} M events/s)", verdict(r >= TARGET_SCALING)))
    st = by_name.get("test_get_stats[1m]")
    if st:
        v = med["test_get_stats[1m]"]
        rows.append(("`get_stats` on 1,000,000 retained events <= 50 ms", fmt_ns(v), verdict(v <= TARGET_READ_NS)))
        shm = st["extra_info"].get("segment_bytes_per_event")
        if shm is not None:
            rows.append(("<= 256 bytes of shared memory per retained event",
                         f"{shm:,.1f} B (segment {st['extra_info']['segment_bytes']:,} B / 1,000,000; "
                         f"slots {st['extra_info'].get('slot_size', SLOT_SIZE)} B)",
                         verdict(shm <= TARGET_SHM_BYTES)))
    ex = by_name.get("test_export_events[1m]")
    if ex and "events_per_s" in ex["extra_info"]:
        v = ex["extra_info"]["events_per_s"]
        rows.append(("export >= 1,000,000 events/s (1M ring)",
                     f"{v:,.0f} events/s ({fmt_ns(med['test_export_events[1m]'])} per export)",
                     verdict(v >= TARGET_EXPORT_EPS)))
    if not rows:
        return []
    out = ["## Issue 4 targets (this run)", "", "| target | measured | |", "|---|---|---|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return out + ["", "Concurrent figures are the noisiest (2 vCPUs shared with other work); "
                  "`bench/compare.py` measures the same scaling with 3 interleaved repeats.", ""]


def build(data: dict) -> str:  # noqa: C901 (one straight-line document)
    by_name = {b["name"]: b for b in data["benchmarks"]}
    names = [n for n in LABELS if n in by_name] + [n for n in by_name if n not in LABELS]
    med = {n: per_op(by_name[n])[0] for n in names}

    lines = ["# shmdiag benchmark results", ""]
    mach = data.get("machine_info", {}).get("shmdiag") or {**machine(), "note": "described at report time"}
    when = data.get("datetime", "")
    now = dt.datetime.now(dt.timezone.utc)
    run_date = when[:16].replace("T", " ") + " UTC" if when else f"{now:%Y-%m-%d %H:%M} UTC"
    pkgs = ", ".join(f"{k} {v}" for k, v in mach.get("packages", {}).items())
    lines += [
        f"- date: {run_date}",
        f"- machine: nproc {mach['nproc']} ({mach['cpus']} CPUs), {mach['cpu_model']}, Linux {mach['kernel']}"
        + (f" ({mach['note']})" if "note" in mach else ""),
        f"- Python {mach['python']}; {pkgs}",
        f"- shmdiag commit: {mach['shmdiag_commit']}",
        "- command: `python -m pytest bench/test_bench_*.py -q --benchmark-json=bench/results/latest.json` "
        "(raw figures in `latest.json`)",
        "",
        "Medians per operation; every round times an inner loop (\"ops/round\"), so the harness's own "
        "overhead is spread over thousands of calls. One run on a small shared machine: figures move "
        "by 10-20% between runs; the ratios within a run are what matter.",
        "",
    ]

    # Headline: the issue's targets, from this run.
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

    lines += issue4_targets(by_name, med)

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
        if "events_per_s" in extra and n.startswith("test_concurrent"):
            target = f"{extra['events_per_s'] / 1e6:.2f} M events/s aggregate; lost {extra.get('lost', 0)}"
        elif "events_per_s" in extra:
            target = f"{extra['events_per_s'] / 1e6:.2f} M events/s" + (f"; {target}" if target else "")
        elif "x_small" in extra:  # bench/test_bench_inspect.py
            x = extra["x_small"]
            target = f"{x:.2f}x the 10k ring (target 1.5x: {'met' if x <= 1.5 else '**MISSED**'})"
        elif "top_cpu_share" in extra:
            share = extra["top_cpu_share"]
            target = f"{share:.2%} of a core (target 2%: {'met' if share < 0.02 else '**MISSED**'})"
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
        ("stats", GO["stats"], "test_get_stats[1k]", "`get_stats()`, 1,000-event ring"),
        ("stats", GO["stats"], "test_get_stats[1m]", "`get_stats()`, full 1M ring"),
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
        "- `get_events(100, ERROR)` is on a ring where 0.1% of events are errors (the 1,000-event ring holds none).",
        "- Read rings are built once per size (`ring` fixture in conftest.py): 100 peer connections, then "
        "`record_message` events with one `record_error` per 1,000, filled by a tight loop in one process.",
        "- Helper benchmarks whose API does not exist at the measured commit are skipped and absent from the table"
        + (": " + ", ".join(f"`{h}`" for h in ("record_latency", "span")
                            if f"test_helper[{h}-info]" not in by_name) + "." if any(
            f"test_helper[{h}-info]" not in by_name for h in ("record_latency", "span")) else
           " (none at this run). `span` times an empty `with` body: entering and leaving it plus one record."),
        "- The comparison against multiprocessing.Queue, logging, JSON lines, sqlite and prometheus_client "
        "is `bench/compare.py` -> `compare.md`.",
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
