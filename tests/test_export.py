"""export_events(): real JSON, everything in it, any text round-trips."""

from __future__ import annotations

import io
import json
import os
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from shmdiag import DiagnosticEvent, Severity
from shmdiag.core import layout as L

UTC = timezone.utc
NASTY = 'quote " backslash \\ newline \n tab \t cr \r ñ 日本 😀 \x01 </script>'


def parse_ts(s: str) -> datetime:
    assert s.endswith(("Z", "+00:00")), s
    ts = datetime.fromisoformat(s.replace("Z", "+00:00"))
    assert ts.utcoffset() == timedelta(0)
    return ts


def export(r) -> dict:
    raw = r.export_events()
    assert isinstance(raw, bytes)
    a = json.loads(raw)
    b = orjson.loads(raw)
    assert a == b
    raw.decode("utf-8")  # strict UTF-8
    return a


def test_export_empty_ring(rec):
    doc = export(rec)
    assert set(doc) == {"schema_version", "kind", "name", "exported_at", "stats", "health", "latency", "events",
                        "exported", "skipped"}
    assert (doc["schema_version"], doc["kind"], doc["exported"], doc["skipped"]) == (1, "export", 0, 0)
    assert doc["name"] == rec.name
    assert doc["events"] == []
    assert doc["stats"]["total_events"] == 0
    assert doc["health"]["status"] == "healthy"
    before = datetime.now(UTC)
    assert abs(parse_ts(doc["exported_at"]) - before) < timedelta(seconds=5)


def test_export_structure_and_events(rec):
    rec.record_peer_connection("peer-1", "203.0.113.5:8333")
    rec.record_message("peer-1", "inv", "inbound", 37)
    rec.record_error("peer-1", TimeoutError("no pong"), "ping")
    ts = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    rec.record_event(DiagnosticEvent("custom", "hello", Severity.WARNING, peer_id="peer-2",
                                     metadata={"height": 5, "list": [1, 2]}, error="E", timestamp=ts))
    doc = export(rec)
    events = doc["events"]
    assert [e["event_type"] for e in events] == ["peer_connected", "message", "error", "custom"]
    assert [e["seq"] for e in events] == [0, 1, 2, 3]  # oldest first
    for e in events:
        assert set(e) >= {"timestamp", "event_type", "peer_id", "message", "severity", "metadata", "error",
                          "pid", "seq", "truncated"}
        assert e["pid"] == os.getpid()
        assert e["truncated"] is False
        parse_ts(e["timestamp"])
    conn, msg, err, custom = events
    assert conn["severity"] == "INFO" and conn["message"] == "Peer connected: 203.0.113.5:8333"
    assert conn["metadata"] == {"address": "203.0.113.5:8333"} and conn["error"] is None
    assert msg["severity"] == "DEBUG"
    assert msg["metadata"] == {"message_type": "inv", "direction": "inbound", "size": 37}
    assert err["severity"] == "ERROR" and err["error"] == "TimeoutError: no pong"
    assert err["metadata"] == {"operation": "ping"}
    assert custom == {
        "schema_version": 1, "kind": "event", "timestamp": custom["timestamp"], "event_type": "custom",
        "peer_id": "peer-2", "message": "hello",
        "severity": "WARNING", "metadata": {"height": 5, "list": [1, 2]}, "error": "E", "pid": os.getpid(),
        "seq": 3, "truncated": False,
    }
    assert parse_ts(custom["timestamp"]) == ts
    # timestamps match what get_events returns
    assert [parse_ts(e["timestamp"]) for e in events] == [e.timestamp for e in rec.get_events(0)]


def test_export_stats_and_health(rec):
    rec.record_peer_connection("p1", "a")
    rec.record_error("", "boom", "op")
    doc = export(rec)
    s = doc["stats"]
    assert s["total_events"] == 2
    assert s["events_by_type"] == {"peer_connected": 1, "error": 1}
    assert s["events_by_severity"] == {"DEBUG": 0, "INFO": 1, "WARNING": 0, "ERROR": 0, "CRITICAL": 1}
    assert s["active_peers"] == 1
    assert s["error_rate"] == pytest.approx(0.5)
    parse_ts(s["first_event"])
    parse_ts(s["last_event"])
    h = doc["health"]
    assert h["status"] == "error"
    assert h["retained"] == 2 and h["total_events"] == 2 and h["capacity"] == 1000
    assert h["writers_alive"] >= 1
    assert isinstance(h["message"], str) and h["message"]


def test_export_only_retained_events(make_recorder):
    r = make_recorder(3)
    for i in range(7):
        r.record_message("p", "inv", "inbound", i)
    doc = export(r)
    assert [e["metadata"]["size"] for e in doc["events"]] == [4, 5, 6]
    assert doc["stats"]["total_events"] == 7
    assert doc["health"]["overwritten"] == 4


@pytest.mark.parametrize("text", [
    NASTY,
    '"',
    "\\",
    "\\\"",
    "\n\n",
    "ñ",
    "日本",
    "😀🇯🇵",
    "\u2028\u2029",
    "{\"not\": \"json\"}",
])
def test_export_text_round_trips(rec, text):
    rec.record_event(DiagnosticEvent("escape_test", text, Severity.ERROR, peer_id=text[:10], error=text))
    rec.record_event(DiagnosticEvent("escape_meta", metadata={text: text, "plain": [text[:5], 1]}))
    e, m = export(rec)["events"]
    assert e["message"] == text
    assert e["peer_id"] == text[:10]
    assert e["error"] == text
    assert e["metadata"] is None
    assert m["metadata"] == {text: text, "plain": [text[:5], 1]}
    assert e["truncated"] is False and m["truncated"] is False
    # and get_events agrees
    got, got_m = rec.get_events()
    assert (got.message, got.peer_id, got.error) == (text, text[:10], text)
    assert got_m.metadata == {text: text, "plain": [text[:5], 1]}


def test_export_helper_text_round_trips(rec):
    rec.record_peer_disconnection("peer-ñ-😀", 'addr "quoted"\\', "reason\nwith\ttabs 日本")
    rec.record_error("peer-ñ", 'error "with" \\ quotes\n', 'op "x"')
    rec.record_message("p\"", 'ty"pe\\', "outbound", 3)
    disc, err, msg = export(rec)["events"]
    assert disc["peer_id"] == "peer-ñ-😀"
    assert disc["message"] == 'Peer disconnected: addr "quoted"\\ (reason\nwith\ttabs 日本)'
    assert disc["metadata"] == {"address": 'addr "quoted"\\', "reason": "reason\nwith\ttabs 日本"}
    assert err["error"] == 'error "with" \\ quotes\n'
    assert err["message"] == 'Error in op "x"'
    assert msg["peer_id"] == 'p"'
    assert msg["message"] == 'Message outbound: ty"pe\\ (3 bytes)'


def test_export_name_with_event_type_nasty(rec):
    rec.record_event(DiagnosticEvent('type"\\\n', "m"))
    doc = export(rec)
    assert doc["events"][0]["event_type"] == 'type"\\\n'
    assert doc["stats"]["events_by_type"] == {'type"\\\n': 1}


def test_export_truncated_event(rec):
    rec.record_event(DiagnosticEvent("long", "日本" * 1100, metadata={"a": "x" * 500, "b": 1}))
    rec.record_event(DiagnosticEvent("long", "日本" * 200, metadata={"a": "x" * 500, "b": 1}))
    cut, whole = export(rec)["events"]
    assert cut["truncated"] is True
    assert cut["metadata"] is None  # the message first: no room left for any metadata
    assert ("日本" * 1100).startswith(cut["message"]) and len(cut["message"].encode()) > L.TEXT_MAX - 20
    assert "\ufffd" not in cut["message"]
    assert whole["truncated"] is False and whole["message"] == "日本" * 200  # several slots, whole
    assert whole["metadata"] == {"a": "x" * 500, "b": 1}


def test_export_carries_latency_percentiles(rec):
    for ms in (10, 20, 30, 40):
        rec.record_latency("handshake", ms / 1000, peer_id="p")
    for fmt in ("json", "ndjson"):
        meta = io.BytesIO()
        raw = rec.write_export(io.BytesIO(), format=fmt, meta=meta)
        head = orjson.loads(meta.getvalue())
        assert raw == head["exported"] == 4
        lat = head["latency"]["handshake"]
        assert lat["count"] == 4 and lat["max"] == pytest.approx(0.04) and lat["mean"] == pytest.approx(0.025)
