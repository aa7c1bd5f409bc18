"""The cost of diagnostics to a real crawler: the same crawl of the same local bcoin nodes with
recording off, with the ring attached but nothing recorded, with shmdiag, with ``logging`` to a
file and with orjson JSON lines to one O_APPEND file, interleaved, in one run.

``python -m tools.crawler.bench [--nodes 4] [--processes 2] [--duration 5] [--repeats 3]``
(from the repository root; needs bcoin, see the README). Each crawl pings back to back
(``--ping-interval 0``) on every connection, so the crawler spends its time on messages. The
figure is the crawl processes' CPU time (``time.process_time`` over the crawl) per message (each
way), and messages/s; the medians over the repeats and each mode's CPU per message relative to
recording off are printed and written to ``bench/results/crawler.md`` and ``crawler.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.crawler.bcoin import bcoin_bin, bcoin_nodes
from tools.crawler.sinks import ALTERNATE_ONLY

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench" / "results"
MODES = ("off", "attached", "shmdiag", "logging", "jsonl", "alternate")
RING_EVENTS = 1_000_000


BASELINE = "baseline-"  # + mode: the crawler and shmdiag of another checkout (--baseline DIR)


def crawl(mode: str, seed: str, ring: str, workdir: Path, a: argparse.Namespace) -> dict:
    record = mode.removeprefix(BASELINE)
    args = [sys.executable, "-m", "tools.crawler", "--seed", seed, "--processes", str(a.processes),
            "--connections", "16", "--duration", str(a.duration), "--ping-interval", "0", "--timeout", "10",
            "--record", record, "--json"]
    if record in ("shmdiag", "attached", "alternate"):
        args += ["--ring", ring]
    batch = a.baseline_batch if mode.startswith(BASELINE) else a.batch
    if record in ("shmdiag", "alternate") and batch:
        args += ["--batch", str(batch)]
    if record == "alternate" and a.alternate_only:
        args += ["--alternate-only", a.alternate_only]
    elif record in ("logging", "jsonl"):
        args += ["--log-file", str(workdir / f"crawl.{mode}")]
    # The working directory comes first on sys.path with -m: it picks the crawler and shmdiag.
    cwd = a.baseline if mode.startswith(BASELINE) else ROOT
    cp = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=a.duration + 120)
    if cp.returncode != 0:
        raise RuntimeError(f"crawler ({mode}) exited {cp.returncode}: {cp.stderr.strip()}")
    s = json.loads(cp.stdout)
    n = s["messages"]
    return {"mode": mode, "messages": n, "cpu_s": s["cpu_s"], "crawl_s": s["crawl_s"],
            "cpu_us_per_message": s["cpu_us_per_message"], "messages_per_s": s["messages_per_s"],
            "sys_us_per_message": sum(w["sys_s"] for w in s["workers"]) / n * 1e6 if n else None,
            "faults_per_message": sum(w["minor_faults"] for w in s["workers"]) / n if n else None,
            **({"alternate": s["alternate"]} if "alternate" in s else {})}


def micro(rec, n: int = 200_000) -> tuple[float, float]:
    """CPU ns (process_time, as the crawl's figure) per record_message and per ``with span(...)``,
    best of 3 x n calls."""
    rm, sp = rec.record_message, rec.span
    best_m = best_s = float("inf")
    for _ in range(3):
        t0 = time.process_time_ns()
        for _ in range(n):
            rm("127.0.0.1:18444", "ping", "outbound", 32)
        best_m = min(best_m, (time.process_time_ns() - t0) / n)
        t0 = time.process_time_ns()
        for _ in range(n):
            with sp("ping", "127.0.0.1:18444"):
                pass
        best_s = min(best_s, (time.process_time_ns() - t0) / n)
    return best_m, best_s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.crawler.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-write", action="store_true", help="print only; do not write bench/results")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--baseline", metavar="DIR", type=Path,
                   help="also crawl with the crawler and shmdiag of another checkout (its extension built; "
                        "same ring layout), as modes baseline-shmdiag / baseline-alternate, interleaved")
    p.add_argument("--batch", type=int, default=0, metavar="N",
                   help="crawls through this checkout's shmdiag write N events at a time (Recorder.set_batch)")
    p.add_argument("--baseline-batch", type=int, default=0, metavar="N",
                   help="the same for the --baseline crawls (a checkout whose crawler takes --batch)")
    p.add_argument("--alternate-only", choices=ALTERNATE_ONLY, default=None,
                   help="alternate modes switch only this method (what record_message or span costs alone)")
    p.add_argument("--no-metrics", action="store_true",
                   help="create the ring with enable_metrics=False: no per-peer, per-message-type or latency "
                        "accounting at write time (what that accounting costs the crawler)")
    p.add_argument("--lap", action="store_true",
                   help="fill the ring once before the crawls (a ring in its steady state: every page of it "
                        "allocated; by default the crawls write a fresh ring's first lap)")
    a = p.parse_args(argv)
    modes = tuple(m for m in a.modes.split(",") if m)
    if "off" not in modes or any(m not in MODES for m in modes):
        p.error(f"--modes must include off and name only {', '.join(MODES)}")
    if a.baseline is not None:
        if not (a.baseline / "tools" / "crawler").is_dir():
            p.error(f"--baseline {a.baseline}: no tools/crawler there")
        modes += tuple(BASELINE + m for m in ("shmdiag", "alternate") if m in modes)
    if bcoin_bin() is None:
        print("bench: bcoin is not installed (cd tools/crawler/node && npm ci)", file=sys.stderr)
        return 2
    from shmdiag import Recorder, RecorderConfig

    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as d, bcoin_nodes(a.nodes, Path(d)) as nodes, \
            Recorder.with_config(RecorderConfig(max_events=RING_EVENTS, enable_metrics=not a.no_metrics)) as rec:
        nodes[0].mine(1)
        time.sleep(1)
        if a.lap:
            for _ in range(RING_EVENTS):
                rec.record_message("127.0.0.1:1", "inv", "inbound", 61)
        crawl("off", nodes[0].endpoint, rec.name, Path(d), a)  # warm-up, not counted: the nodes' first crawl is slow
        for r in range(a.repeats):
            order = modes[r % len(modes):] + modes[:r % len(modes)]  # rotate: no mode always first
            for mode in order:
                res = crawl(mode, nodes[0].endpoint, rec.name, Path(d), a)
                res["repeat"] = r
                runs.append(res)
                print(f"  {mode:<8} {res['messages']:>7} msgs  {res['messages_per_s']:>8.0f}/s  "
                      f"{res['cpu_us_per_message']:6.2f} us CPU/msg  "
                      f"{res['faults_per_message']:.3f} faults/msg", file=sys.stderr)
        books = rec.accounting()
        # What shmdiag's calls alone cost, measured in this process on the same ring: events per
        # message (record_message, plus a span per ping round trip) x ns per event.
        st = rec.get_stats()
        lap = RING_EVENTS if a.lap else 0  # the lap's messages are the bench's, not the crawls'
        n_msg = st.events_by_type.get("message", 0) - lap
        n_lat = st.events_by_type.get("latency", 0)
        n_other = st.total_events - lap - n_msg - n_lat  # connects, disconnects, errors: priced as a message
        ns_message, ns_span = micro(rec)
    med = {m: {k: statistics.median(x[k] for x in runs if x["mode"] == m)
               for k in ("cpu_us_per_message", "messages_per_s", "messages", "sys_us_per_message",
                         "faults_per_message")} for m in modes}
    base = med["off"]["cpu_us_per_message"]
    alt_lines = []
    for m in modes:
        if m.removeprefix(BASELINE) != "alternate":
            continue
        xs = [x["alternate"] for x in runs if x["mode"] == m]
        on = statistics.median(x["on"]["cpu_us_per_message"] for x in xs)
        off_ = statistics.median(x["off"]["cpu_us_per_message"] for x in xs)
        d = [x["on"]["cpu_us_per_message"] - x["off"]["cpu_us_per_message"] for x in xs]
        pct = [100 * (x["on"]["cpu_us_per_message"] / x["off"]["cpu_us_per_message"] - 1) for x in xs]
        alt_lines.append(f"| {m} | {on:.2f} | {off_:.2f} | {statistics.median(d):+.2f} us | "
                         f"{statistics.median(pct):+.1f}% | {min(pct):+.1f}% to {max(pct):+.1f}% | "
                         f"{statistics.median(x['on']['phases'] + x['off']['phases'] for x in xs)} |")
    lines = [f"Crawler CPU per message, {a.nodes} bcoin nodes, {a.processes} crawl processes, "
             f"{a.duration:g} s crawls, {a.repeats} interleaved repeats (medians), "
             f"{time.strftime('%Y-%m-%d', time.gmtime())}:", "",
             "| recording | us CPU per message | vs off | paired vs off (median) | range over repeats | "
             "messages/s | us system CPU per message | minor faults per message |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    off = {x["repeat"]: x["cpu_us_per_message"] for x in runs if x["mode"] == "off"}
    for m in modes:
        c = med[m]["cpu_us_per_message"]
        xs = [x["cpu_us_per_message"] for x in runs if x["mode"] == m]
        paired = statistics.median(x["cpu_us_per_message"] - off[x["repeat"]] for x in runs if x["mode"] == m)
        lines.append(f"| {m} | {c:.2f} | {100 * (c / base - 1):+.1f}% | {paired:+.2f} us | "
                     f"{min(xs):.1f}-{max(xs):.1f} | {med[m]['messages_per_s']:,.0f} | "
                     f"{med[m]['sys_us_per_message']:.2f} | {med[m]['faults_per_message']:.3f} |")
    if alt_lines:
        lines += ["", "Within one crawl, shmdiag switched on and off at every 50 ms poll of each crawl process "
                  "(`--record alternate`; CPU time and messages charged to the phase they fall in):", "",
                  "| crawl | us CPU per message, on | off | on - off (median of repeats) | on vs off | "
                  "range over repeats | phases per crawl |", "|---|---:|---:|---:|---:|---:|---:|", *alt_lines]
    calls = f"shmdiag's own calls, CPU time in the bench process on the same ring: record_message " \
            f"{ns_message:.0f} ns, a span {ns_span:.0f} ns"
    if n_msg > 0:  # counted by type only with metrics on
        attributable_us = (ns_message * (n_msg + n_other) + ns_span * n_lat) / n_msg / 1000
        calls += (f"; per message in the shmdiag crawls {n_lat / n_msg:.2f} spans and {n_other / n_msg:.4f} other "
                  f"events, so {attributable_us:.2f} us per message = {100 * attributable_us / base:.2f}% of the "
                  f"crawler's CPU per message with recording off")
    books_of = "shmdiag ring books after the runs" + (" (metrics off)" if a.no_metrics else "")
    lines += ["", calls + ".", "", f"{books_of}: {books}"]
    text = "\n".join(lines)
    print(text)
    if not a.no_write:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "crawler.md").write_text(text + "\n")
        doc = {"args": vars(a), "runs": runs, "medians": med}
        (OUT / "crawler.json").write_text(json.dumps(doc, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
