"""Recording worker: every frame of the configured streams, and the session's events, to HDF5.

A lossless reader of each stream (its lag shows in ``rigpipe status``). It
writes segment files under SWMR and flushes every ``flush_s``; the frames in a
flushed file survive a crash of any process. After a crash of the recorder
itself, the restarted recorder reopens the segment it was writing, repairs it,
and resumes each stream at the ring sequence number after the last frame in
the file, so nothing is lost while the ring still holds those frames; if it
does not, the lost range becomes a row in ``gaps``. Resuming is by stream
identity: the file keeps, per stream, the ring's ``stream_id`` and sequence of
its rows, so a stream that was created afresh meanwhile (its source restarted
cleanly, its sequence started again at 0) is recognised and never skipped
into. A configured stream that does not exist yet is waited for; it joins the
recording when it appears. ``rigpipe record start|stop`` (the settable
parameter ``recording``) starts and stops it while the rig runs. See
docs/recording-format.md for the files.

The session's events (annotations, stimulation, state changes, reports) are
read the same way from the supervisor's event log (:mod:`.events`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import msgspec

from pipeline.errors import EndOfStream, StreamNotFound, StreamReplaced
from pipeline.host import clock
from pipeline.host.files import atomic_replace, read_bytes
from pipeline.ring import RingReader
from pipeline.settings import NonNegative, Settings
from pipeline.worker import Worker
from workers.recording import provenance
from workers.recording.events import EventLogTrack
from workers.recording.segment_file import StreamFormat
from workers.recording.writer import (
    CAUSE_BEHIND,
    CAUSE_DOWN,
    CAUSE_RESTARTED,
    CAUSE_RESTARTED_WHILE_DOWN,
    CAUSE_STARTED_LATE,
    RecordingWriter,
    finish_abandoned,
)

EXIT_WRITE_FAILED = 75  # EX_TEMPFAIL: restart me, the segment needs a repair
REATTACH_S = 0.5  # how often to look for a stream that is absent (or whose writer closed it)
RESTART_MARGIN_S = 3.0  # time a restarted recorder needs before it reads again
_FAILED = "ERROR, not recording: "  # how the note says that recording stopped on an error


#: [session] recordings_access -> the recorder's umask (files 0640 / 0600, directories 0750 / 0700).
RECORDING_UMASK = {"group": 0o027, "user": 0o077}


class RecordingSettings(Settings, frozen=True, kw_only=True):
    """``[workers.parameters]`` of a recording worker."""

    streams: Annotated[list[str], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["acq/continuous", "acq/spikes"]
    )
    recording: bool = True
    flush_s: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    rotate_minutes: NonNegative = 0.0
    rotate_gb: NonNegative = 0.0
    block_s: Annotated[float, msgspec.Meta(gt=0)] = 0.2
    fsync: bool = False
    min_free_mb: NonNegative = 200.0


def _pointer(root: Path, session: str, worker: str) -> Path:
    """The file that names the recording a recorder has open (removed when it closes it)."""
    return root / f".active-{session}-{worker}.json"


@dataclass
class _Track:
    """What the recorder knows of one stream it records (its reader lives in ``_readers``)."""

    stream: str
    format: StreamFormat | None = None  # None until the stream was seen
    look_at: float = 0.0  # when to look for it again while it is absent
    absent_since_ns: int | None = None  # host monotonic ns; None while it is present
    last_read: float = 0.0
    dropped_cause: str = CAUSE_BEHIND  # explains frames the ring dropped before the next chunk
    new_stream_cause: str = CAUSE_RESTARTED  # explains a jump to a stream created afresh


def _format(stream: str, reader: RingReader) -> StreamFormat:
    return StreamFormat(
        stream, reader.dtype, reader.frame_shape, reader.sample_rate, reader.descriptor
    )


class RecordingWorker(Worker):
    Settings = RecordingSettings
    settable = frozenset({"recording", "min_free_mb"})

    @classmethod
    def inputs(cls, settings: Any) -> list[str]:
        return list(settings.streams)

    @classmethod
    def check(cls, settings: Any) -> None:
        if len(set(settings.streams)) != len(settings.streams):
            raise ValueError("streams lists a stream twice")

    @classmethod
    def after_session(cls, spec: Any, settings: Any) -> list[str]:
        """A recorder that died for good left its recording open: repair and close it."""
        pointer = _pointer(Path(spec.recordings_dir), spec.session, spec.name)
        try:
            directory = Path(json.loads(read_bytes(pointer))["directory"])
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return []
        repaired = finish_abandoned(directory, "the supervisor at the end of the session")
        pointer.unlink(missing_ok=True)
        return [f"repaired and closed {directory} ({', '.join(repaired) or 'nothing open'})"]

    # -- lifecycle ------------------------------------------------------------------------------
    def setup(self) -> None:
        if hasattr(signal, "SIGXFSZ"):  # a file-size limit becomes an error, not a kill
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        # Recordings are never readable by every user: everything this process creates
        # (directories, segments, manifest) gets the session's recordings_access.
        os.umask(RECORDING_UMASK[self.spec.recordings_access])
        self.root = Path(self.spec.recordings_dir)
        self.recording: RecordingWriter | None = None
        self.tracks: dict[str, _Track] = {}
        self.next_flush = clock.now_s() + self.settings.flush_s
        self.event_log = EventLogTrack(self)  # the session's events, read while recording
        self.counters.update(frames=0, gaps=0, events=0, segments=0, flushes=0)
        self.pointer = _pointer(self.root, self.spec.session, self.name)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if not self._resume_if_interrupted() and self.settings.recording:
                self._start(from_launch=True)
        except (OSError, ValueError) as exc:
            self._fail(exc)

    def teardown(self) -> None:
        try:
            if self.recording is not None:
                self._drain()
                if self.supervisor_lost:  # not asked to stop: the rig is gone
                    self._stop(f"the recorder stopped early: {self.supervisor_lost}", early=True)
                else:
                    self._stop("the recorder stopped")
        except (OSError, ValueError) as exc:
            self._fail(exc)

    def on_parameter(self, name: str, value: Any) -> None:
        if name == "recording" and value and self.recording is None:
            self.note = ""
            self._guard(self._start)
            if self.recording is None:  # refused (a nearly full disk...): the CLI says why
                raise ValueError(f"recording not started: {self.note.removeprefix(_FAILED)}")
        elif name == "recording" and not value and self.recording is not None:
            self._guard(lambda: self._stop("recording stopped by request"))

    # -- the loop -------------------------------------------------------------------------------
    def step(self) -> None:
        self._guard(self._record_events)
        written = self._guard(self._record_frames) or 0
        if self.recording is not None and clock.now_s() >= self.next_flush:
            self._guard(self._flush)
        if not written:
            self.wait_until(clock.now_s() + min(0.05, self.settings.block_s / 4))

    def _guard(self, action):
        """Run ``action``, turning file errors into a stopped recording or a restart.

        Before any segment is open (an unwritable directory) the error stops
        recording and the worker stays up to say so. A write that fails with a
        segment open leaves HDF5 in a state it may crash in, so the worker
        reports it and exits; its restart repairs the segment and resumes.
        """
        try:
            return action()
        except (OSError, ValueError) as exc:
            if self.recording is None or self.recording.segment is None:
                self._fail(exc)
                return None
            self.report(f"writing failed: {exc}; restarting to repair the segment", "error")
            time.sleep(0.2)  # let the report leave before the process does
            os._exit(EXIT_WRITE_FAILED)

    def _disk_full(self) -> str:
        """Why the disk cannot take more ("" while it can)."""
        free_mb = shutil.disk_usage(self.root).free / 1e6
        if free_mb >= self.settings.min_free_mb:
            return ""
        return (
            f"disk nearly full: {free_mb:.0f} MB free in {self.root}, below "
            f"min_free_mb = {self.settings.min_free_mb:g}; free space, then `rigpipe record start`"
        )

    def _record_frames(self, drain: bool = False) -> int:
        """Write each stream's frames once a block has gathered (or ``block_s`` passed)."""
        rec = self.recording
        if rec is None:
            return 0
        written = 0
        now = clock.now_s()
        for track in list(self.tracks.values()):
            stream = track.stream
            reader = self.readers.get(stream)
            if reader is None:
                self._look_for(track)
                continue
            rate = reader.sample_rate or 10000.0
            # Batch, but never so long that the ring could wrap before we read.
            block = max(1, min(round(self.settings.block_s * rate), reader.capacity // 4))
            due = now - track.last_read >= block / rate
            if not (drain or due or reader.lag >= block):
                continue  # few large writes cost far less than many small ones
            track.last_read = now
            try:
                chunk = reader.read(max_frames=block, timeout_s=0)
            except EndOfStream:
                self.close_reader(stream)
                track.look_at = clock.now_s() + REATTACH_S
                track.absent_since_ns = clock.now_ns()
                rec.event("recorder", {"stream": stream, "text": "stream closed by its writer"})
                continue
            if not chunk.frames:
                continue
            fmt = track.format
            if chunk.format_changed or fmt is None:
                fmt = track.format = _format(stream, reader)
                text = f"now generation {chunk.generation}: {reader.frame_shape} {reader.dtype}"
                rec.event("recorder", {"stream": stream, "text": text})
            rec.write(
                stream, chunk, reader.stream_id, fmt, track.dropped_cause, track.new_stream_cause
            )
            track.dropped_cause, track.new_stream_cause = CAUSE_BEHIND, CAUSE_RESTARTED
            written += chunk.frames
        self.counters["frames"] += written
        self.counters["gaps"] = rec.gaps
        if rec.rotation_due():
            rec.rotate()
            self.counters["segments"] += 1
        return written

    def _look_for(self, track: _Track) -> None:
        """Attach to an absent stream once it exists, where the recording left it.

        A stream the recording has frames of is resumed by identity: at the
        sequence after its last row if it is still the same stream, else (it was
        created afresh) from the new stream's first frame, with the jump
        explained. A stream new to the recording joins it in a new segment.
        """
        if clock.now_s() < track.look_at:
            return
        assert self.recording is not None
        stream = track.stream
        resume = self.recording.resume_point(stream)
        try:
            if resume is None:
                reader = self.reader(stream, cursor=0)  # all of a stream that began after us
            else:
                reader = self._resume_reader(track, *resume)
        except StreamNotFound:
            track.look_at = clock.now_s() + REATTACH_S
            if track.absent_since_ns is None:
                track.absent_since_ns = clock.now_ns()
            return
        fmt = track.format = _format(stream, reader)
        if stream not in self.recording.streams:
            since_ns = track.absent_since_ns or clock.now_ns()
            absent_s = (clock.now_ns() - since_ns) / 1e9
            cause = f"stream absent when recording started; it appeared {absent_s:.1f} s later"
            self.recording.add_stream(fmt, since_ns, cause)
            self.counters["segments"] += 1
            self.report(f"{stream} appeared after {absent_s:.1f} s; recording it too", "info")
        track.absent_since_ns = None

    def _resume_reader(self, track: _Track, stream_id: int, sequence: int) -> RingReader:
        """A reader at ``sequence`` of ring stream ``stream_id``, or at the start of the stream
        that replaced it."""
        try:
            return self.reader(track.stream, cursor=sequence, stream_id=stream_id or None)
        except StreamReplaced as replaced:
            found = replaced.found_id
        except ValueError:  # a schema 1 recording (no stream id) whose cursor is ahead
            found = None
        return self.reader(track.stream, cursor=0, stream_id=found)

    def _record_events(self) -> int:
        """Record what the session's event log holds that the recording does not; how many."""
        if self.recording is None:
            return 0
        found = self.event_log.record(self.recording)
        self.counters["events"] += found
        return found

    def _flush(self) -> None:
        assert self.recording is not None
        self.recording.flush()
        if full := self._disk_full():
            self._stop(full, early=True)
            self._fail(OSError(full))
            return
        if self.settings.fsync and self.recording.segment is not None:
            # read-write: Windows refuses to flush a file opened read-only (EBADF)
            fd = os.open(self.recording.segment.path, os.O_RDWR)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.counters["flushes"] += 1
        self.next_flush = clock.now_s() + self.settings.flush_s

    def _drain(self) -> None:
        """Before stopping: write what the rings still hold for us."""
        deadline = clock.now_s() + 5.0
        while self._record_frames(drain=True) and clock.now_s() < deadline:
            continue
        while self._record_events() and clock.now_s() < deadline:
            continue

    # -- starting, resuming, stopping -----------------------------------------------------------
    def _start(self, from_launch: bool = False) -> None:
        """Start a recording: at each stream's first frame when recording from the
        session's launch (``from_launch``: what the ring no longer holds is one gap row),
        else from now (``rigpipe record start``)."""
        s = self.settings
        if full := self._disk_full():
            raise OSError(full)
        self.tracks = {stream: _Track(stream) for stream in s.streams}
        formats, cursors, ids, absent = [], {}, {}, []
        for track in self.tracks.values():
            try:
                if from_launch:
                    reader = self.reader(track.stream, cursor=0)
                    track.dropped_cause = CAUSE_STARTED_LATE
                else:
                    reader = self.reader(track.stream, from_now=True)
            except StreamNotFound:
                track.absent_since_ns = clock.now_ns()
                track.look_at = clock.now_s() + REATTACH_S
                absent.append(track.stream)
                continue
            track.format = _format(track.stream, reader)
            formats.append(track.format)
            cursors[track.stream], ids[track.stream] = reader.cursor, reader.stream_id
        events = self.event_log.open(
            None, CAUSE_STARTED_LATE if from_launch else CAUSE_BEHIND, from_launch
        )
        self.recording = RecordingWriter.start(
            self.root,
            self.spec.session,
            self.spec.session_id,
            formats,
            cursors,
            self._provenance(),
            s.rotate_minutes * 60,
            s.rotate_gb * 1e9,
            stream_ids=ids,
            streams=list(s.streams),
            events_at=events,
        )
        self._write_pointer()
        self._warn_if_ring_too_short()
        self.note = f"recording to {self.recording.directory}"
        if absent:
            self.report(
                f"{', '.join(absent)} absent: recording the other streams; "
                "each joins the recording when it appears"
            )
        self.log.info("%s", self.note)

    def _provenance(self) -> dict[str, Any]:
        return provenance.attributes(self.spec.session, self.spec.session_id, self.spec.config_text)

    def _resume_if_interrupted(self) -> bool:
        """Resume the recording a crashed recorder of this session left; True if resumed."""
        try:
            pointer = json.loads(read_bytes(self.pointer))
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        directory = Path(pointer["directory"])
        if pointer.get("session_id") != self.spec.session_id or self._disk_full():
            repaired = finish_abandoned(directory, "the recorder of a later session")
            self.pointer.unlink(missing_ok=True)
            self.report(f"finished recording {directory} left by an earlier session: {repaired}")
            return False
        s = self.settings
        self.recording = RecordingWriter.resume(
            directory, self._provenance(), s.rotate_minutes * 60, s.rotate_gb * 1e9
        )
        self.tracks = {
            stream: _Track(
                stream,
                dropped_cause=CAUSE_DOWN,
                new_stream_cause=CAUSE_RESTARTED_WHILE_DOWN,
            )
            for stream in self.recording.manifest.streams
        }
        for track in self.tracks.values():
            if track.stream not in self.recording.streams:  # absent since the recording began
                track.absent_since_ns = self.recording.manifest.started_monotonic_ns or None
            self._look_for(track)
        self.event_log.open(self.recording.events_at, CAUSE_DOWN)
        segment = self.recording.segment
        if segment is not None and (repairs := segment.repairs):
            self.recording.event("recorder", {"text": "repaired the segment", "done": repairs})
        self.recording.event(
            "recorder",
            "resumed after a crash of the recorder",
            restart=(self.name, 0, "the recorder crashed; resumed from the last flushed frame"),
        )
        self.note = f"recording to {directory} (resumed)"
        self.report(f"resumed {directory} after a crash", "info")
        return True

    def _write_pointer(self) -> None:
        assert self.recording is not None
        record = {"directory": str(self.recording.directory), "session_id": self.spec.session_id}
        temporary = self.pointer.with_suffix(".tmp")
        temporary.write_text(json.dumps(record))
        atomic_replace(temporary, self.pointer)

    def _warn_if_ring_too_short(self) -> None:
        for stream, reader in self.readers.items():
            track = self.tracks.get(stream)  # None: the event log
            fmt = None if track is None else track.format
            if fmt is None or fmt.sample_rate <= 0:
                continue
            span_s = reader.capacity / fmt.sample_rate
            needed = self.settings.flush_s + RESTART_MARGIN_S
            if span_s < needed:
                self.report(
                    f"{stream} keeps {span_s:.1f} s in its ring; a recorder crash can lose frames "
                    f"unless it keeps at least {needed:.0f} s (flush_s + restart time): "
                    "raise the writer's buffer_s"
                )

    def _stop(self, why: str, early: bool = False) -> None:
        """Close the recording; ``early``: nobody asked for it, and the manifest says why."""
        for _ in range(8):  # what the event log holds so far (it may go on growing)
            if not self._guard(self._record_events):
                break
        rec, self.recording = self.recording, None
        if rec is None:
            return
        rec.event("recorder", why)
        rec.finish(stopped_early=why if early else "")
        self.pointer.unlink(missing_ok=True)
        for stream in list(self.readers):
            self.close_reader(stream)
        self.note = f"not recording; last: {rec.directory}"
        self.log.info("%s: %s", why, rec.directory)

    def _fail(self, exc: BaseException) -> None:
        """Stop writing after an error; what was flushed stays readable."""
        rec, self.recording = self.recording, None
        self.note = f"{_FAILED}{exc}"
        self.report(f"recording stopped: {exc}", "error")
        self.counters["errors"] = self.counters.get("errors", 0) + 1
        for stream in list(self.readers):
            self.close_reader(stream)
        if rec is not None:
            with contextlib.suppress(Exception):  # the disk may refuse even the close
                rec.finish(stopped_early=f"recording failed: {exc}")
            with contextlib.suppress(OSError):
                self.pointer.unlink(missing_ok=True)


WORKER = RecordingWorker
