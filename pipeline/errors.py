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
