"""The ``shmdiag`` command."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shmdiag", description="Multi-process P2P diagnostics recorder.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="record a simulated node from several processes and show the result")
    demo.add_argument("--writers", type=int, default=4, help="writer processes (default 4)")
    demo.add_argument("--seconds", type=float, default=2.0, help="how long they record (default 2)")
    demo.add_argument("--max-events", type=int, default=10_000, help="ring capacity (default 10000)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if not 1 <= args.writers <= 64 or args.seconds <= 0 or args.max_events < 1:
            parser.error("--writers must be 1-64, --seconds > 0, --max-events >= 1")
        from . import _demo

        return _demo.run(args.writers, args.seconds, args.max_events)
    return 2


if __name__ == "__main__":
    sys.exit(main())
