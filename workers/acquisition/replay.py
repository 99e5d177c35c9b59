"""The ``replay`` source: a rigpipe recording played back into rings, in real time or faster.

Every recorded stream (or those in ``streams``) becomes ``<worker>/<port>``
with the recording's dtype, frame shape, sample rate and descriptor (channel
labels, scales, positions), and the recorded timestamps, so a decoder developed
offline sees exactly the stream the rig produced. Frames are published when
the replay clock reaches their timestamp: ``first timestamp + elapsed x
speed``. Gaps in the recording are replayed as the pauses they were. At the
end the streams close (readers get EndOfStream) and the worker exits 0, or,
with ``loop``, it starts over with timestamps shifted past the end.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import msgspec
import numpy as np

from pipeline.recording.format import group_name, open_segment, segment_files
from workers.acquisition.source import Source, SourceError

_BLOCK_S = 0.25  # read this much of a continuous stream at a time
_BLOCK_EVENTS = 4096


class ReplaySettings(
    msgspec.Struct,
    forbid_unknown_fields=True,
    frozen=True,
    kw_only=True,
    tag_field="source",
    tag="replay",
):
    """``[workers.parameters]`` of an acquisition worker with ``source = "replay"``."""

    path: str
    speed: Annotated[float, msgspec.Meta(gt=0, le=1000)] = 1.0
    loop: bool = False
    streams: list[str] = []
    chunk_s: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.001
    buffer_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0


def recorded_streams(path: str) -> list[str]:
    """The streams of the recording at ``path`` (from its first segment)."""
    with open_segment(segment_files(Path(path))[0]) as file:
        return [str(g.attrs["stream"]) for g in file["streams"].values()]


def _chosen(settings: ReplaySettings) -> list[str]:
    return list(settings.streams) or recorded_streams(settings.path)


@dataclass
class _Track:
    """One stream being replayed: where it is in which segment, and its ring."""

    stream: str
    ring: Any
    files: list[Path]
    segment: int = 0
    row: int = 0
    data: np.ndarray | None = None
    stamps: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    pos: int = 0
    done: bool = False

    def load(self) -> bool:
        """Read the next block; False at the end of the recording."""
        while self.segment < len(self.files):
            with open_segment(self.files[self.segment]) as file:
                group = file.get(group_name(self.stream))
                rows = 0 if group is None else len(group["data"])
                if self.row < rows:
                    rate = float(group.attrs["sample_rate"])
                    block = round(_BLOCK_S * rate) if rate > 0 else _BLOCK_EVENTS
                    end = min(rows, self.row + max(1, block))
                    self.data = group["data"][self.row : end]
                    self.stamps = group["timestamps_ns"][self.row : end].astype(np.int64)
                    self.row, self.pos = end, 0
                    return True
            self.segment, self.row = self.segment + 1, 0
        self.done = True
        return False


class ReplaySource(Source):
    @classmethod
    def outputs(cls, settings: Any) -> list[str]:
        return [stream.split("/")[-1] for stream in _chosen(settings)]

    @classmethod
    def check(cls, settings: Any) -> None:
        try:
            available = recorded_streams(settings.path)
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(
                f"path {settings.path!r} is not a readable rigpipe recording: {exc}"
            ) from None
        missing = [s for s in settings.streams if s not in available]
        if missing:
            raise ValueError(f"streams {missing} are not in the recording; it has {available}")
        ports = cls.outputs(settings)
        if len(set(ports)) != len(ports):
            raise ValueError(f"streams {_chosen(settings)} share port names; choose with streams")

    def open(self) -> None:
        s = self.settings
        files = segment_files(Path(s.path))
        self.tracks: list[_Track] = []
        first_stamps = []
        with open_segment(files[0]) as file:
            for stream in _chosen(s):
                group = file[group_name(stream)]
                data = group["data"]
                rate = float(group.attrs["sample_rate"])
                descriptor = json.loads(group.attrs["descriptor_json"])
                descriptor["replayed_from"] = str(Path(s.path).resolve())
                capacity = max(1024, round(s.buffer_s * rate)) if rate > 0 else 1 << 16
                ring = self.worker.writer(
                    stream.split("/")[-1], data.dtype, data.shape[1:], capacity, rate, descriptor
                )
                self.tracks.append(_Track(stream, ring, files))
                if len(group["timestamps_ns"]):
                    first_stamps.append(int(group["timestamps_ns"][0]))
        if not first_stamps:
            raise SourceError(f"the recording {s.path} holds no frames")
        self.first_ns = min(first_stamps)
        self.loop_offset_ns = 0
        self.last_ns = self.first_ns
        self.start = time.monotonic()
        self.counters = self.worker.counters
        self.counters.update(frames=0, loops=0, replay_s=0.0)
        for track in self.tracks:
            track.load()

    def step(self) -> None:
        now = time.monotonic()
        replay_ns = self.first_ns + round((now - self.start) * self.settings.speed * 1e9)
        for track in self.tracks:
            self._publish(track, replay_ns)
        self.counters["replay_s"] = round((replay_ns - self.first_ns) / 1e9, 3)
        if all(t.done for t in self.tracks):
            self._end()
            return
        self.worker.wait_until(now + self.settings.chunk_s / min(self.settings.speed, 1.0))

    def _publish(self, track: _Track, until_ns: int) -> None:
        while not track.done:
            end = int(np.searchsorted(track.stamps, until_ns, side="right"))
            if end > track.pos:
                assert track.data is not None
                stamps = track.stamps[track.pos : end] + self.loop_offset_ns
                track.ring.write(track.data[track.pos : end], stamps)
                self.counters["frames"] += end - track.pos
                self.last_ns = max(self.last_ns, int(track.stamps[end - 1]))
                track.pos = end
            if track.pos < len(track.stamps):
                return  # the rest of this block is still in the future
            track.load()

    def _end(self) -> None:
        if not self.settings.loop:
            self.worker.log.info(
                "replay finished after %.1f s of recording", self.counters["replay_s"]
            )
            self.worker.stop()
            return
        # Start over, timestamps shifted past the end so they keep increasing.
        span = self.last_ns - self.first_ns
        self.loop_offset_ns += span + 1_000_000
        self.start = time.monotonic()
        self.counters["loops"] += 1
        for track in self.tracks:
            track.segment = track.row = 0
            track.done = False
            track.load()

    def close(self) -> None:
        for track in getattr(self, "tracks", []):
            track.ring.close()
