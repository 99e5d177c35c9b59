"""The ``replay`` source: a rigpipe recording played back into rings, in real time or faster.

Every recorded stream (or those in ``streams``) becomes ``<worker>/<port>``
with the recording's dtype, frame shape, sample rate and descriptor (channel
labels, scales, positions), and the recorded timestamps, so a decoder developed
offline sees exactly the stream the rig produced. Frames are published when
the replay clock reaches their timestamp: ``first timestamp + elapsed x
speed``. Gaps in the recording are replayed as the pauses they were. At the
end the streams close (readers get EndOfStream) and the worker exits 0, or,
with ``loop``, it starts over with timestamps shifted past the end. It reads
through ``pipeline.open_recording``, like any other reader of a recording.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import msgspec
import numpy as np

from pipeline.errors import RecordingError
from pipeline.host import clock
from pipeline.recording.format import locate
from pipeline.recording.readback import Recording, open_recording
from pipeline.recording.views import EventView, StreamView
from pipeline.settings import Settings
from workers.acquisition.source import Source, SourceError

_BLOCK_S = 0.25  # read this much of a continuous stream at a time
_BLOCK_EVENTS = 4096


class ReplaySettings(
    Settings,
    frozen=True,
    kw_only=True,
    tag_field="source",
    tag="replay",
):
    """``[workers.parameters]`` of an acquisition worker with ``source = "replay"``."""

    path: str
    speed: Annotated[float, msgspec.Meta(gt=0, le=1000)] = 1.0
    loop: bool = False
    streams: list[str] = msgspec.field(default_factory=list)
    chunk_s: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.001
    buffer_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0


def recorded_streams(path: str) -> list[str]:
    """The streams of the recording at ``path`` (FileNotFoundError if there is none)."""
    locate(Path(path))
    with open_recording(path) as rec:
        return list(rec.streams)


def _chosen(settings: ReplaySettings) -> list[str]:
    return list(settings.streams) or recorded_streams(settings.path)


@dataclass
class _Track:
    """One stream being replayed: its view of the recording, its ring, and a block in hand."""

    view: StreamView | EventView
    ring: Any
    frame: int = 0  # the next frame of the recording to load
    data: np.ndarray | None = None  # (frames, *frame_shape), as the ring takes them
    stamps: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    pos: int = 0
    done: bool = False

    def load(self) -> bool:
        """Read the next block; False at the end of the recording."""
        view = self.view
        if self.frame >= view.frames:
            self.done = True
            return False
        rate = view.sample_rate
        block = round(_BLOCK_S * rate) if rate > 0 else _BLOCK_EVENTS
        end = min(view.frames, self.frame + max(1, block))
        if isinstance(view, EventView):
            self.data = view[self.frame : end]
        else:  # (channels, frames) -> the ring's (frames, channels)
            self.data = np.ascontiguousarray(view[:, self.frame : end].T)
        self.stamps = view.timestamps_ns[self.frame : end]
        self.frame, self.pos = end, 0
        return True


class ReplaySource(Source):
    @classmethod
    def outputs(cls, settings: Any) -> list[str]:
        return [stream.split("/")[-1] for stream in _chosen(settings)]

    @classmethod
    def check(cls, settings: Any) -> None:
        try:
            available = recorded_streams(settings.path)
        except (OSError, KeyError, ValueError, RecordingError) as exc:
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
        try:
            self.recording: Recording = open_recording(s.path, memory_limit_bytes=None)
        except RecordingError as exc:
            raise SourceError(str(exc)) from None
        self.tracks: list[_Track] = []
        first_stamps = []
        for stream in _chosen(s):
            view = self.recording[stream]
            descriptor = dict(view.descriptor)
            descriptor["replayed_from"] = str(Path(s.path).resolve())
            rate = view.sample_rate
            frame_shape = view.attrs["frame shape"]
            capacity = max(1024, round(s.buffer_s * rate)) if rate > 0 else 1 << 16
            ring = self.worker.writer(
                stream.split("/")[-1], view.dtype, frame_shape, capacity, rate, descriptor
            )
            self.tracks.append(_Track(view, ring))
            if view.frames:
                first_stamps.append(int(view.timestamps_ns[0]))
        if not first_stamps:
            raise SourceError(f"the recording {s.path} holds no frames")
        self.first_ns = min(first_stamps)
        self.loop_offset_ns = 0
        self.last_ns = self.first_ns
        self.start = clock.now_s()
        self.counters = self.worker.counters
        self.counters.update(frames=0, loops=0, replay_s=0.0)
        for track in self.tracks:
            track.load()

    def step(self) -> None:
        now = clock.now_s()
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
        self.start = clock.now_s()
        self.counters["loops"] += 1
        for track in self.tracks:
            track.frame = 0
            track.done = False
            track.load()

    def close(self) -> None:
        for track in getattr(self, "tracks", []):
            track.ring.close()
        if hasattr(self, "recording"):
            self.recording.close()
