"""One configured worker and the OS process currently running it.

:class:`WorkerProcess` is the supervisor's record of a worker: its state, its
process (spawned as ``python -m pipeline.worker --spec-stdin NAME`` in a new process
group, output appended to ``<runtime_dir>/logs/<worker>.log``), its last
heartbeat, and the restart policy's arithmetic (consecutive failures,
exponential backoff with a cap). The supervisor drives it; this module does
not talk to the bus.
"""

from __future__ import annotations

import enum
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import psutil

from pipeline.config import WorkerPlan
from pipeline.control import messages
from pipeline.host import clock
from pipeline.host.identity import process_identity
from pipeline.worker import SPEC_ON_STDIN, WORKER_PATH_ENV, WorkerSpec, worker_path

_TAIL_BYTES = 2000
_POSIX = os.name == "posix"  # a seam: tests switch it off to run the Windows branches
_CTRL_BREAK_EVENT = getattr(signal, "CTRL_BREAK_EVENT", 1)
_RUN_MARKER = "--- rigpipe:"


class WorkerState(enum.StrEnum):
    STOPPED = "stopped"  # not running, and not going to be restarted (never started, or held)
    STARTING = "starting"  # process spawned, setup() not finished
    RUNNING = "running"  # ready heartbeat received
    STOPPING = "stopping"  # asked to stop; waiting for it to exit
    BACKOFF = "backoff"  # exited; waiting to be restarted
    FAILED = "failed"  # exited and not restarted (policy, or too many restarts)
    EXITED = "exited"  # exited with code 0 and the policy does not restart it


@dataclass
class WorkerProcess:
    plan: WorkerPlan
    spec: WorkerSpec
    log_path: Path
    state: WorkerState = WorkerState.STOPPED
    popen: subprocess.Popen[bytes] | None = None
    ps: psutil.Process | None = None
    identity: bytes | None = None  # its DEALER's routing id on the supervisor's ROUTER
    started_at: float = 0.0
    last_heartbeat: float | None = None
    restarts: int = 0
    failures: int = 0  # consecutive; reset after a run longer than stable_s
    ready_at: float | None = None  # when it last became RUNNING
    restart_at: float | None = None
    stop_deadline: float | None = None
    kill_stage: int = 0  # 0 = asked by message, 1 = SIGTERM sent, 2 = SIGKILL sent
    exit_code: int | None = None
    held: bool = False  # stopped by request: the restart policy is suspended
    expected_exit: bool = False  # the supervisor asked it to stop (no failure)
    reason: str = ""  # why it last exited or was killed, for the restart event
    counters: dict[str, float] = field(default_factory=dict)
    readers: list[messages.ReaderReport] = field(default_factory=list)
    cpu_percent: float = 0.0
    rss_bytes: int = 0
    note: str = ""
    adopted_pid: int = 0  # the worker itself, when a launcher process stands in between
    direct: str = ""  # the worker's own request socket, from its Hello (Worker.direct)

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def pid(self) -> int:
        """The worker's pid: the process started, or the child it launched (see ``adopt``)."""
        if self.adopted_pid:
            return self.adopted_pid
        return self.popen.pid if self.popen is not None else 0

    def adopt(self, pid: int) -> bool:
        """Take ``pid`` as this worker if the process started is its parent (a launcher, such
        as a venv's python.exe on Windows, stands in between); True if adopted."""
        if self.popen is None or not pid or pid == self.popen.pid:
            return False
        try:
            child = psutil.Process(pid)
            if child.ppid() != self.popen.pid:
                return False
        except psutil.Error:
            return False
        self.adopted_pid, self.ps = pid, child
        self.ps.cpu_percent(None)
        return True

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def spawn(self) -> None:
        """Start a new process for this worker (state STARTING)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        threads = str(self.plan.config.blas_threads)  # BLAS threads spin: one unless asked
        env.update(OPENBLAS_NUM_THREADS=threads, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        # Worker kinds named by module (tests.workers.x, a lab's own) are found from the
        # supervisor's directory. PYTHONPATH says so to a normal interpreter; an isolated
        # one (python.org's embeddable Windows build) ignores it, so the worker entry
        # reads WORKER_PATH_ENV itself.
        env["PYTHONPATH"] = env[WORKER_PATH_ENV] = os.pathsep.join(worker_path())
        python = worker_python(env)
        # the spec (the whole config) goes on stdin: argv is public and capped
        argv = [python, "-m", "pipeline.worker", SPEC_ON_STDIN, f"{self.spec.session}/{self.name}"]
        with open(self.log_path, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"{_RUN_MARKER} {stamp} starting {self.name}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                **_new_group(),
            )
        assert self.popen.stdin is not None
        try:
            self.popen.stdin.write(msgspec.json.encode(self.spec))
            self.popen.stdin.close()
        except (BrokenPipeError, OSError):
            pass  # it died at once; reaping it reports why
        try:
            self.ps = psutil.Process(self.popen.pid)
            self.ps.cpu_percent(None)  # first call primes the counter
        except psutil.NoSuchProcess:
            self.ps = None
        self.adopted_pid = 0
        self.state = WorkerState.STARTING
        self.started_at = clock.now_s()
        self.last_heartbeat = None
        self.ready_at = None
        self.identity = None
        self.exit_code = None
        self.expected_exit = False
        self.reason = ""
        self.kill_stage = 0
        self.stop_deadline = None
        self.counters = {}
        self.readers = []
        self.note = ""
        self.direct = ""  # the worker's own request socket, from its Hello

    def identity_now(self) -> tuple[int, int] | None:
        """(pid, start_ms) of the running process, for the discovery file."""
        if not self.alive:
            return None
        try:
            return process_identity(self.pid)
        except psutil.NoSuchProcess:
            return None

    def terminate(self) -> bool:
        """Ask the worker to stop (it tears down): SIGTERM to its process group; on
        Windows CTRL_BREAK, which the worker handles like SIGTERM. Where the signal
        cannot be delivered (no console on Windows: pythonw, a service; any error at
        all) the worker is killed: the stop ladder never ends on an exception. True if
        it was killed instead."""
        if self.popen is None or self.popen.poll() is not None:
            return False
        try:
            if _POSIX:
                os.killpg(self.popen.pid, signal.SIGTERM)
            else:
                self.popen.send_signal(_CTRL_BREAK_EVENT)
        except (ProcessLookupError, PermissionError):
            pass  # exited between the check and the signal
        # OSError: no console to deliver CTRL_BREAK through. SystemError: CPython 3.11's
        # os.kill on Windows can turn that OSError into "returned a result with an
        # exception set" (cpython issue 58689). Either way, the next step of the ladder.
        except (OSError, SystemError):
            self.kill()
            return True
        return False

    def kill(self) -> None:
        """Kill the worker at once: SIGKILL to its process group; TerminateProcess on Windows."""
        if self.popen is None or self.popen.poll() is not None:
            return
        try:
            if _POSIX:
                os.killpg(self.popen.pid, signal.SIGKILL)
            else:
                self.popen.kill()
        except (OSError, SystemError):  # SystemError: see terminate()
            pass  # it exited between the check and the kill; reaping it tells

    def escalate(self, now: float, grace_s: float) -> None:
        """Stop a worker that ignores Stop: SIGTERM at the deadline, SIGKILL 2 s later."""
        if self.stop_deadline is None or now < self.stop_deadline:
            return
        if self.kill_stage == 0:
            if self.terminate():  # it could not be asked: killed at once
                self.kill_stage, self.stop_deadline = 2, None
            else:
                self.kill_stage, self.stop_deadline = 1, now + min(grace_s, 2.0)
        elif self.kill_stage == 1:
            self.kill()
            self.kill_stage, self.stop_deadline = 2, None

    def reap(self) -> int | None:
        """The exit code if the process has exited since the last call, else None."""
        if self.popen is None or self.exit_code is not None:
            return None
        code = self.popen.poll()
        if code is None:
            return None
        self.exit_code = code
        return code

    def uptime_s(self, now: float) -> float:
        return now - self.started_at if self.alive else 0.0

    def next_restart(self, now: float) -> float | None:
        """Schedule a restart after a failure: the delay, or None if the policy gives up.

        The first failure after a good run restarts at once (a single crash
        should cost the rig as little as possible: the recorder's restart is
        time its ring must bridge); each further consecutive failure waits
        ``backoff_s``, doubling, up to ``backoff_max_s``.
        """
        cfg = self.plan.config
        if self.ready_at is not None and now - self.ready_at >= cfg.stable_s:
            self.failures = 0  # it ran well for a good while: this is a fresh failure
        self.failures += 1
        if self.failures > cfg.max_restarts:
            return None
        delay = 0.0
        if self.failures > 1:
            delay = min(cfg.backoff_s * 2 ** (self.failures - 2), cfg.backoff_max_s)
        self.restart_at = now + delay
        return delay

    def should_restart(self, code: int) -> bool:
        policy = self.plan.config.restart
        return not self.held and (policy == "always" or (policy == "on-failure" and code != 0))

    def log_tail(self) -> str:
        """The last lines this process wrote to the worker's log, to explain a crash."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - _TAIL_BYTES))
                lines = log.read().decode(errors="replace").splitlines()
        except OSError:
            return ""
        starts = [i for i, line in enumerate(lines) if line.startswith(_RUN_MARKER)]
        lines = lines[starts[-1] + 1 :] if starts else lines
        return "\n".join(lines[-8:])

    def sample_usage(self) -> None:
        """CPU % since the previous sample and resident memory, from psutil."""
        self.cpu_percent, self.rss_bytes = 0.0, 0
        if self.ps is not None and self.alive:
            try:
                with self.ps.oneshot():
                    self.cpu_percent = self.ps.cpu_percent(None)
                    self.rss_bytes = self.ps.memory_info().rss
            except psutil.Error:
                pass  # exited while we looked; the next tick reaps it

    def status(self, now: float) -> messages.WorkerStatus:
        age = None if self.last_heartbeat is None else now - self.last_heartbeat
        return messages.WorkerStatus(
            name=self.name,
            kind=self.plan.config.kind,
            state=str(self.state),
            pid=self.pid if self.alive else 0,
            restarts=self.restarts,
            uptime_s=self.uptime_s(now),
            cpu_percent=self.cpu_percent,
            rss_bytes=self.rss_bytes,
            heartbeat_age_s=age,
            exit_code=self.exit_code,
            counters=self.counters,
            note=self.note,
        )


def worker_python(env: dict[str, str], windows: bool = sys.platform == "win32") -> str:
    """The interpreter to start a worker with (``env`` is the worker's environment).

    On Windows a venv's ``python.exe`` is a launcher that starts the real
    interpreter as its child, so the process the supervisor started would not
    be the worker that says Hello. As CPython's multiprocessing does, start the
    base interpreter directly and tell it the venv through ``__PYVENV_LAUNCHER__``.
    """
    base = getattr(sys, "_base_executable", sys.executable)
    if windows and base and base != sys.executable:
        env["__PYVENV_LAUNCHER__"] = sys.executable
        return base
    return sys.executable


def _new_group() -> dict[str, Any]:
    """Popen arguments that put the child in its own process group (Ctrl-C reaches only us)."""
    if os.name == "posix":
        return {"start_new_session": True}
    return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}  # type: ignore[attr-defined]  # Windows only
