"""Closed-loop latency and the cost of feeding an STG through pythonnet.

    python bench/closed_loop.py [--seconds 60] [--period-ms 20]

1. Latency from a frame entering the acquisition ring to the pulse train
   reaching the stimulator's output queue, over thousands of threshold
   crossings, two ways at once in one rig:
   - in-worker: the stimulation worker's trigger rule reads the ring itself;
   - outside process: this script attaches to the ring, detects the same
     crossings and sends a ``PulseTrain`` over ZeroMQ (through the supervisor).
   The source (tests/workers/spikes.py) stamps each frame with the host
   monotonic time at which it was published; the stimulator reports when the
   pulse's first samples were enqueued (``StimulationQueued.queued_ns``).
2. The pythonnet cost of handing 1 ms of 50 kHz int16 samples to a .NET
   ``short[]`` (what ``EnqueueData`` takes), three ways, with Mono.
   Skipped if pythonnet or Mono are missing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.control import Rig, cpu_percent  # noqa: E402
from pipeline import attach  # noqa: E402
from pipeline.control import messages  # noqa: E402
from pipeline.control.bus import Subscriber  # noqa: E402

CONFIG = """
[[workers]]
name = "src"
kind = "tests.workers.spikes"
[workers.parameters]
sample_rate_hz = 30000.0
chunk_frames = 30
period_ms = {period_ms}

[[workers]]
name = "stim"
kind = "stimulation"
[workers.parameters]
channels = 2
armed = true
[workers.parameters.limits.default]
max_amplitude_ua = 100.0
max_charge_per_phase_nc = 30.0
[[workers.parameters.triggers]]
name = "spk"
stream = "src/out"
channel = 1
threshold = -50.0
direction = "falling"
refractory_ms = 5.0
stim_channel = 1
phases = [[-40.0, 100.0], [40.0, 100.0]]
"""

IDLE = """
[[workers]]
name = "stim"
kind = "stimulation"
[workers.parameters.limits.default]
max_amplitude_ua = 100.0
max_charge_per_phase_nc = 30.0
"""

PHASES = [messages.Phase(-40.0, 100.0), messages.Phase(40.0, 100.0)]


def row(name: str, latencies_ns: list[int], target_ms: float) -> str:
    us = np.array(latencies_ns) / 1e3
    p50, p99, worst = np.percentile(us, 50), np.percentile(us, 99), us.max()
    verdict = "met" if p99 < target_ms * 1000 else "MISSED"
    return (
        f"| {name} | {len(us)} | {p50:.0f} | {p99:.0f} | {worst:.0f} | "
        f"p99 < {target_ms:g} ms: {verdict} |"
    )


def closed_loop(seconds: float, period_ms: float) -> None:
    rig = Rig(CONFIG.format(period_ms=period_ms))
    events = Subscriber(rig.discovery.endpoints, "worker.stim.stimulation_queued")
    reader = attach(f"{rig.name}/src/out", from_now=True)
    inside: list[int] = []
    outside_commands: dict[int, int] = {}  # command id -> frame timestamp
    queued: dict[int, int] = {}  # command id -> queued_ns
    try:
        stim_pid = rig.worker_pid("stim")
        cpu_start = time.monotonic()
        stim = psutil.Process(stim_pid)
        cpu_before = stim.cpu_times()
        deadline = time.monotonic() + seconds
        previous = 0.0
        while time.monotonic() < deadline:
            chunk = reader.read(timeout_s=0.05)
            values = chunk.data[:, 1] if chunk.frames else np.zeros(0)
            for index in np.flatnonzero(values <= -50.0):
                if index == 0 and previous <= -50.0:
                    continue
                reply = rig.client.request(
                    messages.PulseTrain(channel=0, phases=PHASES), timeout_s=2.0
                )
                assert isinstance(reply, messages.Accepted), reply
                outside_commands[reply.command_id] = int(chunk.timestamps_ns[index])
            if chunk.frames:
                previous = float(values[-1])
            while (got := events.receive(0)) is not None:
                event = got[1]
                assert isinstance(event, messages.StimulationQueued)
                if event.source.startswith("trigger:"):
                    inside.append(event.queued_ns - event.frame_timestamp_ns)
                else:
                    queued[event.command_id] = event.queued_ns
        cpu_after = stim.cpu_times()
        spent = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
        stim_cpu = 100 * spent / (time.monotonic() - cpu_start)
        drain_until = time.monotonic() + 0.5  # the events of the last commands
        while time.monotonic() < drain_until and (got := events.receive(0.1)) is not None:
            event = got[1]
            if not event.source.startswith("trigger:"):
                queued[event.command_id] = event.queued_ns
    finally:
        reader.close()
        events.close()
        rig.stop()
    outside = [queued[c] - ts for c, ts in outside_commands.items() if c in queued]
    print(
        f"\n## closed-loop latency, frame in the ring -> pulse in the output queue ({seconds:g} s)"
    )
    print(f"\nsource: 2 channels at 30 kHz in 1 ms chunks, a crossing every {period_ms:g} ms\n")
    print("| path | triggers | p50 us | p99 us | max us | target |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(row("in-worker trigger rule", inside, 1.0))
    print(row("outside process over ZeroMQ (via the supervisor)", outside, 2.0))
    print(f"\nstimulation worker CPU during the run: {stim_cpu:.1f} % of a core")
    idle = Rig(IDLE)
    try:
        idle_cpu = cpu_percent(idle.worker_pid("stim"), min(seconds, 10.0))
    finally:
        idle.stop()
    print(f"an idle simulated stimulator (no triggers): {idle_cpu:.1f} % of a core")


def enqueue_cost() -> None:
    print("\n## pythonnet: 1 ms of 50 kHz int16 samples (50) into a .NET short[]\n")
    try:
        import pythonnet

        pythonnet.load("mono")
        import System  # type: ignore[import-not-found]
        from System.Runtime.InteropServices import Marshal  # type: ignore[import-not-found]
    except Exception as exc:
        print(f"skipped: pythonnet on Mono is not available ({exc})")
        return
    steps = np.arange(50, dtype=np.int16)
    reused = System.Array[System.Int16](50)
    copy = Marshal.Copy.Overloads[
        System.IntPtr, System.Array[System.Int16], System.Int32, System.Int32
    ]

    def from_list() -> object:
        return System.Array[System.Int16](steps.tolist())

    def marshal_copy() -> object:
        array = System.Array[System.Int16](50)
        copy(System.IntPtr(steps.ctypes.data), array, 0, 50)
        return array

    def buffer_reused() -> object:  # what workers/stimulation/stg.py does
        np.frombuffer(reused, np.int16)[:] = steps
        return reused

    print("| path | us per 1 ms of samples |")
    print("| --- | --- |")
    for name, make in [
        ("System.Array[Int16](list)", from_list),
        ("new short[] + Marshal.Copy from the numpy pointer", marshal_copy),
        ("reused short[] filled through the buffer protocol (rigpipe)", buffer_reused),
    ]:
        assert list(make())[:3] == [0, 1, 2]
        for _ in range(200):
            make()
        n = 5000
        start = time.perf_counter()
        for _ in range(n):
            make()
        print(f"| {name} | {(time.perf_counter() - start) / n * 1e6:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--period-ms", type=float, default=20.0)
    args = parser.parse_args()
    closed_loop(args.seconds, args.period_ms)
    enqueue_cost()


if __name__ == "__main__":
    main()
