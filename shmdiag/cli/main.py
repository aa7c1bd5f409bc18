"""The ``shmdiag`` command: a collector (``serve``) and inspectors that attach to a running ring.

Every mistake a person can make (an unknown ring, a file that is not a ring, a permission
problem, a bad flag or config value) ends in one line on stderr, ``shmdiag: error: ...``, and a
non-zero status: 2 for usage (flags, names, config files), 1 for everything found at run time.
No traceback reaches the user unless SHMDIAG_DEBUG is set.

Read commands attach a ``shmdiag.Inspector`` (the ring mapped read-only: they take no writer
shard and cannot write a byte of it); only the commands meant to write, like ``clear``, attach a
``Recorder``. ``serve`` creates the ring and runs its ``shmdiag.collector.Collector``.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Callable

from shmdiag.cli._common import (
    Parser,
    UsageError,
    count_arg,
    err,
    seconds_arg,
    severity_arg,
)
from shmdiag.cli.alerts import cmd_alert_rules, cmd_alerts
from shmdiag.cli.archive import (
    ARCHIVE_EPILOG,
    add_filters,
    add_rotation,
    cmd_archive,
    cmd_query,
    cmd_replay,
    cmd_tail_nats,
    duration_arg,
    size_arg,
)
from shmdiag.cli.export import _EXPORT_EPILOG, cmd_export
from shmdiag.cli.format import add_human_args
from shmdiag.cli.inspect import _HEALTH_EPILOG, cmd_health, cmd_peers, cmd_stats, health_flags
from shmdiag.cli.rings import cmd_clear, cmd_ls, cmd_rm
from shmdiag.cli.run import cmd_demo, cmd_loadgen
from shmdiag.cli.serve import _SERVE_EPILOG, cmd_serve
from shmdiag.cli.tail import _TAIL_EPILOG, add_filter_args, cmd_tail
from shmdiag.cli.top import _TOP_EPILOG, add_top_args, cmd_top
from shmdiag.cli.watch import add_watch_args
from shmdiag.cli.web import WEB_HELP, cmd_web, http_arg
from shmdiag.collector import HEALTH_PERIOD
from shmdiag.core.errors import ShmDiagError


def build_parser() -> Parser:
    p = Parser(prog="shmdiag", description="Multi-process P2P diagnostics recorder: a collector and inspectors "
                                              "for shared-memory rings.")
    from shmdiag import __version__

    p.add_argument("--version", action="version", version=f"shmdiag {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help: str, func: Callable[[argparse.Namespace], int], *, json: bool = False,
            ring: bool = True, epilog: str | None = None) -> Parser:
        sp = sub.add_parser(name, help=help, description=help, epilog=epilog,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        if ring:
            sp.add_argument("name", metavar="NAME", help="the ring's name (as in /dev/shm)")
        if json:
            sp.add_argument("--json", action="store_true", help="machine-readable output")
        sp.set_defaults(func=func)
        return sp

    sp = cmd("serve", "create a ring (or adopt one whose collector was killed) and run its collector until "
             "SIGINT/SIGTERM", cmd_serve, epilog=_SERVE_EPILOG)
    sp.add_argument("--max-events", type=int, metavar="N", help="ring capacity (overrides the config file)")
    sp.add_argument("--config", metavar="FILE",
                    help="TOML file of RecorderConfig fields, at the top level or under [shmdiag]")
    sp.add_argument("--archive", metavar="DIR", help="archive every event the collector reads into DIR (SQLite)")
    add_rotation(sp)
    sp.add_argument("--nats", metavar="URL", help="publish the events to NATS JetStream at URL (nats://host:4222)")
    sp.add_argument("--nats-stream", default="SHMDIAG", metavar="NAME", help="the JetStream stream (default SHMDIAG)")
    sp.add_argument("--nats-buffer", type=count_arg, default=200_000, metavar="N",
                    help="events held while NATS is unreachable before they are dropped and counted "
                         "(default 200000)")
    sp.add_argument("--nats-max-bytes", type=size_arg, default=1 << 30, metavar="SIZE",
                    help="the stream's size limit when serve creates it (default 1G; oldest discarded)")
    sp.add_argument("--nats-max-age", type=duration_arg, default=7 * 86400.0, metavar="DURATION",
                    help="the stream's age limit when serve creates it (default 7d)")
    sp.add_argument("--host-id", default=socket.gethostname(), metavar="ID",
                    help="this host's name in the archive and NATS subjects (default: the hostname)")
    sp.add_argument("--http", type=http_arg, metavar="ADDR", help=WEB_HELP + "; refused at start if it cannot "
                    "be bound")
    sp.add_argument("--health-interval", type=seconds_arg, default=HEALTH_PERIOD, metavar="DURATION",
                    help=f"seconds between health checks (default {HEALTH_PERIOD:g}s; with health checks on)")
    health_flags(sp)
    sp = cmd("web", "serve a running ring's /metrics, JSON API and dashboard over HTTP (read-only)", cmd_web)
    sp.add_argument("--http", type=http_arg, metavar="ADDR", default=("127.0.0.1", 9464),
                    help=WEB_HELP + " (default 127.0.0.1:9464)")
    sp = cmd("ls", "list every shmdiag ring on this machine", cmd_ls, json=True, ring=False)
    sp = cmd("rm", "remove a stale ring (refuses while its collector, or creator, is alive)", cmd_rm)
    sp.add_argument("--force", action="store_true", help="remove it even if it is in use")
    sp = cmd("stats", "event counts by type and severity since creation or the last clear; --watch adds rates",
             cmd_stats, json=True)
    add_watch_args(sp)
    sp = cmd("health", "health as a Nagios/Icinga probe: exit 0 OK, 1 WARNING, 2 CRITICAL (degraded, error, "
             "stopped), 3 UNKNOWN (no such ring, unreadable, not a ring)", cmd_health, json=True,
             epilog=_HEALTH_EPILOG)
    health_flags(sp)
    sp = cmd("peers", "per-peer messages, bytes, ping and errors", cmd_peers, json=True)
    sp.add_argument("--limit", type=count_arg, default=None, metavar="N",
                    help="show the N busiest peers (0 = all; default 50, or all with --json)")
    add_human_args(sp, color=False)
    sp = cmd("tail", "print the last events; -f keeps following", cmd_tail, json=True, epilog=_TAIL_EPILOG,
             ring=False)
    sp.add_argument("name", metavar="NAME", nargs="?", help="the ring's name (as in /dev/shm)")
    sp.add_argument("--nats", metavar="URL", help="follow a remote ring through NATS JetStream (with --host, --ring)")
    sp.add_argument("--host", metavar="H", help="with --nats: the remote ring's host id")
    sp.add_argument("--ring", metavar="R", help="with --nats: the remote ring's name")
    sp.add_argument("-f", "--follow", action="store_true", help="keep printing new events as they are recorded")
    sp.add_argument("-F", dest="follow_name", action="store_true",
                    help="as -f, and when the ring is removed or replaced (a collector restarted), wait for it "
                         "and follow the new one")
    sp.add_argument("-n", type=count_arg, default=10, metavar="N",
                    help="how many past events (default 10; 0 only with -f)")
    add_filter_args(sp, severity_arg)
    add_human_args(sp)
    sp = cmd("top", "live full-screen view (? help, q quits); --batch -n 1 for a text snapshot", cmd_top,
             epilog=_TOP_EPILOG)
    add_top_args(sp)
    sp = cmd("export", "export the retained events with stats and health", cmd_export, epilog=_EXPORT_EPILOG)
    sp.add_argument("-o", "--output", metavar="FILE", help="write here (atomically) instead of stdout")
    sp.add_argument("--format", choices=("json", "ndjson"), help="default: the ring's export_format")
    sp.add_argument("--meta", metavar="FILE", help="also write the export's metadata (the json document "
                    "without its events) to FILE: for ndjson, whose lines are events only")
    sp.add_argument("--with-peers", action="store_true", help="include the peers and the writer processes")
    add_filter_args(sp, severity_arg)
    cmd("clear", "forget every retained event and zero the stats", cmd_clear)
    sp = cmd("query", "events from an archive directory, in time order, filtered", cmd_query, json=True,
             ring=False, epilog=ARCHIVE_EPILOG)
    add_filters(sp)
    sp = cmd("replay", "record archived events into a ring again, to look at an incident with the live tools",
             cmd_replay, ring=False)
    add_filters(sp)
    sp.add_argument("--into", required=True, metavar="RING", help="the ring to record into (it must exist)")
    sp.add_argument("--speed", type=float, default=0.0, metavar="X",
                    help="X times the original pace (1: real time); 0 (default): as fast as possible")
    sp = cmd("archive", "archive a fleet's events from NATS JetStream into DIR (the central archive)", cmd_archive,
             ring=False, epilog=ARCHIVE_EPILOG)
    sp.add_argument("--from-nats", required=True, metavar="URL", help="the NATS server (nats://host:4222)")
    sp.add_argument("dir", metavar="DIR", help="the archive directory")
    sp.add_argument("--nats-stream", default="SHMDIAG", metavar="NAME", help="the JetStream stream (default SHMDIAG)")
    sp.add_argument("--durable", default="shmdiag-archive", metavar="NAME",
                    help="the durable consumer's name (default shmdiag-archive)")
    add_rotation(sp)
    cmd("alerts", "the alert rules of the ring's collector and where each stands", cmd_alerts, json=True)
    sp = cmd("alert-rules", "print the alert rules (the defaults, or those of --config) as a Prometheus rule file",
             cmd_alert_rules, ring=False)
    sp.add_argument("--config", metavar="FILE", help="the collector's TOML config ([alerting], [[alert]] tables)")
    sp.add_argument("-o", "--output", metavar="FILE", help="write here (atomically) instead of stdout")
    sp = cmd("demo", "record a simulated node from several processes and show the result", cmd_demo, ring=False)
    sp.add_argument("--writers", type=int, default=4, help="writer processes (default 4)")
    sp.add_argument("--seconds", type=float, default=2.0, help="how long they record (default 2)")
    sp.add_argument("--max-events", type=int, default=10_000, help="ring capacity (default 10000)")
    sp = sub.add_parser("loadgen", help="many writer processes on one ring (see 'shmdiag loadgen --help')",
                        add_help=False)
    sp.set_defaults(func=None)
    return p


def _quiet_stdout() -> None:
    """After the reader of our stdout went away: point stdout at /dev/null so the interpreter's
    final flush does not complain."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command != "loadgen" and extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "loadgen":
            return cmd_loadgen(args, extra)
        func: Callable[[argparse.Namespace], int] = args.func
        if args.command == "tail":
            if args.nats:
                func = cmd_tail_nats
            elif not args.name:
                raise UsageError("tail needs NAME (or --nats URL --host H --ring R)")
        return func(args)
    except UsageError as e:
        err(str(e))
        return 2
    except ShmDiagError as e:
        err(str(e))
        return 1
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        if os.environ.get("SHMDIAG_DEBUG"):
            raise
        where = f"{e.filename}: " if e.filename else ""
        err(f"{where}{e.strerror or e}")
        return 1
    except Exception as e:  # a bug: still one line, unless asked for the traceback
        if os.environ.get("SHMDIAG_DEBUG"):
            raise
        err(f"unexpected {type(e).__name__}: {e} (run with SHMDIAG_DEBUG=1 for the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
