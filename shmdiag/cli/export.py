"""``shmdiag export``: the retained events with stats and health, to a file or stdout."""

from __future__ import annotations

import argparse
import os
import stat
import sys
import time
from typing import TYPE_CHECKING, BinaryIO

from shmdiag.cli._common import (
    attached,
    dumps,
)

if TYPE_CHECKING:
    from shmdiag.core.filter import EventFilter
    from shmdiag.inspector import Inspector


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


def _export_to(rec: Inspector, fp: BinaryIO, fmt: str, progress: _Progress | None,
               filt: EventFilter | None = None) -> None:
    if hasattr(rec, "write_export"):
        n = rec.write_export(fp, format=fmt, progress=progress, filt=filt)
        skipped = getattr(n, "skipped", 0)
        if skipped:
            sys.stderr.write(f"shmdiag: {skipped} events were overwritten by writers while exporting and are "
                             "not in the export\n")
        return
    # Until Recorder.write_export lands: the whole export in memory.
    from shmdiag.export.dicts import event_to_dict

    if fmt == "json":
        fp.write(rec.export_events())
        fp.write(b"\n")
    else:
        for e in rec.get_events(0):
            fp.write(dumps(event_to_dict(e)) + b"\n")


def _is_stream(path: str) -> bool:
    """Does ``path`` name something other than a regular file (following symlinks)?"""
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


def cmd_export(args: argparse.Namespace) -> int:
    from shmdiag.cli.tail import tail_filter

    filt = tail_filter(args)
    with attached(args.name) as rec:
        fmt = args.format or rec.config.export_format
        why = rec.unrecorded(filt)
        if why is not None:
            sys.stderr.write(f"shmdiag: note: {why}; the export holds no event\n")
        progress = None
        if sys.stderr.isatty():
            n = rec.count_retained()
            if n >= _PROGRESS_MIN:
                progress = _Progress(n)
        try:
            if args.output in (None, "-"):
                out = sys.stdout.buffer
                sys.stdout.flush()
                _export_to(rec, out, fmt, progress, filt)
                out.flush()
            elif _is_stream(args.output):
                # A FIFO, a device (/dev/null, /dev/stdout) or a socket: written into, never
                # replaced by a regular file (as root, a rename over /dev/null would do that).
                with open(args.output, "wb") as fp:
                    _export_to(rec, fp, fmt, progress, filt)
            else:
                # A regular file, or a new path: written whole or not at all.
                tmp = f"{args.output}.tmp"
                try:
                    with open(tmp, "wb") as fp:
                        _export_to(rec, fp, fmt, progress, filt)
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
