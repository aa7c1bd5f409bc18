"""The named shared-memory segment: create it, attach to it, validate it, map it.

This mirrors CPython's ``multiprocessing/shared_memory.py`` (``shm_open`` + ``mmap``) with two
differences that matter across processes:

* attaching never registers the segment with the resource tracker. On Python < 3.13 a tracked
  attach unlinks the segment when the attaching process exits (CPython issue 82300);
* the header is validated before anything trusts it: a segment that is not a shmdiag ring, of
  another layout version, or with an inconsistent header is refused with a clear error;
* ``attach(name, readonly=True)`` opens it O_RDONLY and maps it PROT_READ, for readers (the
  Inspector): every numpy view is then read-only and the native Mapping refuses every store,
  so such a reader cannot write a byte of the ring, by mistake or otherwise.

The creator does register (as ``SharedMemory(create=True)`` would), so a creator that dies
without closing still has its segment unlinked, and unregisters when it unlinks -- unless it
creates the ring with ``persist=True`` (``shmdiag serve`` does): such a ring is never registered,
so it outlives a creator killed by SIGKILL or the OOM killer, with every event and counter in it,
until someone removes it (``shmdiag rm``, or ``close(remove=True)``).

Creating a ring reserves its memory (``posix_fallocate``), so a ring larger than /dev/shm or
the machine's memory can hold fails at creation with a RingTooLargeError saying how much was
asked and how much is available -- not later, with the OOM killer, when writers fill it.
"""

from __future__ import annotations

import _posixshmem
import errno
import math
import mmap
import os
import secrets
import stat
import time
from multiprocessing import resource_tracker

import numpy as np
import psutil

from shmdiag.core import layout as L
from shmdiag.core._native import Mapping, set_closed_error, set_readonly_error
from shmdiag.core.config import MAX_EVENTS_LIMIT, RecorderConfig, validate_name
from shmdiag.core.errors import (
    CorruptRingError,
    LayoutVersionError,
    NotARingError,
    ReadOnlyRingError,
    RecorderClosedError,
    RingNotFoundError,
    RingPermissionError,
    RingTooLargeError,
    ShmDiagError,
)

# What the native Mapping raises once released, and for a store through a read-only mapping.
set_closed_error(RecorderClosedError)
set_readonly_error(ReadOnlyRingError)


class RingExistsError(ShmDiagError, FileExistsError):
    """A segment with that name already exists."""


SHM_DIR = "/dev/shm"


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def available_bytes() -> int:
    """What a new ring can take: the free space of /dev/shm, and no more than the memory the
    machine has available (a tmpfs may be sized larger than RAM; filling it past that is an OOM
    kill, not an error)."""
    st = os.statvfs(SHM_DIR)
    vm = psutil.virtual_memory()
    return min(st.f_bavail * st.f_frsize, vm.available + psutil.swap_memory().free)


def _too_large(name: str, size: int, available: int) -> RingTooLargeError:
    return RingTooLargeError(f"cannot create ring {name!r}: it needs {_gib(size)} ({size} bytes) of shared "
                             f"memory and {_gib(available)} is available (free space of {SHM_DIR} or memory, "
                             "whichever is less); ask for fewer --max-events")


def _reserve(fd: int, name: str, size: int) -> None:
    """Allocate the segment's pages now (tmpfs supports fallocate), so a lack of memory is an
    error here and never a SIGBUS or an OOM kill when a writer first touches a page."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
            raise _too_large(name, size, available_bytes()) from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without fallocate: as before
            raise


def generate_name() -> str:
    return f"shmdiag-{os.getpid()}-{secrets.token_hex(4)}"


class Segment:
    """One mapped ring segment and the views both paths use.

    ``native`` is the writer path's atomic view; ``header``, ``shards``, ``peers`` (with ``peer_index``), ``ops`` and
    ``slots`` are numpy views for the reader path. Read live words (head, base, slot words) through
    ``native``; numpy loads of them carry no ordering.
    """

    def __init__(self, name: str, fd: int, mm: mmap.mmap, owner: bool, readonly: bool = False,
                 persist: bool = False) -> None:
        self.name = name
        self._fd = fd
        self._ino = os.fstat(fd).st_ino
        self._mmap: mmap.mmap | None = mm
        self.owner = owner
        self.readonly = readonly
        self.persist = persist  # created unregistered with the resource tracker, not unlinked at close
        self._tracked = owner and not persist  # registered with this process's resource tracker
        self.size = len(mm)
        hdr = np.ndarray((), dtype=L.HEADER, buffer=mm)
        self.header = hdr
        self.capacity = int(hdr["capacity"])
        self.max_shards = int(hdr["max_shards"])
        self.max_peers = int(hdr["max_peers"])
        self.slots_off = int(hdr["slots_off"])
        self.shards_off = int(hdr["shards_off"])
        self.peers_off = int(hdr["peers_off"])
        self.ops_off = int(hdr["ops_off"])
        self.created_ns = int(hdr["created_ns"])
        self.creator_pid = int(hdr["creator_pid"])
        flags = int(hdr["flags"])
        self.metrics = bool(flags & L.HEADER_FLAG_METRICS)
        self.config = RecorderConfig(
            max_events=self.capacity,
            cleanup_interval=float(hdr["cleanup_interval"]),
            retention_period=float(hdr["retention_period"]),
            enable_metrics=self.metrics,
            enable_health_check=bool(flags & L.HEADER_FLAG_HEALTH),
            log_level=L.LOG_LEVELS[int(hdr["log_level"])],
            export_format=L.EXPORT_FORMATS[int(hdr["export_format"])],
            name=name,
            max_writers=self.max_shards,
            max_peers=self.max_peers,
        )
        self.shards = np.ndarray((self.max_shards,), dtype=L.SHARD, buffer=mm, offset=self.shards_off)
        self.peers = np.ndarray((L.PEER_TABLE_FACTOR * self.max_peers,), dtype=L.PEER, buffer=mm, offset=self.peers_off)
        self.pindex_off = L.pindex_offset(hdr)
        self.peer_index = np.ndarray((L.PEER_TABLE_FACTOR * self.max_peers,), dtype=L.PEER_INDEX, buffer=mm,
                                     offset=self.pindex_off)
        self.ops = np.ndarray((L.OP_SLOTS,), dtype=L.OP, buffer=mm, offset=self.ops_off)
        self.slots = np.ndarray((self.capacity,), dtype=L.SLOT, buffer=mm, offset=self.slots_off)
        # The same records as raw words: copy through this one. Numpy copies a structured dtype
        # field by field and skips its padding, which the checksum covers.
        self.slot_words = np.ndarray((self.capacity, L.SLOT_SIZE // 8), dtype="<u8", buffer=mm, offset=self.slots_off)
        self.native = Mapping(mm, L.native_layout(hdr), readonly=readonly)

    # -- offsets of live words, for the native atomics ------------------------------------
    def header_word(self, field: str) -> int:
        return L.offset(L.HEADER, field)

    def shard_word(self, index: int, field: str, item: int = 0) -> int:
        return self.shards_off + index * L.SHARD.itemsize + L.offset(L.SHARD, field) + 8 * item

    def peer_word(self, row: int, field: str) -> int:
        if field in L.fields(L.PEER_INDEX):  # key_state, life, idle: in the dense index
            return self.pindex_off + row * L.PEER_INDEX.itemsize + L.offset(L.PEER_INDEX, field)
        return self.peers_off + row * L.PEER.itemsize + L.offset(L.PEER, field)

    def slot_word(self, slot: int) -> int:
        return self.slots_off + slot * L.SLOT_SIZE

    def bank_word(self, op: int, bank: int, field: str) -> int:
        return (self.ops_off + op * L.OP.itemsize + L.offset(L.OP, "banks") + bank * L.OP_BANK.itemsize
                + L.offset(L.OP_BANK, field))

    def load(self, field: str) -> int:
        return self.native.load(self.header_word(field))

    def base_word(self, gen: int) -> int:
        return self.header_word("base_of") + 8 * (gen % L.BASE_SLOTS)

    def era(self) -> tuple[int, int]:
        """(head, base): the next sequence number, and the first one since the last clear.
        Records and shard counters of sequence numbers below base belong to a cleared era."""
        head = self.load("head")
        seq = L.head_seq(head)
        # Untrusted words: a base above the head (garbage) would make every range read from
        # them negative. Such a base retains nothing, and so does base == head.
        return seq, min(seq, self.native.load(self.base_word(L.head_gen(head))))

    # -- lifetime --------------------------------------------------------------------------
    @classmethod
    def create(cls, config: RecorderConfig, *, persist: bool = False) -> Segment:
        """Create and map a new ring, its memory reserved (RingTooLargeError if it cannot be).
        ``persist``: do not register it with the resource tracker, so it outlives this process
        if it is killed (see the module docstring)."""
        name = config.name or generate_name()
        offs = L.segment_offsets(config.max_events, config.max_writers, config.max_peers)
        size = offs["total_size"]
        available = available_bytes()
        if size > available:  # refused before anything is made, let alone allocated
            raise _too_large(name, size, available)
        try:
            fd = _posixshmem.shm_open("/" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
        except FileExistsError:
            raise RingExistsError(f"a shared-memory segment named {name!r} already exists") from None
        except PermissionError as e:
            raise RingPermissionError(f"cannot create shared-memory segment {name!r}: {e.strerror}") from None
        try:
            os.fchmod(fd, 0o600)  # whatever the umask: the ring is its owner's only
            os.ftruncate(fd, size)
            _reserve(fd, name, size)
            mm = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            _posixshmem.shm_unlink("/" + name)
            raise
        if not persist:
            resource_tracker.register("/" + name, "shared_memory")
        hdr = np.ndarray((), dtype=L.HEADER, buffer=mm)
        hdr["version"] = L.VERSION
        hdr["header_size"] = L.HEADER_SIZE
        hdr["slot_size"] = L.SLOT_SIZE
        hdr["shard_size"] = L.SHARD.itemsize
        hdr["peer_size"] = L.PEER.itemsize
        hdr["text_size"] = L.TEXT_SIZE
        hdr["capacity"] = config.max_events
        hdr["max_shards"] = config.max_writers
        hdr["max_peers"] = config.max_peers
        for k, v in offs.items():
            hdr[k] = v
        hdr["created_ns"] = time.time_ns()
        hdr["creator_pid"] = os.getpid()
        hdr["flags"] = (L.HEADER_FLAG_METRICS if config.enable_metrics else 0) | (
            L.HEADER_FLAG_HEALTH if config.enable_health_check else 0)
        hdr["cleanup_interval"] = config.cleanup_interval
        hdr["retention_period"] = config.retention_period
        hdr["log_level"] = L.LOG_LEVELS.index(config.log_level.lower())
        hdr["export_format"] = L.EXPORT_FORMATS.index(config.export_format.lower())
        hdr["magic"] = L.MAGIC
        hdr["header_crc"] = L.header_crc(mm[: L.HEADER_STATIC_SIZE])
        del hdr
        return cls(name, fd, mm, owner=True, persist=persist)

    @classmethod
    def attach(cls, name: str, *, readonly: bool = False) -> Segment:
        """Map an existing ring. ``readonly``: open it O_RDONLY and map it PROT_READ (a reader
        that must not write: see the module docstring); read permission on it is then enough."""
        validate_name(name)
        try:
            # O_NONBLOCK: opening a FIFO placed under the name must not wait for a writer (it is
            # refused below as not a regular file); for a regular file the flag changes nothing.
            flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_NONBLOCK
            fd = _posixshmem.shm_open("/" + name, flags, mode=0o600)
        except FileNotFoundError:
            raise RingNotFoundError(f"no shmdiag ring named {name!r} (no /dev/shm/{name})") from None
        except PermissionError:
            raise RingPermissionError(f"permission denied opening ring {name!r}") from None
        except OSError as e:  # a directory (EINVAL, EISDIR), a symlink (ELOOP: shm_open uses O_NOFOLLOW), ...
            raise NotARingError(f"{name!r} is not a shmdiag ring (/dev/shm/{name}: {e.strerror})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise NotARingError(f"{name!r} is not a shmdiag ring (/dev/shm/{name} is not a regular file)")
            size = st.st_size
            if size < L.HEADER_SIZE:
                raise NotARingError(f"{name!r} is not a shmdiag ring ({size} bytes, smaller than a header)")
            mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ) if readonly else mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        try:
            _validate_header(name, mm)
            return cls(name, fd, mm, owner=False, readonly=readonly)
        except BaseException:
            mm.close()
            os.close(fd)
            raise

    def fileno(self) -> int:
        """The segment's file descriptor: its inode tells whether /dev/shm/<name> is still it."""
        return self._fd

    def link_state(self) -> str:
        """"" while /dev/shm/<name> is this segment; else "ring removed" (the name is gone: an
        ``rm``, or a crashed creator's resource tracker) or "replaced by another segment" (the
        name now leads to another file). Two stat calls: for health checks, not the hot path."""
        try:
            ino = os.stat(os.path.join(SHM_DIR, self.name), follow_symlinks=False).st_ino
        except FileNotFoundError:
            return "ring removed"
        except OSError:
            return ""  # cannot tell (permissions): say nothing rather than something wrong
        return "" if ino == self._ino else "replaced by another segment"

    def close(self) -> None:
        """Unmap. Every numpy view must go first: mmap refuses to close under an export."""
        if self._mmap is None:
            return
        self.native.release()
        for attr in ("header", "shards", "peers", "peer_index", "ops", "slots", "slot_words"):
            setattr(self, attr, None)
        self._mmap.close()
        os.close(self._fd)
        self._mmap = None

    def keep(self) -> None:
        """Let the ring outlive this process: unregister it from the resource tracker, and make
        close-time cleanup leave it (as if created with ``persist``)."""
        if self._tracked:
            resource_tracker.unregister("/" + self.name, "shared_memory")
            self._tracked = False
        self.persist = True

    def unlink(self) -> None:
        """Remove the ring's name, if it still leads to this segment (a ring created under the
        name since is not this one's to remove). Mappings stay valid until closed."""
        if self.link_state() == "":
            try:
                _posixshmem.shm_unlink("/" + self.name)
            except FileNotFoundError:
                pass  # someone (shmdiag rm, a test) removed it already
        if self._tracked:
            resource_tracker.unregister("/" + self.name, "shared_memory")
            self._tracked = False


def _validate_header(name: str, mm: mmap.mmap) -> None:
    raw = mm[: L.HEADER_SIZE]
    hdr = np.frombuffer(raw, dtype=L.HEADER, count=1)[0]
    if bytes(hdr["magic"]) != L.MAGIC.rstrip(b"\x00"):
        raise NotARingError(f"{name!r} is not a shmdiag ring (bad magic number)")
    version = int(hdr["version"])
    if version != L.VERSION:
        raise LayoutVersionError(f"{name!r} is a shmdiag ring of layout version {version}; "
                                 f"this shmdiag reads version {L.VERSION}")

    def bad(what: str) -> CorruptRingError:
        return CorruptRingError(f"{name!r} has a corrupt header: {what}")

    if int(hdr["header_crc"]) != L.header_crc(raw):
        raise bad("checksum mismatch")
    for field, want in (("header_size", L.HEADER_SIZE), ("slot_size", L.SLOT_SIZE), ("shard_size", L.SHARD.itemsize),
                        ("peer_size", L.PEER.itemsize), ("text_size", L.TEXT_SIZE)):
        if int(hdr[field]) != want:
            raise bad(f"{field} is {int(hdr[field])}, expected {want}")
    cap, shards, peers = int(hdr["capacity"]), int(hdr["max_shards"]), int(hdr["max_peers"])
    if not (1 <= cap <= MAX_EVENTS_LIMIT and 1 <= shards <= 4096 and 0 <= peers <= 1 << 24):
        raise bad(f"capacity {cap}, {shards} shards, {peers} peers out of range")
    offs = L.segment_offsets(cap, shards, peers)
    for k, v in offs.items():
        if int(hdr[k]) != v:
            raise bad(f"{k} is {int(hdr[k])}, expected {v}")
    if offs["total_size"] != len(mm):
        raise bad(f"segment is {len(mm)} bytes, header says {offs['total_size']}")
    if int(hdr["log_level"]) >= len(L.LOG_LEVELS) or int(hdr["export_format"]) >= len(L.EXPORT_FORMATS):
        raise bad("unknown log level or export format")
    for f in ("cleanup_interval", "retention_period"):
        seconds = float(hdr[f])
        if not math.isfinite(seconds) or seconds <= 0:
            raise bad(f"{f} is {seconds}")
