"""Process identity and liveness: a pid together with the process's creation time.

A pid alone can be reused after its process exits, so everything that records
"who writes this" (a ring's writer, a session's supervisor, a worker) stores
both and asks :func:`process_alive`. Used by the ring, the session and the
supervisor.
"""

from __future__ import annotations

import os

import psutil


def process_identity(pid: int | None = None) -> tuple[int, int]:
    """(pid, creation time in ms) of a process: a pid alone can be reused after it exits."""
    pid = os.getpid() if pid is None else pid
    return pid, round(psutil.Process(pid).create_time() * 1000)


def process_alive(pid: int, start_ms: int) -> bool:
    """True if the process ``(pid, start_ms)`` still runs (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if round(proc.create_time() * 1000) != start_ms:
            return False  # the pid now belongs to another process
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # it exists but is not ours to inspect: never sweep it
