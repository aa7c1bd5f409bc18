"""RecorderConfig: the Go original's documented defaults, validated, and honoured."""

from __future__ import annotations

import dataclasses
import math
import os

import pytest

from shmdiag import DiagnosticEvent, Recorder, RecorderConfig, Severity

from helpers import shm_path, unique_name


def test_defaults_exactly():
    c = RecorderConfig()
    assert c.max_events == 1000
    assert c.cleanup_interval == 300.0
    assert c.retention_period == 86400.0
    assert c.enable_metrics is True
    assert c.enable_health_check is True
    assert c.log_level == "info"
    assert c.export_format == "json"
    assert c.name is None
    assert c.max_writers == 128
    assert c.max_peers == 4096


def test_default_returns_fresh_object_each_time():
    a, b = RecorderConfig.default(), RecorderConfig.default()
    assert isinstance(a, RecorderConfig)
    assert a is not b
    assert a == b == RecorderConfig()
    a.max_events = 5
    a.log_level = "debug"
    assert b.max_events == 1000 and b.log_level == "info"
    assert RecorderConfig.default().max_events == 1000


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_events", 0),
        ("max_events", -1),
        ("max_events", 1.5),
        ("max_events", True),
        ("max_events", "10"),
        ("max_events", None),
        ("max_events", (1 << 32) + 1),
        ("cleanup_interval", 0),
        ("cleanup_interval", -1.0),
        ("cleanup_interval", math.nan),
        ("cleanup_interval", math.inf),
        ("cleanup_interval", True),
        ("cleanup_interval", "300"),
        ("retention_period", 0.0),
        ("retention_period", -86400),
        ("retention_period", math.nan),
        ("retention_period", -math.inf),
        ("enable_metrics", 1),
        ("enable_metrics", None),
        ("enable_health_check", "yes"),
        ("log_level", "verbose"),
        ("log_level", ""),
        ("log_level", 20),
        ("export_format", "xml"),
        ("export_format", "csv"),
        ("export_format", None),
        ("name", "a/b"),
        ("name", ""),
        ("name", ".x"),
        ("name", "-x"),
        ("name", "x" * 300),
        ("name", "x" * 201),
        ("name", "has space"),
        ("name", "nul\x00byte"),
        ("name", 42),
        ("max_writers", 0),
        ("max_writers", 5000),
        ("max_peers", -1),
    ],
)
def test_invalid_value_raises_value_error_naming_field(field, value):
    with pytest.raises(ValueError) as info:
        RecorderConfig(**{field: value})
    assert str(info.value).startswith(field), str(info.value)


@pytest.mark.parametrize("field, value", [("max_events", 0), ("log_level", "loud"), ("name", "a/b")])
def test_validate_catches_values_set_after_construction(field, value):
    c = RecorderConfig()
    setattr(c, field, value)
    with pytest.raises(ValueError, match=f"^{field}"):
        c.validate()


def test_valid_edge_values_accepted():
    RecorderConfig(max_events=1)
    RecorderConfig(cleanup_interval=0.001, retention_period=1)
    RecorderConfig(max_peers=0)
    for lvl in ("debug", "info", "warning", "error", "critical"):
        assert RecorderConfig(log_level=lvl).log_level == lvl
    RecorderConfig(name="a")
    RecorderConfig(name="x" * 200)
    RecorderConfig(name="node_1.diag-ring")


def test_longest_valid_name_makes_a_ring(make_recorder):
    name = f"t{os.getpid()}-" + "x" * (200 - len(f"t{os.getpid()}-"))
    assert len(name) == 200
    r = make_recorder(config=RecorderConfig(max_events=4, name=name))
    assert r.name == name
    assert os.path.exists(shm_path(name))


def test_config_is_a_plain_dataclass():
    c = RecorderConfig(max_events=7, name="abc")
    d = dataclasses.asdict(c)
    assert d["max_events"] == 7 and d["name"] == "abc"
    assert RecorderConfig(**d) == c


def test_recorder_reports_its_config(make_recorder):
    cfg = RecorderConfig(max_events=42, cleanup_interval=11.0, retention_period=22.0, enable_metrics=False,
                         enable_health_check=False, log_level="critical", name=unique_name())
    r = make_recorder(config=cfg)
    for f in ("max_events", "cleanup_interval", "retention_period", "enable_metrics", "enable_health_check",
              "log_level", "export_format", "name", "max_writers", "max_peers"):
        assert getattr(r.config, f) == getattr(cfg, f), f
    other = make_recorder(attach=r.name)
    assert other.config == r.config


def test_enable_metrics_false(make_recorder):
    r = make_recorder(100, enable_metrics=False)
    r.record_peer_connection("p1", "a")
    r.record_message("p1", "inv", "inbound", 1)
    r.record_error("p1", "x", "op")
    r.record_event(DiagnosticEvent("custom", severity=Severity.CRITICAL))
    s = r.get_stats()
    assert s.total_events == 4
    assert s.events_by_type == {}
    assert all(v == 0 for v in s.events_by_severity.values())
    # events themselves are still recorded in full
    assert [e.event_type for e in r.get_events(0)] == ["peer_connected", "message", "error", "custom"]
    assert r.health_check().total_events == 4


def test_enable_metrics_true_counts_types(make_recorder):
    r = make_recorder(100, enable_metrics=True)
    r.record_message("p1", "inv", "inbound", 1)
    assert r.get_stats().events_by_type == {"message": 1}


def test_max_events_sizes_the_ring(make_recorder):
    r = make_recorder(config=RecorderConfig(max_events=25, name=unique_name()))
    for i in range(60):
        r.record_message("p", "inv", "inbound", i)
    assert len(r.get_events(0)) == 25
    assert r.health_check().max_events == 25


def test_recorder_default_constructor_uses_default_config(ring_name):
    with Recorder(name=ring_name) as r:
        d = RecorderConfig.default()
        for f in ("max_events", "cleanup_interval", "retention_period", "enable_metrics", "enable_health_check",
                  "log_level", "export_format"):
            assert getattr(r.config, f) == getattr(d, f), f
