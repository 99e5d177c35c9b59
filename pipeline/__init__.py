"""rigpipe's framework: shared-memory rings, control plane, supervision.

An outside process needs only :func:`attach`::

    import pipeline
    with pipeline.attach("default/acq/continuous") as reader:
        for chunk in reader:
            process(chunk.data, chunk.timestamps_ns)

A stream writer needs :class:`RingWriter`; a worker kind subclasses :class:`Worker`.
"""

from pipeline.errors import (
    BusTimeout,
    ConfigError,
    EndOfStream,
    ProtocolError,
    ReaderClosed,
    RequestFailed,
    RigpipeError,
    SegmentCorrupt,
    SegmentNotReady,
    SessionNotFound,
    SessionRunning,
    StreamExists,
    StreamNotFound,
    WriterClosed,
)
from pipeline.ring import Chunk, RingReader, RingWriter, attach
from pipeline.segments import list_streams, sweep
from pipeline.worker import Worker

__all__ = [
    "BusTimeout",
    "Chunk",
    "ConfigError",
    "EndOfStream",
    "ProtocolError",
    "ReaderClosed",
    "RequestFailed",
    "RigpipeError",
    "RingReader",
    "RingWriter",
    "SegmentCorrupt",
    "SegmentNotReady",
    "SessionNotFound",
    "SessionRunning",
    "StreamExists",
    "StreamNotFound",
    "Worker",
    "WriterClosed",
    "attach",
    "list_streams",
    "sweep",
]
