"""Test worker kind: a lossless reader that reads ``frames_per_s`` frames a second.

Set below the stream's rate it falls behind, so ``rigpipe status`` must show
its lag growing. It is a real worker on the real framework, used by the
integration tests as the smallest reader a config can name.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from pipeline.worker import Worker


class LagReaderSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    stream: str = "acq/continuous"
    frames_per_s: float = 1000.0


class LagReader(Worker):
    Settings = LagReaderSettings

    @classmethod
    def inputs(cls, settings: Any) -> list[str]:
        return [settings.stream]

    def setup(self) -> None:
        self.source = self.reader(self.settings.stream)
        self.counters["frames"] = 0

    def step(self) -> None:
        chunk = self.source.read(max_frames=max(1, round(self.settings.frames_per_s * 0.05)))
        self.counters["frames"] += chunk.frames
        self.wait_until(time.monotonic() + 0.05)


WORKER = LagReader
