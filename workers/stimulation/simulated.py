"""The ``simulated`` stimulator: no hardware, the output goes into a ring.

It behaves like a streaming stimulator: one FIFO per channel that a clock
thread drains at the output rate (50 kHz), block by block, in real time, and
after each block asks the host for more (``pull``), as a device's data
handler would.
What it "outputs" is published as float32 µA frames ``(channels,)`` on the
ring ``<worker>/output``, so the stimulation can be seen in the scope and
recorded next to the neural data.

A channel with an empty FIFO outputs silence, as an STG in continuous mode
does, so the host queues stimuli only (``idles``), not silence. Running empty
is an underrun only in the middle of a stimulus: between the first samples
the host queued and its ``end(channel)``. Samples queued on an empty FIFO
play from the next sample the device outputs after the call, so what the
ring shows is when they really came out. With every FIFO empty the clock
thread wakes every ``idle_block_s`` instead of every ``block_s``, and the
host wakes it (``wake``) when it queued a stimulus.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from pipeline.host import clock
from pipeline.ring import RingWriter
from pipeline.settings import Settings


class SimulatedSettings(Settings, frozen=True, kw_only=True):
    """``[workers.parameters.simulated]``: the simulated device's properties."""

    resolution_ua: float = 0.1
    range_ua: float = 16000.0
    fifo_samples: int = 50_000
    ring_seconds: float = 10.0


class SimulatedStimulator:
    """Per-channel FIFOs drained at ``output_rate_hz`` into the ring made by ``make_writer``."""

    #: The device outputs silence by itself on an empty FIFO: the host queues stimuli only.
    idles = True

    def __init__(
        self,
        settings: SimulatedSettings,
        channels: int,
        output_rate_hz: float,
        make_writer: Callable[[int], RingWriter],
        block_s: float = 0.002,
        idle_block_s: float = 0.025,
    ) -> None:
        self.channels = channels
        self.output_rate_hz = output_rate_hz
        self.resolution_ua = settings.resolution_ua
        self.range_ua = settings.range_ua
        self.capacity = settings.fifo_samples
        self.block_s = block_s
        self.idle_block_s = max(block_s, idle_block_s)
        self.underruns = 0
        self.samples_output = 0
        self.clock_error: BaseException | None = None
        self._fifo = np.zeros((channels, self.capacity))
        # Per channel, as Python lists: a host's enqueue touches them a dozen times, and a
        # numpy scalar costs several µs each in a worker that just woke.
        self._head = [0] * channels  # samples ever output
        self._tail = [0] * channels  # samples ever enqueued
        self._plays_at = [0] * channels  # the device sample the FIFO's head plays as
        self._open = [False] * channels  # a stimulus is under way: more samples follow
        self._start_ns: int | None = None
        self._period_ns = 1e9 / output_rate_hz
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._writer = make_writer(max(1, int(settings.ring_seconds * output_rate_hz)))
        self._thread = threading.Thread(target=self._clock, name="device-clock", daemon=True)
        self._pulled: Callable[[], None] | None = None

    def pull(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after each block output (the host refills then, as it would
        from a streaming device's data handler)."""
        self._pulled = callback

    # -- Backend --------------------------------------------------------------------------------
    def queued(self, channel: int) -> int:
        return self._tail[channel] - self._head[channel]

    def space(self, channel: int) -> int:
        return self.capacity - self.queued(channel)

    def enqueue(self, channel: int, samples_ua: np.ndarray) -> None:
        with self._lock:
            if len(samples_ua) > self.space(channel):
                raise OverflowError(f"channel {channel}: FIFO full")
            if not self.queued(channel):  # plays from the first sample after now
                self._plays_at[channel] = max(self.samples_output, self._sample_now() + 1)
            done = 0
            for slot, count in _spans(self._tail[channel], len(samples_ua), self.capacity):
                self._fifo[channel, slot : slot + count] = samples_ua[done : done + count]
                done += count
            self._tail[channel] += len(samples_ua)
            self._open[channel] = True

    def wake(self) -> None:
        """Have the clock thread follow what was just queued block by block (it sleeps
        ``idle_block_s`` while every FIFO is empty). Called after a stimulus is queued,
        once its time of queueing is taken: waking a thread is not free."""
        self._wake.set()

    def end(self, channel: int) -> None:
        """Nothing follows what is queued on ``channel``: running empty is silence, not an
        underrun."""
        with self._lock:
            self._open[channel] = False

    # -- device ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._start_ns = clock.now_ns()
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        self._writer.close()

    def _sample_now(self) -> int:
        """The device sample being output now, the last whose time has come (0 before the
        start)."""
        if self._start_ns is None:
            return 0
        return int((clock.now_ns() - self._start_ns) / self._period_ns)

    def _clock(self) -> None:
        try:
            assert self._start_ns is not None
            start_ns, period_ns = self._start_ns, self._period_ns
            while not self._stop.is_set():
                busy = any(self._open) or self._tail != self._head
                self._wake.wait(self.block_s if busy else self.idle_block_s)
                self._wake.clear()
                due = self._sample_now() - self.samples_output
                if due > 0:
                    first = self.samples_output
                    frames = self._drain(first, due)
                    stamps = start_ns + ((first + np.arange(due)) * period_ns).astype(np.int64)
                    self._writer.write(frames, stamps)
                    self.samples_output += due
                if self._pulled is not None:
                    self._pulled()
        except BaseException as exc:  # the worker's loop sees it and fails loudly
            self.clock_error = exc

    def _drain(self, first: int, frames: int) -> np.ndarray:
        """Device samples ``first`` to ``first + frames``: each FIFO's samples where they
        play, silence elsewhere."""
        out = np.zeros((frames, self.channels), np.float32)
        end = first + frames
        with self._lock:
            for channel in range(self.channels):
                queued = self.queued(channel)
                plays_at = max(self._plays_at[channel], first)
                if queued and plays_at < end:
                    count = min(queued, end - plays_at)
                    done = plays_at - first
                    for slot, n in _spans(self._head[channel], count, self.capacity):
                        out[done : done + n, channel] = self._fifo[channel, slot : slot + n]
                        done += n
                    self._head[channel] += count
                    self._plays_at[channel] = plays_at + count
                dry = not queued or plays_at + queued < end
                if dry and self._open[channel]:
                    self.underruns += 1  # ran dry in the middle of a stimulus
        return out


def _spans(position: int, count: int, capacity: int) -> list[tuple[int, int]]:
    """The FIFO slots of ``count`` samples from sample number ``position``: one or two
    ``(first slot, samples)`` runs (two where they wrap around the end)."""
    slot = position % capacity
    first = min(count, capacity - slot)
    return [(slot, first), (0, count - first)] if count > first else [(slot, first)]
