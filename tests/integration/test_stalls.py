"""A slow supervisor is not a dead one; a dead one still ends its workers, and says so.

The stalls are real: a pty whose reader stops reading (what Ctrl-S, a stalled
SSH session or a Windows console in selection mode do to a terminal), and a
supervisor SIGSTOPped past the heartbeat timeout. The referees are the OS (the
workers' pids and exit statuses, reaped by this process as their subreaper)
and the recording's files read back with plain h5py.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

if os.name == "posix":  # a pty: POSIX terminals (the module is marked posix)
    import fcntl
    import pty
    import termios

import h5py
import numpy as np
import pytest

from pipeline.control import messages
from pipeline.recording.format import read_manifest
from pipeline.recording.summary import inspect
from pipeline.worker import EXIT_SUPERVISOR_GONE
from tests.rig import DEMO_WORKER, exited, toml_string, wait_for

pytestmark = pytest.mark.posix

RATE = 10000.0  # DEMO_WORKER's acq/continuous
WORKERS = (
    DEMO_WORKER
    + """
[[workers]]
name = "rec"
kind = "recording"
backoff_s = 0.3
[workers.parameters]
streams = ["acq/continuous"]
flush_s = 0.5
"""
)


def _rig(rigs):
    rig = rigs.new()
    recordings = rig.directory / "recordings"
    rig.write(WORKERS, session_extra=f"recordings_dir = {toml_string(recordings)}")
    return rig, recordings


def _the_recording(recordings: Path) -> Path:
    (directory,) = [p for p in recordings.iterdir() if p.is_dir()]
    return directory


def _recorded_seconds(directory: Path) -> float:
    """Seconds of acq/continuous in the files, checked frame by frame with plain h5py."""
    stamps = []
    for entry in read_manifest(directory).segments:
        with h5py.File(directory / entry.file, "r") as f:
            stamps.append(f["streams/acq.continuous/timestamps_ns"][:])
            assert len(f["gaps"]) == 0, f"gap rows: {f['gaps'][:]}"
    joined = np.concatenate(stamps)
    steps = np.diff(joined)
    period = 1e9 / RATE
    assert steps.min() >= np.floor(period) and steps.max() <= np.ceil(period), (
        f"the recording is not continuous: steps {np.unique(steps)[-5:]} ns"
    )
    return (joined[-1] - joined[0]) / 1e9


def _pids(rig) -> dict[str, tuple[int, int]]:
    return {w.name: (w.pid, w.restarts) for w in rig.status().workers}


class _Terminal:
    """A pty the supervisor writes to; the test decides when its reader reads."""

    def __init__(self, rows: int = 24, columns: int = 80) -> None:
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.reading = threading.Event()
        self.reading.set()
        self.text = b""
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            if not self.reading.wait(0.1):
                continue
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready and self.reading.is_set():
                try:
                    self.text += os.read(self.master, 65536)
                except OSError:  # the supervisor closed its side
                    return

    def unread_bytes(self) -> int:
        count = ctypes.c_int()
        fcntl.ioctl(self.master, termios.FIONREAD, count)
        return count.value

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


def test_a_terminal_that_stops_reading_stops_nothing(rigs) -> None:
    rig, recordings = _rig(rigs)
    terminal = _Terminal()
    try:
        rig.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "run", str(rig.config)],
            stdin=terminal.slave,
            stdout=terminal.slave,
            stderr=terminal.slave,
            start_new_session=True,
        )
        wait_for(rig.running, 30, "the rig to run")
        before = _pids(rig)
        time.sleep(1.0)

        terminal.reading.clear()  # Ctrl-S: from here on nothing reads the terminal
        client = rig.client()
        for i in range(300):  # a busy rig: every event redraws the table
            client.request(messages.Annotate(text=f"busy {i}"))
        wait_for(lambda: terminal.unread_bytes() > 2000, 10, "the terminal's buffer to fill")
        answered = 0
        stall_end = time.monotonic() + 6.0  # six heartbeat timeouts
        while time.monotonic() < stall_end:
            status = rig.status()  # a blocked supervisor would time out here (5 s)
            assert status.state == "running"
            answered += 1
            time.sleep(0.5)
        terminal.reading.set()

        wait_for(
            lambda: b"the terminal did not read for" in terminal.text,
            10,
            "the supervisor to say that its terminal stalled",
        )
        time.sleep(1.0)
        assert _pids(rig) == before, "a worker exited or was restarted during the stall"
        assert answered >= 10
        assert rig.interrupt() == 0
    finally:
        terminal.close()
    directory = _the_recording(recordings)
    assert _recorded_seconds(directory) > 8.0, "the recording does not span the stall"
    report = inspect(directory)
    assert report.ok and not report.stopped_early, (report.problems, report.stopped_early)


def test_a_supervisor_stopped_past_the_heartbeat_timeout_is_not_taken_for_dead(rigs) -> None:
    rig, recordings = _rig(rigs)
    rig.start()
    before = _pids(rig)
    workers = rig.worker_processes()
    time.sleep(1.0)
    os.kill(rig.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(5.0)  # the heartbeat timeout is 1 s
        assert len(exited(workers, 0)) == len(workers) == 2, "a worker exited"
    finally:
        os.kill(rig.proc.pid, signal.SIGCONT)
    wait_for(lambda: "did not run for" in rig.log(), 10, "the supervisor to notice its stall")
    wait_for(lambda: "did not answer for" in rig.log(), 10, "the workers to report the stall")
    time.sleep(1.0)
    assert _pids(rig) == before, "a worker exited or was restarted"
    assert all(w.state == "running" for w in rig.status().workers)
    assert rig.interrupt() == 0
    directory = _the_recording(recordings)
    assert _recorded_seconds(directory) > 6.5, "the recording does not span the stop"
    report = inspect(directory)
    assert report.ok and not report.stopped_early, (report.problems, report.stopped_early)


_PR_SET_CHILD_SUBREAPER = 36


@contextlib.contextmanager
def _subreaper():
    """Orphans of our children become ours (Linux), so their exit status can be read."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.skip("prctl(PR_SET_CHILD_SUBREAPER) is Linux only")
    try:
        yield
    finally:
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def _exit_code(pid: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reaped, status = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    raise AssertionError(f"worker {pid} still runs {timeout_s} s after its supervisor died")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a subreaper is Linux only")
@pytest.mark.parametrize("watch", ["pdeathsig", "heartbeat"])
def test_workers_of_a_killed_supervisor_exit_non_zero_and_the_recording_says_why(
    rigs, watch
) -> None:
    rig, recordings = _rig(rigs)
    with _subreaper():
        rig.start(env={"RIGPIPE_PARENT_WATCH": watch})
        pids = [w.pid for w in rig.status().workers]
        time.sleep(1.0)
        rig.proc.kill()
        rig.proc.wait(5)
        codes = {pid: _exit_code(pid, 10.0) for pid in pids}
    assert set(codes.values()) == {EXIT_SUPERVISOR_GONE}, codes
    manifest = read_manifest(_the_recording(recordings))
    assert manifest.finished_at, "the recorder closed its recording"
    assert "supervisor" in manifest.stopped_early, manifest.stopped_early
    report = inspect(_the_recording(recordings))
    assert report.ok and report.stopped_early == manifest.stopped_early
