"""Shared fixtures: recorders that are always closed, unique ring names, processes and segments
a test started or made, cleaned up whatever happened. Shared plain helpers are in helpers.py."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from shmdiag import Recorder, RecorderConfig

# Still importable from conftest for modules written before helpers.py existed; import them from helpers.
from helpers import (  # noqa: F401
    SHM_DIR,
    field_span,
    fix_header_crc,
    raw_segment,
    read_field,
    shm_path,
    slot_base,
    unique_name,
    unlink_quietly,
    write_field,
)


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
             logger=None, collector: bool = True, **cfg) -> Recorder:
        if attach is not None:
            rec = Recorder.attach(attach, logger)
        else:
            if config is None:
                cfg.setdefault("name", unique_name())
                config = RecorderConfig(max_events=max_events, **cfg)
            # collector=False: the test reaps itself (a collector thread may reap first otherwise)
            rec = Recorder.with_config(config, logger, collector=collector)
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


@pytest.fixture
def procs():
    """Processes started by a test; killed (and reaped) at teardown whatever happened."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            p.kill()
        p.wait(timeout=10)
        for f in (p.stdout, p.stderr):
            if f is not None:
                f.close()


@pytest.fixture
def shm_names():
    """Names of segments a test makes under /dev/shm by other means; removed at teardown."""
    names: list[str] = []
    yield names
    for n in names:
        unlink_quietly(n)
