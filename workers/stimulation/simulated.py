"""The ``simulated`` stimulator: no hardware, the output goes into a ring.

It behaves like a streaming stimulator: one FIFO per channel that a clock
thread drains at the output rate (50 kHz), block by block, in real time, and
after each block asks the host for more (``pull``), as a device's data
handler would.
What it "outputs" is published as float32 µA frames ``(channels,)`` on the
ring ``<worker>/output``, so the stimulation can be seen in the scope and
recorded next to the neural data. An empty FIFO while running is an underrun:
it outputs zeros and counts it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import msgspec
import numpy as np

from pipeline import clock
from pipeline.ring import RingWriter


class SimulatedSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``[workers.parameters.simulated]``: the simulated device's properties."""

    resolution_ua: float = 0.1
    range_ua: float = 16000.0
    fifo_samples: int = 50_000
    ring_seconds: float = 10.0


class SimulatedStimulator:
    """Per-channel FIFOs drained at ``output_rate_hz`` into the ring made by ``make_writer``."""

    def __init__(
        self,
        settings: SimulatedSettings,
        channels: int,
        output_rate_hz: float,
        make_writer: Callable[[int], RingWriter],
        block_s: float = 0.002,
    ) -> None:
        self.channels = channels
        self.output_rate_hz = output_rate_hz
        self.resolution_ua = settings.resolution_ua
        self.range_ua = settings.range_ua
        self.capacity = settings.fifo_samples
        self.block_s = block_s
        self.underruns = 0
        self.samples_output = 0
        self.clock_error: BaseException | None = None
        self._fifo = np.zeros((channels, self.capacity))
        self._head = np.zeros(channels, np.int64)  # samples ever output, per channel
        self._tail = np.zeros(channels, np.int64)  # samples ever enqueued, per channel
        self._started = np.zeros(channels, bool)  # underruns count after the first data
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._writer = make_writer(max(1, int(settings.ring_seconds * output_rate_hz)))
        self._thread = threading.Thread(target=self._clock, name="device-clock", daemon=True)
        self._pulled: Callable[[], None] | None = None

    def pull(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after each block output (the host refills then, as it would
        from a streaming device's data handler)."""
        self._pulled = callback

    # -- Backend --------------------------------------------------------------------------------
    def queued(self, channel: int) -> int:
        return int(self._tail[channel] - self._head[channel])

    def space(self, channel: int) -> int:
        return self.capacity - self.queued(channel)

    def enqueue(self, channel: int, samples_ua: np.ndarray) -> None:
        with self._lock:
            if len(samples_ua) > self.space(channel):
                raise OverflowError(f"channel {channel}: FIFO full")
            done = 0
            for slot, count in _spans(int(self._tail[channel]), len(samples_ua), self.capacity):
                self._fifo[channel, slot : slot + count] = samples_ua[done : done + count]
                done += count
            self._tail[channel] += len(samples_ua)
            self._started[channel] = True

    # -- device ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        self._writer.close()

    def _clock(self) -> None:
        try:
            start_ns = clock.now_ns()
            period_ns = 1e9 / self.output_rate_hz
            while not self._stop.wait(self.block_s):
                due = int((clock.now_ns() - start_ns) / period_ns) - self.samples_output
                if due > 0:
                    frames = self._drain(due)
                    stamps = start_ns + ((self.samples_output + np.arange(due)) * period_ns).astype(
                        np.int64
                    )
                    self._writer.write(frames, stamps)
                    self.samples_output += due
                if self._pulled is not None:
                    self._pulled()
        except BaseException as exc:  # the worker's loop sees it and fails loudly
            self.clock_error = exc

    def _drain(self, frames: int) -> np.ndarray:
        out = np.zeros((frames, self.channels), np.float32)
        with self._lock:
            for channel in range(self.channels):
                available = min(frames, self.queued(channel))
                done = 0
                for slot, count in _spans(int(self._head[channel]), available, self.capacity):
                    out[done : done + count, channel] = self._fifo[channel, slot : slot + count]
                    done += count
                self._head[channel] += available
                if available < frames and self._started[channel]:
                    self.underruns += 1
        return out


def _spans(position: int, count: int, capacity: int) -> list[tuple[int, int]]:
    """The FIFO slots of ``count`` samples from sample number ``position``: one or two
    ``(first slot, samples)`` runs (two where they wrap around the end)."""
    slot = position % capacity
    first = min(count, capacity - slot)
    return [(slot, first), (0, count - first)] if count > first else [(slot, first)]
