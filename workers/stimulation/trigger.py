"""Closed-loop trigger rules: a threshold crossing on one channel of a stream fires a pulse train.

The stimulation worker reads the stream's ring itself (no socket in between):
:class:`Triggers` keeps one reader per rule's stream, follows the stream when
its source stops and comes back, and runs each rule's :class:`Detector` over
every chunk; the worker decides what a crossing does (fire, or log why not).

While the worker is armed, each rule also holds a threshold watch on its
channel (:meth:`pipeline.ring.RingReader.watch`): the stream's writer wakes
the worker only for chunks that may cross, so a rule on a quiet stream costs
a wake every ``CATCH_UP_S`` (to read the backlog), not one per chunk. The
detector still sees every frame; the watch only decides when to look.

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

from pipeline.control.messages import Phase, PulseTrain
from pipeline.errors import EndOfStream, StreamNotFound, WatchesFull
from pipeline.host import clock
from pipeline.ring import RingReader, ThresholdWatch
from pipeline.settings import Settings
from workers.stimulation.safety import Rendered, StimulatorError

RETRY_S = 0.5  # how often to look again for a rule's stream that is gone
#: How often the streams are read when no watch woke the worker: the backlog of a quiet
#: stream, read through a view of the rule's channel (at 1024 channels 1/1024 of it).
#: Each such read costs the worker about as much as a wake for one chunk: at 0.1 s an
#: armed rule on a quiet stream costs no more than no rule (bench/rig.py idle table).
CATCH_UP_S = 0.1
VIEW_BYTES = 256 << 10  # a backlog at least this large is read through a view
_FEW_BEYOND = 64  # up to this many samples beyond the threshold in a chunk: runs in Python


class TriggerRule(Settings, frozen=True, kw_only=True):
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
        where the rule fires.

        A crossing is a sample beyond the threshold after one that was not: the start of
        a run of the indices beyond it. Few numpy calls, since each costs several µs in a
        worker that has just woken: the runs come from the indices themselves, in Python
        for the few of a chunk with a spike, in numpy for a long stretch beyond.
        """
        n = len(values)
        if not n:
            return []
        rule = self.rule
        if rule.direction == "rising":
            at = np.flatnonzero(values >= rule.threshold)
        else:
            at = np.flatnonzero(values <= rule.threshold)
        # the index before a run's first: -1 (index 0 continues a run: the last sample
        # seen was beyond, or none was seen) or -2 (it was not: index 0 can start one)
        last = -2 if self._previous_beyond is False else -1
        if not len(at):
            self._previous_beyond = False
            return []
        if len(at) <= _FEW_BEYOND:
            indices = at.tolist()
            self._previous_beyond = indices[-1] == n - 1
            starts = []
            for index in indices:
                if index != last + 1:
                    starts.append(index)
                last = index
        else:
            self._previous_beyond = bool(at[-1] == n - 1)
            starts = at[np.diff(at, prepend=last) != 1].tolist()
        fired = []
        for index in starts:
            sequence = start_sequence + index
            if sequence >= self._deaf_until:
                fired.append(sequence)
                self._deaf_until = sequence + self.refractory_frames
        return fired


@dataclass
class LiveRule:
    """A trigger rule, its pulse rendered once, and, while its stream exists, its detector
    and threshold watch."""

    rule: TriggerRule
    rendered: Rendered
    threshold: ThresholdWatch | None = None  # None: disarmed, or every slot of the stream taken
    detector: Detector | None = None


@dataclass
class _Stream:
    """One stream that rules watch: one reader for all of them (a worker holds one reader
    per stream), and when to look again for it while it is gone."""

    name: str
    rules: list[LiveRule]
    reader: RingReader | None = None
    retry_at: float = 0.0
    row_bytes: int = 0  # bytes of one frame of the stream, to choose between copy and view


#: What a crossing is handed to: (watch, sequence, value, frame timestamp ns).
OnCrossing = Callable[[LiveRule, int, float, int], None]


class Triggers:
    """Watches every rule's stream; the stimulation worker calls :meth:`poll` in its loop.

    ``attach(stream)`` returns a reader (or raises StreamNotFound), ``detach``
    closes it, ``report`` says what happened; commands keep working while a
    rule's stream is gone. Rules on the same stream share its reader: each
    chunk is read once and every rule's detector runs over its own channel.
    """

    def __init__(
        self,
        watches: list[LiveRule],
        attach: Callable[[str], RingReader],
        detach: Callable[[str], None],
        report: Callable[[str], None],
    ) -> None:
        self.watches = watches
        self._attach_reader = attach
        self._detach_reader = detach
        self._report = report
        self._streams: list[_Stream] = []
        self._watching = False  # rules hold threshold watches (armed); see watching()
        for watch in watches:
            stream = next((s for s in self._streams if s.name == watch.rule.stream), None)
            if stream is None:
                self._streams.append(_Stream(watch.rule.stream, [watch]))
            else:
                stream.rules.append(watch)
        for stream in self._streams:
            self._attach(stream)

    def _attach(self, stream: _Stream) -> None:
        """Attach to the stream; if it is not there, try again in RETRY_S."""
        try:
            reader = self._attach_reader(stream.name)
        except StreamNotFound:
            stream.retry_at = clock.now_s() + RETRY_S
            return
        for watch in stream.rules:
            rule = watch.rule
            if rule.channel >= reader.frame_shape[-1]:
                raise StimulatorError(
                    f"trigger {rule.name!r}: channel {rule.channel} is not in {rule.stream} "
                    f"({reader.frame_shape[-1]} channels)"
                )
        stream.reader = reader
        stream.row_bytes = _row_bytes(reader)
        for watch in stream.rules:
            watch.detector = Detector(watch.rule, reader.sample_rate)
        if self._watching:
            self._watch(stream)

    def _watch(self, stream: _Stream) -> None:
        """Give each rule of ``stream`` a threshold watch (one it lacks)."""
        assert stream.reader is not None
        for watch in stream.rules:
            rule = watch.rule
            if watch.threshold is not None:
                continue
            try:
                watch.threshold = stream.reader.watch(rule.channel, rule.threshold, rule.direction)
            except WatchesFull as exc:
                self._report(f"trigger {rule.name!r}: {exc}; looking at every chunk instead")

    @staticmethod
    def _unwatch(stream: _Stream) -> None:
        for watch in stream.rules:
            if watch.threshold is not None:
                watch.threshold.close()
                watch.threshold = None

    def watching(self, on: bool) -> None:
        """Hold threshold watches (armed: a crossing is seen at once) or give them back
        (disarmed: its crossings only say they would have fired, so the streams are read
        every CATCH_UP_S, and the writer need not look for us)."""
        self._watching = on
        for stream in self._streams:
            if stream.reader is None:
                continue
            if on:
                self._watch(stream)
            else:
                self._unwatch(stream)

    def _detach(self, stream: _Stream) -> None:
        self._unwatch(stream)
        self._detach_reader(stream.name)
        stream.reader = None

    def poll(self, on_crossing: OnCrossing) -> None:
        """Read what each rule's stream published (without waiting) and hand every
        crossing on; attach again to streams that came back."""
        for stream in self._streams:
            if stream.reader is None:
                if clock.now_s() >= stream.retry_at:
                    self._attach(stream)
                continue
            for watch in stream.rules:
                if watch.threshold is not None:
                    watch.threshold.keep()
                    watch.threshold.clear()  # before reading: a chunk flagged now wakes again
            try:
                while self._detect(stream, stream.reader, on_crossing):
                    continue
            except EndOfStream:
                self._report(f"triggers on {stream.name}: it ended; waiting for it to come back")
                self._detach(stream)
                stream.retry_at = clock.now_s() + RETRY_S

    def waitables(self, each_chunk: bool) -> list[RingReader | ThresholdWatch]:
        """What to wait on for the rules' streams that exist now: with ``each_chunk``
        their rings, which wake for every chunk; otherwise each rule's threshold watch
        while :meth:`watching`, and then the ring of a stream with a rule that could not
        get one (every slot taken). What is not waited on is read every ``CATCH_UP_S``."""
        waitables: list[RingReader | ThresholdWatch] = []
        for stream in self._streams:
            if stream.reader is None:
                continue
            watchless = self._watching and any(w.threshold is None for w in stream.rules)
            if each_chunk or watchless:
                waitables.append(stream.reader)
            else:
                waitables.extend(w.threshold for w in stream.rules if w.threshold is not None)
        return waitables

    def catch_up_s(self) -> float:
        """How long the worker may sleep without a watch waking it: ``CATCH_UP_S``, or a
        quarter of the shortest watched ring, so a quiet stream is read before it laps."""
        spans = [
            0.25 * s.reader.capacity / s.reader.sample_rate
            for s in self._streams
            if s.reader is not None and s.reader.sample_rate > 0
        ]
        return min([CATCH_UP_S, *spans])

    def next_retry(self) -> float:
        """When to look again for a rule's stream that is gone (monotonic s; inf: none is)."""
        return min((s.retry_at for s in self._streams if s.reader is None), default=math.inf)

    def close(self) -> None:
        """Give back every watch slot and reader."""
        for stream in self._streams:
            if stream.reader is not None:
                self._detach(stream)

    @staticmethod
    def _detect(stream: _Stream, reader: RingReader, on_crossing: OnCrossing) -> bool:
        """Run the stream's rules over what ``reader`` has; True if there may be more.

        A chunk or two (woken for a crossing) is read as a copy, the quickest way
        for so little. A larger backlog (a quiet stream, read every CATCH_UP_S) is
        read through a view of the ring, copying only the rules' channels: at 1024
        channels 1/1024 of the bytes per rule. Frames the writer overwrote while
        they were copied count as dropped.
        """
        rules = stream.rules
        if reader.lag * stream.row_bytes < VIEW_BYTES:
            chunk = reader.read(timeout_s=0.0)
            if chunk.format_changed:
                stream.row_bytes = _row_bytes(reader)
            if chunk.dropped or chunk.format_changed:
                _forget(rules)
            if not chunk.frames:
                return False
            rows = chunk.data.reshape(chunk.frames, -1)
            columns = [rows[:, watch.rule.channel] for watch in rules]
            stamps, start, more = chunk.timestamps_ns, chunk.start_sequence, False
        else:
            with reader.read_view(timeout_s=0.0) as view:
                if view.format_changed:
                    stream.row_bytes = _row_bytes(reader)
                if view.dropped or view.format_changed:
                    _forget(rules)
                if not view.frames:
                    return False
                rows = view.data.reshape(view.frames, -1)
                columns = [rows[:, watch.rule.channel].copy() for watch in rules]
                stamps, start = view.timestamps_ns.copy(), view.start_sequence
            if not view.intact:
                _forget(rules)  # overwritten under us: those frames are lost, like a drop
                return True
            more = reader.lag > 0  # a view stops at the ring's end
        for watch, values in zip(rules, columns, strict=True):
            assert watch.detector is not None
            for sequence in watch.detector.crossings(values, start):
                index = sequence - start
                on_crossing(watch, sequence, float(values[index]), int(stamps[index]))
        return more


def _forget(rules: list[LiveRule]) -> None:
    """Reset every rule's detector (after a gap or a format change)."""
    for watch in rules:
        if watch.detector is not None:
            watch.detector.reset()


def _row_bytes(reader: RingReader) -> int:
    return reader.dtype.itemsize * math.prod(reader.frame_shape)
