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


def __getattr__(name: str):
    # Imported on first use: ``python -m pipeline.worker`` must not find it imported already.
    if name == "Worker":
        from pipeline.worker import Worker

        return Worker
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")


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
