#!/usr/bin/env python3
"""What should drive the STG's refill: polling, or the DLL's data handler.

    python bench/stg_refill.py [--seconds 10]

The stg backend (workers/stimulation/stg.py) through pythonnet on Mono,
against the stand-in McsUsbNet.dll (tests/peers/McsUsbNet.cs, compiled here
with ``mcs``), which drains each channel's queue at 50 kHz in 1 ms steps and
calls the data handler for a trigger whose queue is below its callback
threshold. Side by side, for the worker's default output buffer (20 ms), four
channels:

- ``poll``: what the backend does: the refill thread wakes every 2 ms, the
  callback threshold is 0 and the handlers are .NET-only delegates;
- ``handler``: pystg's way: threshold 10 %, a Python data handler on the DLL's
  thread wakes the refill thread (a 50 ms poll only as a safety net).

Each runs in its own process, with the worker's GIL switch interval, once
idle and once beside a thread that holds the GIL in 4 ms bursts (a busy
worker). Reported: underruns the device saw, refills per second, the
process's CPU, and whether it hung (a run that does not finish within its
time + 30 s is reported as a deadlock, with the threads' stacks on stderr).
The stand-in's handler timing is not a real STG's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RUN = """
import faulthandler, json, sys, threading, time
import psutil
from workers.stimulation import stg
from workers.stimulation.output import Output
from workers.stimulation.worker import SWITCH_INTERVAL_S

sys.setswitchinterval(SWITCH_INTERVAL_S)  # as the stimulation worker does

dll, mode, seconds, busy = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "1"
faulthandler.dump_traceback_later(seconds + 30, exit=True)  # a hang says where
wake = threading.Event()
refills = 0


class PythonHandlers(stg.StgStimulator):
    def _make_handlers(self, mcs):
        self._errors = None
        return (mcs.OnStg200xDataHandler(lambda trigger: wake.set()),
                mcs.OnStg200xErrorHandler(lambda: None))


class Woken(Output):
    def _refill_loop(self):
        while not self._stop.is_set():
            wake.wait(self.refill_interval_s)
            wake.clear()
            self.refill()


if mode == "handler":
    stg.CALLBACK_THRESHOLD_PERCENT = 10
    backend = PythonHandlers(stg.StgSettings(dll_path=dll), 4, 50000.0)
    output = Woken(backend, 1000, 0.05)  # 20 ms at 50 kHz, the worker's default
else:
    backend = stg.StgStimulator(stg.StgSettings(dll_path=dll), 4, 50000.0)
    output = Output(backend, 1000, 0.002)
plain = output.refill
def counted():
    global refills
    refills += 1
    plain()
output.refill = counted
stop = threading.Event()
def hog():
    while not stop.is_set():
        end = time.perf_counter() + 0.004
        while time.perf_counter() < end:
            pass
        time.sleep(0.004)
if busy:
    threading.Thread(target=hog, daemon=True).start()
output.start()
backend.start()
process = psutil.Process()
start = process.cpu_times()
time.sleep(seconds)
end = process.cpu_times()
stop.set()
output.close()
wake.set()
backend.close()
cpu = (end.user - start.user + end.system - start.system) / seconds * 100
print(json.dumps({"refills_per_s": refills / seconds, "cpu": cpu}))
"""


def run(dll: Path, mode: str, seconds: float, busy: bool) -> str:
    """One row: underruns, refills/s, CPU %; or why there are no figures."""
    with tempfile.TemporaryDirectory() as out:
        found = subprocess.run(
            [sys.executable, "-c", RUN, str(dll), mode, str(seconds), "1" if busy else "0"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=dict(os.environ, MCS_STANDIN_OUTPUT=out, PYTHONPATH=str(ROOT)),
            timeout=seconds + 120,
        )
        if "Timeout (" in found.stderr:
            sys.stderr.write(found.stderr)
            return "deadlocked (no progress for 30 s; stacks on stderr)"
        if found.returncode:
            return f"failed: {found.stderr.strip().splitlines()[-1][:80]}"
        summary = json.loads((Path(out) / "summary.json").read_text())
    result = json.loads(found.stdout.splitlines()[-1])
    underruns = sum(c["underruns"] for c in summary["channels"])
    return f"{underruns:>10} {result['refills_per_s']:>10.0f} {result['cpu']:>6.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    compiler = shutil.which("mcs")
    if compiler is None:
        raise SystemExit("needs Mono's mcs: bash tests/setup.sh")
    with tempfile.TemporaryDirectory() as build:
        dll = Path(build) / "McsUsbNet.dll"
        source = ROOT / "tests" / "peers" / "McsUsbNet.cs"
        subprocess.run([compiler, "-target:library", f"-out:{dll}", str(source)], check=True)
        print(f"stg refill, stand-in DLL, 4 channels at 50 kHz, 20 ms buffer, {args.seconds:g} s")
        print(f"\n{'mode':>8} {'load':>6} {'underruns':>10} {'refills/s':>10} {'CPU %':>6}")
        for busy in (False, True):
            for mode in ("poll", "handler"):
                row = run(dll, mode, args.seconds, busy)
                print(f"{mode:>8} {'busy' if busy else 'idle':>6} {row}", flush=True)


if __name__ == "__main__":
    main()
