"""RecordingWriter: one recording (segment files and a manifest), rotation, gap bookkeeping.

:class:`RecordingWriter` is given chunks per stream (from lossless ring readers) and
control-plane events; it appends them to the current segment, records a gap
wherever frames are missing (the ring overwrote them, or a source restarted
and its timestamps jump), starts a new segment on rotation or on a format
change, and keeps ``manifest.json`` up to date. It does not read rings or
sockets itself.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.control.session import now_iso
from pipeline.host import clock
from pipeline.recording.format import (
    EVENTS_STREAM,
    GAP_DTYPE,
    GAP_PERIODS,
    RESTART_DTYPE,
    Manifest,
    SegmentEntry,
    StreamGroup,
    group_name,
    open_segment,
    read_manifest,
    text,
    write_manifest,
)
from pipeline.ring import Chunk
from workers.recording.repeats import Event, Repeats
from workers.recording.segment_file import SegmentFile, StreamFormat, event_row, finalize


@dataclass
class _StreamState:
    """Where a recorded stream stands: its format and the ring position after its last row."""

    format: StreamFormat
    last_timestamp_ns: int | None = None
    generation: int | None = None
    stream_id: int | None = None  # the ring's sequence space of the last row (0: unknown)
    next_sequence: int | None = None  # ring sequence of the frame after the last row

    @property
    def period_ns(self) -> float | None:
        rate = self.format.sample_rate
        return 1e9 / rate if rate > 0 else None


SKIPPED = "timestamps jump: the source skipped frames"
CAUSE_BEHIND = "recorder fell behind: the ring overwrote these frames"
CAUSE_DOWN = "recorder was down longer than the ring holds"
#: A recorder recording from launch starts at each stream's first frame; the frames the
#: ring no longer held by the time it attached are this gap.
CAUSE_STARTED_LATE = "recorder started after the source: the ring no longer held these frames"
CAUSE_RESTARTED = "source restarted: its stream was closed and created again"
CAUSE_RESTARTED_WHILE_DOWN = (
    "source restarted while the recorder was down: the old stream's unrecorded frames are gone"
)
CAUSES_FROM_THE_RING = (CAUSE_BEHIND, CAUSE_DOWN)  # lost_frames == cursor_end - cursor_start


class RecordingWriter:
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
        self.segment: SegmentFile | None = None
        self._segment_started = clock.now_s()
        self._wall_start = time.time()
        self.gaps = 0
        # The session's event log: what is recorded of it, and the repeats held back.
        self.repeats = Repeats()  # a message repeated several times a second: once a second
        self.events_at: tuple[int, int] | None = None  # (stream id, next sequence to record)
        self.last_event_ns = 0  # host monotonic time of the last event recorded

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
        stream_ids: dict[str, int] | None = None,
        streams: list[str] | None = None,
        events_at: tuple[int, int] | None = None,
    ) -> RecordingWriter:
        """A new recording directory under ``root`` with its first segment.

        ``streams`` lists every stream to record (default: those of
        ``formats``); one absent now joins with :meth:`add_stream` when it appears.
        ``events_at``: (stream id, sequence) where recording the event log begins.
        """
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
            started_monotonic_ns=clock.now_ns(),
            streams=streams or [f.stream for f in formats],
        )
        recording = cls(directory, manifest, provenance, rotate_s, rotate_bytes)
        recording.events_at = events_at
        ids = stream_ids or {}
        recording.streams = {
            f.stream: _StreamState(
                f, stream_id=ids.get(f.stream), next_sequence=first_cursors[f.stream]
            )
            for f in formats
        }
        recording._open_segment({f.stream: 0 for f in formats}, first_cursors)
        return recording

    @classmethod
    def resume(
        cls, directory: Path, provenance: dict[str, Any], rotate_s: float, rotate_bytes: float
    ) -> RecordingWriter:
        """Continue a recording whose writer crashed, in the segment it was writing."""
        manifest = read_manifest(directory)
        recording = cls(directory, manifest, provenance, rotate_s, rotate_bytes)
        entry = manifest.segments[-1]
        segment = recording.segment = SegmentFile.reopen(directory / entry.file)
        if segment.repairs:
            entry.repairs = [*entry.repairs, *segment.repairs]
            write_manifest(directory, manifest)
        recording.events_at = segment.events_resume_point()
        events = segment.file["events"]
        if len(events):
            recording.last_event_ns = int(events[len(events) - 1]["monotonic_ns"])
        for stream in segment.datasets:  # a stream absent so far has no group yet
            data = segment.file[group_name(stream)]["data"]
            attrs = segment.attributes(stream)
            fmt = StreamFormat(
                stream, data.dtype, data.shape[1:], attrs.sample_rate, attrs.descriptor
            )
            stream_id, sequence = segment.resume_point(stream)
            runs = segment.runs.get(stream)
            generation = (
                int(runs[len(runs) - 1]["generation"]) if runs is not None and len(runs) else None
            )
            recording.streams[stream] = _StreamState(
                fmt,
                last_timestamp_ns=segment.last_timestamp(stream),
                generation=generation,
                stream_id=stream_id,
                next_sequence=sequence,
            )
        recording._segment_started = clock.now_s()
        return recording

    def resume_point(self, stream: str) -> tuple[int, int] | None:
        """(stream_id, ring sequence) of the next frame of ``stream`` to record; None if the
        recording has none of it yet. A stream_id of 0 means unknown (schema 1)."""
        state = self.streams.get(stream)
        if state is None or state.next_sequence is None:
            return None
        return state.stream_id or 0, state.next_sequence

    def next_cursors(self) -> dict[str, int]:
        """Per stream, the ring sequence number of the next frame to record."""
        return {s: state.next_sequence or 0 for s, state in self.streams.items()}

    def add_stream(self, fmt: StreamFormat, absent_since_ns: int, cause: str) -> None:
        """Start recording a stream that was absent: a new segment with its datasets, and a
        gap row of no frames that says how long it was absent and why."""
        self.rotate([fmt])
        now_ns = clock.now_ns()
        self._gap(fmt.stream, 0, 0, 0, 0, absent_since_ns, now_ns, cause)

    def _open_segment(self, first_frames: dict[str, int], first_cursors: dict[str, int]) -> None:
        ids = {s: state.stream_id or 0 for s, state in self.streams.items()}
        index = len(self.manifest.segments)
        name = f"segment-{index:04d}.h5"
        created_at = now_iso()
        attrs = {
            "recording_id": self.manifest.recording_id,
            "session": self.manifest.session,
            "segment_index": index,
            "created_at": created_at,
        }
        self.segment = SegmentFile.create(
            self.directory / name,
            attrs,
            self.provenance,
            [s.format for s in self.streams.values()],
            first_frames,
            first_cursors,
            ids,
            self.events_at,
        )
        self.manifest.segments.append(
            SegmentEntry(file=name, index=index, started_at=created_at, first_frames=first_frames)
        )
        write_manifest(self.directory, self.manifest)
        self._segment_started = clock.now_s()

    def _close_segment(self) -> None:
        if self.segment is not None:
            self._settle_events()
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
        first_frames = {
            s: self.segment.first_frame(s) + self.segment.rows[s] for s in self.segment.datasets
        }
        self._close_segment()
        for fmt in formats or []:
            old = self.streams.get(fmt.stream)  # in a new layout, its ring position carries over
            self.streams[fmt.stream] = (
                _StreamState(fmt) if old is None else dataclasses.replace(old, format=fmt)
            )
            first_frames.setdefault(fmt.stream, 0)
        self._open_segment(first_frames, self.next_cursors())

    def rotation_due(self) -> bool:
        if self.segment is None:
            return False
        if self.rotate_s and clock.now_s() - self._segment_started >= self.rotate_s:
            return True
        return bool(self.rotate_bytes) and self.segment.path.stat().st_size >= self.rotate_bytes

    def finish(self, stopped_early: str = "") -> None:
        """Close the last segment and the manifest; every file then opens with plain h5py.

        ``stopped_early``: why the recording ends before anyone asked it to (the
        manifest keeps it, and ``rigpipe inspect`` shows it).
        """
        self._close_segment()
        self.manifest.finished_at = now_iso()
        self.manifest.stopped_early = self.manifest.stopped_early or stopped_early
        write_manifest(self.directory, self.manifest)

    # -- data -----------------------------------------------------------------------------------
    def write(
        self,
        stream: str,
        chunk: Chunk,
        stream_id: int,
        fmt: StreamFormat,
        dropped_cause: str = CAUSE_BEHIND,
        new_stream_cause: str = CAUSE_RESTARTED,
    ) -> None:
        """Append ``chunk`` of ``stream`` (ring stream ``stream_id``), with a gap row wherever
        frames are missing and its true cause.

        ``dropped_cause`` explains frames the ring reports dropped before the
        chunk (the recorder read too slowly, or was down); ``new_stream_cause``
        explains the jump to a stream created afresh (its id changed).
        """
        state = self.streams[stream]
        if fmt.dtype != state.format.dtype or fmt.frame_shape != state.format.frame_shape:
            self.rotate([fmt])  # a new layout needs new datasets: a new segment
            state = self.streams[stream]
        segment = self.segment
        assert segment is not None
        stamps = chunk.timestamps_ns
        base = segment.first_frame(stream) + segment.rows[stream]
        cursor, dropped = chunk.start_sequence, chunk.dropped
        previous, first, period = state.last_timestamp_ns, int(stamps[0]), state.period_ns
        # Frames missing by the timestamps, between the last row and this chunk.
        missing = 0
        if previous is not None and period is not None and first - previous > GAP_PERIODS * period:
            missing = round((first - previous) / period) - 1
        restarted = state.generation is not None and chunk.generation != state.generation
        if state.stream_id and stream_id != state.stream_id:
            cause = new_stream_cause
            if dropped:
                cause += f"; the ring had overwritten {dropped} frames of the new stream"
            lost = max(missing, dropped)
            self._gap(stream, base, lost, cursor - dropped, cursor, previous, first, cause)
        elif dropped:
            self._gap(
                stream, base, dropped, cursor - dropped, cursor, previous, first, dropped_cause
            )
            if restarted and missing > dropped:  # the source was also down meanwhile
                cause = f"source restarted (generation {state.generation} -> {chunk.generation})"
                self._gap(stream, base, missing - dropped, cursor, cursor, previous, first, cause)
        elif missing:
            cause = (
                f"source restarted (generation {state.generation} -> {chunk.generation})"
                if restarted
                else SKIPPED
            )
            self._gap(stream, base, missing, cursor, cursor, previous, first, cause)
        if (
            stream_id != state.stream_id
            or cursor != state.next_sequence
            or restarted
            or not segment.has_run(stream)
        ):
            segment.add_run(stream, stream_id, chunk.generation, cursor)
        if period is not None and len(stamps) > 1:  # frames the source itself skipped
            steps = np.diff(stamps)
            for i in np.flatnonzero(steps > GAP_PERIODS * period):
                lost = round(int(steps[i]) / period) - 1
                at = int(i) + 1
                before, after = int(stamps[i]), int(stamps[at])
                self._gap(stream, base + at, lost, cursor + at, cursor + at, before, after, SKIPPED)
        segment.append(stream, chunk.data, stamps)
        state.last_timestamp_ns = int(stamps[-1])
        state.generation = chunk.generation
        state.stream_id = stream_id
        state.next_sequence = chunk.end_sequence

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

    def event(
        self,
        topic: str,
        payload: Any,
        restart: tuple[str, int, str] | None = None,
        at: tuple[int, int] | None = None,
        sequence: int = -1,
    ) -> None:
        """Record a control-plane event (and a worker restart in the provenance); ``at``
        is (wall clock ns, host monotonic ns) when it happened, now if not given;
        ``sequence`` its number in the event log (-1: the recorder's own)."""
        assert self.segment is not None
        now_ns, monotonic_ns = at if at is not None else (time.time_ns(), clock.now_ns())
        self.segment.add_row("events", event_row(now_ns, monotonic_ns, topic, payload, sequence))
        if restart is not None:
            row = np.zeros((), RESTART_DTYPE)
            row["time_ns"], row["worker"] = now_ns, text(restart[0], 64)
            row["restarts"], row["reason"] = restart[1], text(restart[2], 256)
            self.segment.add_row("provenance/restarts", row)

    # -- the session's event log ----------------------------------------------------------------
    def log_event(
        self, event: Event, stream_id: int, restart: tuple[str, int, str] | None = None
    ) -> None:
        """Record ``event``, read from event log ``stream_id`` (a repeat may be held back
        for a second, see :mod:`.repeats`); ``restart`` belongs to it."""
        for row in self.repeats.offer(event):
            self._event_row(row, restart if row is event else None)
        self.events_at = (stream_id, event.sequence + 1)
        self.last_event_ns = max(self.last_event_ns, event.monotonic_ns)

    def events_due(self, now_ns: int) -> None:
        """Record the held-back repeats whose quiet second is over."""
        for row in self.repeats.due(now_ns):
            self._event_row(row)

    def events_lost(self, stream_id: int, start: int, end: int, end_ns: int, cause: str) -> None:
        """Events ``start`` to ``end`` (exclusive) of the log are gone: a gap row, and an
        event row that says so (the recording's readers see both)."""
        assert self.segment is not None
        lost = end - start
        at = len(self.segment.file["events"])
        self._gap(EVENTS_STREAM, at, lost, start, end, self.last_event_ns, end_ns, cause)
        self.event(
            "recorder",
            {
                "text": f"{lost} event(s) of the session's log are not in the recording: {cause}",
                "lost_events": lost,
                "first_sequence": start,
                "end_sequence": end,
            },
        )
        self.events_at = (stream_id, end)

    def _event_row(self, row: Event, restart: tuple[str, int, str] | None = None) -> None:
        at = (row.time_ns, row.monotonic_ns)
        self.event(row.topic, row.payload, restart, at=at, sequence=row.sequence)

    def _settle_events(self) -> None:
        """Write what is held back: with the next flush, the file's rows account for every
        event read (:meth:`SegmentFile.events_resume_point` relies on it)."""
        for row in self.repeats.release(clock.now_ns()):
            self._event_row(row)

    def flush(self) -> None:
        if self.segment is not None:
            self._settle_events()
            self.segment.flush()


#: ``stopped_early`` of a recording that its recorder left open and another process closed.
ABANDONED = "its recorder died and did not come back to close it; repaired and closed by {by}"


def finish_abandoned(directory: Path, by: str) -> list[str]:
    """Finalize a recording left open by a crash (its writer is not coming back); ``by``
    names who does it, for the manifest's ``stopped_early``."""
    manifest = read_manifest(directory)
    done = []
    for entry in manifest.segments:
        if entry.state != "open":
            continue
        path = directory / entry.file
        entry.repairs = [
            *entry.repairs,
            *finalize(path, {"finished_at": now_iso(), "crashed": True}),
        ]
        with open_segment(path) as file:
            entry.frames = {
                StreamGroup.read(g).stream: len(g["data"]) for g in file["streams"].values()
            }
        entry.state = "repaired"
        entry.finished_at = now_iso()
        entry.bytes = path.stat().st_size
        done.append(entry.file)
    if not manifest.finished_at:  # it was still recording when its recorder went
        manifest.finished_at = now_iso()
        manifest.stopped_early = manifest.stopped_early or ABANDONED.format(by=by)
    write_manifest(directory, manifest)
    return done
