"""``shmdiag alerts`` (the rules of a ring's collector and where each stands) and ``shmdiag
alert-rules`` (the same rules as a Prometheus rule file)."""

from __future__ import annotations

import argparse
import os

from shmdiag.cli._common import UsageError, attached, out, print_json, read_toml
from shmdiag.core.errors import ShmDiagError


def cmd_alerts(args: argparse.Namespace) -> int:
    from shmdiag.alerts import live_state

    with attached(args.name) as insp:
        h = insp.health_check()
    doc = live_state(args.name, h.collector_pid, h.collector_alive)
    if doc is None:
        raise ShmDiagError(f"no collector evaluates alerts for ring {args.name!r} "
                           f"(start one with 'shmdiag serve {args.name}')")
    if args.json:
        from shmdiag.export.schema import SCHEMA_VERSION

        print_json({"schema_version": SCHEMA_VERSION, "kind": "alerts", **doc})  # docs/json.md
        return 0
    n = doc["notifications"]
    out(f"alerts of ring {args.name!r}, evaluated every {doc['interval']:g}s by collector pid {doc['collector_pid']} "
        f"(as of {doc['updated_at']})")
    for a in doc["alerts"]:
        since = f" since {a['since']}" if a["since"] else ""
        out(f"  {a['state'].upper():8} {a['name']} [{a['severity']}]{since}")
        out(f"           when {a['description']}; now: {a['found']}")
    for recv, url in doc["receivers"].items():
        if url:
            out(f"  {recv} {url}: {n['sent'][recv]} sent, {n['failed'][recv]} failed, {n['dropped'][recv]} dropped")
    if n["last_error"]:
        out(f"  last failure: {n['last_error']}")
    return 0


def cmd_alert_rules(args: argparse.Namespace) -> int:
    from shmdiag.alerts import AlertConfigError, parse_alerting, prometheus_rules

    values: dict = {}
    if args.config is not None:
        values = read_toml(args.config)
    try:
        cfg = parse_alerting(values)
    except AlertConfigError as e:
        raise UsageError(f"config file {args.config}: {e}") from None
    text = prometheus_rules(cfg.rules)
    if args.output:
        tmp = f"{args.output}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, args.output)
    else:
        out(text.rstrip("\n"))
    return 0
