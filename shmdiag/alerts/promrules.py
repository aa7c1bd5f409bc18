"""The alert rules as a Prometheus rule file, over the ``/metrics`` names (``shmdiag alert-rules``).

For operators who alert from Prometheus rather than from the collector: each rule becomes a
PromQL expression over the same counters the collector reads, so both fire on the same
conditions (up to the scrape interval). Conditions about single peers (``peer_errors``,
``peer_ping``) have no equivalent: the metrics carry no peer labels, by design; they are left
out, with a comment saying so. The file is YAML; strings are written JSON-quoted, which YAML
reads as they are.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from shmdiag.alerts.rules import HEALTH_ORDER, AlertRule
from shmdiag.core.models import Severity

SEVERITY_LABELS = tuple(s.name.lower() for s in Severity)  # shmdiag_events_by_severity_total{severity}


def _dur(seconds: float) -> str:
    s = max(int(round(seconds)), 1)
    return f"{s // 3600}h" if s % 3600 == 0 else f"{s // 60}m" if s % 60 == 0 else f"{s}s"


def _sev_re(at_least: Severity) -> str:
    return "|".join(s.name.lower() for s in Severity if s >= at_least)


def expr(r: AlertRule) -> str | None:
    """The PromQL of rule ``r``; None if the metrics cannot express it."""
    c, w = r.condition, _dur(r.window)
    if c == "rate":
        if r.event_type is not None:
            sel = f"shmdiag_events_total{{type={json.dumps(r.event_type)}}}"
            return f"sum without (type) (rate({sel}[{w}])) > {r.rate_above:g}"
        assert r.min_severity is not None
        sel = f'shmdiag_events_by_severity_total{{severity=~"{_sev_re(r.min_severity)}"}}'
        return f"sum without (severity) (rate({sel}[{w}])) > {r.rate_above:g}"
    if c == "health":
        assert r.at_least is not None
        worse = "|".join(HEALTH_ORDER[HEALTH_ORDER.index(r.at_least):])
        return f'shmdiag_health_status{{status=~"{worse}"}} == 1'
    if c == "writer_died":
        return f"max_over_time(shmdiag_writers_dead[{w}]) > shmdiag_writers_dead offset {w}"
    if c == "events_lost":
        return (f"increase(shmdiag_events_lost_total[{w}]) + increase(shmdiag_events_abandoned_total[{w}]) "
                f"> {r.above:g}")
    if c == "idle":
        assert r.seconds is not None
        s = _dur(r.seconds)
        return f"sum without (type) (rate(shmdiag_events_total[{s}])) == 0 and shmdiag_writers_alive > 0"
    if c == "error_rate":
        errs = f'rate(shmdiag_events_by_severity_total{{severity=~"{_sev_re(Severity.ERROR)}"}}[{w}])'
        info = f'rate(shmdiag_events_by_severity_total{{severity=~"{_sev_re(Severity.INFO)}"}}[{w}])'
        return f"sum without (severity) ({errs}) / sum without (severity) ({info}) > {r.above:g}"
    if c == "peer_table_full":
        return "shmdiag_peers_untracked_total > 0 or shmdiag_peers_connected > shmdiag_peers_max"
    return None


def prometheus_rules(rules: Iterable[AlertRule], group: str = "shmdiag") -> str:
    """A rule file (groups/rules/alert/expr/for/labels/annotations) for ``rules``."""
    q = json.dumps
    lines = ["# Prometheus alerting rules equivalent to shmdiag's built-in ones (shmdiag alert-rules).",
             "# Check: promtool check rules FILE", "groups:", f"  - name: {q(group)}", "    rules:"]
    for r in rules:
        e = expr(r)
        if e is None:
            lines.append(f"      # {r.name}: condition {r.condition} is about single peers; the metrics carry no "
                         "peer labels, so only the collector evaluates it")
            continue
        lines += [f"      - alert: {q(r.name)}", f"        expr: {q(e)}"]
        if r.for_:
            lines.append(f"        for: {_dur(r.for_)}")
        lines.append("        labels:")
        for k, v in sorted({**r.labels, "severity": r.severity}.items()):
            lines.append(f"          {k}: {q(v)}")
        lines += ["        annotations:", f"          summary: {q(r.summary or r.describe())}",
                  f"          description: {q(r.description or r.describe())}"]
    return "\n".join(lines) + "\n"
