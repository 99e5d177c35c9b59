"""An event-triggered average: one channel's mean response, locked to a trigger stream.

A closed-loop experimenter looks first at what follows a stimulus: the
artifact, then the first milliseconds of the response. One sweep shows it
buried in noise; the mean over many stimuli shows it. The scope keeps the last
seconds of one channel (:class:`TriggeredAverage`), takes trigger times from any
stream (:class:`Onsets`: every record of an event stream, or the first active
frame of each run of a continuous one such as ``stim/output``), and adds the
window around each trigger to a running sum once the window's last sample has
arrived. A window with a hole in it (frames dropped, a new generation) is not
averaged but counted as skipped: a torn window would smear the mean.

The average is of the raw samples, in the stream's units: a display filter
shapes what the traces show, not what the average holds.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
import numpy as np

from pipeline.settings import Settings
from workers.visualization.envelope import BACKGROUND, CURSOR, column_runs, rgb32

AVERAGE = rgb32(80, 200, 255)  # the mean response
#: Triggers waiting for their window: beyond this many (a trigger stream far ahead of a
#: stalled data stream), the oldest are skipped.
MAX_PENDING = 10_000


class AverageSettings(Settings, frozen=True, kw_only=True):
    """``[workers.parameters.average]`` of a scope: what to average, locked to what."""

    trigger: str = ""  # a stream: an event stream's records, or a continuous stream's onsets
    stream: str = ""  # the tab averaged (one of ``streams``); "": the first
    channel: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0-based; an expanded channel replaces it
    before_ms: Annotated[float, msgspec.Meta(ge=0, le=1000)] = 10.0
    after_ms: Annotated[float, msgspec.Meta(gt=0, le=5000)] = 50.0
    height_px: Annotated[int, msgspec.Meta(ge=40, le=2000)] = 160


class Onsets:
    """Trigger times from the chunks of a trigger stream, one chunk after another."""

    def __init__(self) -> None:
        self.active = False  # the last frame of a continuous stream was active

    def times(self, timestamps_ns: np.ndarray, data: np.ndarray, continuous: bool) -> np.ndarray:
        """The trigger times (ns) in one chunk: every record of an event stream; the first
        active (nonzero) frame of each run of active frames of a continuous one, a run
        that began in an earlier chunk included in that chunk's."""
        if not continuous:
            return timestamps_ns.astype(np.int64)
        frames = len(timestamps_ns)
        if not frames:
            return np.empty(0, np.int64)
        active = np.any(data.reshape(frames, -1) != 0, axis=1)
        before = np.concatenate(([self.active], active[:-1]))
        self.active = bool(active[-1])
        return timestamps_ns[active & ~before].astype(np.int64)


class TriggeredAverage:
    """The running mean of one channel over ``before_ms`` .. ``after_ms`` around triggers.

    :meth:`add` gives it the channel's samples as they are read; :meth:`trigger` the
    trigger times as they are read (in either order: a trigger waits for the end of
    its window). Samples and triggers share the session's clock (ring timestamps).
    """

    #: Seconds of the channel kept, beyond the window: how late a trigger may be read.
    HISTORY_S = 2.0

    def __init__(self, sample_rate: float, before_ms: float, after_ms: float) -> None:
        self.sample_rate = sample_rate
        self.before = round(before_ms * sample_rate / 1000)
        self.after = max(1, round(after_ms * sample_rate / 1000))
        self.length = self.before + self.after
        self.kept = self.length + round(self.HISTORY_S * sample_rate)
        self._times = np.zeros(2 * self.kept, np.int64)
        self._values = np.zeros(2 * self.kept, np.float64)
        self._end = 0  # samples held: _times[:_end], oldest first
        self._pending: list[int] = []  # trigger times waiting for the end of their window
        self.sum = np.zeros(self.length, np.float64)
        self.events = 0  # triggers averaged
        self.skipped = 0  # triggers whose window was no longer held, or had a hole

    @property
    def times_ms(self) -> np.ndarray:
        """Each point's time from its trigger, in ms (the trigger's sample is 0)."""
        return (np.arange(self.length) - self.before) * (1000.0 / self.sample_rate)

    @property
    def mean(self) -> np.ndarray | None:
        """The average so far (None before the first trigger is averaged)."""
        return self.sum / self.events if self.events else None

    def add(self, timestamps_ns: np.ndarray, values: np.ndarray) -> None:
        """The channel's next samples, with their ring timestamps."""
        count = len(values)
        if count >= self.kept:  # more than is kept: only the newest matter
            timestamps_ns, values, count = (
                timestamps_ns[-self.kept :],
                values[-self.kept :],
                self.kept,
            )
        if count and self._end and timestamps_ns[0] <= self._times[self._end - 1]:
            self._end = 0  # time went back (a device clock reset): the history is another's
        if self._end + count > len(self._times):  # move what is kept to the front
            keep = self.kept - count
            self._times[:keep] = self._times[self._end - keep : self._end]
            self._values[:keep] = self._values[self._end - keep : self._end]
            self._end = keep
        self._times[self._end : self._end + count] = timestamps_ns
        self._values[self._end : self._end + count] = values
        self._end += count
        self._settle()

    def trigger(self, times_ns: np.ndarray) -> None:
        """Trigger times (ns) read from the trigger stream."""
        self._pending.extend(int(t) for t in times_ns)
        if len(self._pending) > MAX_PENDING:
            self.skipped += len(self._pending) - MAX_PENDING
            self._pending = self._pending[-MAX_PENDING:]
        self._settle()

    def _settle(self) -> None:
        """Average every pending trigger whose window has arrived; skip those it never will."""
        if not self._pending or not self._end:
            return
        times = self._times[: self._end]
        period_ns = 1e9 / self.sample_rate
        waiting = []
        for trigger_ns in self._pending:
            start = int(np.searchsorted(times, trigger_ns)) - self.before
            stop = start + self.length
            if stop > self._end:
                waiting.append(trigger_ns)  # its window has not all arrived yet
                continue
            if start < 0:
                self.skipped += 1  # read too late: its window is no longer held
                continue
            span_ns = float(times[stop - 1] - times[start])
            if abs(span_ns - (self.length - 1) * period_ns) > 1.5 * period_ns:
                self.skipped += 1  # a hole in the window (frames dropped, a new stream)
                continue
            self.sum += self._values[start:stop]
            self.events += 1
        self._pending = waiting


def average_image(
    mean: np.ndarray, before: int, width: int, height: int
) -> tuple[np.ndarray, float]:
    """The picture (height x width, ``Format_RGB32``) of ``mean``, whose sample ``before``
    is the trigger's, and the value its top row stands for (the bottom row: minus it).

    The scale fits the largest excursion from zero; a gray line marks zero and another
    the trigger. Each column spans the samples that fall in it and reaches back to the
    one before, so a steep step stays one connected line at any width."""
    length = len(mean)
    edges = np.arange(width + 1) * length // width
    first = np.maximum(edges[:-1] - 1, 0)
    stop = np.maximum(edges[1:], edges[:-1] + 1)
    low = np.array([mean[a:b].min() for a, b in zip(first.tolist(), stop.tolist(), strict=True)])
    high = np.array([mean[a:b].max() for a, b in zip(first.tolist(), stop.tolist(), strict=True)])
    peak = float(np.abs(mean).max()) or 1.0
    middle = height // 2
    scale = (middle - 1) / peak
    top = np.clip(np.rint(middle - high * scale), 0, height - 1).astype(np.int64)[:, None]
    bottom = np.clip(np.rint(middle - low * scale), 0, height - 1).astype(np.int64)[:, None]
    drawn = column_runs(top, bottom, np.ones_like(top, bool), height)
    image = np.full((height, width), BACKGROUND, np.uint32)
    image[middle] = CURSOR
    image[:, min(width - 1, before * width // length)] = CURSOR
    image[drawn] = AVERAGE
    return image, peak * middle / (middle - 1)
