"""Start a real supervisor (``python -m pipeline.cli run``) for a test; clean up after it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

from pipeline.control import messages, session
from pipeline.control.bus import Client, Subscriber
from pipeline.ring import segments
from tests import wine

DEMO_WORKER = """
[[workers]]
name = "acq"
kind = "acquisition"
backoff_s = 0.3
[workers.parameters]
channels = 8
sample_rate_hz = 10000.0
chunk_s = 0.002
"""


#: A simulated stimulator with two channels and default limits, disarmed.
SIMULATED_STIMULATOR = """
[[workers]]
name = "stim"
kind = "stimulation"
backoff_s = 0.3
[workers.parameters]
channels = 2
backend = "simulated"
[workers.parameters.limits.default]
max_amplitude_ua = 100.0
max_charge_per_phase_nc = 30.0
"""


#: Ctrl-C for a supervisor: SIGINT; on Windows Ctrl-Break to its own process group.
INTERRUPT = getattr(signal, "CTRL_BREAK_EVENT", signal.SIGINT)
_OWN_GROUP: dict[str, Any] = (
    {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if sys.platform == "win32" else {}
)


def toml_string(path: object) -> str:
    """``path`` as a TOML basic string: a Windows path's backslashes escaped (JSON's
    escapes are TOML's)."""
    return json.dumps(str(path))


def slow_reader(frames_per_s: float) -> str:
    """A lossless reader of ``acq/continuous`` (tests/workers/lag_reader.py) at this pace."""
    return (
        '[[workers]]\nname = "slow"\nkind = "tests.workers.lag_reader"\n'
        f"[workers.parameters]\nframes_per_s = {frames_per_s}\n"
    )


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


def exited(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait until every process has exited (a zombie has); return those still running."""
    deadline = time.monotonic() + timeout_s
    while True:
        running = []
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    running.append(proc)
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(0.02)


class Rig:
    """One session: its config file, its supervisor process, a client to talk to it."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.name = name
        self.config = directory / f"{name}.toml"
        self.output = directory / f"{name}.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self._client: Client | None = None

    def write(self, workers: str = DEMO_WORKER, session_extra: str = "", control: str = "") -> Path:
        self.config.write_text(
            f'[session]\nname = "{self.name}"\nstop_timeout_s = 3.0\n{session_extra}\n'
            f"[control]\nheartbeat_timeout_s = 1.0\n{control}\n{workers}"
        )
        return self.config

    def start(
        self,
        env: dict[str, str] | None = None,
        wait: bool = True,
        python: str = sys.executable,
        runner: str = "pipeline.cli",
        prefix: Sequence[str] = (),
    ) -> Rig:
        """Start the supervisor; with ``wait``, return once every worker is running.

        ``python`` runs the supervisor, and so every worker (the real pycbsdk needs its own venv);
        ``runner`` is the module run as ``python -m RUNNER run CONFIG``; ``prefix`` is a
        command that execs it (``setpriv ...``, ``prlimit ... --``), keeping its pid.
        """
        if not self.config.exists():
            self.write()
        self._close_client()
        command = [python, "-m", runner]
        if python == sys.executable and sys.flags.safe_path and not runner.startswith("pipeline."):
            # an isolated interpreter (python.org's embeddable Windows build): -m does not
            # look in the working directory, where the tests' own runners are
            root = str(Path(__file__).resolve().parents[1])
            boot = f"import runpy, sys; sys.path.insert(0, {root!r}); "
            boot += f"runpy.run_module({runner!r}, run_name='__main__', alter_sys=True)"
            command = [python, "-c", boot]
        with open(self.output, "ab") as out:
            self.proc = subprocess.Popen(
                [*prefix, *command, "run", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, **(env or {})),
                **_OWN_GROUP,
            )
        if wait:
            wait_for(self.running, 30, f"session {self.name} to run")
        return self

    def discovery(self) -> session.Discovery | None:
        found = session.read(self.name)
        return found if found is not None and found.alive else None

    def client(self) -> Client:
        if self._client is None:
            discovery = wait_for(self.discovery, 30, "the discovery file")
            self._client = Client(discovery.endpoints, timeout_s=5.0)
        return self._client

    def subscriber(self, prefix: str = "") -> Subscriber:
        discovery = wait_for(self.discovery, 30, "the discovery file")
        return Subscriber(discovery.endpoints, prefix)

    def status(self) -> messages.StatusReply:
        reply = self.client().request(messages.Status())
        assert isinstance(reply, messages.StatusReply)
        return reply

    def worker(self, name: str) -> messages.WorkerStatus:
        return next(w for w in self.status().workers if w.name == name)

    def restarted(self, name: str, pid: int, timeout_s: float = 10) -> messages.WorkerStatus:
        """Wait until worker ``name`` runs again in a process other than ``pid``."""
        return wait_for(
            lambda: (w := self.worker(name)).state == "running" and w.pid not in (0, pid) and w,
            timeout_s,
            f"{name} to be restarted",
        )

    def running(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"supervisor exited early:\n{self.log()}")
        if self.discovery() is None:
            return False
        status = self.status()
        return status.state == "running" and all(w.state == "running" for w in status.workers)

    def log_dir(self) -> Path:
        return self.directory / "run" / self.name / "logs"

    def log(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def interrupt(self, timeout_s: float = 20) -> int:
        """Ctrl-C the supervisor and wait for it; its exit code.

        Under Wine, which cannot send console events (``tests/wine.py``), the same
        ordered stop is asked over the bus (``rigpipe stop``); a test of the signal
        itself carries ``wine.gap("console events")``.
        """
        assert self.proc is not None
        self._ask_to_stop()
        return self.proc.wait(timeout_s)

    def _ask_to_stop(self) -> None:
        assert self.proc is not None
        if not wine.UNDER_WINE:
            self.proc.send_signal(INTERRUPT)
            return
        discovery = self.discovery()
        if discovery is None:
            self.proc.kill()  # never came up: nothing to stop in order
            return
        with Client(discovery.endpoints, timeout_s=5.0) as client:
            client.request(messages.Shutdown())

    def worker_processes(self) -> list[psutil.Process]:
        """Live worker processes of this session, wherever they were reparented."""
        marker = f"{self.name}/"  # python -m pipeline.worker --spec-stdin SESSION/WORKER
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                cmdline = proc.info["cmdline"] or []
                ours = "pipeline.worker" in cmdline and any(a.startswith(marker) for a in cmdline)
                if ours and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
        return found

    def _close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def cleanup(self) -> list[str]:
        """Stop everything this rig started; say what had to be forced."""
        forced = []
        self._close_client()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):  # a supervisor too broken to answer
                self._ask_to_stop()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                forced.append(f"supervisor {self.proc.pid} ignored Ctrl-C")
                self.proc.kill()
                self.proc.wait(5)
        for proc in self.worker_processes():
            forced.append(f"worker {proc.pid} outlived its supervisor")
            proc.kill()
            proc.wait(5)
        leftover = session.read(self.name)
        if leftover is not None:
            segments.sweep(streams=leftover.streams)
            session.remove(self.name)
        return forced
