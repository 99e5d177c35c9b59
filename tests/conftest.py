"""Fixtures that guarantee cleanup: no rigpipe segment and no child process outlives a test.

The suite works in a shared-memory namespace of its own (``RIGPIPE_SHM_PREFIX``, inherited
by every process it starts), so it lists, sweeps and unlinks only what its own processes
created: a rig recording on the same machine is never touched.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from multiprocessing.context import SpawnProcess
from pathlib import Path

import psutil
import pytest

from pipeline.ring import shm
from tests.rig import Rig

os.environ["RIGPIPE_SHM_PREFIX"] = (
    "rp" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(3)) + "_"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``posix`` where there is no POSIX (Windows)."""
    if os.name == "posix":
        return
    skip = pytest.mark.skip(reason="needs POSIX (signals, /proc, /dev/shm or AF_UNIX)")
    for item in items:
        if "posix" in item.keywords:
            item.add_marker(skip)


def _our_segments() -> set[str]:
    """This suite's segments (its namespace only)."""
    names = shm.list_names()
    return set(names) if names is not None else set()


@pytest.fixture(autouse=True)
def no_leaked_segments() -> Iterator[None]:
    """Fail a test that leaves rigpipe segments behind, and unlink them either way."""
    before = _our_segments()
    yield
    leaked = _our_segments() - before
    for name in leaked:
        shm.unlink(name)
    assert not leaked, f"test left {len(leaked)} shared-memory segment(s) behind: {sorted(leaked)}"


#: What psutil says of a process that has exited but is still listed (a zombie on POSIX;
#: on Windows, one whose handle another process still holds).
GONE = {psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD, "terminated"}


def _stray_children() -> list[psutil.Process]:
    """Children of the test process, apart from multiprocessing's own resource tracker."""
    stray = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() in GONE:
                continue  # exited; its handle not yet released (Windows)
            if "resource_tracker" not in " ".join(child.cmdline()):
                stray.append(child)
        except psutil.NoSuchProcess:
            continue
    return stray


class Processes:
    """Starts spawned processes for one test and makes sure each one is gone afterwards."""

    def __init__(self) -> None:
        self.ctx = mp.get_context("spawn")
        self._started: list[SpawnProcess] = []

    def start(self, target, *args, env: dict[str, str] | None = None) -> SpawnProcess:
        """Start ``target(*args)`` in a new interpreter (``env`` is added to its environment)."""
        saved = {key: os.environ.get(key) for key in (env or {})}
        os.environ.update(env or {})
        try:
            proc = self.ctx.Process(target=target, args=args, daemon=True)
            proc.start()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        self._started.append(proc)
        return proc

    def stop_all(self) -> list[str]:
        """Terminate, then kill, every process still running; return those that needed it."""
        forced = []
        for proc in self._started:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                forced.append(f"pid {proc.pid} ignored SIGTERM")
                proc.kill()
                proc.join(5)
            if proc.is_alive():
                raise RuntimeError(f"process {proc.pid} survived SIGKILL")
        return forced


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    try:
        yield procs
    finally:
        procs.stop_all()
        stray = _stray_children()
        for child in stray:
            child.kill()
        assert not stray, f"test left child processes running: {[c.pid for c in stray]}"


@pytest.fixture
def stream() -> str:
    """A stream name no other test uses."""
    return f"test{uuid.uuid4().hex[:10]}/acq/continuous"


@pytest.fixture(params=["futex", "poll"])
def wait_strategy(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test once per wake-up strategy, in this process and in spawned ones."""
    from pipeline.ring.wait import futex_available

    if request.param == "futex" and not futex_available():
        pytest.skip("futex waits need Linux")
    monkeypatch.setenv("RIGPIPE_WAIT", request.param)
    return request.param


class Rigs:
    """Makes :class:`tests.rig.Rig` sessions for one test and stops every one afterwards."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.made: list[Rig] = []

    def new(self) -> Rig:
        rig = Rig(self.directory, f"t{uuid.uuid4().hex[:8]}")
        self.made.append(rig)
        return rig

    def cleanup(self) -> list[str]:
        return [problem for rig in self.made for problem in rig.cleanup()]


@pytest.fixture
def rigs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Rigs]:
    """Sessions in a private runtime directory short enough for ipc:// socket paths."""
    directory = Path(tempfile.mkdtemp(prefix="rp", dir="/tmp" if os.name == "posix" else None))
    monkeypatch.setenv("RIGPIPE_RUNTIME_DIR", str(directory / "run"))
    monkeypatch.delenv("RIGPIPE_SESSION", raising=False)
    made = Rigs(directory)
    try:
        yield made
    finally:
        forced = made.cleanup()
        shutil.rmtree(directory, ignore_errors=True)
        assert not forced, f"test left rig processes behind: {forced}"
