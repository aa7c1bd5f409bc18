"""Shared fixtures: recorders that are always closed, unique ring names, raw segment access."""

from __future__ import annotations

import mmap
import os
import secrets
from contextlib import contextmanager

import numpy as np
import pytest

from shmdiag import Recorder, RecorderConfig
from shmdiag.core import layout as L

SHM_DIR = "/dev/shm"


def unique_name(tag: str = "t") -> str:
    return f"shmdiag-test-{os.getpid()}-{tag}-{secrets.token_hex(4)}"


def shm_path(name: str) -> str:
    return os.path.join(SHM_DIR, name)


def unlink_quietly(name: str) -> None:
    try:
        os.unlink(shm_path(name))
    except FileNotFoundError:
        pass


@pytest.fixture
def ring_name():
    """A fresh, unused ring name; whatever segment ends up under it is removed afterwards."""
    name = unique_name()
    yield name
    unlink_quietly(name)


@pytest.fixture
def make_recorder():
    """Factory for recorders (creating or attached); every one is closed at teardown and every
    ring it created is unlinked even if the test forgot or failed half-way."""
    made: list[Recorder] = []
    names: list[str] = []

    def make(max_events: int = 1000, *, config: RecorderConfig | None = None, attach: str | None = None,
             logger=None, **cfg) -> Recorder:
        if attach is not None:
            rec = Recorder.attach(attach, logger)
        else:
            if config is None:
                cfg.setdefault("name", unique_name())
                config = RecorderConfig(max_events=max_events, **cfg)
            rec = Recorder.with_config(config, logger)
            names.append(rec.name)
        made.append(rec)
        return rec

    yield make
    # Attached ones first, then creators (which unlink).
    for rec in reversed(made):
        rec.close()
    for name in names:
        unlink_quietly(name)


@pytest.fixture
def rec(make_recorder) -> Recorder:
    """A fresh recorder of 1000 events, closed (and its ring unlinked) after the test."""
    return make_recorder(1000)


# -- raw access to a segment, for tampering ------------------------------------------------
# Not SharedMemory(name=...): on Python < 3.13 it registers the segment with this process's
# resource tracker, and unregistering again makes the tracker print a KeyError traceback when the
# creating Recorder unlinks the ring later. A plain mmap of /dev/shm/<name> involves no tracker.
@contextmanager
def raw_segment(name: str):
    fd = os.open(shm_path(name), os.O_RDWR)
    try:
        mm = mmap.mmap(fd, 0)
        try:
            yield mm
        finally:
            mm.close()
    finally:
        os.close(fd)


def field_span(dtype: np.dtype, field: str, base: int = 0) -> tuple[int, np.dtype]:
    fdtype, off = dtype.fields[field][:2]
    return base + off, fdtype


def read_field(mm, dtype: np.dtype, field: str, base: int = 0):
    off, fdtype = field_span(dtype, field, base)
    return np.frombuffer(mm[off: off + fdtype.itemsize], dtype=fdtype)[0]


def write_field(mm, dtype: np.dtype, field: str, value, base: int = 0) -> None:
    off, fdtype = field_span(dtype, field, base)
    raw = np.asarray(value, dtype=fdtype.base).reshape(fdtype.shape).tobytes()
    assert len(raw) == fdtype.itemsize
    mm[off: off + fdtype.itemsize] = raw


def fix_header_crc(mm) -> None:
    write_field(mm, L.HEADER, "header_crc", L.header_crc(mm[: L.HEADER_STATIC_SIZE]))


def slot_base(mm, slot: int) -> int:
    """Byte offset of slot ``slot``, from the segment's own header."""
    return int(read_field(mm, L.HEADER, "slots_off")) + slot * L.SLOT_SIZE
