"""From a rendered command to samples in a stimulator's queue.

The command was checked and rendered by :mod:`.safety` (its samples checked
again after quantization). A :class:`Train` hands the rendered pulse out period
by period without materializing a long train.

:class:`Output` owns one queue of trains per channel and a refill thread. The
backend's queue (a DLL ring buffer on an STG, a FIFO for the simulated one)
is kept ``buffer_samples // 2`` deep with the current waveform or silence
(stimuli only, for a device that outputs silence by itself); a new stimulus
is pushed at once, up to ``buffer_samples`` deep. Nothing is
ever more than ``buffer_samples`` ahead of the output, so a stop silences a
channel within one output buffer period.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Protocol

import numpy as np

from pipeline.host import clock
from workers.stimulation.safety import Rendered


class Backend(Protocol):
    """What :class:`Output` needs from a stimulator (simulated or STG).

    A backend whose device outputs silence by itself on an empty queue says so
    with ``idles = True`` and has ``end(channel)`` and ``wake()``: the host then
    queues stimuli only, calls ``end`` after a stimulus' last samples, so that
    running empty afterwards is silence rather than an underrun, and ``wake``
    once it queued a new stimulus. Otherwise (an STG) the host keeps every
    queue fed with silence between stimuli.
    """

    output_rate_hz: float
    channels: int
    resolution_ua: float  # one step of the output DAC
    range_ua: float  # the largest current the device can output

    capacity: int  # samples each channel's queue holds

    def space(self, channel: int) -> int:
        """Samples that fit into ``channel``'s queue now (queued = capacity - space)."""
        ...

    def enqueue(self, channel: int, samples_ua: np.ndarray) -> None:
        """Append samples (float64 µA, multiples of ``resolution_ua``) to ``channel``."""
        ...


class Train:
    """A rendered command being output: hands out its samples in order."""

    def __init__(self, command_id: int, rendered: Rendered) -> None:
        self.command_id = command_id
        self.rendered = rendered
        self.position = 0
        self._period = rendered.period_ua

    @property
    def remaining(self) -> int:
        return self.rendered.total_samples - self.position

    def take(self, frames: int) -> np.ndarray:
        """The next ``frames`` samples (fewer at the end of the train); read-only."""
        frames = min(frames, self.remaining)
        period_samples = self.rendered.period_samples
        start = self.position % period_samples
        self.position += frames
        if start + frames <= period_samples:  # within one period: a view of it
            return self._period[start : start + frames]
        return self._period[(start + np.arange(frames)) % period_samples]


class ChannelQueue:
    """The trains waiting for one channel, output one after another, then silence."""

    def __init__(self) -> None:
        self.trains: deque[Train] = deque()

    def take(self, frames: int) -> np.ndarray:
        """The next ``frames`` samples: the trains' in turn, then silence; read-only."""
        trains = self.trains
        if trains and trains[0].remaining >= frames:  # the usual case: one train covers it
            part = trains[0].take(frames)
            if trains[0].remaining == 0:
                trains.popleft()
            return part
        out = np.zeros(frames)
        filled = 0
        while filled < frames and self.trains:
            part = self.trains[0].take(frames - filled)
            out[filled : filled + len(part)] = part
            filled += len(part)
            if self.trains[0].remaining == 0:
                self.trains.popleft()
        return out

    @property
    def pending(self) -> int:
        return sum(train.remaining for train in self.trains)


class Output:
    """Keeps every channel of ``backend`` fed: pending stimuli first, silence otherwise."""

    def __init__(self, backend: Backend, buffer_samples: int, refill_interval_s: float) -> None:
        self.backend = backend
        self.buffer_samples = buffer_samples
        self.refill_interval_s = refill_interval_s
        self.queues = [ChannelQueue() for _ in range(backend.channels)]
        self._idles = bool(getattr(backend, "idles", False))
        self.lock = threading.Lock()
        self.refill_error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refill_loop, name="refill", daemon=True)

    def start(self) -> None:
        """Prime every channel with a whole buffer of silence (slack for the refill
        thread's first, slow calls into the backend) and start refilling.

        A backend whose own clock asks for data (``pull(callback)``: called after
        each block it consumed, like a device's data handler) refills from there,
        and no thread of ours wakes to check; otherwise the refill thread does it
        every ``refill_interval_s``."""
        if not self._idles:
            with self.lock:
                for channel in range(len(self.queues)):
                    self._fill(channel, self.buffer_samples)
        pull = getattr(self.backend, "pull", None)
        if pull is not None:
            pull(self._refill_pulled)
        else:
            self._thread.start()

    def _refill_pulled(self) -> None:
        try:
            self.refill()
        except BaseException as exc:  # the worker's loop sees it and fails loudly
            self.refill_error = exc
            raise

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)

    def submit(self, channel: int, train: Train) -> int:
        """Queue ``train`` on ``channel`` and push its start to the backend now; return
        the host monotonic ns at which its first samples were enqueued."""
        with self.lock:
            queue = self.queues[channel]
            queue.trains.append(train)
            self._fill(channel, self.buffer_samples)
            queued_ns = clock.now_ns()
        if self._idles:
            self.backend.wake()  # type: ignore[attr-defined]  # an idles backend's (see Backend)
        return queued_ns

    def silence(self, channel: int | None) -> int:
        """Drop the pending stimuli of ``channel`` (all channels if None); return how many."""
        with self.lock:
            channels = range(len(self.queues)) if channel is None else [channel]
            dropped = 0
            for index in channels:
                dropped += len(self.queues[index].trains)
                self.queues[index].trains.clear()
                if self._idles:
                    self.backend.end(index)  # type: ignore[attr-defined]  # idles: see Backend
            return dropped

    def busy(self, channel: int) -> bool:
        with self.lock:
            return bool(self.queues[channel].trains)

    def refill(self) -> None:
        """Top every channel up to half the output buffer."""
        with self.lock:
            for channel in range(len(self.queues)):
                self._fill(channel, self.buffer_samples // 2)

    def _fill(self, channel: int, depth: int) -> None:
        backend = self.backend
        queue = self.queues[channel]
        if self._idles and not queue.trains:
            return  # the device outputs silence by itself
        space = backend.space(channel)  # one call into the device per channel and refill
        want = min(depth - (backend.capacity - space), space)
        if self._idles:
            want = min(want, queue.pending)
        if want > 0:
            backend.enqueue(channel, queue.take(want))
            if self._idles and not queue.trains:
                backend.end(channel)  # type: ignore[attr-defined]  # idles: see Backend

    def _refill_loop(self) -> None:
        try:
            while not self._stop.wait(self.refill_interval_s):
                self.refill()
        except BaseException as exc:  # the worker's loop sees it and fails loudly
            self.refill_error = exc
