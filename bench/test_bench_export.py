"""Export throughput: ``python3 -m pytest bench/test_bench_export.py`` (issue 4 target: at least
1,000,000 events/s).

Times whole exports of full rings of 100,000 and 1,000,000 events (build_ring's mix: message
events, 0.1% errors, 100 peer connections), written to a real temporary file, and of a 100,000
event ring holding every kind of record (record_event with metadata and errors, latency,
disconnections, non-ASCII text). The per-event path the streaming export replaced (decode() +
event_to_dict() + orjson for every event, all in memory) is measured in the same run for a
ratio. Figures are per event (``median_ns_per_op``) with ``events_per_s`` in extra_info.
Nothing here asserts a speed; each benchmark checks that what it timed was really written.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime, timezone

import orjson
import pytest
from _benchlib import build_ring

from shmdiag import DiagnosticEvent, Recorder, Severity
from shmdiag.core import reader as _reader
from shmdiag.export import dicts as _dicts

SIZES = [100_000, 1_000_000]
IDS = ["100k", "1M"]


@pytest.fixture(scope="module", params=SIZES, ids=IDS)
def full(request):
    rec = build_ring(request.param)
    try:
        yield rec
    finally:
        rec.close()


@pytest.fixture(scope="module")
def mixed():
    """100,000 events of every kind, some with quotes, newlines and non-ASCII text to escape."""
    n = 100_000
    rec = Recorder(max_events=n)
    try:
        ts = datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=timezone.utc)
        for i in range(n // 10):
            p = f"peer-{i % 100}"
            rec.record_message(p, "inv", "inbound", 37)
            rec.record_message(p, "tx", "outbound", 250 + i % 1000)
            rec.record_message(p, "headers", "inbound", 162)
            rec.record_peer_connection(p, f"203.0.113.{i % 250}:8333")
            rec.record_peer_disconnection(p, f"203.0.113.{i % 250}:8333", "timeout" if i % 3 else 'remote "closed"\n')
            rec.record_error(p, TimeoutError("no pong in 20s"), "ping")
            rec.record_latency("ping", 0.001 * (i % 97 + 1), peer_id=p)
            rec.record_event(DiagnosticEvent("block_validated", f"block {i} valid", Severity.INFO,
                                             metadata={"height": 871_234 + i, "ms": i % 50}, timestamp=ts))
            rec.record_event(DiagnosticEvent("mempool", "tx rejected: fee too low", Severity.WARNING, peer_id=p,
                                             error="min relay fee not met"))
            rec.record_event(DiagnosticEvent("note", "ñ 日本 😀 \"quoted\"", Severity.DEBUG))
        assert rec.health_check().event_count == n
        yield rec
    finally:
        rec.close()


@pytest.fixture
def out_file():
    fd, path = tempfile.mkstemp(prefix="shmdiag-bench-export-")
    with os.fdopen(fd, "w+b") as f:
        yield f
    os.unlink(path)


def _rewind(f):
    def setup():
        f.seek(0)
        f.truncate()
    return setup


def _note_rate(benchmark, per_op, n: int) -> None:
    per_op(n)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["events_per_s"] = round(n / stats.stats.median)


@pytest.mark.benchmark(group="export-stream")
@pytest.mark.parametrize("fmt", ["ndjson", "json"])
def test_write_export(benchmark, per_op, full, out_file, fmt):
    """Recorder.write_export to a file: the streaming, chunked, numpy path."""
    n = full.health_check().event_count
    rounds = 5 if n <= 100_000 else 3
    written = benchmark.pedantic(full.write_export, args=(out_file, fmt), setup=_rewind(out_file),
                                 rounds=rounds, warmup_rounds=1)
    _note_rate(benchmark, per_op, n)
    assert written == n and written.skipped == 0
    out_file.seek(0)
    if fmt == "ndjson":  # events only, one per line (docs/json.md): no header line
        first = orjson.loads(out_file.readline())
        assert first["kind"] == "event" and first["seq"] == 0
    else:
        doc = orjson.loads(out_file.read())
        assert doc["kind"] == "export" and doc["stats"]["total_events"] == n
        assert len(doc["events"]) == n and doc["events"][0]["seq"] == 0
    benchmark.extra_info["bytes_per_event"] = round(os.fstat(out_file.fileno()).st_size / n, 1)


@pytest.mark.benchmark(group="export-stream")
def test_export_events_bytes_100k(benchmark, per_op, mixed):
    """Recorder.export_events(): the same path, collected into one bytes object."""
    out = benchmark.pedantic(mixed.export_events, rounds=5, warmup_rounds=1)
    _note_rate(benchmark, per_op, 100_000)
    assert len(orjson.loads(out)["events"]) == 100_000


@pytest.mark.benchmark(group="export-stream")
def test_write_export_every_kind_100k(benchmark, per_op, mixed, out_file):
    written = benchmark.pedantic(mixed.write_export, args=(out_file, "ndjson"), setup=_rewind(out_file),
                                 rounds=5, warmup_rounds=1)
    _note_rate(benchmark, per_op, 100_000)
    assert written == 100_000


def _old_export(rec) -> bytes:
    """The per-event path export_events() used before the streaming export."""
    events = _reader.read_events(rec._seg, 0, 0)
    return _dicts.export_json(rec.name, rec.get_stats(), rec.health_check(), events)


@pytest.mark.benchmark(group="export-per-event (before)")
def test_old_per_event_export_100k(benchmark, per_op, mixed):
    out = benchmark.pedantic(_old_export, args=(mixed,), rounds=2, warmup_rounds=0)
    _note_rate(benchmark, per_op, 100_000)
    assert len(orjson.loads(out)["events"]) == 100_000


@pytest.mark.benchmark(group="export-per-event (before)")
def test_old_per_event_export_full_100k(benchmark, per_op):
    with build_ring(100_000) as rec:
        out = benchmark.pedantic(_old_export, args=(rec,), rounds=2, warmup_rounds=0)
        _note_rate(benchmark, per_op, 100_000)
        assert len(orjson.loads(out)["events"]) == 100_000
