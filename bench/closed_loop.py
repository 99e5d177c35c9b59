"""Closed-loop latency and the cost of feeding an STG through pythonnet.

    python bench/closed_loop.py [--seconds 60] [--period-ms 20]

1. Latency from a frame entering the acquisition ring to the pulse train
   reaching the stimulator's output queue, over thousands of threshold
   crossings, three ways at once in one rig:
   - in-worker: the stimulation worker's trigger rule reads the ring itself;
   - outside process, direct: this script attaches to the ring, detects the
     crossings of another channel (half a period after the rule's, so the
     worker is never busy with its own rule's pulse when the command comes)
     and commands the stimulator through its command ring
     (``pipeline.stimulator``: one hop), two ways: a train prepared in advance
     and fired by its handle (``Stimulator.fire``), and a ``PulseTrain``
     (``Stimulator.pulse_train``);
   - outside process, through the supervisor (``Client.request``: two hops).
   The decoder takes the three outside paths in turn, crossing after crossing.
   Alone, and beside the rig of bench/rig.py (``--rig-channels``); with the
   stimulator's default ``stay_awake_s`` (awake for 2 s after each pulse, so
   in a closed-loop run it never sleeps) and with ``stay_awake_s = 0`` (it
   sleeps until a rule's threshold watch or a command wakes it: the latency
   of the first crossing after a quiet spell) (``--stay-awake``).
   Beside each run, a floor: one futex wake-up between two bare processes
   (bench/ring.py's wake-only pair, the reader scheduled as the decoder) in
   the same rig, just after the decoder's run; the direct path takes two.
   The source (tests/workers/spikes.py) stamps each frame with the host
   monotonic time at which it was published; the stimulator reports when the
   pulse's first samples were enqueued (``StimulationQueued.queued_ns``).
2. The pythonnet cost of handing 1 ms of 50 kHz int16 samples to a .NET
   ``short[]`` (what ``EnqueueData`` takes), three ways, with Mono.
   Skipped if pythonnet or Mono are missing.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.control import Rig, cpu_percent  # noqa: E402
from bench.ring import Config, run_pair  # noqa: E402
from pipeline import attach, make_realtime, stimulator  # noqa: E402
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
second_channel = 0

[[workers]]
name = "stim"
kind = "stimulation"
realtime_priority = {realtime}
[workers.parameters]
channels = 2
armed = true
stay_awake_s = {stay_awake}
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

RIG = """
[[workers]]
name = "acq"
kind = "acquisition"
[workers.parameters]
channels = {0}
chunk_s = 0.001

[[workers]]
name = "rec"
kind = "recording"
[workers.parameters]
streams = ["acq/continuous", "acq/spikes", "stim/output"]

[[workers]]
name = "scope"
kind = "visualization"
[workers.parameters]
spikes = "acq/spikes"
offscreen = true
channels_per_page = 256
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


def row(
    name: str,
    load: str,
    latencies_ns: list[int],
    p99_ms: float | None,
    p50_ms: float | None = None,
) -> str:
    """One table row; ``p99_ms`` None for a reference without a target (the floor)."""
    if not latencies_ns:
        return f"| {name} | {load} | 0 | | | | no commands measured |"
    us = np.array(latencies_ns) / 1e3
    p50, p99, worst = np.percentile(us, 50), np.percentile(us, 99), us.max()
    if p99_ms is None:
        verdict = "reference"
    else:
        met = p99 < p99_ms * 1000 and (p50_ms is None or p50 < p50_ms * 1000)
        target = f"p99 < {p99_ms:g} ms" + ("" if p50_ms is None else f", p50 < {p50_ms * 1e3:g} us")
        verdict = f"{target}: {'met' if met else 'MISSED'}"
    return f"| {name} | {load} | {len(us)} | {p50:.0f} | {p99:.0f} | {worst:.0f} | {verdict} |"


def outside_decoder(
    rig: Rig, seconds: float
) -> tuple[list[int], list[int], list[int], list[int], float]:
    """Run this process as the decoder for ``seconds``: read ``src/out``, and on each
    crossing command a pulse, in turn: a prepared train fired directly, a pulse train sent
    directly (``pipeline.stimulator``), one through the supervisor. Returns the four
    latency lists (in-worker trigger, prepared, direct, via supervisor; frame timestamp
    -> pulse queued, ns) and the stimulator's CPU %."""
    events = Subscriber(rig.discovery.endpoints, "worker.stim.stimulation_queued")
    reader = attach(f"{rig.name}/src/out", from_now=True)
    stim = stimulator("stim", rig.name)
    burst = stim.prepare_pulse_train(channel=0, phases=PHASES)
    inside: list[int] = []
    sent: dict[int, tuple[str, int]] = {}  # command id -> (path, frame timestamp)
    queued: dict[int, int] = {}  # command id -> queued_ns
    try:
        cpu = psutil.Process(rig.worker_pid("stim"))
        cpu_before, cpu_start = cpu.cpu_times(), time.monotonic()
        deadline = time.monotonic() + seconds
        previous, crossings = 0.0, 0
        while time.monotonic() < deadline:
            chunk = reader.read(timeout_s=0.05)
            values = chunk.data[:, 0] if chunk.frames else np.zeros(0)
            for index in np.flatnonzero(values <= -50.0):
                if index == 0 and previous <= -50.0:
                    continue
                crossings += 1
                if crossings % 3 == 0:
                    reply = stim.fire(burst)
                    path = "prepared"
                elif crossings % 3 == 1:
                    reply = stim.pulse_train(channel=0, phases=PHASES)
                    path = "direct"
                else:
                    request = messages.PulseTrain(channel=0, phases=PHASES)
                    reply = rig.client.request(request, timeout_s=2.0)
                    path = "supervisor"
                assert isinstance(reply, messages.Accepted), reply
                sent[reply.command_id] = (path, int(chunk.timestamps_ns[index]))
            if chunk.frames:
                previous = float(values[-1])
            while (got := events.receive(0)) is not None:
                event = got[1]
                assert isinstance(event, messages.StimulationQueued)
                if event.source.startswith("trigger:"):
                    inside.append(event.queued_ns - event.frame_timestamp_ns)
                else:
                    queued[event.command_id] = event.queued_ns
        after = cpu.cpu_times()
        spent = (after.user - cpu_before.user) + (after.system - cpu_before.system)
        stim_cpu = 100 * spent / (time.monotonic() - cpu_start)
        drain_until = time.monotonic() + 0.5  # the events of the last commands
        while time.monotonic() < drain_until and (got := events.receive(0.1)) is not None:
            event = got[1]
            if not event.source.startswith("trigger:"):
                queued[event.command_id] = event.queued_ns
    finally:
        stim.close()
        reader.close()
        events.close()
    paths: dict[str, list[int]] = {"prepared": [], "direct": [], "supervisor": []}
    for command_id, (path, frame_ns) in sent.items():
        if command_id in queued:
            paths[path].append(queued[command_id] - frame_ns)
    return inside, paths["prepared"], paths["direct"], paths["supervisor"], stim_cpu


def wake_floor(seconds: float, priority: int) -> list[int]:
    """The machine's own share: one futex wake-up (bench/ring.py's ``wake-only`` pair, the
    reader at the decoder's scheduling) paced at 1 kHz for ``seconds``, in the same rig
    just after the decoder's run. The direct path takes two: source -> decoder, decoder ->
    stimulator. Latencies in ns."""
    result = run_pair("wake-only", Config(30, 1, seconds, 1000.0), reader_priority=priority)
    return [round(us * 1e3) for us in result.latencies_us]


def closed_loop(
    seconds: float,
    period_ms: float,
    rig_channels: list[int],
    priorities: list[int],
    stay_awake: list[float],
) -> None:
    print(
        f"\n## closed-loop latency, frame in the ring -> pulse in the output queue "
        f"({seconds:g} s per row)"
    )
    print(
        f"\nsource: 2 channels at 30 kHz in 1 ms chunks, a crossing every {period_ms:g} ms "
        "on each, half a period apart: the trigger rule watches channel 1, the outside "
        "decoder channel 0 and takes its three paths in turn on successive crossings. "
        "'beside a rig of N channels': the same session also runs synthetic acquisition "
        "(N channels, 30 kHz, 1 ms chunks), a recorder recording it and an offscreen scope "
        "(256 channels on screen): the rig of bench/rig.py.\n"
    )
    print(
        "scheduling: 'normal', or 'SCHED_FIFO n': the stimulation worker's realtime_priority "
        "and this decoder's pipeline.make_realtime(n); then the stimulator's stay_awake_s "
        "(0: asleep between pulses).\n"
    )
    print(
        "floor: a 1 kHz futex wake-up between two bare processes (bench/ring.py's wake-only, "
        "the reader scheduled as the decoder), measured in the same rig just after the "
        "decoder's run: what the machine itself adds. The direct path takes two wake-ups "
        "(source -> decoder -> stimulator); its target leaves 1 ms for both at p99.\n"
    )
    print("| path | load | scheduling | triggers | p50 us | p99 us | max us | target |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for channels, priority, awake_s in itertools.product(rig_channels, priorities, stay_awake):
        load = "nothing else" if not channels else f"beside a rig of {channels} channels"
        scheduling = f"SCHED_FIFO {priority}" if priority else "normal"
        scheduling += f", stay_awake_s {awake_s:g}"
        config = CONFIG.format(period_ms=period_ms, realtime=priority, stay_awake=awake_s)
        # The rig first: a supervisor started by a real-time process would inherit its policy.
        rig = Rig(config + (RIG.format(channels) if channels else ""))
        try:
            why = make_realtime(priority)
            if why:
                print(f"| (skipped) | {load} | SCHED_FIFO {priority} | {why} |")
                continue
            inside, prepared, direct, supervisor, stim_cpu = outside_decoder(rig, seconds)
            make_realtime(0)  # the floor's writer, as the source, at normal priority
            floor = wake_floor(min(seconds, 10.0), priority)
        finally:
            rig.stop()
            make_realtime(0)
        where = f"{load} | {scheduling}"
        print(row("floor: one futex wake-up, nothing else", where, floor, None))
        print(row("in-worker trigger rule", where, inside, 1.0, 0.3))
        print(row("outside process, direct, prepared (Stimulator.fire)", where, prepared, 1.0, 0.3))
        print(row("outside process, direct (Stimulator.pulse_train)", where, direct, 1.0, 0.3))
        print(row("outside process, through the supervisor", where, supervisor, 2.0))
        print(f"| stimulation worker CPU: {stim_cpu:.1f} % of a core | {where} | | | | | |")
    idle = Rig(IDLE)
    try:
        idle_cpu = cpu_percent(idle.worker_pid("stim"), min(seconds, 10.0))
    finally:
        idle.stop()
    print(f"\nan idle simulated stimulator (no triggers): {idle_cpu:.1f} % of a core")


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
    parser.add_argument(
        "--rig-channels", default="0,1024", help="rows: alone (0) and beside a rig of N channels"
    )
    parser.add_argument(
        "--realtime",
        default="0,10",
        help="rows: normal scheduling (0) and SCHED_FIFO at this priority for the stimulator "
        "and the decoder",
    )
    parser.add_argument(
        "--stay-awake",
        default="2,0",
        help="rows: the stimulator's stay_awake_s (2: the default, awake through a closed-loop "
        "run; 0: asleep between pulses)",
    )
    args = parser.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    rigs = [int(n) for n in args.rig_channels.split(",")]
    priorities = [int(n) for n in args.realtime.split(",")]
    stay_awake = [float(s) for s in args.stay_awake.split(",")]
    closed_loop(args.seconds, args.period_ms, rigs, priorities, stay_awake)
    enqueue_cost()


if __name__ == "__main__":
    main()
