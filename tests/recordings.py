"""Recordings written by the recorder's own segment writer, for tests that need exact contents.

The rows are cut into segments as given (empty segments included), with the
manifest, attributes and provenance the recorder writes; gap rows go into the
segment that holds their frame.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.recording.format import EVENT_DTYPE, GAP_DTYPE, Manifest, SegmentEntry, write_manifest
from workers.recording.segment_file import SegmentFile, StreamFormat

STARTED = "2026-01-01T00:00:00+00:00"


@dataclass
class Stream:
    format: StreamFormat
    data: np.ndarray  # (frames, channels) or (records,)
    timestamps_ns: np.ndarray
    gaps: list[tuple[int, int, str]] = field(default_factory=list)  # (at_frame, lost, cause)


def write(
    directory: Path,
    streams: list[Stream],
    segment_rows: list[list[int]],
    events: Sequence[tuple[int, str, dict]] = (),
) -> None:
    """``segment_rows[k][i]``: rows of stream ``i`` in segment ``k``; ``events`` (host
    monotonic ns, topic, payload) go into the first segment's events table."""
    manifest = Manifest(
        recording_id="test-recording",
        session="test",
        session_id="test-session",
        started_at=STARTED,
        streams=[s.format.stream for s in streams],
    )
    firsts = [0] * len(streams)
    for index, rows in enumerate(segment_rows):
        name = f"segment-{index:04d}.h5"
        names = [s.format.stream for s in streams]
        first_frames = dict(zip(names, firsts, strict=True))
        provenance = {"session": "test", "recording_id": "test-recording", "started_at": STARTED}
        segment = SegmentFile.create(
            directory / name, {}, provenance, [s.format for s in streams], first_frames,
            dict(first_frames),
        )  # fmt: skip
        for i, (stream, count) in enumerate(zip(streams, rows, strict=True)):
            part = slice(firsts[i], firsts[i] + count)
            segment.append(stream.format.stream, stream.data[part], stream.timestamps_ns[part])
            for at, lost, cause in stream.gaps:
                if firsts[i] <= at < firsts[i] + count:
                    row = np.zeros((), GAP_DTYPE)
                    row["stream"], row["at_frame"], row["lost_frames"] = (
                        stream.format.stream.encode(), at, lost,
                    )  # fmt: skip
                    row["start_ns"] = stream.timestamps_ns[at - 1]
                    row["end_ns"] = stream.timestamps_ns[at]
                    row["cause"] = cause.encode()
                    segment.add_row("gaps", row)
        for monotonic_ns, topic, payload in events if index == 0 else ():
            row = np.zeros((), EVENT_DTYPE)
            row["time_ns"], row["monotonic_ns"] = 1_767_225_600 * 10**9, monotonic_ns
            row["topic"], row["payload"] = topic.encode(), json.dumps(payload).encode()
            segment.add_row("events", row)
        segment.close({"finished_at": STARTED})
        manifest.segments.append(
            SegmentEntry(
                file=name, index=index, started_at=STARTED, state="closed",
                first_frames=first_frames, frames=dict(zip(names, rows, strict=True)),
            )
        )  # fmt: skip
        firsts = [f + r for f, r in zip(firsts, rows, strict=True)]
    write_manifest(directory, manifest)
