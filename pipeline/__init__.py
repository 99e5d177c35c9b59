"""rigpipe's framework: shared-memory rings, control plane, supervision.

An outside process needs only :func:`attach`::

    import pipeline
    with pipeline.attach("default/acq/continuous") as reader:
        for chunk in reader:
            process(chunk.data, chunk.timestamps_ns)

A worker that produces data needs :class:`RingWriter`.
"""

from pipeline.errors import (
    EndOfStream,
    ReaderClosed,
    RigpipeError,
    SegmentCorrupt,
    SegmentNotReady,
    StreamExists,
    StreamNotFound,
    WriterClosed,
)
from pipeline.ring import Chunk, RingReader, RingWriter, attach
from pipeline.segments import list_streams, sweep

__all__ = [
    "Chunk",
    "EndOfStream",
    "ReaderClosed",
    "RigpipeError",
    "RingReader",
    "RingWriter",
    "SegmentCorrupt",
    "SegmentNotReady",
    "StreamExists",
    "StreamNotFound",
    "WriterClosed",
    "attach",
    "list_streams",
    "sweep",
]
