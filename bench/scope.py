#!/usr/bin/env python3
"""The scope's frame rate and CPU at 64, 256 and 1024 channels x 30 kHz.

A real rig: the synthetic source (5 ms chunks) and the visualization worker
rendering offscreen (``QT_QPA_PLATFORM=offscreen``, Qt's software painter) at a
30 Hz refresh with a 5 s window, 1200 x 800 pixels. Printed per channel count:
frames drawn per second (the worker's own count), the scope process's CPU % of
one core (psutil), and the acquisition worker's beside it. Target: 30 fps at
256 channels with the scope under 50 % of one core.

    python bench/scope.py                     # about a minute
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.control import Rig, cpu_percent  # noqa: E402


def measure(channels: int, per_page: int, seconds: float) -> None:
    rig = Rig(
        f"""
[[workers]]
name = "acq"
kind = "acquisition"
[workers.parameters]
channels = {channels}
chunk_s = 0.005

[[workers]]
name = "scope"
kind = "visualization"
[workers.parameters]
spikes = "acq/spikes"
offscreen = true
window_s = 5.0
refresh_hz = 30.0
channels_per_page = {per_page}
"""
    )
    try:
        time.sleep(3)
        scope, acq = rig.worker_pid("scope"), rig.worker_pid("acq")
        drawn_before = _drawn(rig)
        started = time.monotonic()
        scope_cpu = cpu_percent(scope, seconds)
        fps = (_drawn(rig) - drawn_before) / (time.monotonic() - started)
        acq_cpu = cpu_percent(acq, 2.0)
    finally:
        rig.stop()
    print(f"{channels:>8} {per_page:>9} {fps:6.1f} {scope_cpu:9.1f} {acq_cpu:9.1f}")


def _drawn(rig: Rig) -> float:
    return next(
        w.counters.get("frames_drawn", 0) for w in rig.status().workers if w.name == "scope"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(f"rigpipe scope benchmark; {os.cpu_count()} cores; python {sys.version.split()[0]}")
    print(f"\n## 30 kHz, 5 s window, 30 Hz refresh, 1200 x 800 offscreen, {args.seconds:g} s\n")
    print(f"{'channels':>8} {'on screen':>9} {'fps':>6} {'scope %':>9} {'acq %':>9}")
    for channels, per_page in ((64, 64), (256, 64), (256, 256), (1024, 64), (1024, 256)):
        measure(channels, per_page, args.seconds)


if __name__ == "__main__":
    main()
