"""``rigpipe demo``: a synthetic writer in its own process, read live by this one.

It shows the ring end to end without hardware: the writer paces chunks of
noisy sine waves at the sample rate from the monotonic clock; this process
attaches by name and prints rate, lag and drops; at the end the writer closes
the stream and nothing is left in shared memory. While it runs, any other
process can attach too (``rigpipe tail demo/acq/continuous``).
"""

from __future__ import annotations

import multiprocessing as mp
import time

import numpy as np

from pipeline.errors import StreamNotFound
from pipeline.ring import RingReader, RingWriter, attach

CHUNK_S = 0.001  # one chunk per millisecond, as an acquisition device delivers them


def write_synthetic(stream: str, channels: int, rate: float, seconds: float) -> None:
    """Writer process: paced sine + noise, int16 microvolt-scaled, for ``seconds``."""
    frames_per_chunk = max(1, round(rate * CHUNK_S))
    capacity = int(rate * 2)  # two seconds of history for late readers
    descriptor = {
        "channel_labels": [f"ch{i:03d}" for i in range(channels)],
        "units": "uV",
        "scale": 0.25,
        "source": "rigpipe demo",
    }
    rng = np.random.default_rng(0)
    freqs = rng.uniform(4, 12, channels)
    with RingWriter(stream, np.int16, (channels,), capacity, rate, descriptor) as writer:
        t0 = time.monotonic()
        written = 0
        while written < rate * seconds:
            t = (written + np.arange(frames_per_chunk)) / rate
            signal = 400 * np.sin(2 * np.pi * freqs * t[:, None])
            noise = rng.normal(0, 40, (frames_per_chunk, channels))
            writer.write((signal + noise).astype(np.int16))
            written += frames_per_chunk
            time.sleep(max(0.0, t0 + written / rate - time.monotonic()))


def start(stream: str, channels: int, rate: float, seconds: float) -> mp.process.BaseProcess:
    """Start the writer in its own process."""
    writer = mp.get_context("spawn").Process(
        target=write_synthetic, args=(stream, channels, rate, seconds)
    )
    writer.start()
    return writer


def attach_when_ready(stream: str, writer: mp.process.BaseProcess) -> RingReader:
    """Attach to ``stream`` as soon as ``writer`` created it (from its first frame)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return attach(stream, from_now=False)
        except StreamNotFound:
            if not writer.is_alive() or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
