#!/usr/bin/env python3
"""The blackrock source's cost: per batch in-process, and as a worker against the emulated device.

1. Callback-to-ring cost per batch: the source's ``on_group_batch`` callback
   (slice off the SDK's padding, one clock conversion, one ring write, one
   clock record) called in a tight loop with 32-sample batches, as pycbsdk
   delivers them, beside a bare ``RingWriter.write`` of the same batch.
2. Acquisition worker CPU at 256 and 1024 channels x 30 kHz in a real rig
   against tests/peers/cbsdk.py. The emulated device runs inside the worker
   process (as pycbsdk's threads would), so the same run also measures a
   process with the emulator alone and reports the difference.
3. The same worker with the real pycbsdk 10.x native library, fed over UDP
   by tests/peers/cerebus_device.py (a separate process, reported on its own
   row), at 64 and 256 channels: one NSP has at most 256 front-end channels,
   so 1024 needs four devices and is not measured here. Needs the venv of
   tests/peers/real_cbsdk/setup.sh (``--real-python``); skipped without it.

    python bench/blackrock.py                 # about two minutes
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.control import Rig, cpu_percent  # noqa: E402
from pipeline.ring import RingWriter  # noqa: E402

SEAM = "tests.peers.cbsdk:Session"
REAL_PYTHON = Path.home() / ".cache" / "rigpipe" / "real_cbsdk" / "venv" / "bin" / "python"
WARM_BATCHES = 300_000 // 32 + 100  # the source's ring holds 10 s = 300000 frames


def bench_callback(channels: int, batches: int) -> None:
    """Call the source's batch callback directly, through a real Session seam."""
    os.environ["RIGPIPE_CBSDK_SESSION"] = SEAM
    os.environ["RIGPIPE_CBSDK_EMULATOR"] = json.dumps({"lost_after_s": 0.0})  # no own delivery
    from pipeline.control.bus import Endpoints
    from pipeline.worker import WorkerSpec
    from workers.acquisition.worker import AcquisitionWorker

    spec = WorkerSpec(
        session=f"bench{uuid.uuid4().hex[:6]}",
        name="acq",
        kind="workers.acquisition",
        endpoints=Endpoints("ipc:///tmp/none", "ipc:///tmp/none2"),
        supervisor_pid=os.getpid(),
    )
    parameters = {"source": "blackrock", "device": "NPLAY", "channels": channels}
    worker = AcquisitionWorker(spec, AcquisitionWorker.parse_settings(parameters))
    worker.setup()
    try:
        session = worker.source.session
        (callback,) = session._batch_callbacks[5]  # SR_30kHz
        time.sleep(0.1)  # past the emulated device's first clock sync
        samples = np.zeros((32, channels + channels % 2), np.int16)
        stamps = (10**12 + np.arange(32) * 33333).astype(np.uint64)
        for i in range(WARM_BATCHES):  # one lap of the ring first: no page faults in the timing
            callback(samples, stamps + np.uint64(i * 32 * 33333))
        t0 = time.perf_counter()
        for i in range(batches):
            callback(samples, stamps + np.uint64(i * 32 * 33333))
        per_batch = (time.perf_counter() - t0) / batches
    finally:
        worker.teardown()
    with RingWriter(f"{spec.session}/bare/x", np.int16, (channels,), 300_000, 30000.0) as ring:
        data = samples[:, :channels]
        for _ in range(WARM_BATCHES):
            ring.write(data)
        t0 = time.perf_counter()
        for _ in range(batches):
            ring.write(data)
        bare = (time.perf_counter() - t0) / batches
    share = per_batch * 30000 / 32 * 100
    print(f"{channels:>8} {per_batch * 1e6:10.1f} {bare * 1e6:10.1f} {share:13.1f}")


def rig_cpu(channels: int, seconds: float, callbacks: bool) -> float:
    """CPU % of the acquisition worker process; without ``callbacks``, the emulator alone."""
    knobs = {"spike_rate_hz": 5.0}
    os.environ["RIGPIPE_CBSDK_SESSION"] = SEAM
    os.environ["RIGPIPE_CBSDK_EMULATOR"] = json.dumps(knobs)
    kind = "acquisition" if callbacks else "bench.emulator_only"
    extra = 'source = "blackrock"\ndevice = "NPLAY"\n' if callbacks else ""
    rig = Rig(
        f'[[workers]]\nname = "acq"\nkind = "{kind}"\n'
        f"[workers.parameters]\n{extra}channels = {channels}\n"
    )
    try:
        pid = rig.worker_pid("acq")
        time.sleep(2)
        return cpu_percent(pid, seconds)
    finally:
        rig.stop()


def real_cpu(python: str, channels: int, seconds: float) -> tuple[float, float, float]:
    """(worker %, emulator %, frames per second) with the real SDK and the UDP device."""
    from tests.peers.cerebus_device import Running

    os.environ.pop("RIGPIPE_CBSDK_SESSION", None)
    with tempfile.TemporaryDirectory() as directory:
        device = Running({"channels": max(channels, 32)}, Path(directory))
        try:
            rig = Rig(
                '[[workers]]\nname = "acq"\nkind = "acquisition"\n'
                '[workers.parameters]\nsource = "blackrock"\ndevice = "NPLAY"\n'
                f"channels = {channels}\n",
                python=python,
            )
            try:
                pid = rig.worker_pid("acq")
                time.sleep(2)
                before = rig.worker_counters("acq").get("frames", 0)
                emulator = psutil.Process(device.proc.pid)
                start = emulator.cpu_times()
                worker = cpu_percent(pid, seconds)
                end = emulator.cpu_times()
                frames = rig.worker_counters("acq").get("frames", 0) - before
            finally:
                rig.stop()
        finally:
            device.stop()
    spent = (end.user - start.user) + (end.system - start.system)
    return worker, 100 * spent / seconds, frames / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="each CPU measurement")
    parser.add_argument("--batches", type=int, default=20000)
    parser.add_argument("--real-python", default=str(REAL_PYTHON), help="venv with real pycbsdk")
    args = parser.parse_args()
    print(f"rigpipe blackrock benchmark; {os.cpu_count()} cores; python {sys.version.split()[0]}")
    print("\n## callback to ring, per 32-sample batch (in-process, tight loop)\n")
    print(f"{'channels':>8} {'source µs':>10} {'bare µs':>10} {'% core @30kHz':>13}")
    for channels in (256, 1024):
        bench_callback(channels, args.batches)
    print(f"\n## acquisition worker CPU, 30 kHz, emulated device, {args.seconds:g} s\n")
    print(f"{'channels':>8} {'worker %':>9} {'emulator %':>11} {'source %':>9}")
    for channels in (256, 1024):
        total = rig_cpu(channels, args.seconds, callbacks=True)
        emulator = rig_cpu(channels, args.seconds, callbacks=False)
        print(f"{channels:>8} {total:9.1f} {emulator:11.1f} {total - emulator:9.1f}")
    print(f"\n## acquisition worker CPU, 30 kHz, real pycbsdk over UDP, {args.seconds:g} s\n")
    if not Path(args.real_python).exists():
        print(f"skipped: no {args.real_python} (bash tests/peers/real_cbsdk/setup.sh)")
        return
    print(f"{'channels':>8} {'worker %':>9} {'device %':>9} {'frames/s':>9}")
    for channels in (64, 256):
        worker, device, rate = real_cpu(args.real_python, channels, args.seconds)
        print(f"{channels:>8} {worker:9.1f} {device:9.1f} {rate:9.0f}")


if __name__ == "__main__":
    main()
