#!/usr/bin/env python3
"""Load generator: many writer processes recording a Bitcoin node's P2P traffic into one ring.

Run from the repository: ``python tools/loadgen.py --writers 4 --duration 5``; ``--help`` for the
options. The same command is ``shmdiag loadgen``; the work is in ``shmdiag/_loadgen.py``.
"""

from __future__ import annotations

import argparse
import sys


class _Parser(argparse.ArgumentParser):
    """A bad flag gives one line on stderr (exit 2), not the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def main(argv: list[str] | None = None) -> int:
    from shmdiag.loadgen import generator as _loadgen

    parser = _Parser(prog="loadgen")
    _loadgen.configure_parser(parser)
    return _loadgen.run(parser.parse_args(argv))


if __name__ == "__main__":  # the guard matters: writers are spawned and re-import this file
    sys.exit(main())
