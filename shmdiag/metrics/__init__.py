"""Prometheus exposition of a ring, read at scrape time through a read-only ``Inspector``.

``RingCollector`` is a ``prometheus_client`` custom collector: every scrape reads the writers'
merged shared counters (never prometheus_client's multiprocess mode and its per-pid files).
Labels are bounded: no peer ids or addresses, message types bounded by the ring's registry
(46 names + ``*other*``), event types by ``MAX_TYPE_LABELS``, operations by the ring's 32 slots.
Needs the ``web`` extra (``pip install 'shmdiag[web]'``).
"""

from shmdiag.metrics.collector import BUCKETS, HEALTH_STATUSES, RingCollector, exposition

__all__ = ["BUCKETS", "HEALTH_STATUSES", "RingCollector", "exposition"]
