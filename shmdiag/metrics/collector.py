"""The custom collector: one scrape = one read of the ring's shared counters.

Every figure comes from the public ``Inspector`` (``stats_and_health``, ``get_peer_totals``,
``get_latency_histograms``): a scrape reads the writers' merged counters, never events, so it
costs the same on a ring of a thousand events or a million, and it writes nothing.

Metric names follow Prometheus' conventions (base units, ``_total`` counters, ``_seconds``,
``_bytes``). Counters are "since creation or the last clear": a ``shmdiag clear`` is a counter
reset, which ``rate()`` handles.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import psutil
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from shmdiag.core import layout as L
from shmdiag.core.models import Severity
from shmdiag.views.latency import upper_bound_ns

if TYPE_CHECKING:
    from shmdiag.inspector import Inspector

# Histogram buckets (seconds) of shmdiag_operation_duration_seconds: 1, 2.5, 5 per decade from
# 1 us to 100 s. Each is the union of the ring's log buckets (about 2% wide) whose upper bound
# is at most ``le``: a bucket never counts a duration above its ``le``, and one within about 2%
# below it may be counted only from the next ``le`` on. _count and _sum are exact.
BUCKETS: tuple[float, ...] = tuple(m * 10.0**e for e in range(-6, 2) for m in (1.0, 2.5, 5.0)) + (100.0,)
# Ring bucket i counts toward every BUCKETS[k] >= its upper bound: the cumulative count at
# BUCKETS[k] is the cumulative sum of the ring's buckets up to _CUT[k] (exclusive).
_UPPER_NS = np.array([upper_bound_ns(b) for b in range(L.OP_BUCKETS)])
_CUT = np.searchsorted(_UPPER_NS, np.array(BUCKETS) * 1e9, side="right")
_LE = [floatToGoString(b) for b in BUCKETS]

HEALTH_STATUSES = ("healthy", "warning", "degraded", "error", "stopped")
DIRECTIONS = (("outbound", "sent"), ("inbound", "recv"))
# Event types are named by writers (record_event, loggers): each shard counts 64 by name, but
# the union over shards is not bounded, so the exposition keeps the busiest MAX_TYPE_LABELS - 1
# and adds the rest to "(other)" (layout.OTHER_TYPE).
MAX_TYPE_LABELS = L.TYPE_SLOTS


def bounded_types(by_type: dict[str, int], limit: int = MAX_TYPE_LABELS) -> dict[str, int]:
    """``by_type`` with at most ``limit`` keys: the busiest, and the rest summed under "(other)"."""
    if len(by_type) <= limit:
        return dict(by_type)
    ranked = sorted(by_type.items(), key=lambda kv: (kv[0] == L.OTHER_TYPE, -kv[1], kv[0]))
    out = dict(ranked[: limit - 1])
    out[L.OTHER_TYPE] = sum(v for _, v in ranked[limit - 1:])
    return out


def _collector_start(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, OSError):
        return None


class RingCollector(Collector):
    """A ``prometheus_client`` collector of one ring, through ``inspector`` (which the caller
    keeps open and closes). Register it in a ``CollectorRegistry``; ``collect`` raises what the
    Inspector raises (a closed inspector: RecorderClosedError), which the HTTP layer turns
    into a 503."""

    def __init__(self, inspector: Inspector) -> None:
        self._insp = inspector

    def describe(self) -> list[Metric]:
        return []  # no description at registration: nothing is read until a scrape

    def collect(self) -> Iterator[Metric]:
        insp = self._insp
        stats, health = insp.stats_and_health()
        peers = insp.get_peer_totals()
        hists = insp.get_latency_histograms()

        m = CounterMetricFamily("shmdiag_events", "Events recorded since creation or the last clear, by event type "
                                "(sums to total_events).", labels=["type"])
        for t, n in sorted(bounded_types(stats.events_by_type).items()):
            m.add_metric([t], n)
        yield m
        m = CounterMetricFamily("shmdiag_events_by_severity", "Events recorded since creation or the last clear, "
                                "by severity.", labels=["severity"])
        for s in Severity:
            m.add_metric([s.name.lower()], stats.events_by_severity.get(s, 0))
        yield m

        msgs = insp.get_message_totals()
        m = CounterMetricFamily("shmdiag_messages", "Protocol messages by message type (the ring's named types, the "
                                "rest under *other*) and direction, over all writers and peers.",
                                labels=["message", "direction"])
        b = CounterMetricFamily("shmdiag_message_bytes", "Protocol message bytes by message type (the ring's named "
                                "types, the rest under *other*) and direction, over all writers and peers.",
                                labels=["message", "direction"])
        for direction, per_type, nbytes in (("outbound", msgs.messages_sent, msgs.bytes_sent),
                                            ("inbound", msgs.messages_received, msgs.bytes_received)):
            for msg, n in sorted(per_type.items()):
                m.add_metric([msg, direction], n)
                b.add_metric([msg, direction], nbytes.get(msg, 0))
        yield m
        yield b

        yield GaugeMetricFamily("shmdiag_peers_connected", "Peers connected now (active_peers).",
                                value=stats.active_peers)
        yield GaugeMetricFamily("shmdiag_peers_tracked", "Distinct peers in the peer table (an event since the "
                                "last clear, or connected).", value=peers.peers_tracked)
        yield GaugeMetricFamily("shmdiag_peers_max", "Connected peers the table guarantees to track (max_peers).",
                                value=health.max_peers)
        yield CounterMetricFamily("shmdiag_peers_untracked", "Peer connects that found the peer table full.",
                                  value=health.peers_untracked)
        yield CounterMetricFamily("shmdiag_peers_recycled", "Peer table entries of disconnected peers recycled "
                                  "for new peers.", value=peers.peers_recycled)

        yield GaugeMetricFamily("shmdiag_ring_capacity_events", "Events the ring retains (max_events).",
                                value=health.max_events)
        yield GaugeMetricFamily("shmdiag_ring_retained_events", "Events the ring retains now.",
                                value=health.event_count)
        yield GaugeMetricFamily("shmdiag_events_in_flight", "Events claimed by a writer still inside its record.",
                                value=health.events_in_flight)
        for what, n, doc in (("overwritten", health.events_overwritten, "overwritten by newer ones (the ring went "
                              "round)"),
                             ("lost", health.events_lost, "dropped: their slot was still being written a lap behind"),
                             ("abandoned", health.events_abandoned, "never published: their writer died mid-record"),
                             ("expired", health.events_expired, "removed by retention cleanup")):
            yield CounterMetricFamily(f"shmdiag_events_{what}", f"Events {doc}.", value=n)
        yield GaugeMetricFamily("shmdiag_error_ratio", "(ERROR + CRITICAL) / total events.", value=stats.error_rate)

        yield GaugeMetricFamily("shmdiag_writers_alive", "Writer processes attached and running.",
                                value=health.writers_alive)
        yield GaugeMetricFamily("shmdiag_writers_dead", "Writer processes that died without detaching.",
                                value=health.writers_dead)
        g = GaugeMetricFamily("shmdiag_health_status", "1 for the ring's current health status, 0 for the others.",
                              labels=["status"])
        statuses = HEALTH_STATUSES if health.status in HEALTH_STATUSES else (*HEALTH_STATUSES, health.status)
        for st in statuses:
            g.add_metric([st], 1.0 if st == health.status else 0.0)
        yield g
        yield GaugeMetricFamily("shmdiag_collector_up", "1 while the ring's collector runs, 0 if it was killed "
                                "or there is none.", value=1.0 if health.collector_alive else 0.0)
        start = _collector_start(health.collector_pid) if health.collector_alive else None
        if start is not None:
            yield GaugeMetricFamily("shmdiag_collector_start_time_seconds", "When the ring's collector process "
                                    "started, seconds since the epoch.", value=start)
        yield GaugeMetricFamily("shmdiag_ring_created_time_seconds", "When the ring was created, seconds since "
                                "the epoch.", value=insp.created_ns / 1e9)

        h = HistogramMetricFamily("shmdiag_operation_duration_seconds", "Durations of timed operations (spans, "
                                  "record_latency) from the ring's log-bucketed histograms.", labels=["operation"])
        errs = CounterMetricFamily("shmdiag_operation_errors", "Spans that raised, by operation (not in the "
                                   "durations).", labels=["operation"])
        for op, hist in hists.items():
            cum = np.cumsum(hist.buckets, dtype=np.uint64)
            count = int(cum[-1])
            at = [int(cum[c - 1]) if c else 0 for c in _CUT.tolist()]
            buckets = [(le, float(v)) for le, v in zip(_LE, at, strict=True)] + [("+Inf", float(count))]
            h.add_metric([op], buckets, hist.sum_ns / 1e9)
            errs.add_metric([op], hist.errors)
        yield h
        yield errs
        yield from _alert_metrics(insp.name, health.collector_pid, health.collector_alive)
        yield from _archive_metrics(insp.name)


def _archive_metrics(ring: str) -> Iterator[Metric]:
    """The archive and NATS publisher of ``ring``, when this process runs them (``serve
    --archive/--nats`` with ``--http``). Labels bounded: three gap causes."""
    from shmdiag.archive.archiver import live_counters

    c = live_counters(ring)
    if c is None:
        return
    yield CounterMetricFamily("shmdiag_archive_events", "Events written to the archive (or handed to NATS) by "
                              "this collector since it started.", value=c["archived"])
    m = CounterMetricFamily("shmdiag_archive_gap_events", "Sequence numbers the archive counted as gaps since this "
                            "collector started, by cause.", labels=["cause"])
    for cause in ("overwritten", "unreadable", "disk_full"):
        m.add_metric([cause], c[cause])
    yield m
    yield GaugeMetricFamily("shmdiag_archive_lag_events", "Sequence numbers between the archive's cursor and the "
                            "ring's head (refreshed each second).", value=c["lag"])
    n = c["nats"]
    if n is not None:
        yield CounterMetricFamily("shmdiag_nats_published_events", "Events acknowledged by JetStream.",
                                  value=n["published"])
        yield CounterMetricFamily("shmdiag_nats_dropped_events", "Events dropped because the NATS buffer was full "
                                  "(counted; the central archive records them as undelivered).", value=n["dropped"])
        yield GaugeMetricFamily("shmdiag_nats_buffered_events", "Events waiting to be published.",
                                value=n["buffered"])


def _alert_metrics(ring: str, collector_pid: int, collector_alive: bool | None) -> Iterator[Metric]:
    """The alert rules of the ring's running collector (``shmdiag.alerts``), if it evaluates any:
    which fire, and how many notifications were sent, failed or dropped per receiver. Labels
    stay bounded: rule names come from the collector's config."""
    from shmdiag.alerts import live_state

    doc = live_state(ring, collector_pid, collector_alive)
    if doc is None:
        return
    m = GaugeMetricFamily("shmdiag_alerts_firing", "1 for each of the collector's alert rules firing now, 0 for "
                          "the others.", labels=["alertname", "severity"])
    for a in doc["alerts"]:
        m.add_metric([a["name"], a["severity"]], 1.0 if a["state"] == "firing" else 0.0)
    yield m
    n = doc["notifications"]
    for what, doc_ in (("sent", "delivered"), ("failed", "given up after every retry"),
                       ("dropped", "dropped because the send queue was full")):
        c = CounterMetricFamily(f"shmdiag_alert_notifications_{what}", f"Alert notifications {doc_}, by receiver.",
                                labels=["receiver"])
        for receiver, v in sorted(n[what].items()):
            c.add_metric([receiver], v)
        yield c


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(families: Iterable[Metric]) -> bytes:
    """The text format of ``families``, byte for byte what ``prometheus_client.generate_latest``
    writes for them (tests/test_metrics.py compares), in a tenth of the time: it skips the
    per-sample validation of metric and label names, which are this module's own constants.
    Only for families without _created samples or timestamps, as RingCollector's."""
    out: list[str] = []
    for m in families:
        name = m.name + "_total" if m.type == "counter" else m.name
        doc = m.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {m.type}\n")
        for sm in m.samples:
            if sm.labels:
                labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(sm.labels.items()))
                out.append(f"{sm.name}{{{labels}}} {floatToGoString(sm.value)}\n")
            else:
                out.append(f"{sm.name} {floatToGoString(sm.value)}\n")
    return "".join(out).encode()


def exposition(inspector: Inspector) -> bytes:
    """One scrape of the ring in Prometheus' text format (what ``/metrics`` serves)."""
    return render(RingCollector(inspector).collect())


def exposition_via_registry(inspector: Inspector) -> bytes:
    """The same through a ``CollectorRegistry`` and ``generate_latest``: how a program that
    serves its own metrics would include a ring's (and the reference :func:`render` is
    checked against)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RingCollector(inspector))
    return generate_latest(registry)
