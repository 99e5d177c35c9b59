#!/usr/bin/env python3
"""The LSL bridge beside raw pylsl, in one run: latency, throughput and CPU.

    python bench/lsl.py [--seconds 10] [--channels 64 256 1024]

For each channel count, int16 at 30 kHz in 1 ms chunks:

1. **raw pylsl**: a process pushes chunks into a ``StreamOutlet`` (each
   stamped with ``local_clock()`` when pushed); another process pulls them
   from a ``StreamInlet``. Latency = pull time - stamp of a chunk's last sample.
2. **rig -> LSL** (``lsl_outlet``): a rig's synthetic source at the same
   rate and chunking, published by the outlet worker; the same pulling process.
   Latency = pull time - the ring timestamp of the chunk's last frame (the
   synthetic source publishes a frame once its time has come, so this also
   holds the source's own pacing, as a rig's latency does).
3. **LSL -> rig** (``lsl_inlet``): the pushing process of 1 into a rig's
   inlet worker; this process reads the inlet's ring. Latency = read time -
   the frame's ring timestamp (the pushed stamp, mapped to the host clock).
   Measured once the inlet's ring (``buffer_s`` 2 s here) has gone round once
   (see ``INLET_BUFFER_S``).

Reported: frames/s delivered, latency p50/p99 in ms, and the CPU of the
bridge worker (one core = 100 %); for raw pylsl, the CPU of the pushing and
of the pulling process: the floor an outlet and an inlet cost at this rate.
Then, per channel count, the ratios the LSL issues set targets for: the
outlet worker's CPU over the raw pushing process's (at most 1.2x), the inlet
worker's over the raw pulling process's (at most 1.5x), and the inlet's p50
latency beside raw pylsl's (at most 0.5 ms more).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.control import Rig, cpu_percent  # noqa: E402
from pipeline import attach  # noqa: E402

PUSH = """
import sys, time
import numpy as np
import pylsl
name, channels, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
info = pylsl.StreamInfo(name, "EEG", channels, 30000, pylsl.cf_int16, name)
outlet = pylsl.StreamOutlet(info, 30)
chunk = np.zeros((30, channels), np.int16)
start = time.monotonic()
n = 0
while time.monotonic() - start < seconds:
    n += 1
    time.sleep(max(0.0, start + n * 0.001 - time.monotonic()))
    now = pylsl.local_clock()
    outlet.push_chunk(chunk, [now - (29 - i) / 30000 for i in range(30)])
"""

PULL = """
import json, sys, time
import numpy as np
import pylsl
prop, value, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
(info,) = pylsl.resolve_byprop(prop, value, timeout=20)[:1]
inlet = pylsl.StreamInlet(info, max_buflen=10)
inlet.open_stream(timeout=10)
buffer = np.zeros((30000, info.channel_count()), np.int16)
latency, frames = [], 0
start = time.monotonic()
while time.monotonic() - start < seconds:
    _, stamps = inlet.pull_chunk(timeout=0.01, max_samples=len(buffer), dest_obj=buffer)
    if stamps:
        latency.append(pylsl.local_clock() - stamps[-1])
        frames += len(stamps)
warm = latency[len(latency) // 5:]  # the first fifth: connection and catch-up
print(json.dumps({"frames_per_s": frames / seconds, "latency_ms": [x * 1e3 for x in warm]}))
"""


@dataclass
class Figures:
    """One path's figures: frames/s, latency (ms), and CPU (% of a core)."""

    frames_per_s: float
    latency_ms: list[float]
    cpu: float
    cpu_pull: float = 0.0  # raw pylsl: the pulling process's (``cpu`` is the pusher's)

    @property
    def p50(self) -> float:
        return float(np.percentile(self.latency_ms, 50)) if self.latency_ms else float("nan")

    def row(self) -> str:
        if self.latency_ms:
            p50, p99 = np.percentile(self.latency_ms, [50, 99])
            latency = f"{p50:6.2f} {p99:6.2f}"
        else:
            latency = "     -      -"
        cpu = (
            f"push {self.cpu:.1f} / pull {self.cpu_pull:.1f}"
            if self.cpu_pull
            else f"{self.cpu:7.1f}"
        )
        return f"{self.frames_per_s:9.0f} {latency} {cpu:>7}"


def _run(code: str, *args: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )


def _pulled(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=120)
    return json.loads(out.strip().splitlines()[-1])


def raw(channels: int, seconds: float) -> Figures:
    """Raw pylsl; its CPU column is the pushing process's and the pulling one's: what a
    minimal outlet and inlet of the same stream cost, beside the bridge's workers."""
    name = f"bench-raw-{uuid.uuid4().hex[:6]}"
    pusher = _run(PUSH, name, channels, seconds + 5)
    try:
        puller = _run(PULL, "name", name, seconds)
        time.sleep(2)
        procs = [psutil.Process(pusher.pid), psutil.Process(puller.pid)]
        before = [p.cpu_times() for p in procs]
        time.sleep(seconds - 3)
        after = [p.cpu_times() for p in procs]
        push, pull = (
            100 * (a.user - b.user + a.system - b.system) / (seconds - 3)
            for a, b in zip(after, before, strict=True)
        )
        result = _pulled(puller)
    finally:
        pusher.kill()
        pusher.wait()
    return Figures(result["frames_per_s"], result["latency_ms"], push, pull)


def outlet(channels: int, seconds: float) -> Figures:
    rig = Rig(
        '[[workers]]\nname = "acq"\nkind = "acquisition"\n[workers.parameters]\n'
        f"channels = {channels}\nsample_rate_hz = 30000.0\nchunk_s = 0.001\n"
        '[[workers]]\nname = "lsl"\nkind = "lsl_outlet"\n'
        '[workers.parameters]\nstreams = ["acq/continuous"]\n'
    )
    try:
        puller = _run(PULL, "source_id", f"rigpipe:{rig.name}/acq/continuous", seconds)
        time.sleep(2)
        cpu = cpu_percent(rig.worker_pid("lsl"), seconds - 3)
        result = _pulled(puller)
    finally:
        rig.stop()
    # ring timestamps are CLOCK_MONOTONIC, which is local_clock() on Linux (ClockMap converts)
    return Figures(result["frames_per_s"], result["latency_ms"], cpu)


#: The inlet's ring, in seconds: short, so that its first lap is over before the measurement.
#: A ring's first lap writes into fresh shared memory, and each new page costs a page
#: fault: at 1024 channels the default 30 s ring (1.8 GB) takes 30 s to pay them, and
#: during them the inlet costs about 4 % of a core more (measured with a bare pylsl
#: puller writing a ring, 2026-12-07). A rig pays that once per ring; this measures
#: what it pays from then on.
INLET_BUFFER_S = 2.0


def inlet(channels: int, seconds: float) -> Figures:
    name = f"bench-in-{uuid.uuid4().hex[:6]}"
    pusher = _run(PUSH, name, channels, seconds + 15)
    try:
        rig = Rig(
            '[[workers]]\nname = "lsl"\nkind = "lsl_inlet"\n'
            f'[workers.parameters]\nname = "{name}"\nbuffer_s = {INLET_BUFFER_S}\n'
        )
        try:
            deadline = time.monotonic() + 20
            while rig.worker_counters("lsl").get("connected") != 1:
                if time.monotonic() > deadline:
                    raise RuntimeError("the inlet did not connect")
                time.sleep(0.1)
            time.sleep(INLET_BUFFER_S + 1)  # past the ring's first lap
            latency, frames = [], 0
            with attach(f"{rig.name}/lsl/data", from_now=True) as ring:
                process = psutil.Process(rig.worker_pid("lsl"))
                before, start = process.cpu_times(), time.monotonic()
                while time.monotonic() - start < seconds:
                    chunk = ring.read(timeout_s=0.1)
                    if chunk.frames:
                        latency.append((time.monotonic_ns() - chunk.timestamps_ns[-1]) / 1e6)
                        frames += chunk.frames
                after = process.cpu_times()
            cpu = 100 * (after.user - before.user + after.system - before.system) / seconds
        finally:
            rig.stop()
    finally:
        pusher.kill()
        pusher.wait()
    return Figures(frames / seconds, latency[len(latency) // 5 :], cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--channels", type=int, nargs="+", default=[64, 256, 1024])
    args = parser.parse_args()
    import pylsl

    print(f"LSL bridge benchmark; liblsl {pylsl.library_version()}, {args.seconds:g} s each")
    print("int16 at 30 kHz in 1 ms chunks; latency in ms; CPU of the bridge worker\n")
    print(f"{'channels':>8} {'path':14} {'frames/s':>9} {'p50':>6} {'p99':>6} {'CPU %':>7}")
    ratios = []
    for channels in args.channels:
        paths = {}
        for label, run in (("raw pylsl", raw), ("rig -> LSL", outlet), ("LSL -> rig", inlet)):
            paths[label] = run(channels, args.seconds)
            print(f"{channels:>8} {label:14} {paths[label].row()}", flush=True)
        bare, out, into = paths["raw pylsl"], paths["rig -> LSL"], paths["LSL -> rig"]
        ratios.append(
            f"{channels:>8} {out.cpu / bare.cpu:9.2f}x {into.cpu / bare.cpu_pull:9.2f}x "
            f"{into.p50 - bare.p50:+11.2f}"
        )
    print("\nbeside raw pylsl (targets: outlet <= 1.2x the pusher, inlet <= 1.5x the puller,")
    print("inlet p50 <= raw p50 + 0.5 ms)")
    print(f"{'channels':>8} {'outlet CPU':>10} {'inlet CPU':>10} {'inlet p50 ms':>11}")
    print("\n".join(ratios))


if __name__ == "__main__":
    main()
