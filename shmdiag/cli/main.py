"""The ``shmdiag`` command: a collector (``serve``) and inspectors that attach to a running ring.

Every mistake a person can make (an unknown ring, a file that is not a ring, a permission
problem, a bad flag or config value) ends in one line on stderr, ``shmdiag: error: ...``, and a
non-zero status: 2 for usage (flags, names, config files), 1 for everything found at run time.
No traceback reaches the user unless SHMDIAG_DEBUG is set.

Inspectors attach with ``Recorder.attach`` and close it when done; they never take a writer
shard (nothing is written unless the command is meant to write, like ``clear``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import stat
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import orjson

from shmdiag.core.errors import ShmDiagError
from shmdiag.core.models import DiagnosticEvent, Severity
from shmdiag.cli.format import clean

_JSON_OPTS = orjson.OPT_UTC_Z
_POLL = 0.025  # tail -f: a new event shows within ~25 ms plus the time to print it


class UsageError(Exception):
    """A mistake in how the command was called: exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag gives one line, not the usage block and a line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"shmdiag: error: {message} (see '{self.prog} --help')\n")


def _err(msg: str) -> None:
    sys.stderr.write(f"shmdiag: error: {msg}\n")
    sys.stderr.flush()


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _dumps(obj: object) -> bytes:
    return orjson.dumps(obj, option=_JSON_OPTS | orjson.OPT_NON_STR_KEYS)


def _print_json(obj: object, *, indent: bool = True) -> None:
    opts = _JSON_OPTS | orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if indent else 0)
    sys.stdout.flush()
    sys.stdout.buffer.write(orjson.dumps(obj, option=opts) + b"\n")
    sys.stdout.buffer.flush()


def _severity(text: str) -> Severity:
    t = text.strip()
    if t.isdigit() and int(t) in Severity._value2member_map_:
        return Severity(int(t))
    try:
        return Severity[t.upper()]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a severity (one of {', '.join(s.name.lower() for s in Severity)}, or 0-4)") from None


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _check_name(name: str) -> str:
    from shmdiag.core.config import validate_name

    try:
        return validate_name(name)
    except ValueError as e:
        raise UsageError(str(e).removeprefix("name: ")) from None


@contextmanager
def _attached(name: str) -> Iterator:
    """An attached Recorder, always closed (an attached recorder never unlinks the ring)."""
    from shmdiag.recorder import Recorder

    rec = Recorder.attach(_check_name(name))
    try:
        yield rec
    finally:
        rec.close()


def _local(ts: datetime | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return "-" if ts is None else ts.astimezone().strftime(fmt)


# -- serve ---------------------------------------------------------------------------------
def _load_config(path: str | None, name: str, max_events: int | None):
    """A RecorderConfig from a TOML file (fields at the top level, or all under a [shmdiag]
    table), the command line's NAME and --max-events winning. Every problem is a UsageError
    naming the field."""
    from shmdiag.core.config import RecorderConfig

    fields = [f.name for f in dataclasses.fields(RecorderConfig) if f.name != "name"]
    values: dict = {}
    if path is not None:
        try:
            import tomllib  # type: ignore[import-not-found]
        except ImportError:  # Python 3.10
            try:
                import tomli as tomllib  # type: ignore[import-not-found,no-redef]
            except ImportError:
                raise UsageError("reading --config needs Python 3.11 or the 'tomli' package (pip install tomli)") from None
        try:
            with open(path, "rb") as f:
                values = tomllib.load(f)
        except OSError as e:
            raise UsageError(f"config file {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise UsageError(f"config file {path}: not valid TOML: {e}") from None
        if isinstance(values.get("shmdiag"), dict):
            if len(values) != 1:
                raise UsageError(f"config file {path}: put the settings either all under [shmdiag] or all at the top "
                                 "level, not both")
            values = values["shmdiag"]
        for key in values:
            if key == "name":
                raise UsageError(f"config file {path}: name: the ring's name is given on the command line "
                                 "(shmdiag serve NAME), not in the file")
            if key not in fields:
                raise UsageError(f"config file {path}: {key}: unknown setting (known: {', '.join(fields)})")
    from_file = set(values)
    if max_events is not None:
        values["max_events"] = max_events
    values["name"] = _check_name(name)
    try:
        return RecorderConfig(**values)
    except ValueError as e:
        field = str(e).split(":", 1)[0]
        if field == "max_events" and max_events is not None:
            raise UsageError(f"--max-events: {str(e).split(': ', 1)[-1]}") from None
        if field in from_file:
            raise UsageError(f"config file {path}: {e}") from None
        raise UsageError(str(e)) from None


def cmd_serve(args: argparse.Namespace) -> int:
    from shmdiag.recorder import Recorder
    from shmdiag.core.segment import RingExistsError
    from shmdiag.cli.format import human_bytes

    cfg = _load_config(args.config, args.name, args.max_events)
    # Wait for SIGINT/SIGTERM/SIGHUP without polling. Not sigwait with the signals blocked: threads
    # that already exist (numpy's BLAS pool) do not have them blocked, and the kernel may hand
    # the signal to one of them. A handler plus a wakeup fd works whichever thread gets it.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # SIGHUP: its terminal was closed
    for s in stops:
        signal.signal(s, lambda *_: None)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log = logging.getLogger("shmdiag")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        rec = Recorder.with_config(cfg)
    except RingExistsError:
        alive = ""
        try:
            from shmdiag.core.rings import ring_info

            info = ring_info(cfg.name)
            if info.owner_pid is not None:
                alive = f" by pid {info.owner_pid}, {'still running' if info.owner_alive else 'no longer running'}"
        except ShmDiagError:
            pass
        raise ShmDiagError(f"a ring named {cfg.name!r} already exists (created{alive}); "
                           f"'shmdiag rm {cfg.name}' removes a stale one") from None
    try:
        size = os.stat(f"/dev/shm/{rec.name}").st_size
        n = rec.name
        _out(f"shmdiag: serving ring {n!r}: {cfg.max_events} events ({human_bytes(size)}), pid {os.getpid()}")
        _out(f"  retention {cfg.retention_period:g}s, cleanup every {cfg.cleanup_interval:g}s, "
             f"health check {'on' if cfg.enable_health_check else 'off'}, metrics {'on' if cfg.enable_metrics else 'off'}")
        _out(f"  follow it:    shmdiag tail {n} -f")
        _out(f"  watch it:     shmdiag top {n}")
        _out(f"  from Python:  Recorder.attach({n!r})")
        _out("Ctrl-C or SIGTERM stops the collector and removes the ring.")
        sys.stdout.flush()
        while True:
            got = os.read(wake_r, 64)
            if got and got[-1] in stops:
                sig = got[-1]
                break
    finally:
        rec.close()  # the creator unlinks the ring
    log.info("shmdiag %s: %s received; ring removed", cfg.name, signal.Signals(sig).name)
    return 0


# -- ls / rm -------------------------------------------------------------------------------
def cmd_ls(args: argparse.Namespace) -> int:
    from shmdiag.core.rings import list_rings
    from shmdiag.cli.format import human_count, human_duration, table

    rings = list_rings()
    if args.json:
        _print_json([r.to_dict() for r in rings])
        return 0
    if not rings:
        _out("no shmdiag rings in /dev/shm")
        return 0
    rows = []
    for r in rings:
        owner = "-" if r.owner_pid is None else f"{r.owner_pid} ({'alive' if r.owner_alive else 'dead'})"
        num = lambda v: "-" if v is None else human_count(v)  # noqa: E731
        rows.append([r.name, owner, num(r.capacity), num(r.retained), num(r.total_events),
                     "-" if r.live_writers is None else r.live_writers, human_duration(r.age), r.note])
    _out(table(["NAME", "OWNER", "CAPACITY", "RETAINED", "TOTAL", "WRITERS", "AGE", "NOTE"], rows,
               right=(2, 3, 4, 5, 6)))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from shmdiag.core.rings import remove_ring

    info = remove_ring(_check_name(args.name), force=args.force)
    if info is not None and info.owner_alive:
        _out(f"removed ring {args.name!r} (its creator, pid {info.owner_pid}, is still running)")
    else:
        _out(f"removed ring {args.name!r}")
    return 0


# -- stats / health / peers ----------------------------------------------------------------
def cmd_stats(args: argparse.Namespace) -> int:
    from shmdiag.export.stream import stats_to_dict
    from shmdiag.cli.format import kv, table

    with _attached(args.name) as rec:
        s = rec.get_stats()
    if args.json:
        _print_json(stats_to_dict(s))
        return 0
    _out(kv([("ring", args.name), ("total events", s.total_events), ("active peers", s.active_peers),
             ("error rate", f"{s.error_rate:.2%}"), ("first event", _local(s.first_event)),
             ("last event", _local(s.last_event))]))
    total = s.total_events or 1
    _out()
    _out(table(["SEVERITY", "EVENTS", "SHARE"],
               [[str(k), v, f"{v / total:.1%}"] for k, v in s.events_by_severity.items()], right=(1, 2)))
    if s.events_by_type:
        _out()
        _out(table(["TYPE", "EVENTS", "SHARE"],
                   [[k, v, f"{v / total:.1%}"] for k, v in sorted(s.events_by_type.items(), key=lambda kv: (-kv[1], kv[0]))],
                   right=(1, 2)))
    return 0


HEALTH_EXIT = {"healthy": 0, "warning": 1}  # anything else (degraded, error, stopped): 2


def cmd_health(args: argparse.Namespace) -> int:
    from shmdiag.export.stream import health_to_dict
    from shmdiag.cli.format import human_duration, kv

    with _attached(args.name) as rec:
        h = rec.health_check()
    if args.json:
        _print_json(health_to_dict(h))
    else:
        _out(clean(f"{h.status}: {h.message}"))
        _out(kv([("retained", f"{h.event_count} of {h.max_events}"), ("total events", h.total_events),
                 ("overwritten", h.events_overwritten), ("lost", h.events_lost), ("abandoned", h.events_abandoned),
                 ("expired", h.events_expired), ("error rate", f"{h.error_rate:.2%}"),
                 ("writers", f"{h.writers_alive} alive, {h.writers_dead} dead"), ("uptime", human_duration(h.uptime))],
                indent="  "))
    return HEALTH_EXIT.get(h.status, 2)


def cmd_peers(args: argparse.Namespace) -> int:
    from shmdiag.cli.format import human_bytes, human_duration, table

    with _attached(args.name) as rec:
        nd = rec.get_network_diagnostic()
    if args.json:
        _print_json(dataclasses.asdict(nd))
        return 0
    lat = "-" if nd.network_latency is None else human_duration(nd.network_latency)
    line = (f"{nd.total_peers} peers: {nd.active_peers} connected, {nd.disconnected_peers} disconnected; "
            f"mean ping {lat}")
    if nd.untracked_peers or nd.untracked_events:
        line += f"; {nd.untracked_peers} connects and {nd.untracked_events} events of peers beyond the table's cap"
    _out(line)
    peers = sorted(nd.peer_diagnostics, key=lambda p: (-(p.bytes_sent + p.bytes_received), p.peer_id))
    if args.limit:
        peers = peers[: args.limit]
    if not peers:
        return 0
    rows = [[p.peer_id, p.address or "-", p.status, p.messages_sent, p.messages_received, human_bytes(p.bytes_sent),
             human_bytes(p.bytes_received), human_duration(p.latency), p.error_count, _local(p.last_activity, "%H:%M:%S")]
            for p in peers]
    _out()
    _out(table(["PEER", "ADDRESS", "STATUS", "MSGS OUT", "MSGS IN", "BYTES OUT", "BYTES IN", "PING", "ERRORS", "LAST"],
               rows, right=(3, 4, 5, 6, 7, 8)))
    if args.limit and len(nd.peer_diagnostics) > args.limit:
        _out(f"... and {len(nd.peer_diagnostics) - args.limit} more (--limit 0 shows all)")
    return 0


# -- tail ----------------------------------------------------------------------------------
_BUILTIN = frozenset(("peer_connected", "peer_disconnected", "message", "error", "latency"))


def format_event(e: DiagnosticEvent) -> str:
    """One line per event: time, severity, pid, type, peer, message, error (and the metadata of
    a custom event, whose message does not already say it)."""
    ts = "-" if e.timestamp is None else e.timestamp.astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    line = f"{ts}  {str(e.severity):<8}  {e.pid or '-':>7}  {e.event_type:<17}  {e.peer_id or '-':<14}  {e.message}"
    if e.metadata and e.event_type not in _BUILTIN:
        line += "  " + orjson.dumps(e.metadata).decode()
    if e.error:
        line += f"  error: {e.error}"
    if e.truncated:
        line += "  [truncated]"
    return clean(line)


def format_gap(gap) -> str:
    parts = []
    if gap.overwritten:
        parts.append(f"-- {gap.overwritten} events overwritten before they could be read --")
    if gap.unreadable:
        parts.append(f"-- {gap.unreadable} events never completed by their writers (stopped, died or dropped) "
                     "or expired --")
    return "\n".join(parts)


def cmd_tail(args: argparse.Namespace) -> int:
    from shmdiag.export.stream import event_to_dict
    from shmdiag.core.follow import Follower, Gap, history

    types, peers = set(args.type or ()), set(args.peer or ())

    def accept(e: DiagnosticEvent) -> bool:
        return (not types or e.event_type in types) and (not peers or e.peer_id in peers)

    out = sys.stdout.buffer
    as_json = args.json

    def write(items: list) -> None:
        buf = []
        for it in items:
            if isinstance(it, Gap):
                if as_json:
                    buf.append(_dumps({"skipped": it.skipped, "overwritten": it.overwritten,
                                       "unreadable": it.unreadable, "first_seq": it.first_seq,
                                       "last_seq": it.last_seq}))
                else:
                    buf.append(format_gap(it).encode())
            elif as_json:
                buf.append(_dumps(event_to_dict(it)))
            else:
                buf.append(format_event(it).encode("utf-8", "replace"))
        if buf:
            out.write(b"\n".join(buf) + b"\n")
            out.flush()

    filt = accept if (types or peers) else None
    with _attached(args.name) as rec:
        seg = rec._seg
        path = f"/dev/shm/{args.name}"
        ino = os.fstat(seg.fileno()).st_ino  # the segment we mapped, even if it was removed already
        events, cursor = history(seg, args.n, int(args.min_severity), filt, follow=args.follow)
        write(events)
        if not args.follow:
            return 0
        follower = Follower(seg, cursor, min_severity=int(args.min_severity), accept=filt)
        next_check = time.monotonic() + 1.0
        try:
            while True:
                write(follower.poll())
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + 1.0
                    try:
                        gone = os.stat(path).st_ino != ino
                    except FileNotFoundError:
                        gone = True
                    if gone:
                        write(follower.poll())
                        sys.stderr.write(f"shmdiag: ring {args.name!r} was removed; stopping\n")
                        return 0
                time.sleep(_POLL)
        except KeyboardInterrupt:
            return 0


# -- top -----------------------------------------------------------------------------------
def cmd_top(args: argparse.Namespace) -> int:
    if not (sys.stdout.isatty() and sys.stdin.isatty()):
        raise ShmDiagError("top needs a terminal (stdin and stdout must be a tty); "
                           f"for scripts use 'shmdiag stats {args.name} --json'")
    from shmdiag.cli import top as _top

    with _attached(args.name) as rec:
        return _top.run(rec, interval=args.interval)


# -- export / clear ------------------------------------------------------------------------
class _Progress:
    """A one-line progress bar on stderr, redrawn at most ~10 times a second."""

    def __init__(self, total: int) -> None:
        self.total = max(total, 1)
        self.last = 0.0
        self.shown = False

    def __call__(self, done: int, total: int | None = None, *_: object) -> None:
        if total:
            self.total = max(int(total), 1)
        now = time.monotonic()
        if now - self.last < 0.1 and done < self.total:
            return
        self.last = now
        frac = min(1.0, done / self.total)
        bar = "#" * int(frac * 30)
        sys.stderr.write(f"\rexporting [{bar:<30}] {frac:4.0%} {done}/{self.total} events")
        sys.stderr.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


_PROGRESS_MIN = 50_000  # retained events from which an export is slow enough to show a bar


def _export_to(rec, fp, fmt: str, progress) -> None:
    if hasattr(rec, "write_export"):
        n = rec.write_export(fp, format=fmt, progress=progress)
        skipped = getattr(n, "skipped", 0)
        if skipped:
            sys.stderr.write(f"shmdiag: {skipped} events were overwritten by writers while exporting and are "
                             "not in the export\n")
        return
    # Until Recorder.write_export lands: the whole export in memory.
    from shmdiag.export.stream import event_to_dict

    if fmt == "json":
        fp.write(rec.export_events())
        fp.write(b"\n")
    else:
        for e in rec.get_events(0):
            fp.write(_dumps(event_to_dict(e)) + b"\n")


def _is_stream(path: str) -> bool:
    """Does ``path`` name something other than a regular file (following symlinks)?"""
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


def cmd_export(args: argparse.Namespace) -> int:
    from shmdiag.core.reader import count_retained

    with _attached(args.name) as rec:
        fmt = args.format or rec.config.export_format
        progress = None
        if sys.stderr.isatty():
            n = count_retained(rec._seg)
            if n >= _PROGRESS_MIN:
                progress = _Progress(n)
        try:
            if args.output in (None, "-"):
                out = sys.stdout.buffer
                sys.stdout.flush()
                _export_to(rec, out, fmt, progress)
                out.flush()
            elif _is_stream(args.output):
                # A FIFO, a device (/dev/null, /dev/stdout) or a socket: written into, never
                # replaced by a regular file (as root, a rename over /dev/null would do that).
                with open(args.output, "wb") as fp:
                    _export_to(rec, fp, fmt, progress)
            else:
                # A regular file, or a new path: written whole or not at all.
                tmp = f"{args.output}.tmp"
                try:
                    with open(tmp, "wb") as fp:
                        _export_to(rec, fp, fmt, progress)
                    os.replace(tmp, args.output)
                except BaseException:
                    try:
                        os.unlink(tmp)
                    except OSError:
                        pass
                    raise
        finally:
            if progress is not None:
                progress.done()
    return 0


def cmd_clear(args: argparse.Namespace) -> int:
    from shmdiag.core.reader import count_retained

    with _attached(args.name) as rec:
        n = count_retained(rec._seg)
        rec.clear_events()
    _out(f"cleared ring {args.name!r}: {n} retained events dropped, stats zeroed")
    return 0


# -- demo / loadgen ------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    if not 1 <= args.writers <= 64 or args.seconds <= 0 or args.max_events < 1:
        raise UsageError("--writers must be 1-64, --seconds > 0, --max-events >= 1")
    from shmdiag.loadgen import demo as _demo

    return _demo.run(args.writers, args.seconds, args.max_events)


def cmd_loadgen(args: argparse.Namespace, extra: list[str]) -> int:
    try:
        from shmdiag.loadgen import generator as _loadgen
    except ImportError as e:
        if e.name != f"{__package__}._loadgen":
            raise
        raise ShmDiagError("loadgen is not available in this installation (shmdiag.loadgen.generator is missing)") from None
    parser = _Parser(prog="shmdiag loadgen", description="Generate load: many writer processes on one ring.")
    _loadgen.configure_parser(parser)
    return _loadgen.run(parser.parse_args(extra))


# -- the parser ----------------------------------------------------------------------------
_SERVE_EPILOG = """\
The collector owns the ring: retention cleanup every cleanup_interval, dead writers reaped,
and a periodic health check whose changes are logged to stderr. It unlinks the ring on exit.

Config file (TOML): RecorderConfig fields, all at the top level or all under [shmdiag]:
  [shmdiag]
  max_events = 100000        # --max-events overrides it
  cleanup_interval = 300     # seconds
  retention_period = 86400   # seconds
  enable_metrics = true
  enable_health_check = true
  log_level = "info"         # debug, info, warning, error, critical
  export_format = "json"     # json or ndjson
  max_writers = 128
  max_peers = 4096
The ring's name comes from NAME only. An unknown key or a bad value exits with status 2."""

_TAIL_EPILOG = """\
With -f, every event recorded after the last one shown is printed once, in sequence order,
within about 50 ms. Events tail could not read are reported where they were, in order:
  -- N events overwritten before they could be read --
      the ring went round before tail read them (tail was slower than the writers, or stopped)
  -- N events never completed by their writers (stopped, died or dropped) or expired --
      a writer claimed a sequence number and did not finish its record within 2 s, or the
      record was removed by retention cleanup
With --json these are JSON lines of their own:
  {"skipped": N, "overwritten": N1, "unreadable": N2, "first_seq": A, "last_seq": B}
A clear does not interrupt following. When the ring is removed, tail -f says so and exits 0."""

def build_parser() -> _Parser:
    p = _Parser(prog="shmdiag", description="Multi-process P2P diagnostics recorder: a collector and inspectors "
                                              "for shared-memory rings.")
    from shmdiag import __version__

    p.add_argument("--version", action="version", version=f"shmdiag {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help: str, func, *, json: bool = False, ring: bool = True, epilog: str | None = None) -> _Parser:
        sp = sub.add_parser(name, help=help, description=help, epilog=epilog,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        if ring:
            sp.add_argument("name", metavar="NAME", help="the ring's name (as in /dev/shm)")
        if json:
            sp.add_argument("--json", action="store_true", help="machine-readable output")
        sp.set_defaults(func=func)
        return sp

    sp = cmd("serve", "create a ring and run its collector until SIGINT/SIGTERM", cmd_serve, epilog=_SERVE_EPILOG)
    sp.add_argument("--max-events", type=int, metavar="N", help="ring capacity (overrides the config file)")
    sp.add_argument("--config", metavar="FILE",
                    help="TOML file of RecorderConfig fields, at the top level or under [shmdiag]")
    sp = cmd("ls", "list every shmdiag ring on this machine", cmd_ls, json=True, ring=False)
    sp = cmd("rm", "remove a stale ring (refuses while its creator is alive)", cmd_rm)
    sp.add_argument("--force", action="store_true", help="remove it even if its creator is alive")
    cmd("stats", "event counts by type and severity since creation or the last clear", cmd_stats, json=True)
    cmd("health", "health status; exit 0 healthy, 1 warning, 2 degraded/error", cmd_health, json=True)
    sp = cmd("peers", "per-peer messages, bytes, ping and errors", cmd_peers, json=True)
    sp.add_argument("--limit", type=_positive_int, default=50, metavar="N",
                    help="show the N busiest peers (default 50, 0 = all)")
    sp = cmd("tail", "print the last events; -f keeps following", cmd_tail, json=True, epilog=_TAIL_EPILOG)
    sp.add_argument("-f", "--follow", action="store_true", help="keep printing new events as they are recorded")
    sp.add_argument("-n", type=_positive_int, default=10, metavar="N", help="how many past events (default 10)")
    sp.add_argument("--min-severity", type=_severity, default=Severity.DEBUG, metavar="S",
                    help="debug, info, warning, error or critical (default debug)")
    sp.add_argument("--type", action="append", metavar="T", help="only events of this type (repeatable)")
    sp.add_argument("--peer", action="append", metavar="P", help="only events of this peer (repeatable)")
    sp = cmd("top", "live full-screen view (q quits)", cmd_top)
    sp.add_argument("--interval", type=float, default=1.0, metavar="S", help="refresh period (default 1 s)")
    sp = cmd("export", "export the retained events with stats and health", cmd_export)
    sp.add_argument("-o", "--output", metavar="FILE", help="write here (atomically) instead of stdout")
    sp.add_argument("--format", choices=("json", "ndjson"), help="default: the ring's export_format")
    cmd("clear", "forget every retained event and zero the stats", cmd_clear)
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
        return args.func(args)
    except UsageError as e:
        _err(str(e))
        return 2
    except ShmDiagError as e:
        _err(str(e))
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
        _err(f"{where}{e.strerror or e}")
        return 1
    except Exception as e:  # a bug: still one line, unless asked for the traceback
        if os.environ.get("SHMDIAG_DEBUG"):
            raise
        _err(f"unexpected {type(e).__name__}: {e} (run with SHMDIAG_DEBUG=1 for the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
