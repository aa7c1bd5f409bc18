"""``shmdiag serve``: create a ring and run its collector."""

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
)
from shmdiag.core.errors import ShmDiagError

if TYPE_CHECKING:
    from shmdiag.core.config import RecorderConfig


# -- serve ---------------------------------------------------------------------------------
def _load_config(path: str | None, name: str, max_events: int | None) -> RecorderConfig:
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
                import tomli as tomllib  # type: ignore[import-not-found,no-redef,unused-ignore]  # installed or not
            except ImportError:
                raise UsageError("reading --config needs Python 3.11 or the 'tomli' package "
                                 "(pip install tomli)") from None
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
    values["name"] = check_name(name)
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
    from shmdiag.cli.format import human_bytes
    from shmdiag.collector import Collector
    from shmdiag.core.segment import RingExistsError
    from shmdiag.recorder import Recorder

    cfg = _load_config(args.config, args.name, args.max_events)
    assert cfg.name is not None  # _load_config always sets it (from NAME)
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
        rec = Recorder.with_config(cfg, collector=False)  # its collector is run below, logging to stderr
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
    collector = Collector(rec, log)
    try:
        collector.start()
        size = os.stat(f"/dev/shm/{rec.name}").st_size
        n = rec.name
        out(f"shmdiag: serving ring {n!r}: {cfg.max_events} events ({human_bytes(size)}), pid {os.getpid()}")
        out(f"  retention {cfg.retention_period:g}s, cleanup every {cfg.cleanup_interval:g}s, "
            f"health check {'on' if cfg.enable_health_check else 'off'}, "
            f"metrics {'on' if cfg.enable_metrics else 'off'}")
        out(f"  follow it:    shmdiag tail {n} -f")
        out(f"  watch it:     shmdiag top {n}")
        out(f"  from Python:  Recorder.attach({n!r})")
        out("Ctrl-C or SIGTERM stops the collector and removes the ring.")
        sys.stdout.flush()
        while True:
            got = os.read(wake_r, 64)
            if got and got[-1] in stops:
                sig = got[-1]
                break
    finally:
        collector.stop()
        rec.close()  # the creator unlinks the ring
    log.info("shmdiag %s: %s received; ring removed", cfg.name, signal.Signals(sig).name)
    return 0


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
