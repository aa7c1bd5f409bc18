#!/usr/bin/env python3
"""Load generator: many writer processes recording a Bitcoin node's P2P traffic into one ring.

Run from the repository: ``python tools/loadgen.py --writers 4 --duration 5``; ``--help`` for the
options. The same command is ``shmdiag loadgen``; the work is in ``shmdiag/loadgen/generator.py``.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from shmdiag.cli._common import Parser  # a bad flag: one line on stderr (exit 2), not the usage block
    from shmdiag.loadgen import generator as _loadgen

    parser = Parser(prog="loadgen")
    _loadgen.configure_parser(parser)
    return _loadgen.run(parser.parse_args(argv))


if __name__ == "__main__":  # the guard matters: writers are spawned and re-import this file
    sys.exit(main())
