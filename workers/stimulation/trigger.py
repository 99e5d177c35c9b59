"""Closed-loop trigger rules: a threshold crossing on one channel of a stream fires a pulse train.

The stimulation worker reads the stream's ring itself (no socket in between):
:class:`Triggers` keeps one reader per rule's stream, follows the stream when
its source stops and comes back, and runs each rule's :class:`Detector` over
every chunk; the worker decides what a crossing does (fire, or log why not).

A crossing is the first sample at or beyond ``threshold`` after one that was
not (``rising``: from below, ``falling``: from above). After a crossing the
rule is deaf for ``refractory_ms``, counted in frames of the stream, so it
behaves the same whatever the chunk size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec
import numpy as np

from pipeline import clock
from pipeline.control.messages import Phase, PulseTrain
from pipeline.errors import EndOfStream, StreamNotFound
from pipeline.ring import RingReader
from workers.stimulation.safety import Rendered, StimulatorError

RETRY_S = 0.5  # how often to look again for a rule's stream that is gone
VIEW_BYTES = 256 << 10  # a backlog at least this large is read through a view


class TriggerRule(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """One ``[[workers.parameters.triggers]]`` table."""

    name: str
    stream: str  # session-relative, "acq/continuous"
    channel: Annotated[int, msgspec.Meta(ge=0)]  # index into the stream's frame
    threshold: float  # in the stream's own units (raw counts for int16 streams)
    direction: Literal["rising", "falling"] = "rising"
    refractory_ms: Annotated[float, msgspec.Meta(ge=0)] = 100.0
    stim_channel: Annotated[int, msgspec.Meta(ge=0)]
    phases: list[Phase]
    frequency_hz: float = 1.0
    count: int = 1
    interphase_us: float = 0.0

    def command(self, worker: str) -> PulseTrain:
        """The pulse train this rule fires."""
        return PulseTrain(
            worker=worker,
            channel=self.stim_channel,
            phases=self.phases,
            frequency_hz=self.frequency_hz,
            count=self.count,
            interphase_us=self.interphase_us,
        )


class Detector:
    """Threshold crossings with a refractory period over consecutive chunks of one stream."""

    def __init__(self, rule: TriggerRule, sample_rate: float) -> None:
        self.rule = rule
        self.refractory_frames = math.ceil(rule.refractory_ms * sample_rate / 1000.0)
        self._previous_beyond: bool | None = None  # was the last sample seen beyond threshold
        self._deaf_until = -1  # sequence before which crossings are ignored

    def reset(self) -> None:
        """Forget the last sample (after a gap or a format change)."""
        self._previous_beyond = None

    def crossings(self, values: np.ndarray, start_sequence: int) -> list[int]:
        """Sequences of the frames in ``values`` (one channel, starting at ``start_sequence``)
        where the rule fires."""
        if not len(values):
            return []
        if self.rule.direction == "rising":
            beyond = values >= self.rule.threshold
        else:
            beyond = values <= self.rule.threshold
        before = np.empty_like(beyond)
        before[1:] = beyond[:-1]
        before[0] = True if self._previous_beyond is None else self._previous_beyond
        self._previous_beyond = bool(beyond[-1])
        fired = []
        for index in np.flatnonzero(beyond & ~before):
            sequence = start_sequence + int(index)
            if sequence >= self._deaf_until:
                fired.append(sequence)
                self._deaf_until = sequence + self.refractory_frames
        return fired


@dataclass
class Watch:
    """A trigger rule, its pulse rendered once, and, while its stream exists, its reader."""

    rule: TriggerRule
    rendered: Rendered
    reader: RingReader | None = None
    detector: Detector | None = None
    retry_at: float = 0.0
    row_bytes: int = 0  # bytes of one frame of the stream, to choose between copy and view


#: What a crossing is handed to: (watch, sequence, value, frame timestamp ns).
OnCrossing = Callable[[Watch, int, float, int], None]


class Triggers:
    """Watches every rule's stream; the stimulation worker calls :meth:`poll` in its loop.

    ``attach(stream)`` returns a reader (or raises StreamNotFound), ``detach``
    closes it, ``report`` says what happened; commands keep working while a
    rule's stream is gone.
    """

    def __init__(
        self,
        watches: list[Watch],
        attach: Callable[[str], RingReader],
        detach: Callable[[str], None],
        report: Callable[[str], None],
    ) -> None:
        self.watches = watches
        self._attach_reader = attach
        self._detach = detach
        self._report = report
        for watch in watches:
            self._attach(watch)

    def _attach(self, watch: Watch) -> None:
        """Attach to the rule's stream; if it is not there, try again in RETRY_S."""
        rule = watch.rule
        try:
            reader = self._attach_reader(rule.stream)
        except StreamNotFound:
            watch.retry_at = clock.now_s() + RETRY_S
            return
        if rule.channel >= reader.frame_shape[-1]:
            raise StimulatorError(
                f"trigger {rule.name!r}: channel {rule.channel} is not in {rule.stream} "
                f"({reader.frame_shape[-1]} channels)"
            )
        watch.reader = reader
        watch.detector = Detector(rule, reader.sample_rate)
        watch.row_bytes = _row_bytes(reader)

    def poll(self, on_crossing: OnCrossing) -> None:
        """Read what each rule's stream published (without waiting) and hand every
        crossing on; attach again to streams that came back."""
        for watch in self.watches:
            if watch.reader is None:
                if clock.now_s() >= watch.retry_at:
                    self._attach(watch)
                continue
            try:
                while self._detect(watch, watch.reader, on_crossing):
                    continue
            except EndOfStream:
                self._report(
                    f"trigger {watch.rule.name!r}: {watch.rule.stream} ended; waiting "
                    "for it to come back"
                )
                self._detach(watch.rule.stream)
                watch.reader, watch.retry_at = None, clock.now_s() + RETRY_S

    def readers(self) -> list[RingReader]:
        """The readers of the rules' streams that exist now (what to wait on)."""
        return [watch.reader for watch in self.watches if watch.reader is not None]

    def next_retry(self) -> float:
        """When to look again for a rule's stream that is gone (monotonic s; inf: none is)."""
        return min((w.retry_at for w in self.watches if w.reader is None), default=math.inf)

    @staticmethod
    def _detect(watch: Watch, reader: RingReader, on_crossing: OnCrossing) -> bool:
        """Run the rule over what ``reader`` has; True if there may be more to read.

        A chunk or two (armed: one per wake) is read as a copy, the quickest way for
        so little. A large backlog (disarmed: 50 ms at a time) is read through a view
        of the ring, copying only the rule's channel: at 1024 channels 1/1024 of the
        bytes. Frames the writer overwrote while they were copied count as dropped.
        """
        detector = watch.detector
        assert detector is not None
        if reader.lag * watch.row_bytes < VIEW_BYTES:
            chunk = reader.read(timeout_s=0.0)
            if chunk.format_changed:
                watch.row_bytes = _row_bytes(reader)
            if chunk.dropped or chunk.format_changed:
                detector.reset()
            if not chunk.frames:
                return False
            values = chunk.data.reshape(chunk.frames, -1)[:, watch.rule.channel]
            stamps, start, more = chunk.timestamps_ns, chunk.start_sequence, False
        else:
            with reader.read_view(timeout_s=0.0) as view:
                if view.format_changed:
                    watch.row_bytes = _row_bytes(reader)
                if view.dropped or view.format_changed:
                    detector.reset()
                if not view.frames:
                    return False
                values = view.data.reshape(view.frames, -1)[:, watch.rule.channel].copy()
                stamps, start = view.timestamps_ns.copy(), view.start_sequence
            if not view.intact:
                detector.reset()  # overwritten under us: those frames are lost, like a drop
                return True
            more = reader.lag > 0  # a view stops at the ring's end
        for sequence in detector.crossings(values, start):
            index = sequence - start
            on_crossing(watch, sequence, float(values[index]), int(stamps[index]))
        return more


def _row_bytes(reader: RingReader) -> int:
    return reader.dtype.itemsize * math.prod(reader.frame_shape)
