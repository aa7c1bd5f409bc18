"""``shmdiag stats``, ``health`` and ``peers``: one look at a ring."""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING

from shmdiag.cli._common import (
    UsageError,
    attached,
    out,
    print_json,
)
from shmdiag.cli.format import clean
from shmdiag.cli.watch import watch_stats

if TYPE_CHECKING:
    from shmdiag.core.models import PeerDiagnostic


# -- stats / health / peers ----------------------------------------------------------------
def cmd_stats(args: argparse.Namespace) -> int:
    from shmdiag.cli.format import human_time, kv, table
    from shmdiag.export.dicts import stats_to_dict

    if getattr(args, "watch", None) is not None:
        return watch_stats(args)
    if getattr(args, "count", None) is not None:
        raise UsageError("--count is for --watch")
    local = getattr(args, "local", False)
    with attached(args.name) as rec:
        s = rec.get_stats()
    if args.json:
        print_json(stats_to_dict(s))
        return 0
    out(kv([("ring", args.name), ("total events", s.total_events), ("active peers", s.active_peers),
             ("error rate", f"{s.error_rate:.2%}"), ("first event", human_time(s.first_event, local=local, ms=False)),
             ("last event", human_time(s.last_event, local=local, ms=False))]))
    total = s.total_events or 1
    out()
    out(table(["SEVERITY", "EVENTS", "SHARE"],
               [[str(k), v, f"{v / total:.1%}"] for k, v in s.events_by_severity.items()], right=(1, 2)))
    if s.events_by_type:
        out()
        by_type = sorted(s.events_by_type.items(), key=lambda kv: (-kv[1], kv[0]))
        out(table(["TYPE", "EVENTS", "SHARE"], [[k, v, f"{v / total:.1%}"] for k, v in by_type], right=(1, 2)))
    return 0


HEALTH_EXIT = {"healthy": 0, "warning": 1}  # anything else (degraded, error, stopped): 2


def cmd_health(args: argparse.Namespace) -> int:
    from shmdiag.cli.format import human_duration, kv
    from shmdiag.export.dicts import health_to_dict

    with attached(args.name) as rec:
        h = rec.health_check()
    if args.json:
        print_json(health_to_dict(h))
    else:
        out(clean(f"{h.status}: {h.message}"))
        out(kv([("retained", f"{h.event_count} of {h.max_events}"), ("total events", h.total_events),
                 ("overwritten", h.events_overwritten), ("lost", h.events_lost), ("abandoned", h.events_abandoned),
                 ("expired", h.events_expired), ("in flight", h.events_in_flight),
                 ("unused seqs", h.seqs_unused),
                 ("error rate", f"{h.error_rate:.2%}"),
                 ("writers", f"{h.writers_alive} alive, {h.writers_dead} dead"),
                 ("collector", "none" if not h.collector_pid else
                  f"pid {h.collector_pid} ({'running' if h.collector_alive else 'not running'})"),
                 ("uptime", human_duration(h.uptime))],
                indent="  "))
    return HEALTH_EXIT.get(h.status, 2)


def cmd_peers(args: argparse.Namespace) -> int:
    from shmdiag.cli.format import human_bytes, human_duration, human_time, table

    with attached(args.name) as rec:
        nd = rec.get_network_diagnostic()
    if args.json:
        print_json(dataclasses.asdict(nd))
        return 0
    lat = "-" if nd.network_latency is None else human_duration(nd.network_latency)
    line = (f"{nd.total_peers} peers: {nd.active_peers} connected, {nd.disconnected_peers} disconnected; "
            f"mean ping {lat}")
    if nd.untracked_peers or nd.untracked_events:
        line += f"; {nd.untracked_peers} connects and {nd.untracked_events} events of peers beyond the table's cap"
    if nd.recycled_peers:
        line += (f"; {nd.recycled_peers} entries of disconnected peers recycled (their {nd.recycled_messages_sent}"
                 f" msgs out, {nd.recycled_messages_received} in, {human_bytes(nd.recycled_bytes_sent)} out,"
                 f" {human_bytes(nd.recycled_bytes_received)} in are in the totals only)")
    out(line)
    peers = sorted(nd.peer_diagnostics, key=lambda p: (-(p.bytes_sent + p.bytes_received), p.peer_id))
    if args.limit:
        peers = peers[: args.limit]
    if not peers:
        return 0
    def status(p: PeerDiagnostic) -> str:
        return f"{p.status} ({p.status_reason})" if p.status == "disconnected" and p.status_reason else p.status

    rows = [[p.peer_id, p.address or "-", status(p), p.messages_sent, p.messages_received, human_bytes(p.bytes_sent),
             human_bytes(p.bytes_received), human_duration(p.latency), p.error_count,
             human_time(p.last_activity, local=getattr(args, "local", False), clock=True, ms=False)]
            for p in peers]
    out()
    out(table(["PEER", "ADDRESS", "STATUS", "MSGS OUT", "MSGS IN", "BYTES OUT", "BYTES IN", "PING", "ERRORS", "LAST"],
               rows, right=(3, 4, 5, 6, 7, 8)))
    if args.limit and len(nd.peer_diagnostics) > args.limit:
        out(f"... and {len(nd.peer_diagnostics) - args.limit} more (--limit 0 shows all)")
    return 0
