"""RecorderConfig: the Go original's documented configuration, and this time it is honoured."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from shmdiag.core.layout import EXPORT_FORMATS, LOG_LEVELS

# POSIX shared-memory names: one path component. Kept to a portable, shell-friendly alphabet.
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")

MAX_EVENTS_LIMIT = 1 << 32


def validate_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"name: {name!r} is not a valid ring name (1-200 characters of letters, digits, '_', '.', '-', "
            "not starting with '.' or '-')"
        )
    return name


@dataclass
class RecorderConfig:
    """How a ring is sized and looked after. Periods are in seconds."""

    max_events: int = 1000
    cleanup_interval: float = 300.0
    retention_period: float = 86400.0
    enable_metrics: bool = True
    enable_health_check: bool = True
    log_level: str = "info"
    export_format: str = "json"
    name: str | None = None
    max_writers: int = 128
    max_peers: int = 4096

    @classmethod
    def default(cls) -> RecorderConfig:
        return cls()

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        for fname, lo, hi in (("max_events", 1, MAX_EVENTS_LIMIT), ("max_writers", 1, 4096), ("max_peers", 0, 1 << 24)):
            v = getattr(self, fname)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"{fname}: must be an integer from {lo} to {hi}, got {v!r}")
        for fname in ("cleanup_interval", "retention_period"):
            v = getattr(self, fname)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{fname}: must be a positive number of seconds, got {v!r}")
        for fname in ("enable_metrics", "enable_health_check"):
            if not isinstance(getattr(self, fname), bool):
                raise ValueError(f"{fname}: must be True or False, got {getattr(self, fname)!r}")
        if not isinstance(self.log_level, str) or self.log_level.lower() not in LOG_LEVELS:
            raise ValueError(f"log_level: must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        if not isinstance(self.export_format, str) or self.export_format.lower() not in EXPORT_FORMATS:
            raise ValueError(f"export_format: must be one of {', '.join(EXPORT_FORMATS)}, got {self.export_format!r}")
        if self.name is not None:
            validate_name(self.name)
