"""Shared-memory ring buffers: one writer, any number of readers, no locks.

Vocabulary (after the LMAX Disruptor): a *sequence* numbers every frame a
stream has ever published and never wraps; the writer's ``write_cursor`` is
the sequence after its last published frame; frame ``s`` lives in slot
``s % capacity``; each reader keeps its own ``cursor``; a *generation* is one
incarnation of the stream's buffer (a new format, or a restarted writer).
Sequences continue across generations, so a reader's cursor always means the
same frame. The byte layout is drawn in :mod:`pipeline.layout`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline import naming, shm
from pipeline.errors import (
    EndOfStream,
    ReaderClosed,
    SegmentCorrupt,
    SegmentNotReady,
    StreamExists,
    StreamNotFound,
    StreamReplaced,
    WriterClosed,
)
from pipeline.layout import (
    CLAIM_CURSOR,
    LAST_PUBLISH,
    STATE,
    WRITE_CURSOR,
    Format,
    Generation,
    State,
    StreamSegment,
    dtype_to_record,
    encode_format,
)
from pipeline.segments import list_streams, process_alive, process_identity

_ATTACH_RETRY_S = 1.0  # how long attach waits for a segment that is being created or replaced
_LINK_CHECK_NS = 1_000_000_000  # how often a writer checks that its segments are still reachable


# -- chunks ----------------------------------------------------------------------------------------
class _FrameSpan:
    """What ``Chunk`` and ``ChunkView`` share: frames ``data`` starting at ``start_cursor``."""

    __slots__ = ()
    data: np.ndarray
    start_cursor: int

    @property
    def frames(self) -> int:
        return len(self.data)

    @property
    def end_cursor(self) -> int:
        """Sequence number just past the last frame."""
        return self.start_cursor + len(self.data)

    def __len__(self) -> int:
        return len(self.data)


@dataclass(frozen=True, slots=True)
class Chunk(_FrameSpan):
    """Frames handed to a reader: copies, never views of the live ring."""

    data: np.ndarray
    """``(frames, *frame_shape)`` copy of the frames, in the stream's dtype."""
    timestamps_ns: np.ndarray
    """int64 ``(frames,)``: the device timestamp of every frame, ns."""
    start_cursor: int
    """Sequence number of ``data[0]``; the next chunk starts at ``end_cursor + its dropped``."""
    dropped: int
    """Frames lost just before this chunk because the writer lapped the reader (exact)."""
    generation: int
    """Generation these frames came from."""
    format_changed: bool = False
    """True on the first chunk after the reader switched to a new generation."""


class ChunkView(_FrameSpan):
    """Frames handed out by :meth:`RingReader.read_view`: read-only views of the ring.

    Valid until ``release()`` (or the end of the ``with`` block); after that,
    ``intact`` says whether the writer overwrote any of the frames while they
    were in use.
    """

    __slots__ = ("_gen", "_intact", "_reader", "data", "dropped", "generation")
    __slots__ += ("format_changed", "start_cursor", "timestamps_ns")

    def __init__(
        self,
        reader: RingReader,
        gen: Generation | None,
        data: np.ndarray,
        timestamps_ns: np.ndarray,
        start_cursor: int,
        dropped: int,
        generation: int,
        format_changed: bool = False,
    ) -> None:
        self._reader = reader
        self._gen = gen
        self._intact: bool | None = None
        self.data = data
        self.timestamps_ns = timestamps_ns
        self.start_cursor = start_cursor
        self.dropped = dropped
        self.generation = generation
        self.format_changed = format_changed

    def _overwritten(self) -> int:
        gen = self._gen
        if gen is None:
            return 0
        oldest_safe = gen.fields[CLAIM_CURSOR] - gen.capacity
        return max(0, min(oldest_safe, self.end_cursor) - self.start_cursor)

    @property
    def intact(self) -> bool:
        """True if no viewed frame has been overwritten (so far, or until ``release``)."""
        if self._intact is not None:
            return self._intact
        return self._overwritten() == 0

    def release(self) -> None:
        """Stop using the view: settle whether it stayed intact and drop the references."""
        if self._intact is not None:
            return
        overwritten = self._overwritten()
        self._intact = overwritten == 0
        self._reader._dropped_total += overwritten
        self._gen = None
        self.data = self.data[:0].copy()
        self.timestamps_ns = self.timestamps_ns[:0].copy()

    def __enter__(self) -> ChunkView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# -- writer --------------------------------------------------------------------------------------
class RingWriter:
    """Create stream ``stream`` and publish frames into it.

    ``dtype`` and ``frame_shape`` describe one frame (``frame_shape=(256,)``
    for 256 channels, ``()`` for a structured event record); ``capacity`` is
    how many frames the ring keeps for readers that fall behind;
    ``sample_rate`` is in Hz (0.0 for an irregular event stream);
    ``descriptor`` is a small msgpack-able dict (channel labels, units, scale
    factors, source) that readers get with the stream.

    If a previous writer of the stream died without closing it, this writer
    takes the stream over as a new generation, continuing its sequence and
    keeping its ``stream_id``, so attached readers follow it. If that writer is
    still alive, :class:`StreamExists` is raised.

    Once a second (while writing) the writer checks that its segments' names
    still refer to them. If another program unlinked one, the writer creates
    it again as a new generation under the same ``stream_id`` and sequence;
    readers follow as after a reformat, and ``relinks`` / ``relink_reason``
    say it happened. If a foreign segment took the name, :class:`StreamExists`
    is raised from ``write``.
    """

    def __init__(
        self,
        stream: str,
        dtype: np.typing.DTypeLike,
        frame_shape: int | Sequence[int],
        capacity: int,
        sample_rate: float,
        descriptor: dict[str, Any] | None = None,
    ) -> None:
        self.stream = naming.validate_stream(stream)
        fmt, capacity, sample_rate = _check_format(
            dtype, frame_shape, capacity, sample_rate, descriptor
        )
        self._identity = process_identity()
        self._closed = False
        self._meta, previous, created = _claim_stream(stream, self._identity)
        try:
            start_cursor = 0 if previous is None else previous.write_cursor
            generation = self._meta.header.generation + 1
            self._gen = Generation.create(
                stream, generation, fmt, capacity, sample_rate, start_cursor, self._identity
            )
        except BaseException:
            if created:
                self._meta.segment.unlink()
            self._meta.close()
            if previous is not None:
                previous.close()
            raise
        self._meta.publish(generation, self._identity)
        if previous is not None:
            _retire(previous, State.SUPERSEDED)
        self._orphans: list[StreamSegment] = []  # unlinked stream segments readers may still map
        self.relinks = 0
        self.relink_reason = ""
        self._next_link_check = time.monotonic_ns() + _LINK_CHECK_NS
        self._bind(self._gen)

    def _bind(self, gen: Generation) -> None:
        """Cache what the hot path touches for generation ``gen``."""
        self._fields = gen.fields
        self._frames = gen.frames
        self._timestamps = gen.timestamps_ns
        self._wake = gen.wake
        self._capacity = gen.capacity
        self._cursor = gen.write_cursor
        self._frame_shape = gen.frame_shape
        self._dtype = gen.dtype
        self._period_ns = 1e9 / gen.sample_rate if gen.sample_rate > 0 else 0.0
        self._offsets: dict[int, np.ndarray] = {}

    # Properties of the current generation.
    @property
    def generation(self) -> int:
        return self._gen.header.generation

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def frame_shape(self) -> tuple[int, ...]:
        return self._frame_shape

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def sample_rate(self) -> float:
        return self._gen.sample_rate

    @property
    def descriptor(self) -> dict[str, Any]:
        return self._gen.descriptor

    @property
    def write_cursor(self) -> int:
        return self._cursor

    @property
    def stream_id(self) -> int:
        """Names this stream's sequence space; a stream created afresh gets a new one."""
        return self._meta.stream_id

    def write(self, frames: np.ndarray, timestamps_ns: np.ndarray | None = None) -> int:
        """Publish ``frames`` (time on the first axis); return the new write cursor.

        ``timestamps_ns`` gives each frame's device time; without it, frames
        are stamped from the host monotonic clock, the last frame now and the
        earlier ones one sample period apart.
        """
        if self._closed:
            raise WriterClosed(f"RingWriter for {self.stream!r} is closed")
        if not isinstance(frames, np.ndarray):
            frames = np.asarray(frames)
        dtype = frames.dtype
        if (
            frames.ndim == 0
            or (dtype is not self._dtype and dtype != self._dtype)
            or frames.shape[1:] != self._frame_shape
        ):
            raise ValueError(
                f"stream {self.stream!r} expects frames of shape (n, "
                f"{', '.join(map(str, self._frame_shape))}) dtype {self._dtype}; "
                f"given shape {frames.shape} dtype {frames.dtype}"
            )
        n = len(frames)
        capacity = self._capacity
        if n == 0:
            return self._cursor
        if n > capacity:
            raise ValueError(
                f"a write of {n} frames does not fit stream {self.stream!r}, which holds "
                f"{capacity}; write smaller blocks or create the ring with a larger capacity"
            )
        if timestamps_ns is not None:
            timestamps_ns = np.asarray(timestamps_ns, dtype=np.int64)
            if timestamps_ns.shape != (n,):
                raise ValueError(
                    f"timestamps_ns has shape {timestamps_ns.shape}; expected ({n},), one per frame"
                )
        now = time.monotonic_ns()
        if now >= self._next_link_check:
            self._next_link_check = now + _LINK_CHECK_NS
            self.check_linked()
        cursor = self._cursor
        fields = self._fields
        fields[CLAIM_CURSOR] = cursor + n
        slot = cursor % capacity
        if slot + n <= capacity:  # the common case: one contiguous run of slots
            self._frames[slot : slot + n] = frames
            if timestamps_ns is None:
                np.subtract(now, self._timestamp_offsets(n), out=self._timestamps[slot : slot + n])
            else:
                self._timestamps[slot : slot + n] = timestamps_ns
        else:
            if timestamps_ns is None:
                timestamps_ns = now - self._timestamp_offsets(n)
            first = capacity - slot
            self._frames[slot:] = frames[:first]
            self._frames[: n - first] = frames[first:]
            self._timestamps[slot:] = timestamps_ns[:first]
            self._timestamps[: n - first] = timestamps_ns[first:]
        cursor += n
        fields[WRITE_CURSOR] = cursor
        fields[LAST_PUBLISH] = now
        self._cursor = cursor
        self._wake.notify()
        return cursor

    def _timestamp_offsets(self, n: int) -> np.ndarray:
        offsets = self._offsets.get(n)
        if offsets is None:
            offsets = np.round(np.arange(n - 1, -1, -1) * self._period_ns).astype(np.int64)
            self._offsets[n] = offsets
        return offsets

    def reformat(
        self,
        *,
        dtype: np.typing.DTypeLike | None = None,
        frame_shape: int | Sequence[int] | None = None,
        sample_rate: float | None = None,
        descriptor: dict[str, Any] | None = None,
        capacity: int | None = None,
    ) -> int:
        """Start generation N+1 with a new format; return its number.

        Arguments left out keep their current value. Readers finish the
        frames of generation N, then switch by themselves and see
        ``format_changed`` on their next chunk. The sequence continues.
        """
        if self._closed:
            raise WriterClosed(f"RingWriter for {self.stream!r} is closed")
        old = self._gen
        fmt, capacity, sample_rate = _check_format(
            old.dtype if dtype is None else dtype,
            old.frame_shape if frame_shape is None else frame_shape,
            old.capacity if capacity is None else capacity,
            old.sample_rate if sample_rate is None else sample_rate,
            old.descriptor if descriptor is None else descriptor,
        )
        gen = Generation.create(
            self.stream,
            old.header.generation + 1,
            fmt,
            capacity,
            sample_rate,
            self._cursor,
            self._identity,
        )
        for meta in (self._meta, *self._orphans):
            meta.publish(gen.header.generation, self._identity)
        self._gen = gen
        self._bind(gen)
        _retire(old, State.SUPERSEDED)
        return gen.header.generation

    def check_linked(self) -> bool:
        """Make sure new readers can still find this stream; True if nothing had to be done.

        Called by ``write`` once a second; call it from the writing thread
        only. A segment whose name was unlinked is created again (see the
        class docstring).
        """
        stream_gone = not self._meta.segment.linked()
        if not stream_gone and self._gen.segment.linked():
            return True
        what = "stream segment" if stream_gone else f"generation {self.generation} segment"
        if stream_gone:
            old = self._meta
            try:
                self._meta = StreamSegment.create(
                    self.stream, self._identity, old.stream_id, old.header.generation
                )
            except FileExistsError:
                raise StreamExists(
                    f"the shared-memory name of stream {self.stream!r} was unlinked and now "
                    f"belongs to another segment ({naming.shm_name(self.stream)}); "
                    "this writer cannot publish under it any more"
                ) from None
            self._orphans.append(old)
        self.reformat()
        self.relinks += 1
        self.relink_reason = (
            f"the {what} of {self.stream!r} was unlinked by another process; "
            f"re-created as generation {self.generation}, nothing lost"
        )
        return False

    def close(self) -> None:
        """End the stream: readers get the remaining frames, then EndOfStream. Idempotent."""
        if self._closed:
            return
        self._closed = True
        del self._fields, self._frames, self._timestamps, self._wake
        for meta in (self._meta, *self._orphans):
            meta.end(self._cursor)
        if self._meta.segment.linked():
            self._meta.segment.unlink()
        for meta in (self._meta, *self._orphans):
            meta.close()
        _retire(self._gen, State.CLOSED)

    def __enter__(self) -> RingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"generation {self.generation}, cursor {self._cursor}"
        return f"<RingWriter {self.stream!r} {state}>"


def _check_format(
    dtype: np.typing.DTypeLike,
    frame_shape: int | Sequence[int],
    capacity: int,
    sample_rate: float,
    descriptor: dict[str, Any] | None,
) -> tuple[Format, int, float]:
    """Validate writer arguments; return the format record, capacity and rate."""
    dt = np.dtype(dtype)
    shape = (frame_shape,) if isinstance(frame_shape, int | np.integer) else tuple(frame_shape)
    if not all(isinstance(d, int | np.integer) and d > 0 for d in shape):
        raise ValueError(f"frame_shape must be positive integers, given {frame_shape!r}")
    if not isinstance(capacity, int | np.integer) or capacity < 1:
        raise ValueError(f"capacity must be a positive number of frames, given {capacity!r}")
    if not np.isfinite(sample_rate) or sample_rate < 0:
        raise ValueError(
            "sample_rate must be a finite rate in Hz, or 0.0 for an event stream; "
            f"given {sample_rate!r}"
        )
    if descriptor is not None and not isinstance(descriptor, dict):
        raise TypeError(f"descriptor must be a dict, given {type(descriptor).__name__}")
    fmt = Format(dtype_to_record(dt), tuple(int(d) for d in shape), dict(descriptor or {}))
    encode_format(fmt)  # refuse an unstorable descriptor before any segment exists
    return fmt, int(capacity), float(sample_rate)


def _claim_stream(
    stream: str, identity: tuple[int, int]
) -> tuple[StreamSegment, Generation | None, bool]:
    """Create the stream segment, or take over one whose writer died.

    Returns the stream segment, the previous writer's current generation
    (None for a new stream or when that generation is gone) and whether the
    stream segment was created here.
    """
    try:
        return StreamSegment.create(stream, identity), None, True
    except FileExistsError:
        pass
    try:
        meta = StreamSegment.open(stream)
    except (FileNotFoundError, SegmentCorrupt):
        # A stale or foreign leftover under our name, and nobody can attach to it: replace it.
        shm.unlink(naming.shm_name(stream))
        return StreamSegment.create(stream, identity), None, True
    pid, start_ms = meta.header.writer
    if meta.header.state is not State.CLOSED and process_alive(pid, start_ms):
        meta.close()
        raise StreamExists(
            f"stream {stream!r} is already written by live process {pid}; "
            "stop that writer or choose another stream name"
        )
    try:
        previous = Generation.open(stream, meta.header.generation)
    except (FileNotFoundError, SegmentCorrupt):
        previous = None
    return meta, previous, False


def _retire(gen: Generation, state: State) -> None:
    """End generation ``gen`` (SUPERSEDED or CLOSED), wake its readers, unlink and unmap it."""
    gen.end(state)
    if gen.segment.linked():  # never unlink a name that now belongs to another segment
        gen.segment.unlink()
    gen.close()


# -- reader ----------------------------------------------------------------------------------------
class RingReader:
    """Reads one stream from any process; made by :func:`attach`.

    Not thread-safe: give each thread its own reader.
    """

    def __init__(self, stream: str, meta: StreamSegment, gen: Generation, cursor: int) -> None:
        self.stream = stream
        self._meta = meta
        self._gen = gen
        self._cursor = cursor
        self._pending_dropped = 0
        self._dropped_total = 0
        self._format_changed = False
        self._closed = False

    # Properties of the generation the reader is on.
    @property
    def generation(self) -> int:
        return self._current().header.generation

    @property
    def dtype(self) -> np.dtype:
        return self._current().dtype

    @property
    def frame_shape(self) -> tuple[int, ...]:
        return self._current().frame_shape

    @property
    def capacity(self) -> int:
        return self._current().capacity

    @property
    def sample_rate(self) -> float:
        return self._current().sample_rate

    @property
    def descriptor(self) -> dict[str, Any]:
        return self._current().descriptor

    @property
    def write_cursor(self) -> int:
        return self._current().fields[WRITE_CURSOR]

    @property
    def cursor(self) -> int:
        """Sequence of the next frame this reader will return."""
        return self._cursor

    @property
    def dropped_total(self) -> int:
        """Frames this reader lost since it attached (the sum of every chunk's ``dropped``,
        plus any loss not yet reported because no chunk followed it)."""
        return self._dropped_total + self._pending_dropped

    @property
    def lag(self) -> int:
        """Frames published but not yet read by this reader."""
        return self.write_cursor - self._cursor

    @property
    def stream_id(self) -> int:
        """The id of the stream's sequence space (see :class:`StreamReplaced`)."""
        return self._meta.stream_id

    @property
    def writer_alive(self) -> bool:
        """True while the process writing the current generation runs and has not closed it."""
        gen = self._current()
        if gen.header.state is State.CLOSED:
            return False
        return process_alive(*gen.header.writer)

    def _current(self) -> Generation:
        """The reader's generation, after following any newer one that replaced it."""
        if self._closed:
            raise ReaderClosed(f"RingReader for {self.stream!r} is closed")
        gen = self._gen
        if gen.fields[STATE] == State.SUPERSEDED and gen.fields[WRITE_CURSOR] <= self._cursor:
            self._switch()
        return self._gen

    def read(self, max_frames: int | None = None, timeout_s: float | None = None) -> Chunk:
        """Return the frames published since the last read, waiting up to ``timeout_s``.

        At most ``max_frames`` frames come back (all available if None). If
        nothing arrives in time the chunk is empty. ``timeout_s=None`` waits
        until frames arrive; ``0`` does not wait. Raises :class:`EndOfStream`
        once the writer closed the stream and everything was read.
        """
        deadline = _deadline(max_frames, timeout_s)
        while True:
            gen = self._await(deadline)
            if gen is None:
                return self._empty(self._gen)
            chunk = self._copy(gen, max_frames)
            if chunk is not None:
                return chunk

    def read_view(self, max_frames: int | None = None, timeout_s: float | None = None) -> ChunkView:
        """Like :meth:`read`, but the data is a read-only view of the ring itself (no copy).

        Use it as a context manager and check ``view.intact`` after the block:
        if the writer overwrote any of the viewed frames while they were in
        use, ``intact`` is False, the caller must discard what it computed,
        and those frames count in ``dropped_total``. A view never spans the
        ring's wrap-around, so it may hold fewer frames than are available.
        """
        deadline = _deadline(max_frames, timeout_s)
        while True:
            gen = self._await(deadline)
            if gen is None:
                empty = self._empty(self._gen)
                return ChunkView(self, None, empty.data, empty.timestamps_ns, self._cursor, 0, 0)
            fields = gen.fields
            capacity = gen.capacity
            write = fields[WRITE_CURSOR]
            start = max(self._cursor, fields[CLAIM_CURSOR] - capacity, gen.start_cursor)
            slot = start % capacity
            end = min(write, start + capacity - slot)
            if max_frames is not None:
                end = min(end, start + max_frames)
            if end <= start:  # lapped again since we looked: count it, look again
                self._pending_dropped += start - self._cursor
                self._cursor = start
                continue
            dropped = self._account(start, end)
            data = gen.frames[slot : slot + end - start]
            timestamps = gen.timestamps_ns[slot : slot + end - start]
            data.flags.writeable = timestamps.flags.writeable = False
            changed, self._format_changed = self._format_changed, False
            generation = gen.header.generation
            return ChunkView(self, gen, data, timestamps, start, dropped, generation, changed)

    def _await(self, deadline: float | None) -> Generation | None:
        """Wait until a frame past the cursor is published; return its generation.

        None when the deadline passes first; EndOfStream when the stream ended.
        """
        if self._closed:
            raise ReaderClosed(f"RingReader for {self.stream!r} is closed")
        while True:
            gen = self._gen
            fields = gen.fields
            seen = gen.wake.load()
            state = fields[STATE]  # read before the cursor: a state change follows the last publish
            if fields[WRITE_CURSOR] > self._cursor:
                return gen
            if state == State.SUPERSEDED:
                self._switch()
                continue
            if state == State.CLOSED:
                raise EndOfStream(f"stream {self.stream!r} was closed by its writer")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            gen.wake.wait(seen, remaining)

    def _account(self, start: int, end: int) -> int:
        """Move the cursor to ``end``; return the frames lost before ``start`` (exact)."""
        dropped = start - self._cursor + self._pending_dropped
        self._cursor = end
        self._pending_dropped = 0
        self._dropped_total += dropped
        return dropped

    def __iter__(self) -> Iterator[Chunk]:
        """Yield chunks as they arrive, until the writer closes the stream."""
        while True:
            try:
                yield self.read()
            except EndOfStream:
                return

    def _copy(self, gen: Generation, max_frames: int | None) -> Chunk | None:
        """Copy frames from the reader's cursor; None if every one was overwritten meanwhile."""
        fields = gen.fields
        capacity = gen.capacity
        write = fields[WRITE_CURSOR]
        start = max(self._cursor, fields[CLAIM_CURSOR] - capacity, gen.start_cursor)
        if start > write:  # the writer lapped us again since we read write_cursor
            write = start
        end = write if max_frames is None else min(write, start + max_frames)
        data, timestamps = _copy_slots(gen, start, end)
        # Frames below claim - capacity may have been overwritten while we copied.
        intact_from = fields[CLAIM_CURSOR] - capacity
        if intact_from > start:
            cut = min(intact_from, end) - start
            data, timestamps, start = data[cut:], timestamps[cut:], start + cut
        if start == end:
            self._pending_dropped += start - self._cursor
            self._cursor = end
            return None
        dropped = self._account(start, end)
        changed, self._format_changed = self._format_changed, False
        return Chunk(data, timestamps, start, dropped, gen.header.generation, changed)

    def latest(self, n: int) -> Chunk:
        """The newest ``n`` frames (fewer if the stream holds fewer), for displays.

        Does not move the reader's cursor. ``dropped`` is always 0. It follows
        the stream to a new generation at once; frames of the old generation
        that ``read`` had not returned yet then count as dropped.
        """
        if n < 1:
            raise ValueError(f"latest() needs n >= 1, given {n}")
        while True:
            gen = self._current()
            if gen.header.state is State.SUPERSEDED:
                self._switch()
                continue
            fields = gen.fields
            write = fields[WRITE_CURSOR]
            start = max(write - n, fields[CLAIM_CURSOR] - gen.capacity, gen.start_cursor)
            data, timestamps = _copy_slots(gen, start, write)
            intact_from = fields[CLAIM_CURSOR] - gen.capacity
            if intact_from > start:
                cut = min(intact_from, write) - start
                data, timestamps, start = data[cut:], timestamps[cut:], start + cut
            return Chunk(data, timestamps, start, 0, gen.header.generation)

    def _switch(self) -> None:
        """Follow the stream to its current generation.

        Frames skipped on the way (unread frames of the old generation, or a
        whole generation missed) count as dropped.
        """
        deadline = time.monotonic() + _ATTACH_RETRY_S
        while True:
            generation = self._meta.header.generation
            try:
                if generation == self._gen.header.generation:
                    # Writers name the successor before superseding, so this is a
                    # stream segment replaced under us (a swept and re-created stream).
                    raise FileNotFoundError(generation)
                gen = Generation.open(self.stream, generation)
                break
            except FileNotFoundError:
                if self._meta.header.state is State.CLOSED:
                    # The writer closed the stream before this reader could map its last
                    # generation: those frames are out of reach. Count them, then end.
                    final = self._meta.final_cursor
                    self._pending_dropped += max(0, final - self._cursor)
                    self._cursor = max(self._cursor, final)
                    raise EndOfStream(
                        f"stream {self.stream!r} was closed by its writer; its last "
                        "generation closed before this reader reached it"
                    ) from None
                if time.monotonic() > deadline:
                    raise SegmentCorrupt(
                        f"stream {self.stream!r}: generation {self._gen.header.generation} was "
                        f"superseded but its successor {generation} cannot be opened"
                    ) from None
                time.sleep(1e-4)  # replaced again while we looked; re-read the stream segment
        old, self._gen = self._gen, gen
        old.close()
        if self._cursor < gen.start_cursor:
            self._pending_dropped += gen.start_cursor - self._cursor
            self._cursor = gen.start_cursor
        self._format_changed = True

    def _empty(self, gen: Generation) -> Chunk:
        return Chunk(
            np.empty((0, *gen.frame_shape), gen.dtype),
            np.empty(0, np.int64),
            self._cursor,
            0,
            gen.header.generation,
        )

    def close(self) -> None:
        """Detach from the stream (the stream itself is untouched). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._gen.close()
        self._meta.close()

    def __enter__(self) -> RingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._closed:
            return f"<RingReader {self.stream!r} closed>"
        generation = self._gen.header.generation
        return f"<RingReader {self.stream!r} generation {generation} cursor {self._cursor}>"


def _deadline(max_frames: int | None, timeout_s: float | None) -> float | None:
    """Check a read's arguments; return its monotonic deadline (None: wait for data)."""
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1 or None, given {max_frames}")
    return None if timeout_s is None else time.monotonic() + timeout_s


def _copy_slots(gen: Generation, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """Copy frames and timestamps of sequences ``[start, end)`` out of the ring."""
    capacity = gen.capacity
    slot = start % capacity
    n = end - start
    if slot + n <= capacity:
        return gen.frames[slot : slot + n].copy(), gen.timestamps_ns[slot : slot + n].copy()
    head = capacity - slot
    data = np.empty((n, *gen.frame_shape), gen.dtype)
    timestamps = np.empty(n, np.int64)
    data[:head] = gen.frames[slot:]
    data[head:] = gen.frames[: n - head]
    timestamps[:head] = gen.timestamps_ns[slot:]
    timestamps[head:] = gen.timestamps_ns[: n - head]
    return data, timestamps


def attach(
    stream: str, *, from_now: bool = True, cursor: int | None = None, stream_id: int | None = None
) -> RingReader:
    """Attach a reader to ``stream`` from any process, knowing only its name.

    ``stream`` is a full name (``demo/acq/continuous``) or, inside the running
    rig (``$RIGPIPE_SESSION``, else the only one running), ``acq/continuous``.

    ``from_now=True`` starts at the next frame published; ``False`` starts at
    the oldest frame the ring still holds. ``cursor`` starts at that sequence
    number instead (a lossless reader resuming where it stopped): if the ring
    no longer holds it, the first chunk reports the frames lost as ``dropped``.
    A cursor is meaningful only in the stream it came from: pass that
    stream's ``stream_id`` too, and :class:`StreamReplaced` is raised if the
    stream has been created afresh since. A cursor past the write cursor
    raises ValueError (it cannot be of this stream).
    Raises :class:`StreamNotFound` (listing the streams that exist) or
    :class:`SegmentCorrupt`.
    """
    if stream.count("/") == 1:  # "worker/port": a stream of the running session
        from pipeline.session import resolve_stream

        stream = resolve_stream(stream)
    naming.validate_stream(stream)
    deadline = time.monotonic() + _ATTACH_RETRY_S
    while True:
        try:
            meta = StreamSegment.open(stream)
        except FileNotFoundError:
            raise StreamNotFound(stream, list_streams()) from None
        except SegmentNotReady:
            if time.monotonic() > deadline:
                raise
            time.sleep(1e-3)  # its writer is creating it right now
            continue
        header = meta.header
        try:
            if header.state is State.CLOSED:
                raise StreamNotFound(stream, list_streams())
            if header.state is State.INITIALISING:
                raise FileNotFoundError  # the first generation is not published yet
            gen = Generation.open(stream, header.generation)
        except FileNotFoundError:
            meta.close()
            if time.monotonic() > deadline:
                raise StreamNotFound(stream, list_streams()) from None
            time.sleep(1e-3)  # replaced while we looked: read the stream segment again
            continue
        except BaseException:
            meta.close()
            raise
        write = gen.fields[WRITE_CURSOR]
        if stream_id is not None and meta.stream_id != stream_id:
            found = meta.stream_id
            gen.close()
            meta.close()
            raise StreamReplaced(stream, stream_id, found)
        if cursor is not None:
            if cursor > write:
                gen.close()
                meta.close()
                raise ValueError(
                    f"cursor {cursor} is ahead of stream {stream!r}'s write cursor {write}: "
                    "it is from another incarnation of the stream; pass its stream_id to tell"
                )
            start = cursor  # the ring's own accounting reports what is gone
        else:
            start = write if from_now else max(write - gen.capacity, gen.start_cursor)
        return RingReader(stream, meta, gen, start)
