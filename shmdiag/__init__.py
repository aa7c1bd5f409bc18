"""shmdiag: a diagnostics recorder for P2P network software, shared by many processes.

Events from every process go into one named shared-memory ring of fixed-width records;
any process on the machine can attach by name to read events, stats, health and exports.
"""

import logging as _logging

from ._config import RecorderConfig
from ._errors import (
    CorruptRingError,
    LayoutVersionError,
    NotARingError,
    RecorderClosedError,
    RingNotFoundError,
    RingPermissionError,
    ShmDiagError,
    TooManyWritersError,
)
from ._loghandler import LoggingHandler
from ._models import (
    DiagnosticEvent,
    DiagnosticStats,
    HealthStatus,
    LatencyStats,
    NetworkDiagnostic,
    PeerDiagnostic,
    Severity,
    WriterInfo,
)
from ._recorder import Recorder
from ._segment import RingExistsError

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
