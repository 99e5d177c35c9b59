"""The recorder's reading of the session's event log (:mod:`pipeline.control.eventlog`).

Every event the session publishes (annotations, stimulation, state changes,
restarts, reports) is read from the supervisor's log as a lossless reader,
like a stream's frames: from the log's first event when the recording starts
with the session, from now after ``rigpipe record start``, and after a crash of
the recorder after the last event its flushed rows hold (``SegmentFile.
events_resume_point``). Events the log no longer held are a gap row with
their sequence numbers and the true cause, never a silent loss.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from pipeline.control import eventlog, messages
from pipeline.errors import EndOfStream, StreamNotFound, StreamReplaced
from pipeline.host import clock
from pipeline.ring.naming import EVENTS_STREAM
from workers.recording.repeats import Event
from workers.recording.writer import CAUSE_BEHIND, RecordingWriter

if TYPE_CHECKING:
    from pipeline.ring import RingReader
    from pipeline.worker import Worker

READ_AT_ONCE = 1024  # events read at most per step
LOOK_AGAIN_S = 0.5  # how often to look for the log while it is absent


class EventLogTrack:
    """Where the recorder stands in the event log; the reader is the worker's own, so
    ``rigpipe status`` shows its lag like any other."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.cause = CAUSE_BEHIND  # explains events the log dropped before the next read
        self.look_at = 0.0

    def open(
        self, resume: tuple[int, int] | None, cause: str, from_launch: bool = False
    ) -> tuple[int, int] | None:
        """Read the log from ``resume`` (stream id, sequence), from its first event
        (``from_launch``) or from now; ``cause`` explains what it no longer holds at the
        first read. The position it starts at (None: the session has no log)."""
        self.cause = cause
        try:
            reader = self._attach(resume, from_launch)
        except StreamNotFound:
            self.look_at = clock.now_s() + LOOK_AGAIN_S
            self.worker.report(
                f"the session has no event log ({EVENTS_STREAM}): events are not recorded "
                "until it appears; run the recorder under `rigpipe run`",
                "error",
            )
            return None
        return reader.stream_id, reader.cursor

    def _attach(self, resume: tuple[int, int] | None, from_launch: bool = False) -> RingReader:
        if resume is None:
            start = 0 if from_launch else None
            return self.worker.reader(EVENTS_STREAM, cursor=start, from_now=not from_launch)
        try:
            return self.worker.reader(EVENTS_STREAM, cursor=resume[1], stream_id=resume[0])
        except StreamReplaced as replaced:  # the log was made afresh: all of the new one
            return self.worker.reader(EVENTS_STREAM, cursor=0, stream_id=replaced.found_id)

    def record(self, rec: RecordingWriter) -> int:
        """Record what the log holds that the recording does not; how many events."""
        reader = self.worker.readers.get(EVENTS_STREAM)
        if reader is None:
            if clock.now_s() >= self.look_at:
                self.look_at = clock.now_s() + LOOK_AGAIN_S
                with contextlib.suppress(StreamNotFound):  # still absent: look again later
                    self._attach(rec.events_at, from_launch=True)
            return 0
        try:
            chunk = reader.read(max_frames=READ_AT_ONCE, timeout_s=0)
        except EndOfStream:  # the supervisor closed its log: the session ends
            self.worker.close_reader(EVENTS_STREAM)
            self.look_at = clock.now_s() + LOOK_AGAIN_S
            return 0
        if chunk.dropped:
            start = chunk.start_sequence - chunk.dropped
            stamp = int(chunk.timestamps_ns[0]) if chunk.frames else clock.now_ns()
            rec.events_lost(reader.stream_id, start, chunk.start_sequence, stamp, self.cause)
        if chunk.frames or chunk.dropped:
            self.cause = CAUSE_BEHIND
        for logged in eventlog.decode(chunk):
            message, restart = logged.message, None
            if isinstance(message, messages.WorkerRestarted):
                restart = (message.worker, message.restarts, message.reason)
            event = Event(
                logged.topic, logged.payload(), logged.time_ns, logged.monotonic_ns, logged.sequence
            )
            rec.log_event(event, reader.stream_id, restart)
        rec.events_due(clock.now_ns())
        return chunk.frames
