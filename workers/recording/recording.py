"""One recording: a directory of segment files, its manifest, rotation and gap bookkeeping.

:class:`Recording` is given chunks per stream (from lossless ring readers) and
control-plane events; it appends them to the current segment, records a gap
wherever frames are missing (the ring overwrote them, or a source restarted
and its timestamps jump), starts a new segment on rotation or on a format
change, and keeps ``manifest.json`` up to date. It does not read rings or
sockets itself.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.recfile import (
    GAP_DTYPE,
    GAP_PERIODS,
    RESTART_DTYPE,
    Manifest,
    SegmentEntry,
    read_manifest,
    text,
    write_manifest,
)
from pipeline.ring import Chunk
from pipeline.session import now_iso
from workers.recording.segment import Segment, StreamFormat, event_row, finalize


@dataclass
class _StreamState:
    format: StreamFormat
    last_timestamp_ns: int | None = None
    generation: int | None = None

    @property
    def period_ns(self) -> float | None:
        rate = self.format.sample_rate
        return 1e9 / rate if rate > 0 else None


SKIPPED = "timestamps jump: the source skipped frames"


class Recording:
    """Writes one recording directory; create with :meth:`start` or :meth:`resume`."""

    def __init__(
        self,
        directory: Path,
        manifest: Manifest,
        provenance: dict[str, Any],
        rotate_s: float,
        rotate_bytes: float,
    ) -> None:
        self.directory = directory
        self.manifest = manifest
        self.provenance = {
            **provenance,
            "recording_id": manifest.recording_id,
            "started_at": manifest.started_at,
        }
        self.rotate_s = rotate_s
        self.rotate_bytes = rotate_bytes
        self.streams: dict[str, _StreamState] = {}
        self.segment: Segment | None = None
        self._segment_started = time.monotonic()
        self._wall_start = time.time()
        self.gaps = 0

    # -- lifecycle ------------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        root: Path,
        session: str,
        session_id: str,
        formats: list[StreamFormat],
        first_cursors: dict[str, int],
        provenance: dict[str, Any],
        rotate_s: float = 0.0,
        rotate_bytes: float = 0.0,
    ) -> Recording:
        """A new recording directory under ``root`` with its first segment."""
        started = now_iso()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        directory = root / f"{session}-{stamp}"
        suffix = 1
        while directory.exists():
            suffix += 1
            directory = root / f"{session}-{stamp}-{suffix}"
        directory.mkdir(parents=True)
        manifest = Manifest(
            recording_id=str(uuid.uuid4()),
            session=session,
            session_id=session_id,
            started_at=started,
            streams=[f.stream for f in formats],
        )
        recording = cls(directory, manifest, provenance, rotate_s, rotate_bytes)
        recording.streams = {f.stream: _StreamState(f) for f in formats}
        recording._open_segment({f.stream: 0 for f in formats}, first_cursors)
        return recording

    @classmethod
    def resume(
        cls, directory: Path, provenance: dict[str, Any], rotate_s: float, rotate_bytes: float
    ) -> Recording:
        """Continue a recording whose writer crashed, in the segment it was writing."""
        manifest = read_manifest(directory)
        recording = cls(directory, manifest, provenance, rotate_s, rotate_bytes)
        entry = manifest.segments[-1]
        recording.segment = Segment.reopen(directory / entry.file)
        for stream in manifest.streams:
            group = recording.segment.file[f"streams/{stream.replace('/', '.')}"]
            data = group["data"]
            descriptor = json.loads(group.attrs["descriptor_json"])
            rate = float(group.attrs["sample_rate"])
            fmt = StreamFormat(stream, data.dtype, data.shape[1:], rate, descriptor)
            recording.streams[stream] = _StreamState(
                fmt, last_timestamp_ns=recording.segment.last_timestamp(stream)
            )
        recording._segment_started = time.monotonic()
        return recording

    def next_cursors(self) -> dict[str, int]:
        """Per stream, the ring sequence number of the next frame to record."""
        assert self.segment is not None
        return {s: self.segment.next_cursor(s) for s in self.streams}

    def _open_segment(self, first_frames: dict[str, int], first_cursors: dict[str, int]) -> None:
        index = len(self.manifest.segments)
        name = f"segment-{index:04d}.h5"
        attrs = {
            "recording_id": self.manifest.recording_id,
            "session": self.manifest.session,
            "segment_index": index,
            "created_at": now_iso(),
        }
        self.segment = Segment.create(
            self.directory / name,
            attrs,
            self.provenance,
            [s.format for s in self.streams.values()],
            first_frames,
            first_cursors,
        )
        self.manifest.segments.append(
            SegmentEntry(
                file=name, index=index, started_at=attrs["created_at"], first_frames=first_frames
            )
        )
        write_manifest(self.directory, self.manifest)
        self._segment_started = time.monotonic()

    def _close_segment(self) -> None:
        segment, self.segment = self.segment, None
        if segment is None:
            return
        entry = self.manifest.segments[-1]
        entry.frames = dict(segment.rows)
        segment.close(self._finished_attrs())
        entry.finished_at = now_iso()
        entry.state = "closed"
        entry.bytes = (self.directory / entry.file).stat().st_size
        write_manifest(self.directory, self.manifest)

    def _finished_attrs(self) -> dict[str, Any]:
        return {"finished_at": now_iso(), "wall_seconds": round(time.time() - self._wall_start, 3)}

    def rotate(self, formats: list[StreamFormat] | None = None) -> None:
        """Close this segment and continue in the next one (optionally with new formats)."""
        assert self.segment is not None
        first_frames = {s: self.segment.first_frame(s) + self.segment.rows[s] for s in self.streams}
        cursors = self.next_cursors()
        self._close_segment()
        for fmt in formats or []:
            self.streams[fmt.stream] = _StreamState(fmt)
        self._open_segment(first_frames, cursors)

    def rotation_due(self) -> bool:
        if self.segment is None:
            return False
        if self.rotate_s and time.monotonic() - self._segment_started >= self.rotate_s:
            return True
        return bool(self.rotate_bytes) and self.segment.path.stat().st_size >= self.rotate_bytes

    def finish(self) -> None:
        """Close the last segment and the manifest; every file then opens with plain h5py."""
        self._close_segment()
        self.manifest.finished_at = now_iso()
        write_manifest(self.directory, self.manifest)

    # -- data -----------------------------------------------------------------------------------
    def write(self, stream: str, chunk: Chunk, cause_if_dropped: str, fmt: StreamFormat) -> None:
        """Append ``chunk`` of ``stream``, recording a gap wherever frames are missing."""
        state = self.streams[stream]
        if fmt.dtype != state.format.dtype or fmt.frame_shape != state.format.frame_shape:
            self.rotate([fmt])  # a new layout needs new datasets: a new segment
            state = self.streams[stream]
        assert self.segment is not None
        stamps = chunk.timestamps_ns
        base = self.segment.first_frame(stream) + self.segment.rows[stream]
        cursor = chunk.start_cursor
        previous = state.last_timestamp_ns
        first = int(stamps[0])
        period = state.period_ns
        if chunk.dropped:
            lost = chunk.dropped
            self._gap(stream, base, lost, cursor - lost, cursor, previous, first, cause_if_dropped)
        elif (
            previous is not None and period is not None and first - previous > GAP_PERIODS * period
        ):
            if state.generation is not None and chunk.generation != state.generation:
                cause = f"source restarted (generation {state.generation} -> {chunk.generation})"
            else:
                cause = SKIPPED
            lost = round((first - previous) / period) - 1
            self._gap(stream, base, lost, cursor, cursor, previous, first, cause)
        if period is not None and len(stamps) > 1:  # frames the source itself skipped
            steps = np.diff(stamps)
            for i in np.flatnonzero(steps > GAP_PERIODS * period):
                lost = round(int(steps[i]) / period) - 1
                at = int(i) + 1
                before, after = int(stamps[i]), int(stamps[at])
                self._gap(stream, base + at, lost, cursor + at, cursor + at, before, after, SKIPPED)
        self.segment.append(stream, chunk.data, stamps)
        state.last_timestamp_ns = int(stamps[-1])
        state.generation = chunk.generation

    def _gap(
        self,
        stream: str,
        at_frame: int,
        lost: int,
        cursor_start: int,
        cursor_end: int,
        start_ns: int | None,
        end_ns: int,
        cause: str,
    ) -> None:
        assert self.segment is not None
        row = np.zeros((), GAP_DTYPE)
        row["stream"] = text(stream, 128)
        row["at_frame"] = at_frame
        row["lost_frames"] = lost
        row["cursor_start"], row["cursor_end"] = cursor_start, cursor_end
        row["start_ns"] = start_ns or 0
        row["end_ns"] = end_ns
        row["cause"] = text(cause, 128)
        self.segment.add_row("gaps", row)
        self.gaps += 1

    def event(self, topic: str, payload: Any, restart: tuple[str, int, str] | None = None) -> None:
        """Record a control-plane event (and a worker restart in the provenance)."""
        assert self.segment is not None
        now_ns = time.time_ns()
        self.segment.add_row("events", event_row(now_ns, time.monotonic_ns(), topic, payload))
        if restart is not None:
            row = np.zeros((), RESTART_DTYPE)
            row["time_ns"], row["worker"] = now_ns, text(restart[0], 64)
            row["restarts"], row["reason"] = restart[1], text(restart[2], 256)
            self.segment.add_row("provenance/restarts", row)

    def flush(self) -> None:
        if self.segment is not None:
            self.segment.flush()


def finish_abandoned(directory: Path) -> list[str]:
    """Finalize a recording left open by a crash (its writer is not coming back)."""
    manifest = read_manifest(directory)
    done = []
    for entry in manifest.segments:
        if entry.state != "open":
            continue
        path = directory / entry.file
        finalize(path, {"finished_at": now_iso(), "crashed": True})
        with h5py.File(path, "r") as file:
            entry.frames = {
                str(g.attrs["stream"]): len(g["data"]) for g in file["streams"].values()
            }
        entry.state = "repaired"
        entry.finished_at = now_iso()
        entry.bytes = path.stat().st_size
        done.append(entry.file)
    manifest.finished_at = manifest.finished_at or now_iso()
    write_manifest(directory, manifest)
    return done
