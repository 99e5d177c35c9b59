"""rigpipe's framework: shared-memory rings, control plane, supervision.

An outside process needs only :func:`attach`::

    import pipeline
    with pipeline.attach("default/acq/continuous") as reader:
        for chunk in reader:
            process(chunk.data, chunk.timestamps_ns)

A stream writer needs :class:`RingWriter`; a worker kind subclasses :class:`Worker`.
A recording is read back with :func:`open_recording`::

    with pipeline.open_recording("recordings/demo-20261122-101500") as rec:
        x = rec[0:8, 0:30000]   # (channels, frames) over every segment file
"""

from pipeline.errors import (
    BusTimeout,
    ConfigError,
    EndOfStream,
    ProtocolError,
    ReaderClosed,
    RecordingError,
    RequestFailed,
    RigpipeError,
    SegmentCorrupt,
    SegmentNotReady,
    SessionNotFound,
    SessionRunning,
    SliceTooLarge,
    StreamExists,
    StreamNotFound,
    StreamReplaced,
    WriterClosed,
)
from pipeline.ring import Chunk, RingReader, RingWriter, attach
from pipeline.segments import list_streams, sweep


def __getattr__(name: str):
    # Imported on first use: ``python -m pipeline.worker`` must not find it imported already.
    if name == "Worker":
        from pipeline.worker import Worker

        return Worker
    if name in ("open_recording", "Recording"):  # h5py is imported only by those who read files
        from pipeline import readback

        return getattr(readback, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")


__all__ = [
    "BusTimeout",
    "Chunk",
    "ConfigError",
    "EndOfStream",
    "ProtocolError",
    "ReaderClosed",
    "Recording",
    "RecordingError",
    "RequestFailed",
    "RigpipeError",
    "RingReader",
    "RingWriter",
    "SegmentCorrupt",
    "SegmentNotReady",
    "SessionNotFound",
    "SessionRunning",
    "SliceTooLarge",
    "StreamExists",
    "StreamNotFound",
    "StreamReplaced",
    "Worker",
    "WriterClosed",
    "attach",
    "list_streams",
    "open_recording",
    "sweep",
]
