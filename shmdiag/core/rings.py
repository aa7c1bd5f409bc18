"""Finding shmdiag rings on this machine (``shmdiag ls``) and removing stale ones (``shmdiag rm``).

POSIX shared memory lives in /dev/shm on Linux. Every file there is a candidate; only those
whose first bytes are shmdiag's magic number are looked at further, and then only through
Segment.attach, which validates the header like any attacher does. Nothing here writes into a
ring: listing reads counters, it does not reap dead writers.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import _posixshmem
import numpy as np
import psutil

from shmdiag.core import layout as L
from shmdiag.core.config import validate_name
from shmdiag.core.errors import (
    CorruptRingError,
    LayoutVersionError,
    NotARingError,
    RingNotFoundError,
    RingPermissionError,
    ShmDiagError,
)

SHM_DIR = "/dev/shm"
# psutil derives a process's start time from /proc/stat's btime, a whole second, so it can read
# up to a second early; a creator always started before it created its ring.
_START_SLACK = 1.0


class RefusedError(ShmDiagError):
    """``rm`` declined to remove a segment (it is in use, or it is not a ring)."""


@dataclass
class RingInfo:
    """One row of ``shmdiag ls``. Fields are None when the ring could not be read (see ``note``)."""

    name: str
    size: int
    owner_pid: int | None = None
    owner_alive: bool | None = None
    capacity: int | None = None
    retained: int | None = None
    total_events: int | None = None
    live_writers: int | None = None
    created: float | None = None  # Unix time, seconds
    age: float | None = None      # seconds
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def creator_alive(pid: int, created_ns: int) -> bool:
    """Is the process that created a ring at ``created_ns`` still running as ``pid``?

    A pid alone is not enough: after the creator dies its pid may be reused, and a process that
    started after the ring was created cannot be its creator. A zombie is dead. When psutil may
    not look (another user's process), say alive: the cautious answer for ``rm``.
    """
    if pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started = proc.create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True
    return started <= created_ns / 1e9 + _START_SLACK


def _read_prefix(path: str, n: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        return os.pread(fd, n, 0)
    finally:
        os.close(fd)


def _raw_identity(raw: bytes, info: RingInfo) -> None:
    """Creator and age from an unvalidated header (for rows with a note): shown, not trusted."""
    if len(raw) < L.HEADER_STATIC_SIZE:
        return
    hdr = np.frombuffer(raw[: L.HEADER_SIZE].ljust(L.HEADER_SIZE, b"\0"), dtype=L.HEADER, count=1)[0]
    info.owner_pid = int(hdr["creator_pid"])
    created_ns = int(hdr["created_ns"])
    info.owner_alive = creator_alive(info.owner_pid, created_ns)
    if 0 < created_ns < time.time_ns() + 86400 * 10**9:
        info.created = created_ns / 1e9
        info.age = max(0.0, time.time() - info.created)


def ring_info(name: str, size: int | None = None) -> RingInfo:
    """Everything ``ls`` shows about one ring. Raises NotARingError for a foreign segment and
    RingNotFoundError when it vanished; any other problem is reported in ``note``."""
    from shmdiag.core.reader import count_retained
    from shmdiag.recorder import Recorder

    path = os.path.join(SHM_DIR, name)
    if size is None:
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            raise RingNotFoundError(f"no shmdiag ring named {name!r}") from None
    info = RingInfo(name=name, size=size)
    try:
        rec = Recorder.attach(name)
    except (LayoutVersionError, CorruptRingError, RingPermissionError) as e:
        info.note = str(e)
        if not isinstance(e, LayoutVersionError):  # another version's header may be laid out otherwise
            try:
                _raw_identity(_read_prefix(path, L.HEADER_SIZE), info)
            except OSError:
                pass
        return info
    try:
        seg = rec._seg
        info.owner_pid = seg.creator_pid
        info.owner_alive = creator_alive(seg.creator_pid, seg.created_ns)
        info.capacity = seg.capacity
        info.retained = count_retained(seg)
        info.total_events = rec.accounting().recorded
        info.live_writers = sum(1 for w in rec.get_writers() if w.alive)
        info.created = seg.created_ns / 1e9
        info.age = max(0.0, time.time() - info.created)
    finally:
        rec.close()
    return info


def list_rings(shm_dir: str = SHM_DIR) -> list[RingInfo]:
    """Every shmdiag ring in ``shm_dir``, by name. Foreign segments are skipped silently; a
    segment with our magic number that cannot be read is listed with a note saying why. An
    unreadable segment whose name starts with "shmdiag" is listed too (it is probably ours)."""
    out: list[RingInfo] = []
    try:
        entries = sorted(os.scandir(shm_dir), key=lambda e: e.name)
    except FileNotFoundError:
        return out
    for entry in entries:
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            validate_name(entry.name)
            size = entry.stat(follow_symlinks=False).st_size
        except (OSError, ValueError):
            continue
        try:
            magic = _read_prefix(entry.path, len(L.MAGIC))
        except PermissionError:
            if entry.name.startswith("shmdiag"):
                out.append(RingInfo(name=entry.name, size=size, note="permission denied"))
            continue
        except OSError:
            continue
        if magic != L.MAGIC:
            continue
        try:
            out.append(ring_info(entry.name, size))
        except (NotARingError, RingNotFoundError):
            continue
    return out


def remove_ring(name: str, force: bool = False) -> RingInfo | None:
    """Unlink a stale ring. Refuses a segment that is not a shmdiag ring (even with ``force``),
    and a ring whose creator is alive, or whose header cannot be trusted, unless ``force``.
    Returns what the ring looked like (None if its header could not be read)."""
    from shmdiag.core.segment import Segment

    validate_name(name)
    info: RingInfo | None = None
    try:
        seg = Segment.attach(name)
    except NotARingError as e:
        raise RefusedError(f"{e}; not removing it") from None
    except (LayoutVersionError, CorruptRingError) as e:
        if not force:
            raise RefusedError(f"{e}; cannot tell whether its owner is alive (use --force to remove it anyway)") from None
    else:
        try:
            info = RingInfo(name=name, size=seg.size, owner_pid=seg.creator_pid,
                            owner_alive=creator_alive(seg.creator_pid, seg.created_ns), capacity=seg.capacity,
                            created=seg.created_ns / 1e9)
        finally:
            seg.close()
        if info.owner_alive and not force:
            raise RefusedError(f"ring {name!r} is in use: its creator (pid {info.owner_pid}) is alive; "
                               "stop it first, or use --force")
    try:
        _posixshmem.shm_unlink("/" + name)
    except FileNotFoundError:
        raise RingNotFoundError(f"no shmdiag ring named {name!r} (removed meanwhile)") from None
    except PermissionError:
        raise RingPermissionError(f"permission denied removing ring {name!r} (it belongs to another user)") from None
    return info
