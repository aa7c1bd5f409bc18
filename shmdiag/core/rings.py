"""Finding shmdiag rings on this machine (``shmdiag ls``) and removing stale ones (``shmdiag rm``).

POSIX shared memory lives in /dev/shm on Linux. Every file there is a candidate; only those
whose first bytes are shmdiag's magic number are looked at further, and then only through
Segment.attach(readonly=True), which validates the header like any attacher does and maps the
ring read-only: nothing here can write into a ring (listing reads counters, it does not reap
dead writers).
"""

from __future__ import annotations

import _posixshmem
import os
import time
from dataclasses import dataclass

import numpy as np

from shmdiag.core import layout as L
from shmdiag.core import owners, snapshot
from shmdiag.core.config import validate_name
from shmdiag.core.errors import (
    CorruptRingError,
    LayoutVersionError,
    NotARingError,
    RingNotFoundError,
    RingPermissionError,
    ShmDiagError,
)
from shmdiag.core.procs import started_by
from shmdiag.core.segment import Segment
from shmdiag.core.shards import writer_counts

SHM_DIR = "/dev/shm"


class RefusedError(ShmDiagError):
    """``rm`` declined to remove a segment (it is in use, or it is not a ring)."""


@dataclass
class RingInfo:
    """One row of ``shmdiag ls``. Fields are None when the ring could not be read (see ``note``).
    As JSON: ``export.dicts.ring_to_dict`` (the shared names: ``creator_pid``, ``created_at``...)."""

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
    collector_pid: int | None = None     # the collector named in the header; None: none (or unreadable)
    collector_alive: bool | None = None  # False: the collector was killed and the ring outlived it


def creator_alive(pid: int, created_ns: int) -> bool:
    """Is the process that created a ring at ``created_ns`` still running as ``pid``? The creator
    started before it created the ring, so a process that started later has a reused pid (see
    core/procs.py; a process we may not look at counts as alive: the cautious answer for ``rm``)."""
    return started_by(pid, created_ns)


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
    path = os.path.join(SHM_DIR, name)
    if size is None:
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            raise RingNotFoundError(f"no shmdiag ring named {name!r}") from None
    info = RingInfo(name=name, size=size)
    try:
        seg = Segment.attach(name, readonly=True)
    except (LayoutVersionError, CorruptRingError, RingPermissionError) as e:
        info.note = str(e)
        if not isinstance(e, LayoutVersionError):  # another version's header may be laid out otherwise
            try:
                _raw_identity(_read_prefix(path, L.HEADER_SIZE), info)
            except OSError:
                pass
        return info
    try:
        info.owner_pid = seg.creator_pid
        info.owner_alive = creator_alive(seg.creator_pid, seg.created_ns)
        collector = owners.collector_of(seg)
        if collector is not None:
            info.collector_pid, info.collector_alive = collector.pid, collector.alive
        info.capacity = seg.capacity
        books = snapshot.counters(seg)  # counters only: ls never touches a slot
        info.retained, info.total_events = books.retained, books.recorded
        info.live_writers = writer_counts(snapshot.shards(seg)[1])[0]
        info.created = seg.created_ns / 1e9
        info.age = max(0.0, time.time() - info.created)
    finally:
        seg.close()
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


def ring_keeper(name: str) -> tuple[str, int] | None:
    """``("collector" | "creator", pid)`` of the live process that keeps the ring ``name`` in use,
    or None if it is stale (core/owners.py). Raises what Segment.attach raises for a segment
    that is not a valid ring of this version (nothing is written: it is attached read-only)."""
    seg = Segment.attach(name, readonly=True)
    try:
        return owners.in_use(seg)
    finally:
        seg.close()


def remove_ring(name: str, force: bool = False) -> RingInfo | None:
    """Unlink a stale ring. Refuses a segment that is not a shmdiag ring (even with ``force``),
    and a ring in use (its collector alive or, if it has none, its creator: core/owners.py), or
    whose header cannot be trusted, unless ``force``. A ring whose collector was killed is stale.
    Returns what the ring looked like (None if its header could not be read); its
    ``owner_alive`` says whether it was in use, and ``owner_pid`` then names the process that kept it."""
    validate_name(name)
    info: RingInfo | None = None
    try:
        seg = Segment.attach(name, readonly=True)
    except NotARingError as e:
        raise RefusedError(f"{e}; not removing it") from None
    except (LayoutVersionError, CorruptRingError) as e:
        if not force:
            raise RefusedError(f"{e}; cannot tell whether its owner is alive "
                               "(use --force to remove it anyway)") from None
    else:
        try:
            keeper = owners.in_use(seg)
            collector = owners.collector_of(seg)
            info = RingInfo(name=name, size=seg.size, owner_pid=seg.creator_pid,
                            owner_alive=keeper is not None, capacity=seg.capacity,
                            created=seg.created_ns / 1e9,
                            collector_pid=None if collector is None else collector.pid,
                            collector_alive=None if collector is None else collector.alive)
        finally:
            seg.close()
        if keeper is not None:
            info.owner_pid = keeper[1]
            if not force:
                raise RefusedError(f"ring {name!r} is in use: its {keeper[0]} (pid {keeper[1]}) is alive; "
                                   "stop it first, or use --force")
    try:
        _posixshmem.shm_unlink("/" + name)
    except FileNotFoundError:
        raise RingNotFoundError(f"no shmdiag ring named {name!r} (removed meanwhile)") from None
    except PermissionError:
        raise RingPermissionError(f"permission denied removing ring {name!r} (it belongs to another user)") from None
    return info
