"""rigpipe's framework: shared-memory rings, control plane, supervision.

An outside process needs only :func:`attach`::

    import pipeline
    with pipeline.attach("default/acq/continuous") as reader:
        for chunk in reader:
            process(chunk.data, chunk.timestamps_ns)

A stream writer needs :class:`RingWriter`; a worker kind subclasses :class:`Worker`.
A decoder closes the loop through :func:`stimulator` (``pipeline.control.stimulator``), and
asks for real-time scheduling with :func:`make_realtime` (``pipeline.host.scheduling``).
A recording is read back with :func:`open_recording`::

    with pipeline.open_recording("recordings/demo-20261122-101500") as rec:
        x = rec[0:8, 0:30000]   # (channels, frames) over every segment file
"""

from typing import Any

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
    SharedMemoryFull,
    SliceTooLarge,
    StimulationRefused,
    StreamExists,
    StreamNotFound,
    StreamReplaced,
    WatchesFull,
    WriterClosed,
)
from pipeline.host.scheduling import make_realtime
from pipeline.ring import Chunk, RingReader, RingWriter, ThresholdWatch
from pipeline.ring import attach as _attach_full_name
from pipeline.ring.segments import list_streams, sweep


def attach(
    stream: str, *, from_now: bool = True, cursor: int | None = None, stream_id: int | None = None
) -> RingReader:
    """Attach a reader to ``stream`` from any process, knowing only its name.

    ``stream`` is a full name (``demo/acq/continuous``) or, inside the running
    rig (``$RIGPIPE_SESSION``, else the only one running), ``acq/continuous``.
    The rest is :func:`pipeline.ring.attach`'s: ``from_now=True`` starts at the
    next frame, ``False`` at the oldest frame the ring holds, ``cursor`` at that
    sequence of stream ``stream_id``.
    """
    if stream.count("/") != 1:
        return _attach_full_name(stream, from_now=from_now, cursor=cursor, stream_id=stream_id)
    from pipeline.control.session import resolve_stream  # "worker/port" of the running rig

    full = resolve_stream(stream)
    try:
        return _attach_full_name(full, from_now=from_now, cursor=cursor, stream_id=stream_id)
    except StreamNotFound as missing:  # name the streams of that rig, not of every rig
        session = full.partition("/")[0]
        existing = missing.existing
        ours = None if existing is None else [s for s in existing if s.startswith(f"{session}/")]
        raise StreamNotFound(full, ours) from None


def __getattr__(name: str) -> Any:
    # Imported on first use: ``python -m pipeline.worker`` must not find it imported already.
    if name == "Worker":
        from pipeline.worker import Worker

        return Worker
    if name == "stimulator":  # a stimulation worker reached directly (closed loop)
        from pipeline.control.stimulator import stimulator

        return stimulator
    if name in ("open_recording", "Recording"):  # h5py is imported only by those who read files
        from pipeline.recording import readback

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
    "SharedMemoryFull",
    "SliceTooLarge",
    "StimulationRefused",
    "StreamExists",
    "StreamNotFound",
    "StreamReplaced",
    "ThresholdWatch",
    "WatchesFull",
    "Worker",
    "WriterClosed",
    "attach",
    "list_streams",
    "make_realtime",
    "open_recording",
    "stimulator",
    "sweep",
]
