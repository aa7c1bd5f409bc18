"""A multi-process Bitcoin P2P crawler recorded by shmdiag: ``python -m tools.crawler --help``.

A program, not part of the package: it uses shmdiag's public API only. ``wire`` is the codec,
``crawl`` the crawler, ``sinks`` the benchmark's alternatives to shmdiag, ``bcoin`` starts local
bcoin nodes (tests, benchmark), ``bench`` the cost-of-diagnostics benchmark.
"""
