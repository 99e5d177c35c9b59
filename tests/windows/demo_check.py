"""The README's demo on this interpreter, driven from other processes as a lab would.

Run by tests/windows/run.sh on the Windows CPython under Wine (it runs as well on
Linux or a real Windows): ``python tests/windows/demo_check.py``. Every step is
a separate process of this interpreter (``python -m pipeline.cli ...``) or this
one reading a stream, never the supervisor's own code:

1. ``rigpipe run`` of configs/demo.toml comes up; ``rigpipe status`` answers;
2. an outside reader (``pipeline.attach``) gets contiguous frames, follows the
   source through ``rigpipe worker kill acq`` and gets data again;
3. ``rigpipe record start`` / ``stop``, ``rigpipe inspect latest`` passes,
   ``rigpipe export latest --nwb`` writes a file that pynwb reads back;
4. ``rigpipe stop`` ends the rig in order, exit code 0, nothing left running;
5. a supervisor killed outright: its workers end by themselves, ``rigpipe
   sweep`` runs, and the next ``rigpipe run`` of the session comes up.

It prints one line per step, with the figures it measured (the source's restart
time among them), and exits 1 at the first step that fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from pipeline.errors import RigpipeError

REPO = Path(__file__).resolve().parents[2]
SESSION = "windemo"


class CheckFailed(Exception):
    """A step of the check did not hold."""


def rigpipe(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """``rigpipe ARGS`` in a process of its own, from the check's directory."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.1)
    raise CheckFailed(f"timed out after {timeout_s:g} s waiting for {what}")


class Supervisor:
    """``rigpipe run CONFIG`` in the background, its output collected through a pipe
    (Wine's python.exe cannot write to a regular file as its stdout)."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "run", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        self.output: list[str] = []
        assert self.proc.stdout is not None
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line.rstrip())

    def text(self) -> str:
        return "\n".join(self.output)


def status() -> dict | None:
    done = rigpipe("status", "--session", SESSION, "--json", timeout_s=30)
    return json.loads(done.stdout) if done.returncode == 0 else None


def all_running() -> dict | None:
    found = status()
    if found and all(w["state"] == "running" for w in [found, *found["workers"]]):
        return found
    return None


def worker(name: str) -> dict:
    found = status()
    if found is None:
        raise CheckFailed("rigpipe status got no answer")
    return next(w for w in found["workers"] if w["name"] == name)


def step_up(config: Path) -> Supervisor:
    began = time.monotonic()
    supervisor = Supervisor(config)
    wait_for(all_running, 60, "every worker of the demo to run")
    names = [w["name"] for w in status()["workers"]]  # type: ignore[index]
    print(f"up: {', '.join(names)} running {time.monotonic() - began:.1f} s after rigpipe run")
    return supervisor


def step_reader_through_a_restart() -> None:
    import pipeline

    with pipeline.attach(f"{SESSION}/acq/continuous") as reader:
        received, expected = 0, None
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            chunk = reader.read(timeout_s=1.0)
            if expected is not None and (chunk.start_sequence != expected or chunk.dropped):
                raise CheckFailed(f"frames missing before {chunk.start_sequence} ({expected})")
            expected, received = chunk.end_sequence, received + chunk.frames
        rate = received / 1.0
        before = worker("acq")
        killed = rigpipe("worker", "kill", "acq", "--session", SESSION)
        if killed.returncode != 0:
            raise CheckFailed(f"rigpipe worker kill acq: {killed.stderr.strip()}")
        began = time.monotonic()
        generation = reader.generation
        while reader.generation == generation or not chunk.frames:
            if time.monotonic() - began > 30:
                raise CheckFailed("the reader saw no frames of the restarted source in 30 s")
            chunk = reader.read(timeout_s=1.0)
        restart_s = time.monotonic() - began
        new_generation = reader.generation
    after = worker("acq")
    if after["restarts"] != before["restarts"] + 1 or after["pid"] == before["pid"]:
        raise CheckFailed(f"acq was not restarted once: {before} -> {after}")
    print(
        f"outside reader: {rate:,.0f} frames/s contiguous; after `worker kill acq` "
        f"frames again in {restart_s:.2f} s (generation {generation} -> {new_generation})"
    )


def step_record_inspect_export(directory: Path) -> None:
    for action in ("start", "stop"):
        done = rigpipe("record", action, "--session", SESSION)
        if done.returncode != 0:
            raise CheckFailed(f"rigpipe record {action}: {done.stderr.strip()}")
        if action == "start":
            time.sleep(3.0)
    inspected = rigpipe("inspect", "latest", timeout_s=120)
    if inspected.returncode != 0 or "continuity: OK" not in inspected.stdout:
        raise CheckFailed(f"rigpipe inspect latest:\n{inspected.stdout}{inspected.stderr}")
    out = directory / "demo.nwb"
    exported = rigpipe("export", "latest", "--nwb", str(out), "--quiet", timeout_s=300)
    if exported.returncode != 0:
        raise CheckFailed(f"rigpipe export --nwb: {exported.stderr.strip()}")
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(out), "r") as io:
        nwb = io.read()
        series = nwb.acquisition[next(iter(nwb.acquisition))]
        seconds = series.data.shape[0] / series.rate if series.rate else 0.0
    frames = [line for line in inspected.stdout.splitlines() if "acq/continuous" in line]
    print(f"recorded, inspected ({frames[0].split()[-4]} frames), exported: {seconds:.1f} s in NWB")


def step_stop(supervisor: Supervisor) -> None:
    workers = [psutil.Process(w["pid"]) for w in status()["workers"]]  # type: ignore[index]
    began = time.monotonic()
    done = rigpipe("stop", "--session", SESSION)
    if done.returncode != 0:
        raise CheckFailed(f"rigpipe stop: {done.stderr.strip()}")
    code = supervisor.proc.wait(60)
    took = time.monotonic() - began
    if code != 0:
        raise CheckFailed(f"rigpipe run exited {code} after rigpipe stop:\n{supervisor.text()}")
    left = [p.pid for p in workers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    if left:
        raise CheckFailed(f"workers still running after the stop: {left}")
    print(f"rigpipe stop: in order in {took:.1f} s, exit code 0, no worker left")


def step_killed_supervisor(config: Path) -> None:
    supervisor = Supervisor(config)
    wait_for(all_running, 60, "the demo to come up again")
    workers = [psutil.Process(w["pid"]) for w in status()["workers"]]  # type: ignore[index]
    supervisor.proc.kill()
    supervisor.proc.wait(10)
    began = time.monotonic()
    psutil.wait_procs(workers, timeout=30)
    left = [p.pid for p in workers if p.is_running()]
    if left:
        raise CheckFailed(f"workers {left} outlived their killed supervisor by 30 s")
    gone_s = time.monotonic() - began
    swept = rigpipe("sweep")
    if swept.returncode != 0:
        raise CheckFailed(f"rigpipe sweep: {swept.stderr.strip()}")
    again = Supervisor(config)
    wait_for(all_running, 60, "the demo to come up after the killed one")
    done = rigpipe("stop", "--session", SESSION)
    if done.returncode != 0 or again.proc.wait(60) != 0:
        raise CheckFailed(f"the rig after the killed one did not stop in order:\n{again.text()}")
    print(
        f"killed supervisor: its workers ended by themselves in {gone_s:.1f} s; "
        f"rigpipe sweep: {swept.stdout.splitlines()[-1]}; the next run came up"
    )


def main() -> int:
    print(f"demo check on {sys.version.split()[0]} ({sys.platform}), {os.cpu_count()} CPUs")
    directory = Path(tempfile.mkdtemp(prefix="rigpipe-demo-"))
    os.chdir(directory)  # recordings/ and `inspect latest` work from here, as in the README
    config = directory / "demo.toml"
    config.write_text(
        (REPO / "configs" / "demo.toml").read_text().replace('name = "demo"', f'name = "{SESSION}"')
    )
    supervisor = None
    try:
        supervisor = step_up(config)
        step_reader_through_a_restart()
        step_record_inspect_export(directory)
        step_stop(supervisor)
        step_killed_supervisor(config)
    except (CheckFailed, subprocess.TimeoutExpired, RigpipeError) as exc:
        print(f"FAILED: {exc}")
        if supervisor is not None:
            print("supervisor output:\n" + supervisor.text()[-4000:])
        return 1
    finally:
        if supervisor is not None and supervisor.proc.poll() is None:
            rigpipe("stop", "--session", SESSION)
            try:
                supervisor.proc.wait(30)
            except subprocess.TimeoutExpired:
                supervisor.proc.kill()
        os.chdir(REPO)
        shutil.rmtree(directory, ignore_errors=True)
    print("demo check: every step held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
