"""The byte layout of a ring's two kinds of shared-memory segment.

A stream has one small *stream segment*, named ``shm_name(stream)``, that
says which generation is current and who writes it, and one *generation
segment* per format, named ``shm_name(f"{stream}/buffer{generation}")``, that
holds the frames. A generation segment never changes shape once published: a
new format is a new generation, so a reader never sees a half-changed layout.

Both kinds begin with the same frozen prefix (its offsets never change
between layout versions, so ``sweep`` can judge any segment by its writer)::

    offset  size  field
    0       8     magic  b"RIGPIPE\\x00"
    8       8     layout_version          (LAYOUT_VERSION)
    16      8     kind                    (KIND_STREAM | KIND_GENERATION)
    24      8     generation
    32      8     state                   (INITIALISING | VALID | SUPERSEDED | CLOSED)
    40      8     writer_pid
    48      8     writer_start_ms         (process creation time; guards against pid reuse)
    56      8     name_len                (bytes of the stream name at NAME_AT)

The stream segment continues::

    64      8     final_cursor            the write cursor when the writer closed the stream
    72      8     stream_id               random, nonzero; names one sequence space: it is kept
                                          when a writer takes over a dead writer's stream (the
                                          sequence continues) and is new when a stream is
                                          created afresh (its sequence starts again at 0)
    1024    512   threshold-watch table       8 slots of 64 bytes, drawn in pipeline.ring.watch:
                                          readers ask the writer to wake them only for chunks
                                          that may cross a threshold

A generation segment continues::

    64      8     write_cursor            frames ever published; a sequence, never wraps
    72      8     claim_cursor            end of the frames being copied in right now
    80      8     last_publish_ns         host CLOCK_MONOTONIC of the last publish
    128     4     wake word               (pipeline.wait) own cache line: readers sleep on it
    132     4     waiters flag
    192     8     start_sequence          sequence of this generation's first frame
    200     8     capacity                frames the ring holds
    208     8     sample_rate             float64 (0.0 = irregular, an event stream)
    216     8     frame_bytes
    224     8     format_len              bytes of the msgpack format record at FORMAT_AT
    232     8     data_at                 offset of the frames (4096-aligned)
    240     8     timestamps_at           int64[capacity] device timestamps, ns
    768     256   stream name (utf-8)
    1024    ...   format record: msgpack {dtype, frame_shape, descriptor}
    data_at       capacity x frame_shape frames, then the timestamp array

Publishing frames ``[c, c+n)``: store ``claim_cursor = c+n``, copy into slots
``sequence % capacity``, store ``write_cursor = c+n``, bump the wake word. A
reader that copied frames ``[s, e)`` re-reads ``claim_cursor`` afterwards;
every frame below ``claim_cursor - capacity`` may have been overwritten while
it copied and is counted as dropped, never returned.
"""

from __future__ import annotations

import enum
import os
from typing import Any

import msgspec
import numpy as np

from pipeline.errors import SegmentCorrupt, SegmentNotReady, SharedMemoryFull
from pipeline.ring import shm
from pipeline.ring.naming import data_key, shm_name
from pipeline.ring.wait import WakeWord

MAGIC = b"RIGPIPE\x00"
LAYOUT_VERSION = 3  # 2: stream_id in the stream segment; 3: threshold watches
KIND_STREAM = 1
KIND_GENERATION = 2

# Frozen prefix, in int64 slots.
_VERSION, _KIND, _GENERATION, _STATE, _WRITER_PID, _WRITER_START, _NAME_LEN = range(1, 8)
# GenerationSegment segment fields, in int64 slots. The three cursors are public: the
# ring's hot path indexes ``GenerationSegment.fields`` with them directly.
WRITE_CURSOR, CLAIM_CURSOR, LAST_PUBLISH = 8, 9, 10
_FINAL_CURSOR, _STREAM_ID = 8, 9  # in the stream segment
WAKE_AT = 128
_START_SEQUENCE, _CAPACITY, _SAMPLE_RATE, _FRAME_BYTES = 24, 25, 26, 27
_FORMAT_LEN, _DATA_AT, _TIMESTAMPS_AT = 28, 29, 30
STATE = _STATE  # the hot path compares raw state codes, not State objects
NAME_AT = 768
NAME_MAX = 256
FORMAT_AT = 1024
FORMAT_MAX = 1 << 20
STREAM_SEGMENT_BYTES = 4096
_PAGE = 4096


class State(enum.IntEnum):
    """Lifecycle of a stream or a generation, as stored in its ``state`` field."""

    INITIALISING = 0
    VALID = 1
    SUPERSEDED = 2  # a newer generation (reformat or a restarted writer) replaced this one
    CLOSED = 3  # the writer closed the stream: end of stream


class Format(msgspec.Struct, frozen=True):
    """What one generation holds: the frame dtype and shape, and the stream descriptor."""

    dtype: str | list[Any]
    frame_shape: tuple[int, ...]
    descriptor: dict[str, Any] = {}


def _encode_numpy(obj: Any) -> Any:
    """Let descriptors hold numpy scalars and arrays (stored as plain numbers and lists)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"a stream descriptor cannot hold {type(obj).__name__} values")


_format_encoder = msgspec.msgpack.Encoder(enc_hook=_encode_numpy)
_format_decoder = msgspec.msgpack.Decoder(Format)


def encode_format(fmt: Format) -> bytes:
    """The msgpack record stored in a generation segment; ValueError if it cannot be stored."""
    try:
        record = _format_encoder.encode(fmt)
    except TypeError as exc:
        raise ValueError(f"descriptor must hold only msgpack-able values: {exc}") from exc
    if len(record) > FORMAT_MAX:
        raise ValueError(
            f"the stream descriptor encodes to {len(record)} bytes; the limit is {FORMAT_MAX}"
        )
    return record


def dtype_to_record(dtype: np.dtype) -> str | list[Any]:
    """A msgpack-friendly description of ``dtype`` (structured dtypes included)."""
    if dtype.hasobject:
        raise ValueError(f"dtype {dtype} holds Python objects, which cannot live in shared memory")
    return np.lib.format.dtype_to_descr(dtype)


def dtype_from_record(record: str | list[Any]) -> np.dtype:
    if isinstance(record, str):
        return np.dtype(record)
    return np.lib.format.descr_to_dtype(_fields_from_lists(record))


def _fields_from_lists(record: list[Any]) -> list[tuple[Any, ...]]:
    """msgpack turned numpy's field tuples into lists; numpy wants them back as tuples."""
    fields = []
    for name, descr, *shape in record:
        sub = descr if isinstance(descr, str) else _fields_from_lists(descr)
        fields.append((name, sub, *(tuple(s) for s in shape)))
    return fields


def new_stream_id() -> int:
    """A random nonzero int64 naming one sequence space of a stream."""
    return int.from_bytes(os.urandom(8), "little") >> 1 or 1


def _align(offset: int, to: int = _PAGE) -> int:
    return (offset + to - 1) // to * to


class Header:
    """The frozen prefix of any rigpipe segment, plus its int64 field view.

    ``fields`` is an int64 memoryview over the first 1024 bytes; its owner
    releases it with ``release()`` before closing the segment.
    """

    def __init__(self, segment: shm.Segment) -> None:
        if segment.size < FORMAT_AT:
            raise SegmentCorrupt(
                f"segment {segment.name!r} is {segment.size} bytes, too small to be a rigpipe ring"
            )
        self.segment = segment
        self.fields = segment.buf[:FORMAT_AT].cast("q")

    def release(self) -> None:
        self.fields.release()

    # Fields every segment has.
    @property
    def magic_ok(self) -> bool:
        return bytes(self.segment.buf[:8]) == MAGIC

    @property
    def kind(self) -> int:
        return self.fields[_KIND]

    @property
    def generation(self) -> int:
        return self.fields[_GENERATION]

    @property
    def state(self) -> State:
        try:
            return State(self.fields[_STATE])
        except ValueError:
            raise SegmentCorrupt(
                f"segment {self.segment.name!r} has unknown state {self.fields[_STATE]}"
            ) from None

    @state.setter
    def state(self, value: State) -> None:
        self.fields[_STATE] = int(value)

    @property
    def writer(self) -> tuple[int, int]:
        """(pid, start time in ms) of the process that writes this segment."""
        return self.fields[_WRITER_PID], self.fields[_WRITER_START]

    @property
    def stream(self) -> str:
        length = self.fields[_NAME_LEN]
        if not 0 < length <= NAME_MAX:
            raise SegmentCorrupt(
                f"segment {self.segment.name!r} has a stream name of {length} bytes"
            )
        return bytes(self.segment.buf[NAME_AT : NAME_AT + length]).decode(errors="replace")

    def write_prefix(
        self, kind: int, stream: str, generation: int, writer: tuple[int, int]
    ) -> None:
        """Fill the prefix of a fresh segment; the magic is stored last, making it valid."""
        name = stream.encode()
        fields = self.fields
        fields[_VERSION] = LAYOUT_VERSION
        fields[_KIND] = kind
        fields[_GENERATION] = generation
        fields[_STATE] = int(State.INITIALISING)
        fields[_WRITER_PID], fields[_WRITER_START] = writer
        fields[_NAME_LEN] = len(name)
        self.segment.buf[NAME_AT : NAME_AT + len(name)] = name
        self.segment.buf[:8] = MAGIC

    def validate(self, kind: int, stream: str | None = None) -> None:
        """Raise SegmentCorrupt unless this is a ``kind`` segment of ``stream``, layout we know."""
        name = self.segment.name
        if not any(self.segment.buf[:8]):
            raise SegmentNotReady(f"segment {name!r} is still being created by its writer")
        if not self.magic_ok:
            raise SegmentCorrupt(
                f"segment {name!r} has magic {bytes(self.segment.buf[:8])!r}, expected {MAGIC!r}: "
                "it was not written by rigpipe; remove it with `rigpipe sweep` if it is stale"
            )
        if self.fields[_VERSION] != LAYOUT_VERSION:
            raise SegmentCorrupt(
                f"segment {name!r} has ring layout version {self.fields[_VERSION]}, this rigpipe "
                f"reads version {LAYOUT_VERSION}: run the same rigpipe version on both sides"
            )
        if self.fields[_KIND] != kind:
            raise SegmentCorrupt(
                f"segment {name!r} is of kind {self.fields[_KIND]}, expected {kind}"
            )
        if stream is not None and self.stream != stream:
            raise SegmentCorrupt(
                f"segment {name!r} belongs to stream {self.stream!r}, not {stream!r} "
                "(a shared-memory name collision); rename one of the streams"
            )


class StreamSegment:
    """The per-stream segment: the current generation and who writes it."""

    def __init__(self, segment: shm.Segment) -> None:
        self.segment = segment
        self.header = Header(segment)

    @classmethod
    def create(
        cls, stream: str, writer: tuple[int, int], stream_id: int | None = None, generation: int = 0
    ) -> StreamSegment:
        """Create the stream segment; FileExistsError if the stream already has one.

        ``stream_id`` is new unless given: a writer re-creating a segment that
        was unlinked under it keeps its id, since its sequence continues.
        """
        seg = cls(shm.Segment.create(shm_name(stream), STREAM_SEGMENT_BYTES))
        seg.header.fields[_STREAM_ID] = stream_id or new_stream_id()
        seg.header.write_prefix(KIND_STREAM, stream, generation, writer)
        return seg

    @classmethod
    def open(cls, stream: str) -> StreamSegment:
        """Attach to ``stream``'s segment.

        FileNotFoundError if it is absent, SegmentCorrupt if it is not a rigpipe stream segment.
        """
        seg = cls(shm.Segment.attach(shm_name(stream)))
        try:
            seg.header.validate(KIND_STREAM, stream)
        except BaseException:
            seg.close()
            raise
        return seg

    def publish(self, generation: int, writer: tuple[int, int]) -> None:
        """Point the stream at ``generation`` (already fully built) written by ``writer``."""
        fields = self.header.fields
        fields[_WRITER_PID], fields[_WRITER_START] = writer
        fields[_GENERATION] = generation
        self.header.state = State.VALID

    @property
    def stream_id(self) -> int:
        """Names this stream's sequence space (see the layout drawing)."""
        return self.header.fields[_STREAM_ID]

    def renew(self) -> None:
        """Give the stream a new sequence space, keeping this segment: a writer starting a
        stream whose segment outlived its end (held open elsewhere, as Windows keeps it)."""
        self.header.fields[_STREAM_ID] = new_stream_id()

    @property
    def final_cursor(self) -> int:
        """The write cursor at which the writer closed the stream (valid once CLOSED)."""
        return self.header.fields[_FINAL_CURSOR]

    def end(self, final_cursor: int) -> None:
        """Record that the stream closed after ``final_cursor`` frames."""
        self.header.fields[_FINAL_CURSOR] = final_cursor
        self.header.state = State.CLOSED

    def close(self) -> None:
        self.header.release()
        self.segment.close()


class GenerationSegment:
    """One mapped generation segment: typed views of its frames, timestamps and cursors."""

    def __init__(self, segment: shm.Segment) -> None:
        self.segment = segment
        self.header = Header(segment)
        self.fields = self.header.fields
        self.header.validate(KIND_GENERATION)
        f = self.fields
        fmt_len = f[_FORMAT_LEN]
        capacity = f[_CAPACITY]
        if not (0 < fmt_len <= FORMAT_MAX and capacity > 0):
            raise SegmentCorrupt(
                f"segment {segment.name!r} has format length {fmt_len} and capacity {capacity}"
            )
        try:
            self.format = _format_decoder.decode(segment.buf[FORMAT_AT : FORMAT_AT + fmt_len])
            self.dtype = dtype_from_record(self.format.dtype)
        except (msgspec.DecodeError, ValueError, TypeError) as exc:
            raise SegmentCorrupt(
                f"segment {segment.name!r} has an unreadable format: {exc}"
            ) from exc
        self.frame_shape = tuple(self.format.frame_shape)
        self.capacity = capacity
        self.start_sequence = f[_START_SEQUENCE]
        self.sample_rate = segment.buf[_SAMPLE_RATE * 8 : _SAMPLE_RATE * 8 + 8].cast("d")[0]
        frame_bytes = self.dtype.itemsize * int(np.prod(self.frame_shape, dtype=np.int64))
        end = f[_TIMESTAMPS_AT] + 8 * capacity
        if frame_bytes != f[_FRAME_BYTES] or end > segment.size:
            raise SegmentCorrupt(
                f"segment {segment.name!r}: header says {f[_FRAME_BYTES]} bytes a frame and "
                f"{end} bytes in all, the format and size say {frame_bytes} and {segment.size}"
            )
        buf = segment.buf
        self.frames = np.ndarray(
            (capacity, *self.frame_shape), self.dtype, buffer=buf, offset=f[_DATA_AT]
        )
        self.timestamps_ns = np.ndarray((capacity,), np.int64, buffer=buf, offset=f[_TIMESTAMPS_AT])
        self.wake = WakeWord(buf, WAKE_AT)

    @classmethod
    def create(
        cls,
        stream: str,
        generation: int,
        fmt: Format,
        capacity: int,
        sample_rate: float,
        start_sequence: int,
        writer: tuple[int, int],
    ) -> GenerationSegment:
        """Build generation ``generation`` in a new segment, fully initialised and VALID."""
        dtype = dtype_from_record(fmt.dtype)
        record = encode_format(fmt)
        frame_bytes = dtype.itemsize * int(np.prod(fmt.frame_shape, dtype=np.int64))
        data_at = _align(FORMAT_AT + len(record))
        timestamps_at = _align(data_at + capacity * frame_bytes, 64)
        name = shm_name(data_key(stream, generation))
        shm.unlink(name)  # a leftover from a writer that died while reformatting
        try:
            segment = shm.Segment.create(name, timestamps_at + 8 * capacity)
        except SharedMemoryFull as exc:
            raise SharedMemoryFull(
                f"stream {stream!r} cannot hold {capacity} frames of {frame_bytes} bytes: {exc}"
            ) from None
        header = Header(segment)
        f = header.fields
        f[WRITE_CURSOR] = f[CLAIM_CURSOR] = f[_START_SEQUENCE] = start_sequence
        f[_CAPACITY] = capacity
        f[_FRAME_BYTES] = frame_bytes
        f[_FORMAT_LEN] = len(record)
        f[_DATA_AT], f[_TIMESTAMPS_AT] = data_at, timestamps_at
        segment.buf[_SAMPLE_RATE * 8 : _SAMPLE_RATE * 8 + 8].cast("d")[0] = float(sample_rate)
        segment.buf[FORMAT_AT : FORMAT_AT + len(record)] = record
        header.write_prefix(KIND_GENERATION, stream, generation, writer)
        header.state = State.VALID
        header.release()
        return cls(segment)

    @classmethod
    def open(cls, stream: str, number: int) -> GenerationSegment:
        """Attach to generation ``number`` of ``stream``; FileNotFoundError if it is gone."""
        segment = shm.Segment.attach(shm_name(data_key(stream, number)))
        try:
            opened = cls(segment)
            opened.header.validate(KIND_GENERATION, stream)
        except BaseException:
            segment.close()
            raise
        return opened

    # Cursors (the hot path reads these directly through ``fields``).
    @property
    def write_cursor(self) -> int:
        return self.fields[WRITE_CURSOR]

    @property
    def claim_cursor(self) -> int:
        return self.fields[CLAIM_CURSOR]

    @property
    def last_publish_ns(self) -> int:
        return self.fields[LAST_PUBLISH]

    @property
    def descriptor(self) -> dict[str, Any]:
        return self.format.descriptor

    def end(self, state: State) -> None:
        """Mark this generation SUPERSEDED or CLOSED and wake every reader sleeping on it."""
        self.header.state = state
        self.wake.notify()

    def close(self) -> None:
        """Drop every view and unmap (readers' copies are unaffected)."""
        self.wake.release()
        del self.frames, self.timestamps_ns, self.wake
        self.header.release()
        self.segment.close()
