"""``shmdiag export``: the retained events with stats and health, to a file or stdout."""

from __future__ import annotations

import argparse
import io
import os
import stat
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO

from shmdiag.cli._common import (
    UsageError,
    attached,
)

if TYPE_CHECKING:
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


def _export_to(rec: Inspector, fp: BinaryIO, fmt: str, progress: _Progress | None, options: dict) -> None:
    n = rec.write_export(fp, format=fmt, progress=progress, **options)
    skipped = getattr(n, "skipped", 0)
    if skipped:
        sys.stderr.write(f"shmdiag: {skipped} events were overwritten by writers while exporting, or failed "
                         "validation, and are not in the export\n")


def _is_stream(path: str) -> bool:
    """Does ``path`` name something other than a regular file (following symlinks)?"""
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


def _write_to(path: str | None, write: Callable[[BinaryIO], object]) -> None:
    """``write(fp)`` into stdout (None or "-"), into a FIFO or device as it is, or into a
    regular file atomically (a temporary file renamed over it once complete)."""
    if path in (None, "-"):
        fp = sys.stdout.buffer
        sys.stdout.flush()
        write(fp)
        fp.flush()
    elif _is_stream(path):
        # A FIFO, a device (/dev/null, /dev/stdout) or a socket: written into, never
        # replaced by a regular file (as root, a rename over /dev/null would do that).
        with open(path, "wb") as fp:
            write(fp)
    else:
        # A regular file, or a new path: written whole or not at all.
        tmp = f"{path}.tmp"
        try:
            with open(tmp, "wb") as fp:
                write(fp)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


def cmd_export(args: argparse.Namespace) -> int:
    from shmdiag.cli.tail import tail_filter

    if args.meta is not None and args.meta in ("-", args.output or "-"):
        raise UsageError("--meta needs a file of its own (the events go to "
                         f"{'stdout' if args.output in (None, '-') else repr(args.output)})")
    filt = tail_filter(args)
    with attached(args.name) as rec:
        fmt = args.format or rec.config.export_format
        why = rec.unrecorded(filt)
        if why is not None:
            sys.stderr.write(f"shmdiag: note: {why}; the export holds no event\n")
        # What write_export takes besides the file: add an option here and to its parser.
        options: dict = {"with_peers": args.with_peers, "filt": filt}
        meta = io.BytesIO() if args.meta is not None else None
        if meta is not None:
            options["meta"] = meta
        progress = None
        if sys.stderr.isatty():
            n = rec.count_retained()
            if n >= _PROGRESS_MIN:
                progress = _Progress(n)
        try:
            _write_to(args.output, lambda fp: _export_to(rec, fp, fmt, progress, options))
        finally:
            if progress is not None:
                progress.done()
    if meta is not None:
        _write_to(args.meta, lambda fp: fp.write(meta.getvalue()))
    return 0


_EXPORT_EPILOG = """\
--format json writes one document: {"schema_version": 1, "kind": "export", "name", "exported_at",
"stats", "health", "latency", ["peers", "writers",] "events": [...], "exported", "skipped"}.
--format ndjson writes the events only, one JSON object per line ({"schema_version": 1,
"kind": "event", ...}, as in the json document's "events"); --meta FILE writes the rest (the
json document without "events") to FILE. --with-peers adds the peers (as peers --json, all of
them) and the writer processes. "skipped" counts events overwritten by writers while the
export ran, or whose records failed validation (they are not in it). Shapes: docs/json.md and shmdiag/schemas/."""
