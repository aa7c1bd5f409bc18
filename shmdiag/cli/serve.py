"""``shmdiag serve``: create a ring (or adopt one whose collector was killed) and run its collector.

The ring is created with ``persist``: it is not registered with the resource tracker, so a
``serve`` killed by SIGKILL or the OOM killer leaves it behind with every retained event and
counter. ``serve`` started again with the same name adopts such a ring -- one of this layout
version whose collector is dead (or, if it never had one, whose creator is dead) -- and carries
on with it; a live one, or a segment that is not a valid ring, is refused with one line and left
as it was. SIGINT, SIGTERM and SIGHUP stop the collector and remove the ring.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

from shmdiag.cli._common import (
    UsageError,
    check_name,
    out,
    read_toml,
)
from shmdiag.core.errors import ShmDiagError

if TYPE_CHECKING:
    from shmdiag.alerts import AlertingConfig
    from shmdiag.archive.archiver import RingArchiver
    from shmdiag.core.config import RecorderConfig
    from shmdiag.recorder import Recorder


# -- serve ---------------------------------------------------------------------------------
def _load_config(path: str | None, name: str,
                 max_events: int | None) -> tuple[RecorderConfig, set[str], AlertingConfig]:
    """A RecorderConfig from a TOML file (fields at the top level, or all under a [shmdiag]
    table), the command line's NAME and --max-events winning, the fields that were given
    (not defaults), and the alert rules (the [alerting] and [[alert]] tables; the default rules
    when there are none). Every problem is a UsageError naming the field."""
    from shmdiag.alerts import AlertConfigError, parse_alerting
    from shmdiag.core.config import RecorderConfig

    fields = [f.name for f in dataclasses.fields(RecorderConfig) if f.name != "name"]
    values: dict = {}
    alerting = parse_alerting({})
    if path is not None:
        values = read_toml(path)
        alert_tables = {k: values.pop(k) for k in ("alerting", "alert") if k in values}
        try:
            alerting = parse_alerting(alert_tables)
        except AlertConfigError as e:
            raise UsageError(f"config file {path}: {e}") from None
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
    given = set(values)
    values["name"] = check_name(name)
    try:
        return RecorderConfig(**values), given, alerting
    except ValueError as e:
        field = str(e).split(":", 1)[0]
        if field == "max_events" and max_events is not None:
            raise UsageError(f"--max-events: {str(e).split(': ', 1)[-1]}") from None
        if field in from_file:
            raise UsageError(f"config file {path}: {e}") from None
        raise UsageError(str(e)) from None


def _adopt(cfg: RecorderConfig, given: set[str]) -> Recorder:
    """Attach (writable) to the existing ring ``cfg.name`` to collect it, if it is a ring of
    this layout version that nobody collects or keeps alive and whose settings agree with those
    given; otherwise raise a one-line ShmDiagError and change nothing."""
    from shmdiag.core.rings import ring_keeper
    from shmdiag.recorder import Recorder

    name = cfg.name
    assert name is not None
    try:
        keeper = ring_keeper(name)
    except ShmDiagError as e:  # foreign, truncated, corrupt, another version, no permission
        raise ShmDiagError(f"cannot adopt the existing segment {name!r}: {e}; nothing was changed") from None
    if keeper is not None:
        role, pid = keeper
        raise ShmDiagError(f"a ring named {name!r} already exists and is in use ({role} pid {pid}, still running); "
                           "stop that process first") from None
    rec = Recorder.attach(name)
    try:
        for f in sorted(given):
            want, have = getattr(cfg, f), getattr(rec.config, f)
            if (want.lower() if isinstance(want, str) else want) != have:
                raise ShmDiagError(f"the existing ring {name!r} has {f} = {have!r}, not {want!r} as asked; "
                                   f"serve it with its own settings, or 'shmdiag rm {name}' to start afresh")
    except BaseException:
        rec.close()
        raise
    return rec


def cmd_serve(args: argparse.Namespace) -> int:
    from shmdiag.alerts import AlertService, with_dashboard
    from shmdiag.cli.format import human_bytes
    from shmdiag.collector import Collector
    from shmdiag.core.segment import RingExistsError
    from shmdiag.recorder import Recorder

    cfg, given, alerting = _load_config(args.config, args.name, args.max_events)
    assert cfg.name is not None  # _load_config always sets it (from NAME)
    sock = None
    if args.http is not None:  # bound before the ring is made: a busy port changes nothing
        from shmdiag.cli.web import listen, need_web

        need_web()
        sock = listen(args.http)
        host, port = sock.getsockname()[:2]
        alerting = with_dashboard(alerting, f"http://{f'[{host}]' if ':' in host else host}:{port}/")
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
    adopted = False
    try:
        sinks = _open_sinks(args, log)  # bad archive dirs and NATS URLs are refused before the ring is made
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    archiver = None
    try:
        # persist: not registered with the resource tracker, so the ring outlives a SIGKILL of this
        # process; its collector is run below, logging to stderr
        rec = Recorder.with_config(cfg, collector=False, persist=True)
    except RingExistsError:
        try:
            rec = _adopt(cfg, given)
        except BaseException:
            _close_sinks(sinks)
            raise
        adopted = True
    except BaseException:
        _close_sinks(sinks)
        raise
    collector = Collector(rec, log, health_period=args.health_interval, window=args.window,
                          stall_after=args.stall_after, error_rate_min_severity=args.error_rate_min_severity)
    # alert events go into the ring without a second log line (AlertService logs each transition)
    alerts = AlertService(rec, alerting, ring=cfg.name, record=lambda e: rec.record_event(e, log=False),
                          logger=log)
    sig = None
    web = insp = None
    try:
        collector.start()  # names this process the ring's collector (refused if another live one is)
        alerts.start()
        if sock is not None:
            # The endpoint reads through its own read-only Inspector (never the collector's
            # recorder: no request can write) in a thread of its own, so a slow or hostile
            # client never holds up the collector thread.
            from shmdiag.inspector import Inspector
            from shmdiag.web.server import WebServer

            insp = Inspector.attach(rec.name)
            web = WebServer(insp, sock)
            web.start()
        size = os.stat(f"/dev/shm/{rec.name}").st_size
        n = rec.name
        if adopted:
            acct = rec.accounting()
            log.info("shmdiag %s: adopted the existing ring (created by pid %d): %d events recorded so far",
                     n, rec.creator_pid, acct.recorded)
            out(f"shmdiag: adopted ring {n!r}: {rec.config.max_events} events ({human_bytes(size)}), "
                f"{acct.recorded} recorded so far, pid {os.getpid()}")
        else:
            out(f"shmdiag: serving ring {n!r}: {cfg.max_events} events ({human_bytes(size)}), pid {os.getpid()}")
        if sinks:
            archiver = _start_archiver(rec, sinks, args, log)
            sinks = []
        cfg = rec.config
        out(f"  retention {cfg.retention_period:g}s, cleanup every {cfg.cleanup_interval:g}s, "
            + (f"health check every {collector.period:g}s over the last {args.window:g}s, "
               if cfg.enable_health_check else "health check off, ") +
            f"metrics {'on' if cfg.enable_metrics else 'off'}")
        am = f", to {alerting.alertmanager}" if alerting.alertmanager else ""
        hook = f", webhook {alerting.webhook}" if alerting.webhook else ""
        out(f"  alerts: {len(alerting.rules)} rules every {alerting.interval:g}s{am}{hook} "
            f"(shmdiag alerts {n})")
        out(f"  follow it:    shmdiag tail {n} -f")
        out(f"  watch it:     shmdiag top {n}")
        out(f"  from Python:  Recorder.attach({n!r})")
        if web is not None:
            out(f"  dashboard:    {web.url}  (metrics: {web.url}metrics, API: {web.url}api)")
        out("Ctrl-C or SIGTERM stops the collector and removes the ring; if this process is killed, "
            "the ring stays and 'shmdiag serve' adopts it.")
        sys.stdout.flush()
        while True:
            got = os.read(wake_r, 64)
            if got and got[-1] in stops:
                sig = got[-1]
                break
    finally:
        if archiver is not None:
            archiver.stop()  # archives what the ring still holds, seals the file
        _close_sinks(sinks)
        alerts.stop()
        if web is not None:
            web.stop()
        if insp is not None:
            insp.close()
        if sock is not None:
            sock.close()
        collector.stop()  # clears the collector word
        # A clean stop removes the ring (if its name still leads to it); anything else keeps it,
        # with its evidence: 'shmdiag serve' adopts it, 'shmdiag rm' removes it.
        rec.close(remove=sig is not None)
    assert sig is not None
    log.info("shmdiag %s: %s received; ring removed", cfg.name, signal.Signals(sig).name)
    return 0


def _open_sinks(args: argparse.Namespace, log: logging.Logger) -> list:
    """The archive and NATS sinks asked for, opened (and so checked) before the ring is made."""
    from shmdiag.archive.archiver import SqliteSink
    from shmdiag.archive.store import ArchiveWriter

    sinks: list = []
    if args.archive:
        try:
            writer = ArchiveWriter(args.archive, max_bytes=args.archive_max_bytes, max_age=args.archive_max_age,
                                   keep=args.archive_keep)
        except ValueError as e:
            raise UsageError(str(e)) from None
        sinks.append(SqliteSink(writer, log))
    if args.nats:
        from shmdiag.archive.nats import NatsError, NatsSink, check_url

        try:
            check_url(args.nats)
        except NatsError as e:
            _close_sinks(sinks)
            raise UsageError(str(e)) from None
        try:
            sinks.append(NatsSink(args.nats, host=args.host_id, logger=log, buffer_events=args.nats_buffer,
                                  stream=args.nats_stream, stream_max_bytes=args.nats_max_bytes,
                                  stream_max_age=args.nats_max_age))
        except BaseException:
            _close_sinks(sinks)
            raise
    return sinks


def _close_sinks(sinks: list) -> None:
    for s in sinks:
        try:
            s.close()
        except Exception:
            pass
    sinks.clear()


def _start_archiver(rec: Recorder, sinks: list, args: argparse.Namespace, log: logging.Logger) -> RingArchiver:
    from shmdiag.archive.archiver import RingArchiver
    from shmdiag.export.dicts import health_to_dict, stats_to_dict
    from shmdiag.inspector import Inspector

    insp = Inspector.attach(rec.name)  # read-only, as any reader: the archive cannot change the ring
    archiver = RingArchiver(insp, sinks, host=args.host_id, logger=log, owns_inspector=True)
    for s in sinks:
        if hasattr(s, "status"):  # the NATS stats snapshot
            s.status = lambda: {"health": health_to_dict(insp.health_check()), "stats": stats_to_dict(insp.get_stats()),
                                "archive": {"archived": archiver.archived, "overwritten": archiver.overwritten,
                                            "unreadable": archiver.unreadable, "lag": archiver.lag}}
    archiver.start()
    where = ", ".join(filter(None, [args.archive and f"archive {args.archive}", args.nats and f"NATS {args.nats}"]))
    out(f"  archiving to {where} from seq {archiver.resumed_at} (host {args.host_id!r})")
    return archiver


_SERVE_EPILOG = """\
The collector owns the ring: retention cleanup every cleanup_interval, dead writers reaped,
and a health check every --health-interval (5s), judged over the last --window (5m), whose
every change of status is logged to stderr with its reasons; each writer found dead is logged
once (pid, events recorded, lost, abandoned, its last event). See docs/health.md. SIGINT/SIGTERM/SIGHUP remove
the ring. If serve is killed (SIGKILL, the OOM killer), the ring stays with all it holds, and
'shmdiag serve NAME' started again adopts it (its settings must agree with those given); a
ring in use, or a segment that is not a valid ring of this version, is refused and left alone.

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
The ring's name comes from NAME only. An unknown key or a bad value exits with status 2.

Alert rules (the README's "Alerts"): an [alerting] table and an [[alert]] table per rule,
evaluated every interval from the shared counters; the default rules are on unless
[alerting] says defaults = false. 'shmdiag alerts NAME' shows where each stands.

--archive DIR: every event the collector reads goes into SQLite files in DIR (read them with
'shmdiag query DIR' or any SQLite client); what the ring overwrote first is counted as gaps. A
serve killed and started again resumes right after the last archived event.
--nats URL: the same events go to NATS JetStream (subject shmdiag.events.<host>.<ring>), for a
central 'shmdiag archive --from-nats URL DIR'; NATS down: buffered up to --nats-buffer events,
then dropped and counted."""
