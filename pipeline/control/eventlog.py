"""The session's event log: every event the supervisor publishes, numbered, in a ring.

Events travel to live listeners over PUB/SUB, which keeps nothing: a
subscriber that is not there (a recorder restarting) misses what was said
meanwhile. So the supervisor also appends each event it publishes to a ring of
its own, ``<session>/supervisor/events``, before it sends it. The event's ring
sequence number is its number in the session, from 0. The recorder reads that
ring as a lossless reader and resumes it by sequence after a restart, exactly
as it resumes frames; an outside program can read it too
(``pipeline.attach("<session>/supervisor/events")``, then :func:`decode`).

Why the supervisor writes it, not each worker its own: every event already
passes through the supervisor (a worker's events are sent to it and
published by it), so one writer gives one total order and one sequence, the
recorder follows one ring instead of one per worker that comes and goes, and
the writer never restarts within a session (when the supervisor goes, the
session ends).

A frame is one :data:`RECORD_DTYPE` record: the wall-clock time of publishing
and the message as msgpack (``pipeline.control.messages.encode``). The ring's
own timestamp of the frame is the host monotonic time of publishing. A message
longer than :data:`MESSAGE_BYTES` is logged with its longest texts cut (marked
``...``); one that still does not fit is logged as a warning that says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from pipeline.control import messages
from pipeline.control.messages import Message
from pipeline.errors import ProtocolError
from pipeline.ring import Chunk, RingWriter
from pipeline.ring.naming import EVENTS_STREAM, SUPERVISOR

#: Bytes of one encoded message at most (a record is 2048 bytes).
MESSAGE_BYTES = 2036
RECORD_DTYPE = np.dtype(
    [("time_ns", "<i8"), ("length", "<u4"), ("message", "u1", (MESSAGE_BYTES,))]
)
#: Events the ring keeps by default ([session] events_buffer): 8 MiB, hours of a busy rig's
#: events, far longer than a recorder restart.
DEFAULT_CAPACITY = 4096


def events_stream(session: str) -> str:
    """The full name of a session's event log stream."""
    return f"{session}/{EVENTS_STREAM}"


class EventLog:
    """The supervisor's side: append each event it publishes; close at the end."""

    def __init__(self, session: str, capacity: int = DEFAULT_CAPACITY) -> None:
        self.writer = RingWriter(
            events_stream(session),
            RECORD_DTYPE,
            (),
            capacity,
            0.0,
            {"kind": "rigpipe events", "encoding": "msgpack: pipeline.control.eventlog.decode"},
        )
        self._record = np.zeros(1, RECORD_DTYPE)
        self.cut = 0  # messages logged with their texts cut or replaced (too long)

    def append(self, event: Message) -> int:
        """Log ``event``; its sequence number in the session."""
        raw = self._fit(event)
        record = self._record
        record["time_ns"] = time.time_ns()
        record["length"] = len(raw)
        message = record["message"][0]
        message[: len(raw)] = np.frombuffer(raw, np.uint8)
        message[len(raw) :] = 0
        return self.writer.write(record) - 1

    def _fit(self, event: Message) -> bytes:
        raw = messages.encode(event)
        if len(raw) <= MESSAGE_BYTES:
            return raw
        self.cut += 1
        limit = MESSAGE_BYTES // 2
        fields = msgspec.structs.asdict(event)
        while limit >= 16:
            shorter = {
                name: value[: limit - 3] + "..."
                for name, value in fields.items()
                if isinstance(value, str) and len(value) > limit
            }
            raw = messages.encode(msgspec.structs.replace(event, **shorter))
            if len(raw) <= MESSAGE_BYTES:
                return raw
            limit //= 2
        tag = type(event).__struct_config__.tag
        return messages.encode(
            messages.Reported(
                worker=SUPERVISOR,
                level="warning",
                text=f"a {tag!r} event of {len(messages.encode(event))} bytes was too large "
                f"for the event log (at most {MESSAGE_BYTES}); see the supervisor's output",
            )
        )

    def close(self) -> None:
        self.writer.close()


@dataclass(frozen=True)
class LoggedEvent:
    """One event read back from the log."""

    sequence: int  # its number in the session, from 0
    time_ns: int  # wall clock when published, ns since 1970
    monotonic_ns: int  # host monotonic clock when published (the ring's timestamp)
    message: Message | None  # None: the record could not be decoded (``error`` says why)
    error: str = ""

    @property
    def topic(self) -> str:
        return messages.topic(self.message) if self.message is not None else "session.undecodable"

    def payload(self) -> Any:
        """The message as plain data (what the recording's events table stores)."""
        if self.message is None:
            return {"type": "undecodable", "text": self.error}
        return msgspec.to_builtins(self.message)


def decode(chunk: Chunk) -> list[LoggedEvent]:
    """The events in a chunk read from an event log stream."""
    found = []
    for i, record in enumerate(chunk.data):
        sequence = chunk.start_sequence + i
        length = int(record["length"])
        try:
            if length > MESSAGE_BYTES:
                raise ProtocolError(f"a record says {length} bytes, more than {MESSAGE_BYTES}")
            message: Message | None = messages.decode(record["message"][:length].tobytes())
            error = ""
        except ProtocolError as exc:
            message, error = None, f"event {sequence} could not be decoded: {exc}"
        stamp = int(chunk.timestamps_ns[i])
        found.append(LoggedEvent(sequence, int(record["time_ns"]), stamp, message, error))
    return found
