#!/usr/bin/env python3
"""A whole rig at once: CPU of every worker at 64 to 4096 channels, and idle workers.

The rig of issue 18, run by a real supervisor (``rigpipe run``) in a private
runtime directory:

- ``acq``: synthetic acquisition, 30 kHz, 1 ms chunks, int16;
- ``rec``: a recorder recording ``acq/continuous``, ``acq/spikes`` and ``stim/output``;
- ``stim``: a disarmed simulated stimulator with one trigger rule on ``acq/continuous``;
- ``scope``: the visualization worker offscreen (``QT_QPA_PLATFORM=offscreen``),
  256 channels on screen, 30 Hz.

For each channel count the rig runs ``--warmup`` seconds, then every process's
CPU time (psutil: user + system, all threads) is taken over ``--seconds``. A
row gives each worker's % of one core, the supervisor's, the rig's total, the
restarts during the run (a missed heartbeat at start-up restarts a worker),
the recorder's lag behind the writer at the end and every reader's dropped
frames. ``--without`` repeats one channel count with each worker left out, so
what a worker costs the others (the readers it adds to the source) shows too.
The second table is each worker kind with nothing to do: its floor. Last, the
recorder's floor on this machine's disk: a bare process writing the same bytes
(plain ``write()``, 0.2 s blocks); the kernel's page cache and writeback are
charged to whoever writes, and grow as dirty pages pile up.

Targets (issue 18): rig total at 1024 channels <= 60 % of one core, at 256 <= 35 %;
an idle stimulator <= 3 %; the recorder <= 10 % and the scope <= 25 % at 1024.

The scope's display filters (issue 37) are measured with ``--scope-filters N``: the
rig at N channels with the scope unfiltered and with a 300 Hz high-pass and a 60 Hz notch
on its tab, alternately, ``--repeats`` times each, in the same run.

    python bench/rig.py                                  # about 6 minutes
    python bench/rig.py --channels 1024 --repeats 3 --without none
    python bench/rig.py --scope-filters 1024 --repeats 3
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.control import Rig, acquisition  # noqa: E402

WORKERS = ("acq", "rec", "stim", "scope")


def acq(channels: int) -> str:
    """Synthetic acquisition at 30 kHz in 1 ms chunks, a 10 s ring."""
    return acquisition(channels, 0.001) + "buffer_s = 10.0\n"


REC = """
[[workers]]
name = "rec"
kind = "recording"
[workers.parameters]
streams = ["acq/continuous", "acq/spikes", "stim/output"]
recording = true
"""

STIM = """
[[workers]]
name = "stim"
kind = "stimulation"
[workers.parameters]
channels = 4
armed = {armed}
[workers.parameters.limits.default]
max_amplitude_ua = 100.0
max_charge_per_phase_nc = 30.0
[[workers.parameters.triggers]]
name = "spike0"
stream = "{trigger_stream}"
channel = 0
threshold = {threshold}
direction = "falling"
refractory_ms = 250.0
stim_channel = 0
phases = [[-50.0, 200.0], [50.0, 200.0]]
"""

STIM_NO_TRIGGER = """
[[workers]]
name = "stim"
kind = "stimulation"
[workers.parameters]
channels = 4
[workers.parameters.limits.default]
max_amplitude_ua = 100.0
max_charge_per_phase_nc = 30.0
"""

SCOPE = """
[[workers]]
name = "scope"
kind = "visualization"
[workers.parameters]
streams = ["acq/continuous"]
spikes = "acq/spikes"
offscreen = true
window_s = 5.0
refresh_hz = 30.0
channels_per_page = {per_page}
"""
#: What ``--scope-filters`` adds to the scope's parameters.
SCOPE_FILTERS = """[workers.parameters.filters."acq/continuous"]
highpass_hz = 300.0
notch_hz = 60.0
"""


def rig_config(
    channels: int, without: str = "", scope_filters: bool = False, scope_page: int = 256
) -> str:
    parts = {
        "acq": acq(channels),
        "rec": REC.replace(', "stim/output"', "") if without == "stim" else REC,
        "stim": STIM.format(armed="false", trigger_stream="acq/continuous", threshold=-300.0),
        "scope": SCOPE.format(per_page=min(scope_page, channels))
        + (SCOPE_FILTERS if scope_filters else ""),
    }
    return "".join(text for name, text in parts.items() if name != without)


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def measure(rig: Rig, warmup_s: float, seconds: float) -> dict[str, float]:
    """% of one core of each worker and of the supervisor over ``seconds``."""
    time.sleep(warmup_s)
    procs = {w.name: psutil.Process(w.pid) for w in rig.status().workers}
    procs["supervisor"] = psutil.Process(rig.proc.pid)
    start = {name: cpu_seconds(p) for name, p in procs.items()}
    began = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - began
    cpu = {}
    for name, proc in procs.items():
        try:
            cpu[name] = 100 * (cpu_seconds(proc) - start[name]) / elapsed
        except psutil.NoSuchProcess:  # restarted meanwhile: the restarts column says so
            cpu[name] = math.nan
    return cpu


def run_rig(
    channels: int,
    without: str,
    warmup_s: float,
    seconds: float,
    scope_filters: bool = False,
    scope_page: int = 256,
) -> dict[str, object]:
    rig = Rig(rig_config(channels, without, scope_filters, scope_page), 'recordings_dir = "{dir}"')
    try:
        cpu = measure(rig, warmup_s, seconds)
        status = rig.status()
        restarts = sum(w.restarts for w in status.workers)
        dropped = sum(r.dropped for s in status.streams for r in s.readers)
        lag = max(
            (r.lag for s in status.streams for r in s.readers if r.worker == "rec"), default=0
        )
        return {"cpu": cpu, "restarts": restarts, "dropped": dropped, "rec_lag": lag}
    finally:
        rig.stop()


def _write_paced(path: str, bytes_per_s: float, block_s: float, seconds: float) -> None:
    block = np.zeros(int(bytes_per_s * block_s), np.uint8).tobytes()
    with open(path, "wb") as out:
        due = time.monotonic()
        end = due + seconds
        while due < end:
            out.write(block)
            due += block_s
            time.sleep(max(0.0, due - time.monotonic()))
            if out.tell() > 2**30:  # keep the disk's use bounded
                out.seek(0)


def raw_write_floor(channels: int, warmup_s: float, seconds: float) -> float:
    """% of one core a bare process spends writing what the recorder writes at
    ``channels`` (int16 at 30 kHz, in 0.2 s blocks, page cache and all): the floor
    under the recorder's figure on this machine's disk."""
    with tempfile.TemporaryDirectory(dir="/tmp" if os.name == "posix" else None) as tmp:
        writer = mp.get_context("spawn").Process(
            target=_write_paced,
            args=(f"{tmp}/raw.bin", channels * 30000 * 2, 0.2, warmup_s + seconds + 1),
        )
        writer.start()
        try:
            time.sleep(warmup_s)
            proc = psutil.Process(writer.pid)
            before = cpu_seconds(proc)
            time.sleep(seconds)
            return 100 * (cpu_seconds(proc) - before) / seconds
        finally:
            writer.join(warmup_s + seconds + 30)


def pct(cpu: dict[str, float], name: str) -> str:
    return f"{cpu[name]:.1f}" if name in cpu else "-"


def rig_table(
    sizes: list[int], without_at: int | None, repeats: int, warmup_s: float, seconds: float
) -> None:
    print(f"\n## the rig, {seconds:g} s counted after {warmup_s:g} s, % of one core\n")
    print(
        "| channels | left out | acq | rec | stim | scope | supervisor | rig total "
        "| restarts | rec lag frames | dropped |"
    )
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    runs = [(n, "") for n in sizes]
    if without_at is not None:
        runs += [(without_at, name) for name in WORKERS[1:]]
    for channels, without in runs:
        totals = []
        for _ in range(repeats):
            result = run_rig(channels, without, warmup_s, seconds)
            cpu = result["cpu"]
            assert isinstance(cpu, dict)
            total = sum(cpu.values())
            totals.append(total)
            print(
                f"| {channels} | {without or '-'} | "
                + " | ".join(pct(cpu, name) for name in (*WORKERS, "supervisor"))
                + f" | {total:.1f} | {result['restarts']} | {result['rec_lag']} "
                f"| {result['dropped']} |",
                flush=True,
            )
        if repeats > 1:
            spread = np.array(totals)
            print(
                f"| {channels} | {without or '-'} | spread of the total over {repeats} runs: "
                f"min {spread.min():.1f}, median {np.median(spread):.1f}, max {spread.max():.1f} "
                "| | | | | | | | |"
            )


def scope_filter_table(
    channels: int, repeats: int, warmup_s: float, seconds: float, page: int = 256
) -> None:
    """The scope unfiltered and filtered (SCOPE_FILTERS), alternately, in one run."""
    print(
        f"\n## the scope's display filters at {channels} channels "
        f"({min(page, channels)} on the page), % of one core\n"
    )
    print("| scope | run | scope % | rig total % | dropped |")
    print("| --- | ---: | ---: | ---: | ---: |")
    found: dict[bool, list[float]] = {False: [], True: []}
    for k in range(repeats):
        for filtered in (False, True):
            result = run_rig(channels, "", warmup_s, seconds, filtered, page)
            cpu = result["cpu"]
            assert isinstance(cpu, dict)
            found[filtered].append(cpu["scope"])
            label = "HP 300 Hz + notch 60 Hz" if filtered else "unfiltered"
            print(
                f"| {label} | {k + 1} | {cpu['scope']:.1f} | {sum(cpu.values()):.1f} "
                f"| {result['dropped']} |",
                flush=True,
            )
    plain, filtered_pct = np.median(found[False]), np.median(found[True])
    print(
        f"\nmedian scope: unfiltered {plain:.1f} %, filtered {filtered_pct:.1f} % "
        f"({filtered_pct / plain:.2f}x)"
    )


IDLE_RIGS = {
    "stimulator, disarmed, no trigger": (STIM_NO_TRIGGER, "stim"),
    "stimulator, disarmed, trigger on a quiet stream": (
        acq(64) + STIM.format(armed="false", trigger_stream="acq/continuous", threshold=-30000.0),
        "stim",
    ),
    "stimulator, armed, trigger on a quiet stream": (
        acq(64) + STIM.format(armed="true", trigger_stream="acq/continuous", threshold=-30000.0),
        "stim",
    ),
    "recorder, not recording": (
        acq(64) + REC.replace(', "stim/output"', "").replace("true", "false"),
        "rec",
    ),
}


def idle_table(warmup_s: float, seconds: float) -> None:
    print(f"\n## each worker kind with nothing to do, {seconds:g} s, % of one core\n")
    print("| worker | % of one core |")
    print("| --- | ---: |")
    for label, (config, name) in IDLE_RIGS.items():
        rig = Rig(config, 'recordings_dir = "{dir}"')
        try:
            cpu = measure(rig, warmup_s, seconds)
        finally:
            rig.stop()
        print(f"| {label} | {cpu[name]:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", default="64,256,1024,4096", help="rig sizes")
    parser.add_argument(
        "--without", default="1024", help="size at which to leave each worker out, or 'none'"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="counted per run (20)")
    parser.add_argument("--warmup", type=float, default=10.0, help="before counting (10)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per row (1)")
    parser.add_argument("--no-idle", action="store_true", help="skip the idle table")
    parser.add_argument(
        "--scope-filters", type=int, default=0, help="compare the scope's filters at N channels"
    )
    parser.add_argument(
        "--scope-page", type=int, default=256, help="channels on the scope's page (256)"
    )
    args = parser.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    print(
        f"rigpipe rig benchmark; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
        f"{platform.system()} {platform.release()}, python {sys.version.split()[0]}"
    )
    if args.scope_filters:
        scope_filter_table(
            args.scope_filters, args.repeats, args.warmup, args.seconds, args.scope_page
        )
        return
    sizes = [int(c) for c in args.channels.split(",")]
    without_at = None if args.without == "none" else int(args.without)
    rig_table(sizes, without_at, args.repeats, args.warmup, args.seconds)
    print(
        "\nthe recorder's floor, a bare process writing the same bytes paced in 0.2 s "
        "blocks (plain write(), no HDF5), % of one core: "
        + ", ".join(
            f"{n} channels {raw_write_floor(n, args.warmup, args.seconds):.1f}" for n in sizes
        )
    )
    if not args.no_idle:
        idle_table(min(args.warmup, 5.0), min(args.seconds, 10.0))


if __name__ == "__main__":
    main()
