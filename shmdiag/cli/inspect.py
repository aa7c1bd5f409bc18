"""``shmdiag stats``, ``health`` and ``peers``: one look at a ring."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from shmdiag.cli._common import (
    UsageError,
    attached,
    check_name,
    err,
    out,
    print_json,
)
from shmdiag.cli.format import clean
from shmdiag.cli.watch import watch_stats

if TYPE_CHECKING:
    from shmdiag.core.models import HealthStatus, PeerDiagnostic


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


def health_flags(sp: argparse.ArgumentParser) -> None:
    """The health policy flags, shared by ``health`` and ``serve``."""
    from shmdiag.cli._common import seconds_arg, seconds_or_off_arg, severity_arg
    from shmdiag.views import health as H

    sp.add_argument("--window", type=seconds_arg, default=H.DEFAULT_WINDOW, metavar="DURATION",
                    help="judge loss, writer deaths and error rate over this recent window "
                         f"(default {H.DEFAULT_WINDOW:g}s; 90, 1.5s, 5m, 2h)")
    sp.add_argument("--stall-after", type=seconds_or_off_arg, default=H.DEFAULT_STALL_AFTER, metavar="DURATION",
                    help="'stalled' when no event arrived for this long while writers are alive "
                         f"(default {H.DEFAULT_STALL_AFTER:g}s; 0: never)")
    sp.add_argument("--error-rate-min-severity", type=severity_arg, default=H.DEFAULT_ERROR_RATE_MIN_SEVERITY,
                    metavar="S", help="error rate = errors / events at or above this severity "
                                      "(default info: DEBUG volume does not move it)")


_HEALTH_EPILOG = """Exit status (Nagios/Icinga plugin convention):
  0 OK        healthy
  1 WARNING   warning
  2 CRITICAL  degraded, error or stopped (and usage errors, as every shmdiag command)
  3 UNKNOWN   no such ring, no permission, not a ring, another layout version, corrupt
The first line is a plugin's: 'SHMDIAG <STATE> - <status>: <reasons> | <perfdata>'.

Conditions (the worst one decides), judged over the last --window (default 5m):
  error rate (ERROR+CRITICAL over events at --error-rate-min-severity and above, default
  INFO): warning >= 5%, degraded >= 20%, error >= 50%; events lost or abandoned: warning if
  any, degraded >= 1% of those recorded, error >= 10%; a writer that died without detaching:
  warning; no event for --stall-after (default 5m) while writers are alive: warning; the peer
  table full: warning. Always: the ring's collector killed, or its name removed: error.
An incident older than the window no longer counts; the since-creation totals are still shown.
A one-shot check has no history: it takes the window from the ring's creation if younger,
else from the writers' last-event times (a writer that recorded within the window is taken
whole: an upper bound) and the error rate from the retained events' own timestamps.
'shmdiag serve' keeps a history of the counters and judges the window exactly.
See docs/health.md."""


def _perfdata(h: HealthStatus) -> str:
    """Nagios performance data: 'label'=value[UOM];[warn];[crit] (crit: the degraded level)."""
    from shmdiag.views import health as H

    items = [
        f"window_error_rate={h.window_error_rate * 100:.2f}%;{H.ERROR_RATE_WARNING * 100:g};"
        f"{H.ERROR_RATE_DEGRADED * 100:g};0;100",
        f"window_events={h.window_events}c", f"window_lost={h.window_events_lost + h.window_events_abandoned};1",
        f"window_writers_died={h.window_writers_died};1", f"writers_alive={h.writers_alive}",
        f"writers_dead={h.writers_dead}", f"retained={h.event_count};;;0;{h.max_events}",
        f"total_events={h.total_events}c", f"lost={h.events_lost + h.events_abandoned}c",
    ]
    if h.idle_seconds is not None:
        items.append(f"idle={h.idle_seconds:.1f}s" + (f";{h.stall_after:g}" if h.stall_after else ""))
    return " ".join(items)


def cmd_health(args: argparse.Namespace) -> int:
    """A Nagios/Icinga plugin: exit 0 OK (healthy), 1 WARNING, 2 CRITICAL (degraded, error,
    stopped), 3 UNKNOWN (the ring cannot be read: one line on stderr, and the plugin line)."""
    import os

    from shmdiag.cli.format import human_duration, human_time, kv
    from shmdiag.core.errors import ShmDiagError
    from shmdiag.export.dicts import health_to_dict
    from shmdiag.views.health import EXIT_UNKNOWN, NAGIOS_LABEL, exit_code

    name = check_name(args.name)  # a usage error (exit 2), as every other command's
    try:
        with attached(name) as rec:
            h = rec.health_check(args.window, stall_after=args.stall_after,
                                 error_rate_min_severity=args.error_rate_min_severity)
    except (ShmDiagError, OSError) as e:
        # No such ring, no permission, not a ring, another layout version, corrupt: UNKNOWN.
        msg = str(e) if isinstance(e, ShmDiagError) else f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}"
        err(msg)
        if not args.json:
            out(clean(f"SHMDIAG UNKNOWN - {msg}"))
        return EXIT_UNKNOWN
    except Exception as e:  # a bug: still a probe's answer, UNKNOWN, unless asked for the traceback
        if os.environ.get("SHMDIAG_DEBUG"):
            raise
        err(f"unexpected {type(e).__name__}: {e} (run with SHMDIAG_DEBUG=1 for the traceback)")
        return EXIT_UNKNOWN
    code = exit_code(h.status)
    from shmdiag.alerts import health_summary, live_state

    doc = live_state(name, h.collector_pid, h.collector_alive)
    alerts = health_summary(doc) if doc is not None else None
    if args.json:
        print_json(health_to_dict(h) | ({"alerts": alerts} if alerts is not None else {}))
        return code
    out(clean(f"SHMDIAG {NAGIOS_LABEL[code]} - {h.status}: {h.message} | {_perfdata(h)}"))
    for r in h.reasons:
        out(clean(f"  {r.status:<8} {r.condition}: {r.message}"))
    src = {"history": "from this process's samples", "creation": "the ring is younger: since creation",
           "timestamps": "from the writers' timestamps, an upper bound"}.get(h.window_source, h.window_source)
    out(kv([("window", f"last {human_duration(h.window)} ({src})"),
            ("  events", h.window_events), ("  lost", h.window_events_lost),
            ("  abandoned", h.window_events_abandoned),
            ("  error rate", f"{h.window_error_rate:.2%} ({h.window_errors} errors of {h.window_rated_events} "
                             f"events at {h.error_rate_min_severity} and above)"),
            ("  writers died", h.window_writers_died),
            ("since creation", f"{h.total_events} events recorded"),
            ("  retained", f"{h.event_count} of {h.max_events}"),
            ("  overwritten", h.events_overwritten), ("  lost", h.events_lost),
            ("  abandoned", h.events_abandoned), ("  expired", h.events_expired),
            ("  in flight", h.events_in_flight), ("  unused seqs", h.seqs_unused),
            ("  error rate", f"{h.error_rate:.2%} ({h.errors} errors of {h.rated_events} events at "
                             f"{h.error_rate_min_severity} and above)"),
            ("writers", f"{h.writers_alive} alive, {h.writers_dead} dead"),
            *[(f"  dead pid {d.pid}", f"{d.recorded} recorded, {d.lost} lost, {d.abandoned} abandoned, "
                                      f"last event {human_time(d.last_event)}"
                                      f"{' (in the window)' if d.in_window else ''}") for d in h.dead_writers],
            ("last event", f"{human_time(h.last_event)}" + (
                "" if h.idle_seconds is None else f" ({human_duration(h.idle_seconds)} ago; stalled after "
                                                  f"{human_duration(h.stall_after) if h.stall_after else 'never'})")),
            ("collector", "none" if not h.collector_pid else
             f"pid {h.collector_pid} ({'running' if h.collector_alive else 'not running'})"),
            *([("alerts", f"{len(alerts['firing'])} of {alerts['rules']} rules firing"
                          f"{': ' + ', '.join(alerts['firing']) if alerts['firing'] else ''}; "
                          f"{alerts['notifications_failed']} notifications failed, "
                          f"{alerts['notifications_dropped']} dropped"
                          f"{' (last: ' + alerts['last_error'] + ')' if alerts['last_error'] else ''}")]
              if alerts is not None else []),
            ("uptime", human_duration(h.uptime))],
           indent="  "))
    return code


def cmd_peers(args: argparse.Namespace) -> int:
    from shmdiag.cli.format import human_bytes, human_duration, human_time, table
    from shmdiag.export.dicts import busiest_first, network_to_dict

    with attached(args.name) as rec:
        nd = rec.get_network_diagnostic()
    if args.json:
        print_json(network_to_dict(nd, args.limit or 0))
        return 0
    limit = 50 if args.limit is None else args.limit
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
    peers = busiest_first(nd.peer_diagnostics)
    if limit:
        peers = peers[:limit]
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
    if limit and len(nd.peer_diagnostics) > limit:
        out(f"... and {len(nd.peer_diagnostics) - limit} more (--limit 0 shows all)")
    return 0
