"""Process identity: is pid P still the process that started at time T?

A pid names a process only while it runs: once it exits, the kernel may hand the pid to a new
process. So wherever shmdiag records who holds something it stores a start time beside the pid
(a writer shard's ``start_time``, the clear lock's low 32 bits of it, the ring header's
``created_ns``) and asks this module, which answers the same way for all of them:

* **No such process, or a zombie: dead.** A zombie has exited; only its exit status is left for
  its parent to collect. (Asking a zombie's start time may itself raise ``ZombieProcess``.)
* **Not allowed to look (``AccessDenied``): alive.** The process of another user cannot be
  examined; the cautious answer keeps its shard unreaped, its lock waited for, its ring not
  removed.
* **Start times compare within START_TOLERANCE_MS.** psutil's ``create_time()`` is the boot time
  plus the process's start in clock ticks (10 ms at the usual USER_HZ of 100), so two readings of
  one process can differ by a tick, and a stored value rounded to whole ms by one more. A process
  that started further from the stored time than that is another process with a reused pid.
* **A start time may be stored truncated** to its low ``bits`` (the clear lock keeps 32 bits
  of ms, about 50 days): the times are then compared modulo 2**bits, the nearer way round.
* **A stored start time of 0 means unknown** (a shard whose owner has not written its start
  time yet): any running process with the pid counts.
* **"Started no later than T"** (:func:`started_by`) is for a ring's creator, which is known to
  have started before it created the ring at T (wall clock ns): a process that started after
  that cannot be it. psutil's boot time is a whole second (``btime`` in /proc/stat) and moves
  with wall-clock adjustments, so that comparison allows START_SLACK_MS more.

This process is always alive, and is compared with its own start time (no psutil call).
"""

from __future__ import annotations

import os

import psutil

START_TOLERANCE_MS = 20  # two clock ticks: psutil's create_time has jiffy resolution
START_SLACK_MS = 1000    # psutil's boot time is a whole second: against the wall clock, allow that

_own_start: dict[int, int] = {}


def start_ms(proc: psutil.Process) -> int:
    """``proc``'s start time, ms since the epoch, as psutil reports it (may raise psutil's errors)."""
    return int(round(proc.create_time() * 1000))


def own_start_ms() -> int:
    """This process's start time (ms since the epoch), as :func:`same_process` compares it.
    Cached per pid, so a forked child asks again."""
    pid = os.getpid()
    if pid not in _own_start:
        _own_start[pid] = start_ms(psutil.Process(pid))
    return _own_start[pid]


def _started(pid: int) -> int | bool:
    """``pid``'s start time (ms); False if no such live process; True if we may not look."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return own_start_ms()
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return start_ms(proc)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True


def same_process(pid: int, started_ms: int, *, bits: int = 64) -> bool:
    """True if ``pid`` runs and is the process that started at ``started_ms`` (ms since the
    epoch, of which only the low ``bits`` may be given; 0: unknown, any live ``pid`` will do).
    See the module's docstring for the tolerances."""
    actual = _started(pid)
    if isinstance(actual, bool):
        return actual
    if started_ms == 0:
        return True
    mod = 1 << bits
    d = (actual - started_ms) % mod
    return min(d, mod - d) <= START_TOLERANCE_MS


def started_by(pid: int, t_ns: int) -> bool:
    """True if ``pid`` runs and started no later than ``t_ns`` (wall clock, ns since the epoch):
    could be the process that did something at that time, such as creating a ring."""
    actual = _started(pid)
    if isinstance(actual, bool):
        return actual
    return actual <= t_ns // 1_000_000 + START_SLACK_MS
