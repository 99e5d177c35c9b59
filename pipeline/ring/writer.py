"""The writing side of a ring: :class:`RingWriter` creates a stream and publishes frames.

One writer per stream. It takes over the stream of a writer that died
(continuing its sequence and stream id), re-creates segments another program
unlinked under it, and retires each generation it replaces. The byte layout
is drawn in :mod:`pipeline.ring.layout`; the protocol in :mod:`pipeline.ring`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.errors import SegmentCorrupt, SegmentForeign, StreamExists, WriterClosed
from pipeline.host import clock
from pipeline.host.identity import process_alive, process_identity
from pipeline.ring import naming, shm
from pipeline.ring.layout import (
    CLAIM_CURSOR,
    LAST_PUBLISH,
    WRITE_CURSOR,
    Format,
    GenerationSegment,
    State,
    StreamSegment,
    dtype_to_record,
    encode_format,
)
from pipeline.ring.watch import Watches

_LINK_CHECK_NS = 1_000_000_000  # how often a writer checks that its segments are still reachable


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
            start_sequence = 0 if previous is None else previous.write_cursor
            number = self._meta.header.generation + 1
            self._segment = GenerationSegment.create(
                stream, number, fmt, capacity, sample_rate, start_sequence, self._identity
            )
        except BaseException:
            if created:
                self._meta.segment.unlink()
            self._meta.close()
            if previous is not None:
                previous.close()
            raise
        self._meta.publish(number, self._identity)
        if previous is not None:
            _retire(previous, State.SUPERSEDED)
        self._orphans: list[StreamSegment] = []  # unlinked stream segments readers may still map
        self.relinks = 0
        self.relink_reason = ""
        self._next_link_check = clock.now_ns() + _LINK_CHECK_NS
        self._watches = Watches()  # readers' threshold watches (pipeline.ring.watch)
        self._bind(self._segment)

    def _bind(self, generation: GenerationSegment) -> None:
        """Cache what the hot path touches for generation ``generation``."""
        self._fields = generation.fields
        self._frames = generation.frames
        self._frame_nbytes = generation.frames[:1].nbytes  # bytes of one frame
        self._raw = generation.frames.reshape(-1).view(np.uint8).data  # write_bytes'
        self._timestamps = generation.timestamps_ns
        self._wake = generation.wake
        self._capacity = generation.capacity
        self._cursor = generation.write_cursor
        self._frame_shape = generation.frame_shape
        self._dtype = self._dtype_seen = generation.dtype
        self._period_ns = 1e9 / generation.sample_rate if generation.sample_rate > 0 else 0.0
        # per write size n: the frames' offsets before the last one's stamp, and how far
        # past the previous write's last stamp this write's last one must be at least
        self._stamping: dict[int, tuple[np.ndarray, int]] = {}
        # Only numbers can be compared with a threshold: other streams have no channel to watch.
        watchable = math.prod(generation.frame_shape) if generation.dtype.kind in "iufb" else 0
        self._watches.bind([self._meta, *self._orphans], watchable)
        if not hasattr(self, "_last_stamp_ns"):
            self._last_stamp_ns = 0  # the newest timestamp written

    # Properties of the current generation.
    @property
    def generation(self) -> int:
        return self._segment.header.generation

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
        return self._segment.sample_rate

    @property
    def descriptor(self) -> dict[str, Any]:
        return self._segment.descriptor

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
        are stamped from the host monotonic clock (:func:`pipeline.host.clock.now_ns`),
        the last frame now and the earlier ones one sample period apart (1 ns for
        an event stream), never at or before a stamp this writer wrote already.
        """
        if self._closed:
            raise WriterClosed(f"RingWriter for {self.stream!r} is closed")
        if not isinstance(frames, np.ndarray):
            frames = np.asarray(frames)
        dtype = frames.dtype
        if dtype is not self._dtype_seen and dtype == self._dtype:
            self._dtype_seen = dtype  # the caller's dtype object: compared once, not per write
        if (
            frames.ndim == 0
            or dtype is not self._dtype_seen
            or frames.shape[1:] != self._frame_shape
        ):
            raise ValueError(
                f"stream {self.stream!r} expects frames of shape (n, "
                f"{', '.join(map(str, self._frame_shape))}) dtype {self._dtype}; "
                f"given shape {frames.shape} dtype {frames.dtype}"
            )
        n = len(frames)
        if n == 0:
            return self._cursor
        if n > self._capacity:
            raise self._too_many(n)
        if timestamps_ns is not None:
            timestamps_ns = np.asarray(timestamps_ns, dtype=np.int64)
            if timestamps_ns.shape != (n,):
                raise ValueError(
                    f"timestamps_ns has shape {timestamps_ns.shape}; expected ({n},), one per frame"
                )
        return self._publish(frames, n, timestamps_ns)

    def write_bytes(self, data: bytes | bytearray | memoryview) -> int:
        """Publish frames given as their raw bytes; return the new write cursor.

        ``data``: C-contiguous bytes of a whole number of frames in the stream's
        dtype and frame shape (``bytes``, ``bytearray``, a ``memoryview``), stamped
        as :meth:`write` stamps frames without ``timestamps_ns``. For a writer that
        builds its frames in place, as a command ring's client does: no numpy call
        on the way, which a process that just woke pays for in cache misses.
        """
        if self._closed:
            raise WriterClosed(f"RingWriter for {self.stream!r} is closed")
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            if not view.c_contiguous:
                raise ValueError("write_bytes takes C-contiguous bytes; copy them first")
            view = view.cast("B")
        n, extra = divmod(view.nbytes, self._frame_nbytes)
        if extra:
            raise ValueError(
                f"{view.nbytes} bytes are not a whole number of frames of stream "
                f"{self.stream!r} ({self._frame_nbytes} bytes each: shape "
                f"{self._frame_shape}, dtype {self._dtype})"
            )
        if n == 0:
            return self._cursor
        if n > self._capacity:
            raise self._too_many(n)
        return self._publish(view, n, None)

    def _too_many(self, n: int) -> ValueError:
        return ValueError(
            f"a write of {n} frames does not fit stream {self.stream!r}, which holds "
            f"{self._capacity}; write smaller blocks or create the ring with a larger capacity"
        )

    def _publish(
        self, frames: np.ndarray | memoryview, n: int, timestamps_ns: np.ndarray | None
    ) -> int:
        """Copy ``n`` checked frames (an array, or their bytes) into the ring and wake."""
        data: Any = frames  # an ndarray, or (``raw`` below) a memoryview of frame bytes
        capacity = self._capacity
        now = clock.now_ns()
        if now >= self._next_link_check:
            self._next_link_check = now + _LINK_CHECK_NS
            self.check_linked()
        cursor = self._cursor
        fields = self._fields
        fields[CLAIM_CURSOR] = cursor + n
        slot = cursor % capacity
        if timestamps_ns is None:
            # The last frame now, the others a period apart before it; and never at or
            # before a stamp already written (a writer faster than its rate, a coarse clock).
            offsets, lead = self._stamping.get(n) or self._stamping_for(n)
            end = self._last_stamp_ns + lead
            if end < now:
                end = now
            self._last_stamp_ns = end
        else:
            self._last_stamp_ns = int(timestamps_ns[-1])
        raw = type(data) is memoryview
        if slot + n <= capacity:  # the common case: one contiguous run of slots
            if raw:
                size = self._frame_nbytes
                self._raw[slot * size : (slot + n) * size] = data
            else:
                self._frames[slot : slot + n] = data
            if timestamps_ns is None and n == 1:  # one frame (an event, a command): no ufunc
                self._timestamps[slot] = end
            elif timestamps_ns is None:
                np.subtract(end, offsets, out=self._timestamps[slot : slot + n])
            else:
                self._timestamps[slot : slot + n] = timestamps_ns
        else:
            if timestamps_ns is None:
                timestamps_ns = end - offsets
            first = capacity - slot
            if raw:
                split = first * self._frame_nbytes
                self._raw[slot * self._frame_nbytes :] = data[:split]
                self._raw[: len(data) - split] = data[split:]
            else:
                self._frames[slot:] = data[:first]
                self._frames[: n - first] = data[first:]
            self._timestamps[slot:] = timestamps_ns[:first]
            self._timestamps[: n - first] = timestamps_ns[first:]
        cursor += n
        fields[WRITE_CURSOR] = cursor
        fields[LAST_PUBLISH] = now
        self._cursor = cursor
        self._wake.notify()
        watches = self._watches
        if now >= watches.next_scan_ns:
            watches.scan(now)
        if watches.active:
            if raw:
                data = np.frombuffer(data, self._dtype).reshape(n, *self._frame_shape)
            watches.check(data)
        return cursor

    def _stamping_for(self, n: int) -> tuple[np.ndarray, int]:
        step = max(self._period_ns, 1.0)  # an event stream's batch: 1 ns apart, in order
        offsets = np.round(np.arange(n - 1, -1, -1) * step).astype(np.int64)
        stamping = offsets, int(offsets[0]) + max(1, round(self._period_ns))
        self._stamping[n] = stamping
        return stamping

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
        old = self._segment
        fmt, capacity, sample_rate = _check_format(
            old.dtype if dtype is None else dtype,
            old.frame_shape if frame_shape is None else frame_shape,
            old.capacity if capacity is None else capacity,
            old.sample_rate if sample_rate is None else sample_rate,
            old.descriptor if descriptor is None else descriptor,
        )
        generation = GenerationSegment.create(
            self.stream,
            old.header.generation + 1,
            fmt,
            capacity,
            sample_rate,
            self._cursor,
            self._identity,
        )
        for meta in (self._meta, *self._orphans):
            meta.publish(generation.header.generation, self._identity)
        self._segment = generation
        self._watches.notify_all()  # watchers read on and meet the new generation
        self._bind(generation)
        _retire(old, State.SUPERSEDED)
        return generation.header.generation

    def check_linked(self) -> bool:
        """Make sure new readers can still find this stream; True if nothing had to be done.

        Called by ``write`` once a second; call it from the writing thread
        only. A segment whose name was unlinked is created again (see the
        class docstring).
        """
        stream_gone = not self._meta.segment.linked()
        if not stream_gone and self._segment.segment.linked():
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
        self._watches.notify_all()  # watchers read the rest, then meet the end
        self._watches.release()
        if self._meta.segment.linked():
            self._meta.segment.unlink()
        for meta in (self._meta, *self._orphans):
            meta.close()
        _retire(self._segment, State.CLOSED)

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
) -> tuple[StreamSegment, GenerationSegment | None, bool]:
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
    except SegmentForeign:
        raise  # another user's segment: never replaced, the message names its owner
    except (FileNotFoundError, SegmentCorrupt):
        # A stale or broken leftover of ours under the name, nobody can attach to it: replace it.
        shm.unlink(naming.shm_name(stream))
        return StreamSegment.create(stream, identity), None, True
    pid, start_ms = meta.header.writer
    if meta.header.state is State.CLOSED:
        # Its writer ended it, yet the segment is still there (another process holds it
        # open, as Windows keeps a segment while any handle is open): a new stream.
        meta.renew()
        return meta, None, False
    if process_alive(pid, start_ms):
        meta.close()
        raise StreamExists(
            f"stream {stream!r} is already written by live process {pid}; "
            "stop that writer or choose another stream name"
        )
    try:
        previous = GenerationSegment.open(stream, meta.header.generation)
    except (FileNotFoundError, SegmentCorrupt):
        # The dead writer's frames are gone (on Windows, with its last handle), and with
        # them the sequence: continuing the stream id would misplace a resuming reader.
        meta.renew()
        previous = None
    return meta, previous, False


def _retire(generation: GenerationSegment, state: State) -> None:
    """End ``generation`` (SUPERSEDED or CLOSED), wake its readers, unlink and unmap it."""
    generation.end(state)
    if generation.segment.linked():  # never unlink a name that now belongs to another segment
        generation.segment.unlink()
    generation.close()
