"""Test worker kind: a stream whose threshold crossings are known, for closed-loop tests.

Writes ``channels`` float32 channels at ``sample_rate_hz`` in chunks of
``chunk_frames``: zeros, except that every ``period_ms`` the first frame of a
chunk on ``channel`` is -100 (a "spike"), and, with ``second_channel``, half a
period later the first frame of a chunk on that channel (two consumers, each
watching its own channel, never handle a spike at the same moment). Each
frame's timestamp is the host monotonic time at which its chunk was published,
so a reader can measure its latency from ``timestamps_ns``.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import numpy as np

from pipeline.worker import Worker


class SpikesSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    channels: int = 2
    channel: int = 1
    sample_rate_hz: float = 10_000.0
    chunk_frames: int = 10
    period_ms: float = 50.0
    second_channel: int = -1  # none


class Spikes(Worker):
    Settings = SpikesSettings

    @classmethod
    def outputs(cls, settings: Any) -> list[str]:
        return ["out"]

    def setup(self) -> None:
        s = self.settings
        self.ring = self.writer("out", np.float32, (s.channels,), 100_000, s.sample_rate_hz)
        self.chunk_s = s.chunk_frames / s.sample_rate_hz
        self.every = max(1, round(s.period_ms / 1000 / self.chunk_s))
        self.started = time.monotonic()
        self.chunks = 0
        self.counters["spikes"] = 0

    def step(self) -> None:
        s = self.settings
        frames = np.zeros((s.chunk_frames, s.channels), np.float32)
        phase = self.chunks % self.every
        if phase == self.every - 1:
            frames[0, s.channel] = -100.0
            self.counters["spikes"] += 1
        if s.second_channel >= 0 and phase == self.every // 2 - 1:
            frames[0, s.second_channel] = -100.0
        now = time.monotonic_ns()
        self.ring.write(frames, np.full(s.chunk_frames, now, np.int64))
        self.chunks += 1
        self.wait_until(self.started + self.chunks * self.chunk_s)

    def teardown(self) -> None:
        if hasattr(self, "ring"):
            self.ring.close()


WORKER = Spikes
