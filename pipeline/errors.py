"""Every error rigpipe raises on purpose, rooted at :class:`RigpipeError`.

Each docstring says when the error is raised and what to do about it. Errors
caused by the caller ("you closed it") are kept apart from errors caused by
the other side ("the writer went away"), so a reader loop can tell a bug in
its own code from a normal end of the stream.
"""

from __future__ import annotations


class RigpipeError(Exception):
    """Base class of every error rigpipe raises deliberately."""


class StreamNotFound(RigpipeError, LookupError):
    """``attach`` was given a stream name that no writer has created.

    The message lists the streams that do exist on this machine (where the
    platform lets us enumerate shared memory). Check the spelling, or start
    the worker that writes the stream first.
    """

    def __init__(self, stream: str, existing: list[str] | None) -> None:
        self.stream = stream
        self.existing = existing
        if existing is None:
            known = "(this platform cannot list shared memory; ask `rigpipe streams`)"
        elif existing:
            known = "existing streams: " + ", ".join(sorted(existing))
        else:
            known = "no streams exist on this machine; is a writer running?"
        super().__init__(f"stream {stream!r} does not exist; {known}")


class StreamReplaced(RigpipeError, LookupError):
    """``attach(..., stream_id=...)`` found the stream, but not the one that id names.

    The stream was closed and created again (a source restarted cleanly), so
    its sequence numbers started again at 0 and a cursor of the old stream
    means nothing in the new one. ``found_id`` is the new stream's id: attach
    again with ``stream_id=found_id`` (``cursor=0`` reads it from its start, as
    far as the ring still holds it) and account for the old stream's unread
    frames as lost.
    """

    def __init__(self, stream: str, expected_id: int, found_id: int) -> None:
        self.stream = stream
        self.expected_id = expected_id
        self.found_id = found_id
        super().__init__(
            f"stream {stream!r} was created again since stream id {expected_id:#x} "
            f"(now {found_id:#x}): its sequence numbers started over"
        )


class StreamExists(RigpipeError):
    """A ``RingWriter`` was created for a stream that a live process already writes.

    A stream has exactly one writer. Stop the other writer (its pid is in the
    message), or choose another stream name.
    """


class SegmentCorrupt(RigpipeError):
    """A shared-memory segment does not hold what a rigpipe ring should.

    Raised for a wrong magic number, an unknown layout version (a reader and a
    writer from incompatible rigpipe versions) or a header that contradicts
    itself. Nothing is read from such a segment. If the segment is stale, remove
    it with ``rigpipe sweep``; if versions differ, install the same rigpipe on
    both sides.
    """


class SharedMemoryFull(RigpipeError):
    """There is not enough shared memory for a new segment.

    A segment's memory is reserved when it is created, so a full ``/dev/shm``
    is this error at start-up (or when a stream is reformatted), never a
    crash on a later write. The message names the segment, the bytes it
    needs and the bytes free. Remove a dead rig's leftovers (``rigpipe
    sweep``), make the ring smaller (``buffer_s``, fewer channels), or give
    ``/dev/shm`` more room.
    """


class WatchesFull(RigpipeError):
    """Every threshold-watch slot of a stream is held by a live reader.

    A stream has eight (``pipeline.ring.watch.WATCH_SLOTS``). Close watches
    that are no longer needed (``ThresholdWatch.close``), watch from fewer
    readers, or wait on the ring itself (``RingReader.wait``), which wakes for
    every chunk.
    """


class SegmentForeign(SegmentCorrupt):
    """A shared-memory segment under a rigpipe name belongs to another user.

    Someone created it first (by accident, or squatting the name). It is never
    read, written or unlinked; the message names it and its owner.
    """


class SegmentNotReady(SegmentCorrupt):
    """A segment's header is still blank: its writer is creating it right now.

    ``attach`` retries for a moment before giving up with this error.
    """


class EndOfStream(RigpipeError):
    """The writer closed the stream and every frame it wrote has been read.

    This is the normal end of a stream, raised by ``RingReader.read`` after the
    last chunk. Iterating over a reader stops at it.
    """


class ReaderClosed(RigpipeError):
    """A ``RingReader`` method was called after ``close()`` on that reader.

    This is a bug in the calling code: it closed the reader and kept using it.
    """


class WriterClosed(RigpipeError):
    """A ``RingWriter`` method was called after ``close()`` on that writer."""


class ConfigError(RigpipeError):
    """A config file is wrong; raised before anything is started.

    The message names the file, the field path (``workers[0].parameters.channels``)
    and what would be accepted there. Fix the file and run again.
    """

    def __init__(self, path: str, field: str, problem: str) -> None:
        self.path = path
        self.field = field
        self.problem = problem
        where = f"{path}: {field}: " if field else f"{path}: "
        super().__init__(where + problem)


class ProtocolError(RigpipeError):
    """Bytes that arrived on a control socket are not a rigpipe message.

    The supervisor answers such a message with an ``Error`` reply and counts
    it; it never stops because of one. A client that gets this has a peer
    speaking another protocol version, or something else bound to the endpoint.
    """


class RequestFailed(RigpipeError):
    """The supervisor (or a worker it asked) refused or could not carry out a request.

    The message is the reason it gave: an unknown worker, a parameter that does
    not exist, a value of the wrong type.
    """


class StimulationRefused(RequestFailed):
    """A stimulator refused a command: it breaks a configured limit, names no channel
    it has, or the stimulator is disarmed. Nothing was output.

    ``reply`` is the stimulator's ``Refused`` (``limit``, ``value``, ``allowed``,
    ``channel``); the message says the same in words.
    """

    def __init__(self, text: str, reply: object = None) -> None:
        super().__init__(text)
        self.reply = reply


class BusTimeout(RigpipeError):
    """No reply came back from the supervisor in time.

    The rig may be overloaded or its supervisor may have died; ``rigpipe
    status`` tells which. Raise the timeout with ``--timeout`` for slow requests.
    """


class SessionNotFound(RigpipeError):
    """No running rig was found (no discovery file, or its supervisor is gone).

    Start one with ``rigpipe run configs/demo.toml``, or name the session with
    ``--session`` when several run at once.
    """


class SessionRunning(RigpipeError):
    """``rigpipe run`` was asked to start a session whose supervisor is still alive.

    Stop it first (``rigpipe stop --session NAME``) or give the new one another name.
    """


class RecordingError(RigpipeError):
    """A recording cannot be read as asked.

    Raised by :func:`pipeline.open_recording` for a path that holds no
    recording, a stream the recording does not have (the message lists those
    it has), or segments whose layouts differ, so they cannot be mapped end to
    end (the message names the first segment that differs; open it, or the
    segments before it, on their own).
    """


class ManifestCorrupt(RecordingError, ValueError):
    """A recording's manifest.json is not a rigpipe manifest (cut short, overwritten...)."""


class SliceTooLarge(RecordingError):
    """A slice of a recording would need more memory than the reader's limit allows.

    Nothing was read. The message says how large the slice was and what the
    limit is. Read the range in blocks (``view.blocks(seconds=...)``), allow it
    once with ``with rec.allow_large(): ...``, or open the recording with a
    higher ``memory_limit_bytes``.
    """


class MissingExtra(RigpipeError, ImportError):
    """A part of rigpipe needs an optional package that is not installed.

    Raised by :func:`pipeline.extras.require` when a backend (pycbsdk, pythonnet,
    pylsl, pynwb, Qt) is first used; the message names the package, what needs it and
    the install line. Install the extra and start again; nothing else was affected.
    """
