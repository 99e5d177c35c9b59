#!/usr/bin/env python3
"""The recorder under a sustained 1024-channel, 30 kHz stream, and its writer against raw writes.

Two tables, one run:

1. A real rig (``rigpipe run``): the synthetic source at 1024 channels x 30 kHz
   int16 (61 MB/s) and the recording worker, for ``--seconds``. Printed: the
   recorder's CPU % of one core (psutil, after a warm-up), its lag behind the
   source each second (from ``rigpipe status``) and whether it grows, and the
   bytes on disk against the frames the source wrote.
2. Write throughput on the same disk: rigpipe's segment writer (h5py, SWMR,
   the recorder's chunking, 0.2 s blocks) writing ``--megabytes`` of the same
   frames unpaced, against plain sequential ``write()`` of the same bytes;
   both end with ``fsync`` so the figures are the disk's, not the page cache's.

Targets: no lag growth, recorder under 30 % of one core, throughput >= 80 % of raw.

    python bench/recording.py                  # about 2 minutes
    python bench/recording.py --seconds 20 --megabytes 500
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.control import Rig, cpu_percent  # noqa: E402
from pipeline.recording.format import read_manifest  # noqa: E402
from workers.recording.segment_file import SegmentFile, StreamFormat  # noqa: E402

CHANNELS = 1024
RATE = 30000.0


def rig_config(recordings: Path) -> str:
    return f"""
[[workers]]
name = "acq"
kind = "acquisition"
[workers.parameters]
channels = {CHANNELS}
sample_rate_hz = {RATE}
chunk_s = 0.005
buffer_s = 10.0

[[workers]]
name = "rec"
kind = "recording"
[workers.parameters]
streams = ["acq/continuous", "acq/spikes"]
"""


def bench_sustained(seconds: float) -> None:
    recordings = Path(tempfile.mkdtemp(prefix="rpbrec"))
    rig = Rig(rig_config(recordings), session_extra=f'recordings_dir = "{recordings}"')
    try:
        rec_pid = rig.worker_pid("rec")
        lags = []

        def sample_lag() -> None:
            status = rig.status()
            stream = next(s for s in status.streams if s.stream.endswith("acq/continuous"))
            lags.append(stream.readers[0].lag if stream.readers else -1)

        time.sleep(3)  # warm-up
        end = time.monotonic() + seconds
        cpu_samples = []
        while time.monotonic() < end:
            cpu_samples.append(cpu_percent(rec_pid, 1.0))
            sample_lag()
    finally:
        rig.stop()
    (directory,) = [p for p in recordings.iterdir() if p.is_dir()]
    manifest = read_manifest(directory)
    on_disk = sum(e.bytes for e in manifest.segments)
    recorded = sum(e.frames.get("acq/continuous", 0) for e in manifest.segments)
    lag_ms = np.array(lags) / RATE * 1000
    half = len(lag_ms) // 2
    print(f"\n## sustained recording: {CHANNELS} ch x {RATE:g} Hz int16, {seconds:g} s\n")
    cpu = np.array(cpu_samples)
    print(f"recorder CPU: mean {cpu.mean():.1f} %, max {cpu.max():.1f} % of one core")
    print(
        f"recorder lag: median {np.median(lag_ms):.1f} ms, max {lag_ms.max():.1f} ms; "
        f"first half mean {lag_ms[:half].mean():.1f} ms, second half {lag_ms[half:].mean():.1f} ms"
    )
    print(
        f"recorded {recorded} frames ({recorded / RATE:.1f} s) in {len(manifest.segments)} "
        f"segment(s), {on_disk / 1e6:.0f} MB on disk "
        f"({on_disk / max(1, recorded * CHANNELS * 2):.3f} x the raw sample bytes)"
    )
    shutil.rmtree(recordings, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def bench_throughput(megabytes: float) -> None:
    directory = Path(tempfile.mkdtemp(prefix="rpbthr", dir=ROOT))  # the disk the repo is on
    block_frames = int(RATE * 0.2)
    rng = np.random.default_rng(0)
    block = rng.integers(-2000, 2000, (block_frames, CHANNELS), dtype=np.int16)
    stamps = np.arange(block_frames, dtype=np.int64) * 33333
    blocks = max(1, int(megabytes * 1e6 / block.nbytes))
    total = blocks * (block.nbytes + stamps.nbytes)
    results = {}
    try:
        raw = directory / "raw.bin"
        t0 = time.perf_counter()
        with open(raw, "wb") as out:
            for _ in range(blocks):
                out.write(block.tobytes())
                out.write(stamps.tobytes())
        _fsync(raw)
        results["raw sequential write() + fsync"] = time.perf_counter() - t0
        raw.unlink()

        fmt = StreamFormat("acq/continuous", block.dtype, (CHANNELS,), RATE, {})
        path = directory / "segment.h5"
        t0 = time.perf_counter()
        segment = SegmentFile.create(path, {}, {}, [fmt], {fmt.stream: 0}, {fmt.stream: 0})
        next_flush = time.perf_counter() + 1.0
        for _ in range(blocks):
            segment.append(fmt.stream, block, stamps)
            if time.perf_counter() >= next_flush:
                segment.flush()
                next_flush = time.perf_counter() + 1.0
        segment.close({"finished_at": "bench"})
        _fsync(path)
        results["rigpipe segment (h5py SWMR, 1 s flushes) + fsync"] = time.perf_counter() - t0
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"\n## write throughput, {total / 1e6:.0f} MB of 0.2 s blocks, same disk\n")
    print(f"{'writer':52} {'MB/s':>8} {'of raw':>7}")
    raw_s = results["raw sequential write() + fsync"]
    for name, seconds in results.items():
        print(f"{name:52} {total / seconds / 1e6:8.0f} {raw_s / seconds:7.0%}")
    print(f"(the sustained stream needs {CHANNELS * RATE * 2 / 1e6:.0f} MB/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="sustained run (60)")
    parser.add_argument("--megabytes", type=float, default=2000.0, help="throughput test (2000)")
    parser.add_argument("--only", default="sustained,throughput")
    args = parser.parse_args()
    print(f"rigpipe recording benchmark; {os.cpu_count()} cores; python {sys.version.split()[0]}")
    if "sustained" in args.only:
        bench_sustained(args.seconds)
    if "throughput" in args.only:
        bench_throughput(args.megabytes)


if __name__ == "__main__":
    main()
