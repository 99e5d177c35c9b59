"""Closed-loop trigger rules: a threshold crossing on one channel of a stream fires a pulse train.

The stimulation worker reads the stream's ring itself (no socket in between)
and runs :class:`Detector` over every chunk. A crossing is the first sample
at or beyond ``threshold`` after one that was not (``rising``: from below,
``falling``: from above). After a crossing the rule is deaf for
``refractory_ms``, counted in frames of the stream, so it behaves the same
whatever the chunk size.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import msgspec
import numpy as np

from pipeline.control.messages import Phase, PulseTrain


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
