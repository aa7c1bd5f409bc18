"""The ``shmdiag`` command: one module per group of subcommands, ``main`` builds the parser.

Every mistake a person can make ends in one line on stderr and a non-zero status (see
``_common``); read commands attach read-only and never write a byte of the ring.
"""
