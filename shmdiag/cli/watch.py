"""``shmdiag stats --watch [SECONDS]``: the stats again every few seconds, with rates.

Rates are the deltas of the ring's exact counters (``get_stats``: every event, overwritten ones
included) over the time between two refreshes, measured with the monotonic clock: events/s
overall, by severity and by type. The first refresh has no rate yet; a clear between two
refreshes (counters going back) gives no rate for that refresh rather than a negative one.
Nothing but counters is read, so a refresh costs the same on a ring of any size.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from shmdiag.cli._common import attached, dumps, out
from shmdiag.cli.format import human_rate, human_time, table
from shmdiag.core.models import DiagnosticStats, Severity

CLEAR_SCREEN = "\x1b[H\x1b[2J"


@dataclass
class Rates:
    """Events per second between two samples of the stats, ``interval`` seconds apart."""

    interval: float
    total: float
    by_severity: dict[Severity, float]
    by_type: dict[str, float]


def rates(cur: DiagnosticStats, prev: DiagnosticStats | None, interval: float) -> Rates | None:
    """None without a previous sample, after a clear, or over no time."""
    if prev is None or interval <= 0 or cur.total_events < prev.total_events:
        return None
    sev = {s: (cur.events_by_severity.get(s, 0) - prev.events_by_severity.get(s, 0)) / interval for s in Severity}
    types = {t: (n - prev.events_by_type.get(t, 0)) / interval for t, n in cur.events_by_type.items()}
    return Rates(interval, (cur.total_events - prev.total_events) / interval, sev, types)


def rates_to_dict(r: Rates | None) -> dict | None:
    if r is None:
        return None
    return {"interval_seconds": r.interval, "events_per_second": r.total,
            "by_severity": {str(k): v for k, v in r.by_severity.items()}, "by_type": dict(r.by_type)}


def render(name: str, s: DiagnosticStats, r: Rates | None, every: float, *, local: bool = False) -> str:
    """One refresh as text: a header, totals with the rate, severities and types with theirs."""
    now = human_time(datetime.now(timezone.utc), local=local, ms=False)
    total = s.total_events or 1
    rate = "-" if r is None else human_rate(r.total)
    head = f"shmdiag stats {name}  {now}  every {every:g}s"
    if r is not None:
        head += f"  (rates over {r.interval:.3g}s)"
    lines = [head, f"total events {s.total_events}  {rate} ev/s  error rate {s.error_rate:.2%}  "
                   f"active peers {s.active_peers}", ""]

    def r_of(d: dict | None, k: object) -> str:
        return "-" if d is None else human_rate(d.get(k, 0.0))

    sev_r = None if r is None else r.by_severity
    lines.append(table(["SEVERITY", "EVENTS", "EV/S", "SHARE"],
                       [[str(k), v, r_of(sev_r, k), f"{v / total:.1%}"] for k, v in s.events_by_severity.items()],
                       right=(1, 2, 3)))
    if s.events_by_type:
        type_r = None if r is None else r.by_type
        # Busiest now first, then most recorded.
        by_type = sorted(s.events_by_type.items(),
                         key=lambda kv: (-(type_r or {}).get(kv[0], 0.0), -kv[1], kv[0]))
        lines.append("")
        lines.append(table(["TYPE", "EVENTS", "EV/S", "SHARE"],
                           [[k, v, r_of(type_r, k), f"{v / total:.1%}"] for k, v in by_type], right=(1, 2, 3)))
    return "\n".join(lines)


def watch_stats(args: argparse.Namespace) -> int:
    """Refresh every ``args.watch`` seconds, ``args.count`` times (0: until Ctrl-C); stop when
    the ring is removed."""
    from shmdiag.export.dicts import stats_to_dict

    every: float = args.watch
    count: int = args.count or 0
    on_tty = sys.stdout.isatty() and not args.json
    path = f"/dev/shm/{args.name}"
    with attached(args.name) as rec:
        prev: DiagnosticStats | None = None
        prev_t = 0.0
        i = 0
        try:
            while True:
                t = time.monotonic()
                s = rec.get_stats()
                r = rates(s, prev, t - prev_t)
                if args.json:
                    d = stats_to_dict(s)
                    d["sampled_at"] = datetime.now(timezone.utc)
                    d["rates"] = rates_to_dict(r)
                    sys.stdout.buffer.write(dumps(d) + b"\n")
                    sys.stdout.buffer.flush()
                else:
                    text = render(args.name, s, r, every, local=getattr(args, "local", False))
                    out((CLEAR_SCREEN if on_tty else ("\n" if i else "")) + text)
                    sys.stdout.flush()
                prev, prev_t = s, t
                i += 1
                if count and i >= count:
                    return 0
                time.sleep(max(0.0, t + every - time.monotonic()))
                if not os.path.exists(path):
                    sys.stderr.write(f"shmdiag: ring {args.name!r} was removed; stopping\n")
                    return 0
        except KeyboardInterrupt:
            return 0


def add_watch_args(sp: argparse.ArgumentParser) -> None:
    from shmdiag.cli._common import count_arg
    from shmdiag.cli.format import add_human_args
    from shmdiag.cli.top import interval_arg

    sp.add_argument("--watch", type=interval_arg, nargs="?", const=2.0, default=None, metavar="SECONDS",
                    help="refresh every SECONDS (default 2) with rates: events/s overall, by severity, by type")
    sp.add_argument("--count", type=count_arg, default=None, metavar="N",
                    help="with --watch: stop after N refreshes (default: until Ctrl-C)")
    add_human_args(sp, color=False)
