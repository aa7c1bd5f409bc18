"""shmdiag: a diagnostics recorder for P2P network software, shared by many processes.

Events from every process go into one named shared-memory ring of fixed-width records;
any process on the machine can attach by name to read events, stats, health and exports.

Public: the names in ``__all__`` below. Inside, layers, lowest first (a module imports only
from its own layer and below; only ``core`` touches the segment's memory; tests/test_layers.py
checks both): ``core`` (the ring) < ``views`` (read models) < ``export`` < ``inspector`` <
``collector`` < ``recorder``/``loghandler`` < integrations (metrics, alerts, archive, web) <
``cli``/``loadgen``. See the README's "Architecture".
"""

import logging as _logging

from shmdiag._version import __version__ as __version__
from shmdiag.core.config import RecorderConfig
from shmdiag.core.errors import (
    CorruptRingError,
    LayoutVersionError,
    NotARingError,
    ReadOnlyRingError,
    RecorderClosedError,
    RingInUseError,
    RingNotFoundError,
    RingPermissionError,
    RingTooLargeError,
    ShmDiagError,
    TooManyWritersError,
)
from shmdiag.core.models import (
    DeadWriter,
    DiagnosticEvent,
    DiagnosticStats,
    HealthReason,
    HealthStatus,
    LatencyStats,
    NetworkDiagnostic,
    PeerDiagnostic,
    Severity,
    WriterInfo,
)
from shmdiag.core.segment import RingExistsError
from shmdiag.inspector import Inspector
from shmdiag.loghandler import LoggingHandler
from shmdiag.recorder import Recorder

__all__ = [
    "CorruptRingError",
    "DeadWriter",
    "DiagnosticEvent",
    "DiagnosticStats",
    "HealthReason",
    "HealthStatus",
    "Inspector",
    "LatencyStats",
    "LayoutVersionError",
    "LoggingHandler",
    "NetworkDiagnostic",
    "NotARingError",
    "PeerDiagnostic",
    "ReadOnlyRingError",
    "Recorder",
    "RecorderClosedError",
    "RecorderConfig",
    "RingExistsError",
    "RingInUseError",
    "RingNotFoundError",
    "RingPermissionError",
    "RingTooLargeError",
    "Severity",
    "ShmDiagError",
    "TooManyWritersError",
    "WriterInfo",
]

# A library logs through its logger and leaves output to the application (no lastResort noise).
_logging.getLogger("shmdiag").addHandler(_logging.NullHandler())
