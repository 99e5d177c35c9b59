#!/usr/bin/env python3
"""Reading a large multi-file recording back: rigpipe's views against plain h5py, and NWB export.

One run, three tables:

1. Random access: ``--slices`` slices of 32 channels x 1 s at random places
   (a quarter of them across a segment boundary), through ``open_recording``
   and with plain h5py reading the same rows and columns from the right
   file(s). p50 / p99 latency, warm (files in the page cache) and cold (the
   files' pages dropped with ``posix_fadvise(DONTNEED)`` before every slice).
2. Sequential: the whole recording in 1 s blocks of every channel, with a
   per-block computation standing in for the caller's work (per-channel RMS
   and threshold crossings): plain h5py, rigpipe blocks without prefetch, with
   prefetch (copied out), with prefetch and ``copy=False``. GB/s of samples.
3. Export: ``rigpipe export --nwb`` of the first ``--export-gb`` of the
   recording, uncompressed and with ``--gzip``: MB/s of samples written.

The recording is written once with the recorder's own segment writer
(``--channels`` x 30 kHz int16, 1 GB segments) under ``--dir`` and kept for the
next run unless ``--clean``.

    python bench/readback.py                    # 10 GB; about 5 minutes
    python bench/readback.py --gb 2 --slices 100 --export-gb 0.5
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pipeline  # noqa: E402
from pipeline.recording.format import Manifest, SegmentEntry, read_manifest, write_manifest  # noqa: E402
from workers.recording.segment_file import SegmentFile, StreamFormat  # noqa: E402

RATE = 30000
SEGMENT_BYTES = 1 << 30
STREAM = "acq/continuous"
STARTED = "2026-01-01T00:00:00+00:00"


def make(directory: Path, gb: float, channels: int) -> Path:
    """A recording of ``gb`` GB in 1 GiB segments (reused if one of that size is there)."""
    recording = directory / f"bench-{channels}ch-{gb:g}gb"
    if (recording / "manifest.json").exists():
        return recording
    shutil.rmtree(recording, ignore_errors=True)
    recording.mkdir(parents=True)
    fmt = StreamFormat(
        STREAM,
        np.dtype(np.int16),
        (channels,),
        float(RATE),
        {"channel_labels": [f"ch{i:03d}" for i in range(channels)], "scale": 0.25, "units": "uV"},
    )
    manifest = Manifest(
        recording_id="bench",
        session="bench",
        session_id="bench",
        started_at=STARTED,
        streams=[STREAM],
    )
    frame_bytes = channels * 2
    total = int(gb * 1e9) // frame_bytes
    per_segment = SEGMENT_BYTES // frame_bytes
    rng = np.random.default_rng(0)
    noise = rng.integers(-400, 400, (RATE, channels), dtype=np.int16)
    written, index = 0, 0
    started = time.monotonic()
    while written < total:
        name = f"segment-{index:04d}.h5"
        rows = min(per_segment, total - written)
        provenance = {"session": "bench", "recording_id": "bench", "started_at": STARTED}
        segment = SegmentFile.create(
            recording / name, {}, provenance, [fmt], {STREAM: written}, {STREAM: written}
        )
        for at in range(0, rows, RATE):
            count = min(RATE, rows - at)
            first = written + at
            block = noise[:count] + np.int16(first // RATE % 100)  # differs per second
            stamps = (first + np.arange(count, dtype=np.int64)) * (10**9 // RATE) + 10**12
            segment.append(STREAM, block, stamps)
        segment.close({"finished_at": "bench"})
        manifest.segments.append(
            SegmentEntry(
                file=name,
                index=index,
                started_at="",
                state="closed",
                first_frames={STREAM: written},
                frames={STREAM: rows},
            )
        )
        written += rows
        index += 1
        print(f"  wrote {name}: {written * frame_bytes / 1e9:.1f} / {gb:g} GB", flush=True)
    write_manifest(recording, manifest)
    print(f"  {gb:g} GB in {time.monotonic() - started:.0f} s")
    return recording


class Plain:
    """Plain h5py on the same files: find the segment(s), read rows x columns."""

    def __init__(self, recording: Path) -> None:
        entries = read_manifest(recording).segments
        self.files = [h5py.File(recording / e.file, "r") for e in entries]
        self.data = [f["streams/acq.continuous/data"] for f in self.files]
        self.firsts = np.cumsum([0] + [len(d) for d in self.data])

    def read(self, c0: int, c1: int, f0: int, f1: int) -> np.ndarray:
        parts = []
        for i, data in enumerate(self.data):
            lo, hi = max(f0, self.firsts[i]), min(f1, self.firsts[i + 1])
            if lo < hi:
                parts.append(data[lo - self.firsts[i] : hi - self.firsts[i], c0:c1])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def close(self) -> None:
        for f in self.files:
            f.close()


def drop_cache(recording: Path) -> None:
    for path in recording.glob("segment-*.h5"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm_cache(recording: Path) -> None:
    for path in recording.glob("segment-*.h5"):
        with open(path, "rb") as f:
            while f.read(64 << 20):
                pass


def random_slices(frames: int, channels: int, n: int, boundaries: np.ndarray) -> list[tuple]:
    rng = np.random.default_rng(1)
    slices = []
    for i in range(n):
        c0 = int(rng.integers(0, channels - 32))
        if i % 4 == 0 and len(boundaries):  # across a segment boundary
            f0 = int(rng.choice(boundaries)) - RATE // 2
        else:
            f0 = int(rng.integers(0, frames - RATE))
        slices.append((c0, c0 + 32, f0, f0 + RATE))
    return slices


def latency(
    readers: dict[str, Callable[[tuple], np.ndarray]], slices: list[tuple], cold: Path | None
) -> dict[str, str]:
    """p50 and p99 ms per reader; the readers take turns on each slice (no drift between them)."""
    times: dict[str, list[float]] = {name: [] for name in readers}
    for s in slices:
        for name, read in readers.items():
            if cold is not None:
                drop_cache(cold)
            t0 = time.perf_counter()
            read(s)
            times[name].append(time.perf_counter() - t0)
    out = {}
    for name, samples in times.items():
        ms = np.array(samples) * 1e3
        out[name] = f"{np.percentile(ms, 50):8.2f} {np.percentile(ms, 99):8.2f}"
    return out


def work(block: np.ndarray) -> float:
    """What an analysis might do per block: per-channel RMS, then threshold crossings."""
    rms = np.sqrt(np.mean(np.square(block, dtype=np.float32), axis=1))
    crossings = (block < -4 * rms[:, None]).sum()
    return float(crossings)


def sequential(name: str, blocks, nbytes: int) -> None:
    t0 = time.perf_counter()
    total = 0.0
    for data in blocks:
        total += work(data)
    seconds = time.perf_counter() - t0
    print(f"  {name:38} {seconds:7.1f} s {nbytes / 1e9 / seconds:7.2f} GB/s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=10.0, help="recording size (default 10)")
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/rigpipe-bench-readback"))
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--export-gb", type=float, default=2.0)
    parser.add_argument("--clean", action="store_true", help="delete the recording afterwards")
    args = parser.parse_args()

    print(f"recording: {args.gb:g} GB, {args.channels} channels x {RATE} Hz int16")
    recording = make(args.dir, args.gb, args.channels)
    rec = pipeline.open_recording(recording)
    plain = Plain(recording)
    try:
        frames, channels = rec.frames, rec.shape[0]
        print(f"  {len(rec.segment_paths)} segments, {frames} frames ({frames / RATE:.0f} s)")

        boundaries = plain.firsts[1:-1]
        slices = random_slices(frames, channels, args.slices, boundaries)
        for a, b in zip(slices[:20], slices[:20], strict=True):  # same bytes, both ways
            assert np.array_equal(rec[a[0] : a[1], a[2] : a[3]], plain.read(*b).T)

        def ours(s: tuple) -> np.ndarray:
            return rec[s[0] : s[1], s[2] : s[3]]

        def theirs(s: tuple) -> np.ndarray:
            return plain.read(*s)

        print(f"\n1. random access: {args.slices} slices of 32 channels x 1 s (ms)")
        print(f"  {'':38} {'p50':>8} {'p99':>8}")
        readers = {"plain h5py": theirs, "rigpipe open_recording": ours}
        warm_cache(recording)
        for name, figures in latency(readers, slices, None).items():
            print(f"  {name + ', warm':38} {figures}")
        if hasattr(os, "posix_fadvise"):
            cold = slices[: max(10, args.slices // 2)]
            for name, figures in latency(readers, cold, recording).items():
                print(f"  {name + ', cold':38} {figures}")
        else:
            print("  (cold: this OS cannot drop a file's pages from the cache; skipped)")

        nbytes = rec.default.nbytes

        def plain_blocks():
            for f0 in range(0, frames, RATE):
                yield plain.read(0, channels, f0, min(frames, f0 + RATE)).T

        passes = {
            "plain h5py": plain_blocks,
            "rigpipe blocks, no prefetch": lambda: (b.data for b in rec.blocks(prefetch=False)),
            "rigpipe blocks, prefetch": lambda: (b.data for b in rec.blocks()),
            "rigpipe blocks, prefetch, copy=False": lambda: (
                b.data for b in rec.blocks(copy=False)
            ),
        }
        for cache in ("warm", "cold") if hasattr(os, "posix_fadvise") else ("warm",):
            print(
                f"\n2. sequential, {cache}: every channel in 1 s blocks, with per-block work "
                f"({nbytes / 1e9:.1f} GB)"
            )
            for name, blocks in passes.items():
                if cache == "warm":
                    warm_cache(recording)
                else:
                    drop_cache(recording)
                sequential(name, blocks(), nbytes)
        minute = rec[:, : 60 * RATE]
        t0 = time.perf_counter()
        for start in range(0, minute.shape[1], RATE):
            work(minute[:, start : start + RATE])
        work_only = time.perf_counter() - t0
        print(f"  (the work alone, on data in memory: {work_only / 60 * 1e3:.0f} ms per 1 s block)")

        print(f"\n3. NWB export of the first {args.export_gb:g} GB")
        from pipeline.recording.nwb import export_nwb

        take = max(1, round(args.export_gb * 1e9 / SEGMENT_BYTES))
        part = pipeline.open_recording(rec.segment_paths[:take])
        out = args.dir / "bench-export.nwb"
        try:
            for compression in (None, "gzip"):
                summary = export_nwb(part, out, overwrite=True, compression=compression)
                print(
                    f"  {compression or 'uncompressed':12} {summary.bytes / 1e9:.2f} GB of "
                    f"samples in {summary.seconds:5.1f} s: {summary.mb_per_s:4.0f} MB/s "
                    f"({out.stat().st_size / 1e9:.2f} GB file)"
                )
        finally:
            part.close()
            out.unlink(missing_ok=True)
    finally:
        rec.close()
        plain.close()
        if args.clean:
            shutil.rmtree(recording, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
