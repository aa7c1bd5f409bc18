"""Exceptions. Every failure shmdiag raises on purpose is a ShmDiagError."""

from __future__ import annotations


class ShmDiagError(Exception):
    """Base class of shmdiag's own errors."""


class RecorderClosedError(ShmDiagError):
    """The recorder was closed; only close() and health_check() still work."""


class RingNotFoundError(ShmDiagError, FileNotFoundError):
    """No shared-memory segment of that name exists."""


class RingPermissionError(ShmDiagError, PermissionError):
    """The segment exists but this user may not open it."""


class NotARingError(ShmDiagError):
    """The segment exists but is not a shmdiag ring (wrong magic or too small)."""


class LayoutVersionError(ShmDiagError):
    """The segment is a shmdiag ring of another layout version."""


class CorruptRingError(ShmDiagError):
    """The segment claims to be a shmdiag ring but its header does not add up."""


class TooManyWritersError(ShmDiagError):
    """Every writer shard of the ring is held by a live process."""


class ReadOnlyRingError(ShmDiagError):
    """A write was attempted through a read-only attachment (an Inspector maps the ring read-only)."""


class RingInUseError(ShmDiagError):
    """The ring is kept by a live process (its collector, or its creator): not adopted, not collected twice."""


class RingTooLargeError(ShmDiagError, MemoryError):
    """The ring's memory could not be reserved: larger than /dev/shm or the machine can hold."""
