"""``shmdiag demo`` and ``shmdiag loadgen``: writers that record a simulated node."""

from __future__ import annotations

import argparse

from shmdiag.cli._common import (
    Parser,
    UsageError,
)


def cmd_demo(args: argparse.Namespace) -> int:
    if not 1 <= args.writers <= 64 or args.seconds <= 0 or args.max_events < 1:
        raise UsageError("--writers must be 1-64, --seconds > 0, --max-events >= 1")
    from shmdiag.loadgen import demo as _demo

    return _demo.run(args.writers, args.seconds, args.max_events)


def cmd_loadgen(args: argparse.Namespace, extra: list[str]) -> int:
    from shmdiag.loadgen import generator as _loadgen

    parser = Parser(prog="shmdiag loadgen", description="Generate load: many writer processes on one ring.")
    _loadgen.configure_parser(parser)
    return _loadgen.run(parser.parse_args(extra))
