"""The worker process entry: ``python -m pipeline.worker --spec-stdin SESSION/WORKER``.

The supervisor starts each worker so, in its own process group, with the JSON of a
:class:`~pipeline.worker.spec.WorkerSpec` on its stdin (``python -m pipeline.worker
SPEC`` takes it as an argument). This module reads the spec, sets up logging that never
blocks, imports the kind's module (its ``WORKER``), and turns signals into a stop: a
first Ctrl-C / SIGTERM / CTRL_BREAK asks, a second exits at once; the supervisor's death
(``PR_SET_PDEATHSIG`` on Linux; elsewhere the heartbeat) ends the worker with
:data:`~pipeline.worker.spec.EXIT_SUPERVISOR_GONE`.
"""

from __future__ import annotations

import ctypes
import faulthandler
import importlib
import os
import signal
import sys
from collections.abc import Sequence

import msgspec

from pipeline.host import scheduling
from pipeline.host.console import ConsoleClose
from pipeline.host.output import log_without_blocking
from pipeline.worker.spec import EXIT_SUPERVISOR_GONE, WorkerSpec

_PR_SET_PDEATHSIG = 1
#: Sent by the kernel when the supervisor dies (Linux); SIGHUP, so that it cannot be
#: mistaken for a second Ctrl-C / SIGTERM, which makes a stopping worker exit at once.
PARENT_DEATH_SIGNAL = getattr(signal, "SIGHUP", signal.SIGTERM)
_PARENT_WATCHES = ("auto", "pdeathsig", "heartbeat")


def parent_watch() -> str:
    """How a worker notices its supervisor died: ``pdeathsig`` (Linux) or ``heartbeat``.

    ``RIGPIPE_PARENT_WATCH=heartbeat`` forces the portable one (tests do that on Linux).
    """
    chosen = os.environ.get("RIGPIPE_PARENT_WATCH", "auto")
    if chosen not in _PARENT_WATCHES:
        raise ValueError(f"RIGPIPE_PARENT_WATCH={chosen!r}; use one of {_PARENT_WATCHES}")
    linux = sys.platform.startswith("linux")
    if chosen == "auto":
        return "pdeathsig" if linux else "heartbeat"
    if chosen == "pdeathsig" and not linux:
        raise ValueError(
            f"RIGPIPE_PARENT_WATCH=pdeathsig needs Linux (this is {sys.platform}); "
            "use 'heartbeat' or 'auto'"
        )
    return chosen


def _die_with_parent(supervisor_pid: int) -> None:
    """Linux: get PARENT_DEATH_SIGNAL when the supervisor dies; exit now if it already has."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, PARENT_DEATH_SIGNAL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != supervisor_pid:  # it died between our fork and the prctl
        raise SystemExit(EXIT_SUPERVISOR_GONE)


#: ``python -m pipeline.worker --spec-stdin SESSION/WORKER``: the spec comes on stdin.
SPEC_ON_STDIN = "--spec-stdin"
#: Directories a worker kind's module may be in, set by the supervisor (its working
#: directory first); read here because an isolated interpreter ignores PYTHONPATH.
WORKER_PATH_ENV = "RIGPIPE_WORKER_PATH"


def worker_path() -> list[str]:
    """Where a worker kind named by module (``mylab.decoder``) is looked for besides the
    installed packages: the working directory, then ``PYTHONPATH``.

    ``python -m`` puts the working directory on ``sys.path`` and the ``rigpipe``
    console script does not; an isolated interpreter (python.org's embeddable
    Windows build) ignores ``PYTHONPATH``. The supervisor, resolving a config, and
    every worker it starts look in the same places whichever way they were run.
    """
    return [p for p in (os.getcwd(), *os.environ.get("PYTHONPATH", "").split(os.pathsep)) if p]


def use_worker_path(directories: Sequence[str]) -> None:
    """Put ``directories`` on ``sys.path`` (first to last) where they are not yet."""
    for directory in reversed(directories):
        if directory and directory not in sys.path:
            sys.path.insert(0, directory)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m pipeline.worker SPEC_JSON`` (or ``--spec-stdin NAME``).

    The supervisor passes the spec on stdin: a command line is readable by every
    user of the machine (``ps``, ``/proc/PID/cmdline``) and is capped (32 KiB on
    Windows), and the spec holds the whole config. ``SESSION/WORKER`` after the
    option only names the process for ``ps``.
    """
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == SPEC_ON_STDIN:
        text = sys.stdin.buffer.read()
    elif len(argv) == 1 and not argv[0].startswith("-"):
        text = argv[0].encode()
    else:
        print(
            "usage: python -m pipeline.worker SPEC_JSON | --spec-stdin SESSION/WORKER "
            "(started by the supervisor)"
        )
        return 2
    # Real-time only if the config asks (after setup): not a policy handed down by
    # whoever started the supervisor, and not for the heavy imports that follow.
    inherited_scheduling = scheduling.drop_inherited()
    spec = msgspec.json.decode(text, type=WorkerSpec)
    faulthandler.enable()  # a crash in native code leaves its traceback in the worker's log
    # A log line to a pipe nobody reads must not stop acquisition or recording.
    logs = log_without_blocking(
        sys.stderr,
        spec.log_level,
        f"%(asctime)s {spec.name}[%(process)d] %(levelname)s %(message)s",
    )
    use_worker_path(os.environ.get(WORKER_PATH_ENV, "").split(os.pathsep))
    cls = importlib.import_module(spec.kind).WORKER
    worker = cls(spec, cls.parse_settings(spec.parameters))

    def stop(signum: int, frame: object) -> None:
        if worker.stopping:
            worker.log.warning("signal %d while stopping: exiting now", signum)
            raise SystemExit(128 + signum)  # asked twice: stop now
        worker.log.info("signal %d: stopping", signum)
        worker.stop()

    def orphaned(signum: int, frame: object) -> None:
        # The parent-death signal can arrive again: once per thread of the dying supervisor
        # (the kernel re-parents us across its threads), and whenever a thread of the new
        # parent (a subreaper) exits, even while the interpreter finalizes, when Python's
        # handler is gone and the signal's default would kill: ignore it from now on.
        signal.signal(PARENT_DEATH_SIGNAL, signal.SIG_IGN)
        worker.lose_supervisor(f"the supervisor (pid {spec.supervisor_pid}) died")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if hasattr(signal, "SIGBREAK"):  # Windows: how the supervisor asks a worker to stop
        signal.signal(signal.SIGBREAK, stop)
    if parent_watch() == "pdeathsig":
        signal.signal(PARENT_DEATH_SIGNAL, orphaned)
        _die_with_parent(spec.supervisor_pid)

    def console_closed(reason: str) -> None:  # on a thread of Windows' making: only flag it
        worker.log.info("%s: stopping", reason)
        worker.stop()

    closing = ConsoleClose(console_closed)  # Windows: every process on the console gets it
    try:
        return worker.main(inherited_scheduling)
    finally:
        closing.remove()
        logs.close()
