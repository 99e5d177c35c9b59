"""Real-time scheduling for a process that must answer within a millisecond on a busy PC.

On a machine whose cores are shared with acquisition, recording, a scope and the
lab's own programs, a process woken by a ring or a socket waits for a core as
long as the scheduler's time slice (milliseconds), however fast its own code
is. A process under a real-time policy is run the moment it wakes. It is what
the stimulation worker (``realtime_priority`` in its ``[[workers]]`` table) and
an outside decoder (:func:`make_realtime`, or ``chrt -f 10 python decoder.py``)
use to keep a closed loop under a millisecond.

- Linux: ``SCHED_FIFO`` at the given priority, for every thread of the process
  and those it starts later. Child processes inherit it too: a rig's workers
  drop what they inherit (:func:`drop_inherited`), so that only those whose
  ``realtime_priority`` asks run real-time. Allowed to root, to a process with
  ``CAP_SYS_NICE``, or up to ``ulimit -r`` (``RLIMIT_RTPRIO``: a line such as
  ``@lab - rtprio 20`` in ``/etc/security/limits.conf``). The kernel keeps 5 %
  of every core for other processes (``sched_rt_runtime_us``), so a real-time
  process that spins cannot freeze the machine.
- Windows: the process' priority class becomes ``HIGH_PRIORITY_CLASS``
  (``REALTIME_PRIORITY_CLASS`` would starve the system's own input handling).
- macOS has no ``SCHED_FIFO`` for processes: the process keeps its priority.

Where it cannot be done, :func:`make_realtime` says why and how to allow it,
and the process runs on at normal priority: a rig never fails to start for it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path

#: The highest priority accepted (``SCHED_FIFO`` priorities are 1-99; above 49 a
#: process competes with the kernel's own interrupt threads).
MAX_PRIORITY = 49


def make_realtime(priority: int) -> str:
    """Run this process (all its threads, and those it starts) under real-time scheduling.

    ``priority`` 1..``MAX_PRIORITY`` (Linux ``SCHED_FIFO``; any value on Windows
    gives the high priority class); 0 returns to normal scheduling. Returns ""
    when done, or why it could not be done and how to allow it (the process
    then runs on as before).
    """
    if not 0 <= priority <= MAX_PRIORITY:
        raise ValueError(f"realtime priority must be 0..{MAX_PRIORITY}, given {priority}")
    if sys.platform == "win32":
        import psutil

        # Windows only: psutil defines the priority classes there
        high, normal = psutil.HIGH_PRIORITY_CLASS, psutil.NORMAL_PRIORITY_CLASS  # type: ignore[attr-defined]
        wanted = high if priority else normal
        try:
            psutil.Process().nice(wanted)
        except psutil.Error as exc:
            return f"could not set the priority class: {exc}"
        return ""
    if not hasattr(os, "sched_setscheduler"):
        return (
            f"real-time scheduling is not available on {sys.platform}; running at normal priority"
        )
    return _fifo(priority)


def _fifo(priority: int) -> str:
    policy = os.SCHED_FIFO if priority else os.SCHED_OTHER
    param = os.sched_param(priority)
    threads = _thread_ids()
    try:
        for tid in threads:
            os.sched_setscheduler(tid, policy, param)
    except PermissionError:
        for tid in threads:  # all or none: a half real-time process is harder to reason about
            with contextlib.suppress(OSError):
                os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
        return (
            f"not allowed to use real-time scheduling (SCHED_FIFO priority {priority}); "
            "running at normal priority. Allow it with `ulimit -r` "
            f"(a line '@<group> - rtprio {priority}' in /etc/security/limits.conf, then log in "
            "again), or give Python CAP_SYS_NICE"
        )
    return ""


def drop_inherited() -> str:
    """Return this process to normal scheduling if it inherited a real-time policy.

    Linux hands ``SCHED_FIFO``/``SCHED_RR`` down to child processes: a supervisor
    started from a real-time decoder, or under ``chrt``, would run every worker
    real-time at one priority, where a busy scope or recorder delays the
    stimulator and the decoder by milliseconds. A worker calls this first, and
    is real-time only if its ``realtime_priority`` asks. Returns what was
    dropped (e.g. "SCHED_FIFO priority 10"), or "" if nothing was (normal
    scheduling already; no such policies on this OS).
    """
    if not hasattr(os, "sched_getscheduler"):
        return ""  # Windows, macOS: no inherited SCHED_FIFO to drop
    policy = os.sched_getscheduler(0) & ~getattr(os, "SCHED_RESET_ON_FORK", 0)
    if policy not in (os.SCHED_FIFO, os.SCHED_RR):
        return ""
    name = "SCHED_FIFO" if policy == os.SCHED_FIFO else "SCHED_RR"
    dropped = f"{name} priority {os.sched_getparam(0).sched_priority}"
    _fifo(0)  # lowering one's own scheduling needs no right
    return dropped


def _thread_ids() -> list[int]:
    """Every thread of this process (Linux lists them in /proc); this thread first."""
    own = Path("/proc/self/task")
    current = threading.get_native_id()
    if not own.is_dir():
        return [current]
    return [current, *(int(p.name) for p in own.iterdir() if int(p.name) != current)]


def policy_of(tid: int) -> str:
    """The scheduling policy of thread (or process) ``tid``: "fifo", "rr", "other", ..."""
    names = {
        getattr(os, name): name.removeprefix("SCHED_").lower()
        for name in ("SCHED_OTHER", "SCHED_FIFO", "SCHED_RR", "SCHED_BATCH", "SCHED_IDLE")
        if hasattr(os, name)
    }
    return names.get(os.sched_getscheduler(tid), "unknown")
