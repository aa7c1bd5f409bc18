"""Alert rules: the ``[alerting]`` table and ``[[alert]]`` tables of the collector's TOML config.

A rule is either a **rate rule** (``event_type`` or ``min_severity`` with ``rate_above``: events
per second over ``window``) or a **built-in condition** (``condition = ...`` with the parameters
it needs, :data:`CONDITIONS`). Parsing checks everything up front, so ``shmdiag serve`` refuses
a bad config with one line naming the rule and the field, before it touches any ring.
"""

from __future__ import annotations

import dataclasses
import math
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shmdiag.core.models import Severity

# A ring's health statuses, least to most serious (views/health.py); `at_least` names one.
HEALTH_ORDER = ("healthy", "warning", "degraded", "error", "stopped")

# Built-in conditions and the parameters each takes: (name, required, default).
CONDITIONS: dict[str, tuple[tuple[str, bool, Any], ...]] = {
    "health": (("at_least", True, None),),
    "writer_died": (("window", False, 300.0),),
    "events_lost": (("window", False, 300.0), ("above", False, 0.0)),
    "idle": (("seconds", True, None),),
    "error_rate": (("above", True, None), ("window", False, 300.0)),
    "peer_errors": (("above", True, None), ("window", False, 300.0)),
    "peer_ping": (("above", True, None),),
    "peer_table_full": (),
}

ALERT_SEVERITIES = ("warning", "critical")  # the rule's label; the ring event is WARNING or CRITICAL


class AlertConfigError(ValueError):
    """A bad ``[alerting]`` or ``[[alert]]`` table: the message names the rule and the field."""


@dataclass(frozen=True)
class AlertRule:
    """One rule. ``condition`` is ``"rate"`` for a rate rule, else a key of :data:`CONDITIONS`."""

    name: str
    condition: str
    severity: str = "warning"
    summary: str = ""
    description: str = ""
    for_: float = 0.0  # seconds the condition must hold before the alert fires ("for" in TOML)
    window: float = 300.0
    event_type: str | None = None
    min_severity: Severity | None = None
    rate_above: float | None = None
    above: float | None = None
    at_least: str | None = None
    seconds: float | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """The condition in words, for ``shmdiag alerts`` and the default summary."""
        c = self.condition
        if c == "rate":
            what = f"{self.event_type} events" if self.event_type else f"events at {self.min_severity.name} and above" \
                if self.min_severity is not None else "events"
            return f"more than {self.rate_above:g} {what}/s over {self.window:g}s"
        if c == "health":
            return f"health is {self.at_least} or worse"
        if c == "writer_died":
            return f"a writer process died in the last {self.window:g}s"
        if c == "events_lost":
            return f"more than {self.above:g} events lost or abandoned in the last {self.window:g}s"
        if c == "idle":
            return f"no event for {self.seconds:g}s while writers are alive"
        if c == "error_rate":
            return f"error rate (ERROR+CRITICAL over INFO and above) above {self.above:.1%} over {self.window:g}s"
        if c == "peer_errors":
            return f"a peer with more than {self.above:g} errors in the last {self.window:g}s"
        if c == "peer_ping":
            return f"a connected peer's ping above {self.above:g}s"
        return "the peer table is full (connects untracked)"


@dataclass(frozen=True)
class AlertingConfig:
    """The ``[alerting]`` table, with the rules."""

    rules: tuple[AlertRule, ...]
    interval: float = 1.0
    alertmanager: str | None = None
    webhook: str | None = None
    resend: float = 60.0      # seconds between re-sends of a firing alert to Alertmanager
    timeout: float = 2.0      # seconds per HTTP attempt
    retries: int = 2          # further attempts after a failed one, per notification
    dashboard_url: str | None = None  # generatorURL of Alertmanager alerts


def default_rules() -> tuple[AlertRule, ...]:
    """The rules that are on unless the config says ``defaults = false`` (documented in the
    README's "Alerts")."""
    return (
        AlertRule("RingUnhealthy", "health", severity="critical", at_least="degraded",
                  summary="the ring's health is degraded or worse"),
        AlertRule("WriterDied", "writer_died", window=300.0, summary="a writer process died without detaching"),
        AlertRule("EventsLost", "events_lost", window=300.0, above=0.0,
                  summary="events were lost or abandoned in the last 5 minutes"),
        AlertRule("RingIdle", "idle", seconds=300.0, summary="no event for 5 minutes while writers are alive"),
        AlertRule("ErrorRateHigh", "error_rate", above=0.2, window=300.0, for_=60.0,
                  summary="more than 20% of events at INFO and above are errors"),
        AlertRule("PeerTableFull", "peer_table_full", summary="the peer table is full: new peers go untracked"),
    )


_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_OWN_LABELS = {"alertname", "severity", "ring", "instance"}  # set by shmdiag
_RULE_KEYS = {"name", "condition", "severity", "summary", "description", "for", "window", "event_type",
              "min_severity", "rate_above", "above", "at_least", "seconds", "labels"}
_ALERTING_KEYS = {"interval", "alertmanager", "webhook", "resend", "timeout", "retries", "dashboard_url", "defaults"}


def _number(where: str, key: str, v: object, *, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise AlertConfigError(f"{where}: {key}: must be a number, got {v!r}")
    if v < 0 or (positive and v == 0):
        raise AlertConfigError(f"{where}: {key}: must be {'positive' if positive else '>= 0'}, got {v!r}")
    return float(v)


def _url(key: str, v: object) -> str:
    if not isinstance(v, str):
        raise AlertConfigError(f"[alerting]: {key}: must be a URL string, got {v!r}")
    u = urllib.parse.urlsplit(v)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise AlertConfigError(f"[alerting]: {key}: not an http(s) URL: {v!r}")
    try:
        u.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise AlertConfigError(f"[alerting]: {key}: bad port in {v!r}") from None
    return v.rstrip("/")


def parse_rule(i: int, t: Mapping[str, Any]) -> AlertRule:
    """The ``i``-th ``[[alert]]`` table (0-based) as a rule."""
    if not isinstance(t, Mapping):
        raise AlertConfigError(f"[[alert]] #{i + 1}: must be a table")
    name = t.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", name):
        raise AlertConfigError(f"[[alert]] #{i + 1}: name: a name of letters, digits, '_' or ':' is required, "
                               f"got {name!r}")
    where = f"[[alert]] {name!r}"
    for k in t:
        if k not in _RULE_KEYS:
            raise AlertConfigError(f"{where}: {k}: unknown field (known: {', '.join(sorted(_RULE_KEYS))})")
    kw: dict[str, Any] = {"name": name}
    sev = t.get("severity", "warning")
    if sev not in ALERT_SEVERITIES:
        raise AlertConfigError(f"{where}: severity: must be one of {', '.join(ALERT_SEVERITIES)}, got {sev!r}")
    kw["severity"] = sev
    for k in ("summary", "description"):
        if k in t:
            if not isinstance(t[k], str):
                raise AlertConfigError(f"{where}: {k}: must be a string")
            kw[k] = t[k]
    if "for" in t:
        kw["for_"] = _number(where, "for", t["for"])
    labels = t.get("labels", {})
    if not isinstance(labels, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise AlertConfigError(f"{where}: labels: must be a table of strings")
    for k in labels:
        if not _LABEL.fullmatch(k) or k.startswith("__") or k in _OWN_LABELS:
            raise AlertConfigError(f"{where}: labels: {k!r} is not a label name of your own "
                                   f"([a-zA-Z_][a-zA-Z0-9_]*, not {', '.join(sorted(_OWN_LABELS))})")
    kw["labels"] = dict(labels)
    cond = t.get("condition")
    if cond is None:
        # a rate rule
        if ("event_type" in t) == ("min_severity" in t):
            raise AlertConfigError(f"{where}: condition: give a built-in condition ({', '.join(CONDITIONS)}), "
                                   "or exactly one of event_type and min_severity with rate_above")
        if "rate_above" not in t:
            raise AlertConfigError(f"{where}: rate_above: required with event_type or min_severity")
        for k in ("above", "at_least", "seconds"):
            if k in t:
                raise AlertConfigError(f"{where}: {k}: not a parameter of a rate rule")
        kw["condition"] = "rate"
        kw["rate_above"] = _number(where, "rate_above", t["rate_above"])
        kw["window"] = _number(where, "window", t.get("window", 60.0), positive=True)
        if "event_type" in t:
            if not isinstance(t["event_type"], str) or not t["event_type"]:
                raise AlertConfigError(f"{where}: event_type: must be a non-empty string")
            kw["event_type"] = t["event_type"]
        else:
            s = t["min_severity"]
            try:
                kw["min_severity"] = Severity[s.upper()] if isinstance(s, str) else None
            except KeyError:
                kw["min_severity"] = None
            if kw["min_severity"] is None:
                raise AlertConfigError(f"{where}: min_severity: one of "
                                       f"{', '.join(x.name.lower() for x in Severity)}, got {s!r}")
        return AlertRule(**kw)
    if cond not in CONDITIONS:
        raise AlertConfigError(f"{where}: condition: unknown condition {cond!r} (known: {', '.join(CONDITIONS)})")
    kw["condition"] = cond
    params = CONDITIONS[cond]
    allowed = {p for p, _, _ in params}
    for k in ("event_type", "min_severity", "rate_above", "above", "at_least", "seconds", "window"):
        if k in t and k not in allowed:
            raise AlertConfigError(f"{where}: {k}: not a parameter of condition {cond!r}"
                                   f"{' (it takes ' + ', '.join(sorted(allowed)) + ')' if allowed else ''}")
    for p, required, default in params:
        if p not in t:
            if required:
                raise AlertConfigError(f"{where}: {p}: required by condition {cond!r}")
            kw[p] = default
            continue
        v = t[p]
        if p == "at_least":
            if v not in HEALTH_ORDER[1:]:
                raise AlertConfigError(f"{where}: at_least: one of {', '.join(HEALTH_ORDER[1:])}, got {v!r}")
            kw[p] = v
        else:
            kw[p] = _number(where, p, v, positive=p in ("window", "seconds"))
    if cond == "error_rate" and kw["above"] > 1:
        raise AlertConfigError(f"{where}: above: an error rate is a fraction in 0..1, got {kw['above']!r}")
    return AlertRule(**kw)


def parse_alerting(values: Mapping[str, Any]) -> AlertingConfig:
    """The ``[alerting]`` table (may be absent) and the ``[[alert]]`` list of a parsed TOML file."""
    a = values.get("alerting", {})
    if not isinstance(a, Mapping):
        raise AlertConfigError("[alerting]: must be a table")
    for k in a:
        if k not in _ALERTING_KEYS:
            raise AlertConfigError(f"[alerting]: {k}: unknown setting (known: {', '.join(sorted(_ALERTING_KEYS))})")
    kw: dict[str, Any] = {}
    for k in ("interval", "resend", "timeout"):
        if k in a:
            kw[k] = _number("[alerting]", k, a[k], positive=True)
    if "retries" in a:
        r = a["retries"]
        if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= 10:
            raise AlertConfigError(f"[alerting]: retries: an integer in 0..10, got {r!r}")
        kw["retries"] = r
    for k in ("alertmanager", "webhook", "dashboard_url"):
        if k in a:
            kw[k] = _url(k, a[k])
    defaults = a.get("defaults", True)
    if not isinstance(defaults, bool):
        raise AlertConfigError(f"[alerting]: defaults: true or false, got {defaults!r}")
    raw = values.get("alert", [])
    if not isinstance(raw, list):
        raise AlertConfigError("[[alert]]: write each rule as an [[alert]] table")
    rules = [parse_rule(i, t) for i, t in enumerate(raw)]
    names = [r.name for r in rules]
    for n in names:
        if names.count(n) > 1:
            raise AlertConfigError(f"[[alert]] {n!r}: name: two rules have this name")
    if defaults:  # a configured rule of a default's name replaces it
        rules = [r for r in default_rules() if r.name not in names] + rules
    return AlertingConfig(rules=tuple(rules), **kw)


def with_dashboard(cfg: AlertingConfig, url: str | None) -> AlertingConfig:
    """``cfg`` with ``dashboard_url`` set to ``url`` unless the config gave one."""
    return cfg if cfg.dashboard_url or not url else dataclasses.replace(cfg, dashboard_url=url)
