"""Test worker kind: a stream whose picture is known, that changes its channel count once.

Writes ``channels`` flat traces at 1 kHz: +100 on even channels, -100 on odd
ones (a quarter of a band above or below its centre at the scope's default
span of 400), and after ``switch_after_s`` reformats the stream to
``then_channels`` channels (``rigpipe set pat switch_after_s 0`` switches at once).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import numpy as np

from pipeline.worker import Worker


class PatternSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    channels: int = 4
    then_channels: int = 8
    switch_after_s: float = 2.0


class Pattern(Worker):
    Settings = PatternSettings
    settable = frozenset({"switch_after_s"})

    @classmethod
    def outputs(cls, settings: Any) -> list[str]:
        return ["out"]

    def setup(self) -> None:
        s = self.settings
        self.ring = self.writer("out", np.int16, (s.channels,), 10_000, 1000.0, {"scale": 1.0})
        self.started = time.monotonic()
        self.switched = False

    def step(self) -> None:
        s = self.settings
        if not self.switched and time.monotonic() - self.started > s.switch_after_s:
            self.ring.reformat(frame_shape=(s.then_channels,))
            self.switched = True
        channels = self.ring.frame_shape[0]
        values = np.where(np.arange(channels) % 2 == 0, 100, -100).astype(np.int16)
        self.ring.write(np.tile(values, (10, 1)))
        self.wait_until(time.monotonic() + 0.01)

    def teardown(self) -> None:
        if hasattr(self, "ring"):
            self.ring.close()


WORKER = Pattern
