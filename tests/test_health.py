"""health_check(): every status the recorder can reach from one process, and its figures."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from shmdiag import DiagnosticEvent, HealthStatus, Severity


def record_mix(r, errors: int, others: int, *, critical: bool = False) -> None:
    for i in range(others):  # INFO: the error rate is over events at INFO and above by default
        r.record_event(DiagnosticEvent("progress", str(i), Severity.INFO, peer_id="p"))
    for _ in range(errors):
        if critical:
            r.record_error("", "node-wide failure", "op")
        else:
            r.record_error("p", "peer failure", "op")


def test_healthy_fresh_ring(rec):
    h = rec.health_check()
    assert isinstance(h, HealthStatus)
    assert h.status == "healthy"
    assert h.message
    assert (h.event_count, h.total_events, h.max_events) == (0, 0, 1000)
    assert (h.events_overwritten, h.events_lost, h.events_abandoned, h.events_expired) == (0, 0, 0, 0)
    assert h.writers_dead == 0
    assert h.error_rate == 0.0
    assert h.uptime >= 0.0


def test_healthy_when_ring_overwrites_many_events(make_recorder):
    r = make_recorder(10)
    for i in range(1000):
        r.record_message("p", "inv", "inbound", i)
    h = r.health_check()
    assert h.status == "healthy", h.message
    assert h.event_count == 10
    assert h.max_events == 10
    assert h.total_events == 1000
    assert h.events_overwritten == 990
    assert (h.events_lost, h.events_abandoned, h.events_expired) == (0, 0, 0)


def test_events_overwritten_matches_accounting(make_recorder):
    r = make_recorder(7)
    for i in range(30):
        r.record_event(DiagnosticEvent("e", str(i)))
    h = r.health_check()
    acct = r.accounting()
    assert h.events_overwritten == acct.overwritten == 23
    assert acct.recorded == h.total_events == 30
    assert acct.recorded == h.event_count + acct.overwritten + acct.lost + acct.abandoned + acct.expired


@pytest.mark.parametrize(
    "errors, others, status",
    [
        (0, 10, "healthy"),
        (1, 20, "healthy"),    # 4.8%
        (1, 19, "warning"),    # exactly 5%
        (1, 9, "warning"),     # 10%
        (1, 5, "warning"),     # 16.7%
        (1, 4, "degraded"),    # exactly 20%
        (1, 2, "degraded"),    # 33%
        (2, 3, "degraded"),    # 40%
        (1, 1, "error"),       # exactly 50%
        (3, 1, "error"),       # 75%
        (1, 0, "error"),       # 100%
    ],
)
def test_status_by_error_rate(make_recorder, errors, others, status):
    r = make_recorder(100)
    record_mix(r, errors, others)
    h = r.health_check()
    assert h.error_rate == pytest.approx(errors / (errors + others))
    assert h.status == status, h.message
    if status != "healthy":
        assert "error rate" in h.message


def test_critical_counts_towards_error_rate(make_recorder):
    r = make_recorder(100)
    record_mix(r, 1, 4, critical=True)
    h = r.health_check()
    assert h.error_rate == pytest.approx(0.2)
    assert h.status == "degraded"


def test_warning_state(make_recorder):
    r = make_recorder(100)
    record_mix(r, 1, 9)
    assert r.health_check().status == "warning"


def test_degraded_state(make_recorder):
    r = make_recorder(100)
    record_mix(r, 1, 3)
    assert r.health_check().status == "degraded"


def test_error_state(make_recorder):
    r = make_recorder(100)
    record_mix(r, 5, 5)
    assert r.health_check().status == "error"


def test_error_rate_counts_overwritten_events(make_recorder):
    # the errors were long overwritten, but the rate is over everything recorded
    r = make_recorder(5)
    for _ in range(10):
        r.record_error("p", "x", "op")
    for i in range(10):
        r.record_event(DiagnosticEvent("progress", str(i), Severity.INFO))
    assert all(e.event_type == "progress" for e in r.get_events(0))
    h = r.health_check()
    assert h.error_rate == pytest.approx(0.5)
    assert h.status == "error"


def test_recovers_after_clear(make_recorder):
    r = make_recorder(100)
    record_mix(r, 5, 0)
    assert r.health_check().status == "error"
    r.clear_events()
    h = r.health_check()
    assert h.status == "healthy"
    assert (h.total_events, h.event_count, h.error_rate) == (0, 0, 0.0)


def test_stopped_after_close(make_recorder):
    r = make_recorder(33)
    record_mix(r, 5, 0)
    r.close()
    h = r.health_check()
    assert h.status == "stopped"
    assert h.max_events == 33
    assert h.message
    assert r.health_check().status == "stopped"  # stays stopped, never raises


def test_counts(make_recorder):
    r = make_recorder(50)
    for i in range(20):
        r.record_event(DiagnosticEvent("e", str(i), Severity.INFO))
    h = r.health_check()
    assert (h.event_count, h.max_events, h.total_events) == (20, 50, 20)


def test_uptime_increases(rec):
    h1 = rec.health_check()
    time.sleep(0.05)
    h2 = rec.health_check()
    assert h2.uptime > h1.uptime
    assert h2.uptime - h1.uptime >= 0.04


def test_attached_recorder_reports_creator_uptime(make_recorder):
    creator = make_recorder(10)
    time.sleep(0.3)
    other = make_recorder(attach=creator.name)
    h_other = other.health_check()
    h_creator = creator.health_check()
    assert h_other.uptime >= 0.3
    assert abs(h_creator.uptime - h_other.uptime) < 0.2


def test_writers_alive(make_recorder):
    creator = make_recorder(10)
    creator.record_event(DiagnosticEvent("x"))
    h = creator.health_check()
    assert h.writers_alive >= 1
    assert h.writers_dead == 0
    alive_before = h.writers_alive

    other = make_recorder(attach=creator.name)
    other.record_event(DiagnosticEvent("y"))
    assert creator.health_check().writers_alive == alive_before + 1
    other.close()
    h = creator.health_check()
    assert h.writers_alive == alive_before
    assert h.writers_dead == 0  # a clean detach is not a death
    assert h.status == "healthy"


def test_expired_events_do_not_hurt_health(make_recorder):
    r = make_recorder(10)
    r.record_event(DiagnosticEvent("old", timestamp=datetime.now(timezone.utc) - timedelta(days=2)))
    r.record_event(DiagnosticEvent("new"))
    assert r.cleanup_old_events() == 1
    h = r.health_check()
    assert h.status == "healthy"
    assert (h.events_expired, h.event_count, h.total_events) == (1, 1, 2)
