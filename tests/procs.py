"""Bodies of the processes the integration tests spawn (importable, so spawn can run them).

Frames carry their own sequence number and a checksum, so a reader in another
process can prove that every frame it got is whole and in its place.
"""

from __future__ import annotations

import time
from multiprocessing.synchronize import Event
from queue import Queue

import numpy as np

import pipeline

CHANNELS = 8
_MIX = np.arange(1, CHANNELS - 1, dtype=np.int64) * 0x9E3779B1


def sequence_frames(start: int, n: int, channels: int = CHANNELS) -> np.ndarray:
    """int64 frames: [sequence, mixed values..., checksum of the row]."""
    seq = np.arange(start, start + n, dtype=np.int64)
    frames = np.empty((n, channels), np.int64)
    frames[:, 0] = seq
    frames[:, 1 : channels - 1] = (seq[:, None] * _MIX[: channels - 2]) & 0xFFFFFFFF
    frames[:, channels - 1] = frames[:, : channels - 1].sum(axis=1) ^ 0x5A5A5A5A
    return frames


def frame_problems(chunk: pipeline.Chunk) -> list[str]:
    """What is wrong with a chunk of ``sequence_frames`` (empty if nothing)."""
    data = chunk.data
    expected = np.arange(chunk.start_sequence, chunk.end_sequence, dtype=np.int64)
    problems = []
    if not np.array_equal(data[:, 0], expected):
        bad = int(np.flatnonzero(data[:, 0] != expected)[0])
        problems.append(f"frame {chunk.start_sequence + bad} holds sequence {data[bad, 0]}")
    if len(data):
        channels = data.shape[1]
        checksum = data[:, : channels - 1].sum(axis=1) ^ 0x5A5A5A5A
        if not np.array_equal(checksum, data[:, channels - 1]):
            problems.append(
                f"torn frame(s) at {chunk.start_sequence + int(np.argmin(checksum == data[:, -1]))}"
            )
        if not np.array_equal(data, sequence_frames(chunk.start_sequence, len(data), channels)):
            problems.append("frame contents differ from what was written")
    return problems


def stress_writer(
    stream: str, capacity: int, seconds: float, max_chunk: int, go: Event, out: Queue
) -> None:
    """Write random-sized chunks as fast as possible for ``seconds``, then close the stream."""
    rng = np.random.default_rng(1)
    writer = pipeline.RingWriter(stream, np.int64, (CHANNELS,), capacity, 30000.0)
    out.put(("ready", None))
    go.wait(30)
    sizes = rng.integers(1, max_chunk + 1, size=100_000)
    cursor, i, end = 0, 0, time.monotonic() + seconds
    while time.monotonic() < end:
        n = int(sizes[i % len(sizes)])
        writer.write(sequence_frames(cursor, n))
        cursor += n
        i += 1
    writer.close()
    out.put(("written", cursor))


def checking_reader(stream: str, delay_s: float, ready: Event, out: Queue) -> None:
    """Read until end of stream, checking every frame; report counts and problems."""
    received = dropped = chunks = 0
    expected = 0
    problems: list[str] = []
    with pipeline.attach(stream, from_now=False) as reader:
        ready.set()
        for chunk in reader:
            if chunk.start_sequence != expected + chunk.dropped:
                problems.append(
                    f"chunk at {chunk.start_sequence} after {expected}: {chunk.dropped} dropped"
                )
            problems += frame_problems(chunk)
            received += chunk.frames
            dropped += chunk.dropped
            chunks += 1
            expected = chunk.end_sequence
            if delay_s:
                time.sleep(delay_s)
        out.put(
            {
                "received": received,
                "dropped_in_chunks": dropped,
                "dropped_total": reader.dropped_total,
                "chunks": chunks,
                "problems": problems[:10],
            }
        )


def paced_writer(stream: str, chunk_frames: int, rate_hz: float, start: int, ready: Event) -> None:
    """Write ``sequence_frames`` in chunks at ``rate_hz`` forever (the test kills it)."""
    writer = pipeline.RingWriter(stream, np.int64, (CHANNELS,), 4096, 1000.0)
    cursor = writer.write_cursor
    assert cursor == start or start < 0, f"takeover continued at {cursor}, expected {start}"
    period = 1.0 / rate_hz
    next_t = time.monotonic()
    announced = False
    while True:
        writer.write(sequence_frames(cursor, chunk_frames))
        cursor += chunk_frames
        if not announced:
            # once: the tests kill this process, and one killed inside Event.set() (every
            # chunk, before) left the event's lock held: the test's clear() then hung
            ready.set()
            announced = True
        next_t += period
        time.sleep(max(0.0, next_t - time.monotonic()))


def reformatting_writer(stream: str, go: Event, drained: Event, out: Queue) -> None:
    """Write 8-channel frames, switch to 4 channels and 500 Hz, write more; close once
    the reader says it has everything."""
    writer = pipeline.RingWriter(stream, np.int64, (8,), 10_000, 1000.0, {"channels": 8})
    out.put("ready")
    go.wait(30)
    for start in range(0, 1000, 100):
        writer.write(sequence_frames(start, 100, 8))
    writer.reformat(frame_shape=(4,), sample_rate=500.0, descriptor={"channels": 4})
    for start in range(1000, 1500, 50):
        writer.write(sequence_frames(start, 50, 4))
    drained.wait(30)
    writer.close()
    out.put("done")


def blocked_reader(stream: str, timeout_s: float | None, ready: Event, out: Queue) -> None:
    """Block in one ``read``; report what came back and the CPU time the wait cost.

    The CPU time is the waiting thread's own: numpy's OpenBLAS keeps an idle
    worker thread in every process that costs ~1 % of a core on some VMs,
    whatever the process does.
    """
    with pipeline.attach(stream) as reader:
        ready.set()
        cpu0, wall0 = time.thread_time(), time.monotonic()
        chunk = reader.read(timeout_s=timeout_s)
        out.put(
            {
                "frames": chunk.frames,
                "first": int(chunk.data[0, 0]) if chunk.frames else None,
                "cpu_s": time.thread_time() - cpu0,
                "wall_s": time.monotonic() - wall0,
            }
        )
