"""Portability seams tested on Linux: sharing violations (injected), platform checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.host import files
from pipeline.recording.format import Manifest, read_manifest, write_manifest


def _failing(real, times: int):
    """``real``, raising PermissionError (as Windows does for an open target) ``times`` first."""
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= times:
            raise PermissionError(13, "The process cannot access the file")
        return real(*args, **kwargs)

    return flaky, calls


def _manifest(n: int) -> Manifest:
    return Manifest(recording_id=f"r{n}", session="s", session_id="i", started_at="t")


def test_a_manifest_replace_and_read_retry_a_target_held_open(tmp_path: Path, monkeypatch) -> None:
    write_manifest(tmp_path, _manifest(1))
    flaky_replace, replaces = _failing(os.replace, 2)
    monkeypatch.setattr(files.os, "replace", flaky_replace)
    write_manifest(tmp_path, _manifest(2))
    assert replaces["n"] == 3
    flaky_read, reads = _failing(Path.read_bytes, 2)
    monkeypatch.setattr(files.Path, "read_bytes", flaky_read)
    assert read_manifest(tmp_path).recording_id == "r2" and reads["n"] == 3


def test_a_target_held_for_longer_than_the_retry_is_an_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(files, "RETRY_S", 0.05)
    flaky_replace, _ = _failing(os.replace, 10**6)
    monkeypatch.setattr(files.os, "replace", flaky_replace)
    with pytest.raises(PermissionError):
        write_manifest(tmp_path, _manifest(1))


def test_pdeathsig_is_refused_off_linux_with_the_alternatives(monkeypatch) -> None:
    from pipeline.worker import main as worker

    monkeypatch.setenv("RIGPIPE_PARENT_WATCH", "pdeathsig")
    monkeypatch.setattr(worker.sys, "platform", "win32")
    with pytest.raises(ValueError, match=r"needs Linux.*use 'heartbeat' or 'auto'"):
        worker.parent_watch()
    monkeypatch.setenv("RIGPIPE_PARENT_WATCH", "auto")
    assert worker.parent_watch() == "heartbeat"


def test_on_windows_a_venv_worker_starts_the_base_interpreter_with_the_launcher_env(
    monkeypatch,
) -> None:
    from pipeline.supervisor import process

    monkeypatch.setattr(process.sys, "_base_executable", "C:/Python311/python.exe")
    monkeypatch.setattr(process.sys, "executable", "C:/lab/venv/Scripts/python.exe")
    env: dict[str, str] = {}
    assert process.worker_python(env, windows=True) == "C:/Python311/python.exe"
    assert env == {"__PYVENV_LAUNCHER__": "C:/lab/venv/Scripts/python.exe"}
    env = {}
    assert process.worker_python(env, windows=False) == "C:/lab/venv/Scripts/python.exe"
    assert env == {}


def test_a_worker_behind_a_launcher_process_is_adopted_by_its_parent(tmp_path) -> None:
    """A launcher (a venv's python.exe on Windows; here a Python that runs the real one
    with subprocess, which does not exec) starts the real interpreter as its child: the
    worker's Hello then carries the child's pid, which the supervisor adopts."""
    import subprocess
    import sys

    from pipeline import config
    from pipeline.control.bus import Endpoints
    from pipeline.supervisor.process import WorkerProcess
    from pipeline.worker import WorkerSpec

    plan = config.loads('[[workers]]\nname = "acq"\nkind = "acquisition"\n').workers[0]
    spec = WorkerSpec(
        session="s", name="acq", kind="acquisition", endpoints=Endpoints("a", "b"), supervisor_pid=1
    )
    worker = WorkerProcess(plan, spec, tmp_path / "acq.log")
    child = "import os, sys; print(os.getpid(), flush=True); sys.stdin.read()"
    launcher = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"
    worker.popen = subprocess.Popen(
        [sys.executable, "-c", launcher], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        real_pid = int(worker.popen.stdout.readline())
        assert real_pid != worker.popen.pid
        assert not worker.adopt(os.getpid()), "not a child of the launcher"
        assert worker.adopt(real_pid) and worker.pid == real_pid and worker.alive
    finally:
        worker.popen.communicate("", timeout=10)


@pytest.mark.posix
def test_sweep_without_a_list_of_shared_memory_uses_the_sessions_streams(
    monkeypatch, tmp_path, capsys
) -> None:
    """Where shared memory cannot be listed (macOS, Windows), a dead session's streams are
    found through its discovery file."""
    import subprocess
    import sys

    import pipeline
    from pipeline.cli import main
    from pipeline.control import session
    from pipeline.control.bus import Endpoints
    from pipeline.ring import naming, shm

    monkeypatch.setenv("RIGPIPE_RUNTIME_DIR", str(tmp_path))
    stream = "deadrig/acq/continuous"
    writer = subprocess.Popen(  # a writer that is SIGKILLed: its segments stay behind
        [sys.executable, "-c", "import sys, numpy as np, pipeline; "
         f"w = pipeline.RingWriter({stream!r}, np.int16, (2,), 8, 100.0); "
         "w.write(np.zeros((4, 2), np.int16)); print('ready', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert writer.stdout.readline().strip() == "ready"
    writer.kill()
    writer.communicate(timeout=10)
    session.write(
        session.Discovery(
            session="deadrig", pid=writer.pid, start_ms=1, endpoints=Endpoints("a", "b"),
            runtime_dir=str(tmp_path), config_path="x", recordings_dir="x",
            started_at="t", streams=[stream], workers={},
        )
    )  # fmt: skip
    monkeypatch.setattr(shm, "list_names", lambda: None)
    assert main(["sweep"]) == 0
    out = capsys.readouterr().out
    assert "cannot list shared memory" in out and naming.shm_name(stream) in out
    with pytest.raises(pipeline.StreamNotFound):
        pipeline.attach(stream)


# -- finding 7: the Windows timer tick ------------------------------------------------------------
TICK_S = 0.015625  # Windows' default timer period


class _TickClock:
    """A clock whose sleeps end on the next 15.625 ms tick, as an unraised Windows timer."""

    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.now = (int((self.now + seconds) / TICK_S) + 1) * TICK_S

    def clock(self) -> float:
        return self.now


def test_the_timer_is_raised_on_windows_and_restored_after() -> None:
    from pipeline.host.timer import fine_timer

    calls: list[tuple[str, int]] = []

    class WinMM:
        def timeBeginPeriod(self, period: int) -> int:
            calls.append(("begin", period))
            return 0

        def timeEndPeriod(self, period: int) -> int:
            calls.append(("end", period))
            return 0

    with fine_timer(windows=True, winmm=WinMM):
        assert calls == [("begin", 1)]
    assert calls == [("begin", 1), ("end", 1)]
    with fine_timer(windows=False, winmm=WinMM):
        pass
    assert len(calls) == 2, "nothing to ask elsewhere"


def test_a_buffer_the_timer_cannot_keep_filled_is_refused() -> None:
    from pipeline.host.timer import wake_period_s
    from workers.stimulation.safety import StimulatorError
    from workers.stimulation.worker import check_buffer

    tick = _TickClock()
    wake = wake_period_s(sleep=tick.sleep, clock=tick.clock)
    assert wake == pytest.approx(TICK_S)
    with pytest.raises(StimulatorError, match=r"1 ms wait takes 15.6 ms.*buffer_ms >= 32"):
        check_buffer(20.0, wake)
    check_buffer(40.0, wake)
    check_buffer(20.0, wake_period_s())  # this machine: about 1 ms


class _VirtualStimulator:
    """A stimulator queue drained in virtual time: no scheduler in the measurement."""

    output_rate_hz, channels, resolution_ua, range_ua, capacity = 50000.0, 1, 0.1, 1000.0, 50000

    def __init__(self) -> None:
        self.queued = 0
        self.underruns = 0

    def space(self, channel: int) -> int:
        return self.capacity - self.queued

    def enqueue(self, channel: int, samples_ua) -> None:
        self.queued += len(samples_ua)

    def drain(self, samples: int) -> None:
        if self.queued < samples:
            self.underruns += 1
        self.queued = max(0, self.queued - samples)


@pytest.mark.parametrize(("buffer_ms", "dry"), [(20.0, True), (31.0, True), (32.0, False)])
def test_a_refill_on_the_15_6_ms_tick_needs_twice_the_tick_of_buffer(buffer_ms, dry) -> None:
    """The refill keeps half the buffer queued: between two wakes 15.6 ms are drained."""
    from workers.stimulation.output import Output

    backend = _VirtualStimulator()
    output = Output(backend, round(buffer_ms * 50), TICK_S)  # the refill thread never starts
    output.refill()
    for _ in range(200):  # about 3 s of ticks
        backend.drain(round(TICK_S * backend.output_rate_hz))
        output.refill()
    assert (backend.underruns > 0) is dry, backend.underruns


def test_the_stg_load_hint_fits_the_os() -> None:
    from workers.stimulation.stg import load_hint

    assert "Unblock-File" in load_hint("win32") and "x64" in load_hint("win32")
    assert "Mono" not in load_hint("win32")
    assert "apt-get install mono-runtime" in load_hint("linux")
    assert "brew install mono" in load_hint("darwin")


def test_the_live_table_asks_a_windows_console_for_vt_mode_and_falls_back() -> None:
    import ctypes

    from pipeline.cli.run import ENABLE_VIRTUAL_TERMINAL_PROCESSING, enable_vt

    class Console:
        def __init__(self, accepts: bool) -> None:
            self.accepts, self.set_to = accepts, None

        def GetStdHandle(self, which: int) -> int:
            return 7

        def GetConsoleMode(self, handle: int, mode) -> int:
            ctypes.cast(mode, ctypes.POINTER(ctypes.c_uint32))[0] = 0x0003
            return 1

        def SetConsoleMode(self, handle: int, mode: int) -> int:
            self.set_to = mode
            return int(self.accepts)

    modern = Console(accepts=True)
    assert enable_vt(windows=True, kernel32=modern)
    assert modern.set_to == 0x0003 | ENABLE_VIRTUAL_TERMINAL_PROCESSING
    assert not enable_vt(windows=True, kernel32=Console(accepts=False)), "line by line then"
    assert enable_vt(windows=False)


class _ConsoleKernel32:
    """SetConsoleCtrlHandler as Windows keeps it: a list of registered handler routines."""

    def __init__(self) -> None:
        self.routines: list = []

    def SetConsoleCtrlHandler(self, routine, add: bool) -> int:
        if add:
            self.routines.append(routine)
        else:
            self.routines.remove(routine)
        return 1


def test_a_console_close_asks_for_the_ordered_stop_and_waits_for_it() -> None:
    import threading
    import time

    from pipeline.host import console

    kernel32 = _ConsoleKernel32()
    asked: list[str] = []
    closing = console.ConsoleClose(asked.append, windows=True, kernel32=kernel32)
    assert closing.installed and len(kernel32.routines) == 1
    routine = kernel32.routines[0]
    assert routine(console.CTRL_C_EVENT) == 0 and routine(console.CTRL_BREAK_EVENT) == 0
    assert asked == []  # Ctrl-C and Ctrl-Break stay with Python's SIGINT and SIGBREAK

    answered: list[tuple[int, float]] = []
    start = time.monotonic()
    windows_thread = threading.Thread(
        target=lambda: answered.append((routine(console.CTRL_CLOSE_EVENT), time.monotonic())),
    )
    windows_thread.start()
    time.sleep(0.3)
    assert asked == ["console closed"] and not answered  # held up: the stop is not done yet
    stopped_at = time.monotonic()
    closing.remove()  # the supervisor's stop is done
    windows_thread.join(5)
    assert answered and answered[0][0] == 1 and answered[0][1] >= stopped_at > start
    assert kernel32.routines == []


def test_a_console_close_lets_go_after_the_grace_and_is_inert_elsewhere() -> None:
    import time

    from pipeline.host import console

    kernel32 = _ConsoleKernel32()
    asked: list[str] = []
    closing = console.ConsoleClose(asked.append, grace_s=0.2, windows=True, kernel32=kernel32)
    start = time.monotonic()
    assert kernel32.routines[0](console.CTRL_SHUTDOWN_EVENT) == 1
    assert 0.15 < time.monotonic() - start < 2.0  # never past Windows' own 5 s
    assert asked == ["system shutting down"]
    closing.remove()
    elsewhere = console.ConsoleClose(asked.append, windows=False, kernel32=kernel32)
    assert not elsewhere.installed and kernel32.routines == []
    elsewhere.remove()
