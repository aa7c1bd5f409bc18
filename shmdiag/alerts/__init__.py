"""Alert rules evaluated by the collector and sent to Alertmanager, a webhook and the ring itself.

``rules`` parses the collector's ``[alerting]``/``[[alert]]`` TOML tables, ``engine`` evaluates
them from the shared counters, ``notify`` delivers, ``service`` is the loop ``shmdiag serve``
runs, and ``promrules`` writes the equivalent Prometheus rule file (``shmdiag alert-rules``).
"""

from shmdiag.alerts.engine import AlertEngine, AlertState, Transition
from shmdiag.alerts.promrules import prometheus_rules
from shmdiag.alerts.rules import (
    CONDITIONS,
    AlertConfigError,
    AlertingConfig,
    AlertRule,
    default_rules,
    parse_alerting,
    with_dashboard,
)
from shmdiag.alerts.service import AlertService, health_summary, live_state, read_state, state_path

__all__ = [
    "CONDITIONS",
    "AlertConfigError",
    "AlertEngine",
    "AlertRule",
    "AlertService",
    "AlertState",
    "AlertingConfig",
    "Transition",
    "default_rules",
    "health_summary",
    "live_state",
    "parse_alerting",
    "prometheus_rules",
    "read_state",
    "state_path",
    "with_dashboard",
]
