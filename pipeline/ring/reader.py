"""The reading side of a ring: :func:`attach` by full stream name, and :class:`RingReader`.

Any number of readers, in any process, none of which the writer waits for.
A reader copies from its own cursor and re-reads the claim cursor after
copying, so it never returns a frame the writer may have overwritten; such
frames count as dropped, exactly. Short names (``acq/continuous``) are
resolved by ``pipeline.attach``, not here: this package never loads ZeroMQ.

One module although over 500 lines: copying, zero-copy views, ``latest`` and the
generation switch are one protocol on one cursor, and each must re-check the claim
cursor the same way; split, the checks would drift apart.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import (
    EndOfStream,
    ReaderClosed,
    SegmentCorrupt,
    SegmentNotReady,
    StreamNotFound,
    StreamReplaced,
)
from pipeline.host import clock
from pipeline.host.identity import process_alive
from pipeline.ring import naming
from pipeline.ring.layout import (
    CLAIM_CURSOR,
    STATE,
    WRITE_CURSOR,
    GenerationSegment,
    State,
    StreamSegment,
)
from pipeline.ring.segments import list_streams
from pipeline.ring.wait import WakeWord
from pipeline.ring.wait import wait_any as wait_words
from pipeline.ring.watch import Direction, ThresholdWatch

_ATTACH_RETRY_S = 1.0  # how long attach waits for a segment that is being created or replaced


# -- chunks ----------------------------------------------------------------------------------------
class _FrameSpan:
    """What ``Chunk`` and ``ChunkView`` share: frames ``data`` starting at ``start_sequence``."""

    __slots__ = ()
    data: np.ndarray
    start_sequence: int

    @property
    def frames(self) -> int:
        return len(self.data)

    @property
    def end_sequence(self) -> int:
        """Sequence number just past the last frame."""
        return self.start_sequence + len(self.data)

    def __len__(self) -> int:
        return len(self.data)


@dataclass(slots=True)  # not frozen: that costs ~10 µs more per read in a process just woken
class Chunk(_FrameSpan):
    """Frames handed to a reader: copies, never views of the live ring. The reader's own
    record: nothing reads it back, so changing it changes nothing but the caller's copy."""

    data: np.ndarray
    """``(frames, *frame_shape)`` copy of the frames, in the stream's dtype."""
    timestamps_ns: np.ndarray
    """int64 ``(frames,)``: the device timestamp of every frame, ns."""
    start_sequence: int
    """Sequence number of ``data[0]``; the next chunk starts at ``end_sequence + its dropped``."""
    dropped: int
    """Frames lost just before this chunk because the writer lapped the reader (exact)."""
    generation: int
    """GenerationSegment these frames came from."""
    format_changed: bool = False
    """True on the first chunk after the reader switched to a new generation."""


class ChunkView(_FrameSpan):
    """Frames handed out by :meth:`RingReader.read_view`: read-only views of the ring.

    Valid until ``release()`` (or the end of the ``with`` block); after that,
    ``intact`` says whether the writer overwrote any of the frames while they
    were in use.
    """

    __slots__ = (
        *("_intact", "_reader", "_segment", "data", "dropped", "generation"),
        *("format_changed", "start_sequence", "timestamps_ns"),
    )

    def __init__(
        self,
        reader: RingReader,
        mapped: GenerationSegment | None,
        data: np.ndarray,
        timestamps_ns: np.ndarray,
        start_sequence: int,
        dropped: int,
        generation: int,
        format_changed: bool = False,
    ) -> None:
        self._reader = reader
        self._segment = mapped  # the segment viewed, to tell whether it was overwritten
        self._intact: bool | None = None
        self.data = data
        self.timestamps_ns = timestamps_ns
        self.start_sequence = start_sequence
        self.dropped = dropped
        self.generation = generation
        self.format_changed = format_changed

    def _overwritten(self) -> int:
        generation = self._segment
        if generation is None:
            return 0
        oldest_safe = generation.fields[CLAIM_CURSOR] - generation.capacity
        return max(0, min(oldest_safe, self.end_sequence) - self.start_sequence)

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
        self._segment = None
        self.data = self.data[:0].copy()
        self.timestamps_ns = self.timestamps_ns[:0].copy()

    def __enter__(self) -> ChunkView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class RingReader:
    """Reads one stream from any process; made by :func:`attach`.

    Not thread-safe: give each thread its own reader.
    """

    def __init__(
        self, stream: str, meta: StreamSegment, generation: GenerationSegment, cursor: int
    ) -> None:
        self.stream = stream
        self._meta = meta
        self._segment = generation
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
        generation = self._current()
        if generation.header.state is State.CLOSED:
            return False
        return process_alive(*generation.header.writer)

    def _current(self) -> GenerationSegment:
        """The reader's generation, after following any newer one that replaced it."""
        if self._closed:
            raise ReaderClosed(f"RingReader for {self.stream!r} is closed")
        generation = self._segment
        if (
            generation.fields[STATE] == State.SUPERSEDED
            and generation.fields[WRITE_CURSOR] <= self._cursor
        ):
            self._switch()
        return self._segment

    def read(self, max_frames: int | None = None, timeout_s: float | None = None) -> Chunk:
        """Return the frames published since the last read, waiting up to ``timeout_s``.

        At most ``max_frames`` frames come back (all available if None). If
        nothing arrives in time the chunk is empty. ``timeout_s=None`` waits
        until frames arrive; ``0`` does not wait. Raises :class:`EndOfStream`
        once the writer closed the stream and everything was read.
        """
        deadline = _deadline(max_frames, timeout_s)
        while True:
            generation = self._await(deadline)
            if generation is None:
                return self._empty(self._segment)
            chunk = self._copy(generation, max_frames)
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
            generation = self._await(deadline)
            if generation is None:
                empty = self._empty(self._segment)
                return ChunkView(self, None, empty.data, empty.timestamps_ns, self._cursor, 0, 0)
            fields = generation.fields
            capacity = generation.capacity
            write = fields[WRITE_CURSOR]
            start = max(self._cursor, fields[CLAIM_CURSOR] - capacity, generation.start_sequence)
            slot = start % capacity
            end = min(write, start + capacity - slot)
            if max_frames is not None:
                end = min(end, start + max_frames)
            if end <= start:  # lapped again since we looked: count it, look again
                self._pending_dropped += start - self._cursor
                self._cursor = start
                continue
            dropped = self._account(start, end)
            data = generation.frames[slot : slot + end - start]
            timestamps = generation.timestamps_ns[slot : slot + end - start]
            data.flags.writeable = timestamps.flags.writeable = False
            changed, self._format_changed = self._format_changed, False
            number = generation.header.generation
            return ChunkView(self, generation, data, timestamps, start, dropped, number, changed)

    def _await(self, deadline: float | None) -> GenerationSegment | None:
        """Wait until a frame past the cursor is published; return its generation.

        None when the deadline passes first; EndOfStream when the stream ended.
        """
        if self._closed:
            raise ReaderClosed(f"RingReader for {self.stream!r} is closed")
        while True:
            generation = self._segment
            fields = generation.fields
            seen = generation.wake.load()
            state = fields[STATE]  # read before the cursor: a state change follows the last publish
            if fields[WRITE_CURSOR] > self._cursor:
                return generation
            if state == State.SUPERSEDED:
                self._switch()
                continue
            if state == State.CLOSED:
                raise EndOfStream(f"stream {self.stream!r} was closed by its writer")
            remaining = None if deadline is None else deadline - clock.now_s()
            if remaining is not None and remaining <= 0:
                return None
            generation.wake.wait(seen, remaining)

    def wait(self, timeout_s: float | None, interrupt: threading.Event | None = None) -> bool:
        """Sleep until a frame past the cursor is published or the stream changed state
        (a new generation, closed: the next read says which); True then.

        False after ``timeout_s``, or once ``interrupt`` is set (its setter calls
        :meth:`nudge`): how a worker waits for this ring and its sockets at once.
        Unlike :meth:`read` it does not spin first: it is for a reader that keeps
        up and sleeps between chunks. :func:`wait_any` waits on several readers.
        """
        return wait_any([self], timeout_s, interrupt)

    def nudge(self) -> None:
        """End a :meth:`wait` in another thread of this process whose interrupt is set."""
        if not self._closed:
            self._segment.wake.nudge()

    def wake_word(self) -> tuple[WakeWord, int] | None:
        """``(word, value to sleep on)``, or None if there is something to read now
        (frames past the cursor, a state change): what :func:`wait_any` sleeps on."""
        generation = self._current()
        fields = generation.fields
        seen = generation.wake.load()  # before the cursor: a publish after it wakes us
        if fields[WRITE_CURSOR] > self._cursor or fields[STATE] != State.VALID:
            return None
        return generation.wake, seen

    def watch(
        self, channel: int, threshold: float, direction: Direction = "rising"
    ) -> ThresholdWatch:
        """Ask the writer to wake a :class:`~pipeline.ring.watch.ThresholdWatch` only
        for chunks in which ``channel`` (a flat index into a frame) may cross
        ``threshold`` (in the stream's units) in ``direction``.

        The watch is a wake-up, not a filter: wait on it (with a timeout well
        inside the ring's capacity), then read everything as usual. It saves
        the thousand wakes a second of a reader that looks at every 1 ms
        chunk for a rare event. Until the writer adopts the watch (at its next
        table scan, within 50 ms) the watch's wait wakes for every chunk.
        :class:`~pipeline.ring.watch.WatchesFull` if every slot of the stream is
        held.
        """
        if self.dtype.kind not in "iufb":
            raise ValueError(
                f"stream {self.stream!r} holds {self.dtype} records, not numbers; a threshold "
                "watch needs a stream of integers or floats"
            )
        size = math.prod(self.frame_shape)
        if not 0 <= channel < size:
            raise ValueError(
                f"channel {channel} is not in stream {self.stream!r}, whose frames hold "
                f"{size} values (0 to {size - 1})"
            )
        return ThresholdWatch(
            self.stream, self._meta, channel, threshold, direction, ring_word=self.wake_word
        )

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

    def _copy(self, generation: GenerationSegment, max_frames: int | None) -> Chunk | None:
        """Copy frames from the reader's cursor; None if every one was overwritten meanwhile."""
        fields = generation.fields
        capacity = generation.capacity
        write = fields[WRITE_CURSOR]
        start = max(self._cursor, fields[CLAIM_CURSOR] - capacity, generation.start_sequence)
        if start > write:  # the writer lapped us again since we read write_cursor
            write = start
        end = write if max_frames is None else min(write, start + max_frames)
        data, timestamps = _copy_slots(generation, start, end)
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
        return Chunk(data, timestamps, start, dropped, generation.header.generation, changed)

    def latest(self, n: int) -> Chunk:
        """The newest ``n`` frames (fewer if the stream holds fewer), for displays.

        Does not move the reader's cursor. ``dropped`` is always 0. It follows
        the stream to a new generation at once; frames of the old generation
        that ``read`` had not returned yet then count as dropped.
        """
        if n < 1:
            raise ValueError(f"latest() needs n >= 1, given {n}")
        while True:
            generation = self._current()
            if generation.header.state is State.SUPERSEDED:
                self._switch()
                continue
            fields = generation.fields
            write = fields[WRITE_CURSOR]
            start = max(
                write - n, fields[CLAIM_CURSOR] - generation.capacity, generation.start_sequence
            )
            data, timestamps = _copy_slots(generation, start, write)
            intact_from = fields[CLAIM_CURSOR] - generation.capacity
            if intact_from > start:
                cut = min(intact_from, write) - start
                data, timestamps, start = data[cut:], timestamps[cut:], start + cut
            return Chunk(data, timestamps, start, 0, generation.header.generation)

    def _switch(self) -> None:
        """Follow the stream to its current generation.

        Frames skipped on the way (unread frames of the old generation, or a
        whole generation missed) count as dropped.
        """
        deadline = clock.now_s() + _ATTACH_RETRY_S
        while True:
            number = self._meta.header.generation
            try:
                if number == self._segment.header.generation:
                    # Writers name the successor before superseding, so this is a
                    # stream segment replaced under us (a swept and re-created stream).
                    raise FileNotFoundError(number)
                generation = GenerationSegment.open(self.stream, number)
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
                if clock.now_s() > deadline:
                    superseded = self._segment.header.generation
                    raise SegmentCorrupt(
                        f"stream {self.stream!r}: generation {superseded} was "
                        f"superseded but its successor {number} cannot be opened"
                    ) from None
                time.sleep(1e-4)  # replaced again while we looked; re-read the stream segment
        old, self._segment = self._segment, generation
        old.close()
        if self._cursor < generation.start_sequence:
            self._pending_dropped += generation.start_sequence - self._cursor
            self._cursor = generation.start_sequence
        self._format_changed = True

    def _empty(self, generation: GenerationSegment) -> Chunk:
        return Chunk(
            np.empty((0, *generation.frame_shape), generation.dtype),
            np.empty(0, np.int64),
            self._cursor,
            0,
            generation.header.generation,
        )

    def close(self) -> None:
        """Detach from the stream (the stream itself is untouched). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._segment.close()
        self._meta.close()

    def __enter__(self) -> RingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._closed:
            return f"<RingReader {self.stream!r} closed>"
        number = self._segment.header.generation
        return f"<RingReader {self.stream!r} generation {number} cursor {self._cursor}>"


def wait_any(
    readers: Sequence[RingReader | ThresholdWatch],
    timeout_s: float | None,
    interrupt: threading.Event | None = None,
) -> bool:
    """Sleep until any of ``readers`` has a frame past its cursor or a state change
    (or, for a :class:`~pipeline.ring.watch.ThresholdWatch`, is pending); True then.
    False after ``timeout_s`` or once ``interrupt`` is set (its setter calls
    ``nudge()`` on any of them). One ``futex_waitv`` on Linux 5.16+.
    """
    deadline = None if timeout_s is None else clock.now_s() + timeout_s
    while True:
        words = []
        for reader in readers:
            word = reader.wake_word()
            if word is None:
                return True
            words.append(word)
        remaining = None if deadline is None else deadline - clock.now_s()
        if remaining is not None and remaining <= 0:
            return False
        if interrupt is not None and interrupt.is_set():
            return False
        wait_words(words, remaining, interrupt)


def _deadline(max_frames: int | None, timeout_s: float | None) -> float | None:
    """Check a read's arguments; return its monotonic deadline (None: wait for data)."""
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1 or None, given {max_frames}")
    return None if timeout_s is None else clock.now_s() + timeout_s


def _copy_slots(
    generation: GenerationSegment, start: int, end: int
) -> tuple[np.ndarray, np.ndarray]:
    """Copy frames and timestamps of sequences ``[start, end)`` out of the ring."""
    capacity = generation.capacity
    slot = start % capacity
    n = end - start
    if slot + n <= capacity:
        return generation.frames[slot : slot + n].copy(), generation.timestamps_ns[
            slot : slot + n
        ].copy()
    head = capacity - slot
    data = np.empty((n, *generation.frame_shape), generation.dtype)
    timestamps = np.empty(n, np.int64)
    data[:head] = generation.frames[slot:]
    data[head:] = generation.frames[: n - head]
    timestamps[:head] = generation.timestamps_ns[slot:]
    timestamps[head:] = generation.timestamps_ns[: n - head]
    return data, timestamps


def attach(
    stream: str, *, from_now: bool = True, cursor: int | None = None, stream_id: int | None = None
) -> RingReader:
    """Attach a reader to ``stream`` from any process, knowing only its full name
    (``demo/acq/continuous``; ``pipeline.attach`` also takes ``acq/continuous``).

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
    naming.validate_stream(stream)
    deadline = clock.now_s() + _ATTACH_RETRY_S
    while True:
        try:
            meta = StreamSegment.open(stream)
        except FileNotFoundError:
            raise StreamNotFound(stream, list_streams()) from None
        except SegmentNotReady:
            if clock.now_s() > deadline:
                raise
            time.sleep(1e-3)  # its writer is creating it right now
            continue
        header = meta.header
        try:
            if header.state is State.CLOSED:
                raise StreamNotFound(stream, list_streams())
            if header.state is State.INITIALISING:
                raise FileNotFoundError  # the first generation is not published yet
            generation = GenerationSegment.open(stream, header.generation)
        except FileNotFoundError:
            meta.close()
            if clock.now_s() > deadline:
                raise StreamNotFound(stream, list_streams()) from None
            time.sleep(1e-3)  # replaced while we looked: read the stream segment again
            continue
        except BaseException:
            meta.close()
            raise
        write = generation.fields[WRITE_CURSOR]
        if stream_id is not None and meta.stream_id != stream_id:
            found = meta.stream_id
            generation.close()
            meta.close()
            raise StreamReplaced(stream, stream_id, found)
        if cursor is not None:
            if cursor > write:
                generation.close()
                meta.close()
                raise ValueError(
                    f"cursor {cursor} is ahead of stream {stream!r}'s write cursor {write}: "
                    "it is from another incarnation of the stream; pass its stream_id to tell"
                )
            start = cursor  # the ring's own accounting reports what is gone
        else:
            start = (
                write if from_now else max(write - generation.capacity, generation.start_sequence)
            )
        return RingReader(stream, meta, generation, start)
