"""shmdiag: a diagnostics recorder for P2P network software, shared by many processes.

Events from every process go into one named shared-memory ring of fixed-width records;
any process on the machine can attach by name to read events, stats, health and exports.
"""

import logging as _logging

from shmdiag.core.config import RecorderConfig
from shmdiag.core.errors import (
    CorruptRingError,
    LayoutVersionError,
    NotARingError,
    RecorderClosedError,
    RingNotFoundError,
    RingPermissionError,
    ShmDiagError,
    TooManyWritersError,
)
from shmdiag.loghandler import LoggingHandler
from shmdiag.core.models import (
    DiagnosticEvent,
    DiagnosticStats,
    HealthStatus,
    LatencyStats,
    NetworkDiagnostic,
    PeerDiagnostic,
    Severity,
    WriterInfo,
)
from shmdiag.recorder import Recorder
from shmdiag.core.segment import RingExistsError

__all__ = [
    "CorruptRingError",
    "DiagnosticEvent",
    "DiagnosticStats",
    "HealthStatus",
    "LatencyStats",
    "LayoutVersionError",
    "LoggingHandler",
    "NetworkDiagnostic",
    "NotARingError",
    "PeerDiagnostic",
    "Recorder",
    "RecorderClosedError",
    "RecorderConfig",
    "RingExistsError",
    "RingNotFoundError",
    "RingPermissionError",
    "Severity",
    "ShmDiagError",
    "TooManyWritersError",
    "WriterInfo",
]

__version__ = "0.1.0"

# A library logs through its logger and leaves output to the application (no lastResort noise).
_logging.getLogger("shmdiag").addHandler(_logging.NullHandler())
