"""Block iteration over a recording view, with the next blocks read by a background process.

The prefetch process (``python -m pipeline.recording.prefetch_child``, a fresh interpreter on
every OS, so the caller's script is never imported again the way
``multiprocessing``'s spawn would) opens the segment files itself and reads
block after block straight into slots of one shared-memory segment; the
caller's process only copies a finished slot out (or, with ``copy=False``,
hands out a read-only view of it). HDF5 reading therefore overlaps with
whatever the caller does with the block before it.

Protocol: pickles over the child's stdin and stdout. The parent first sends
the view's spec and the segment's name and shape; the child answers
``("ready",)``. Then the parent sends ``(slot, start, count)`` and the child
answers ``("done", slot)`` or ``("error", slot, text)``; ``None`` asks it to
exit, and so does its stdin closing (the parent died). The segment is unlinked
as soon as the child has mapped it, so no name is left in ``/dev/shm``
whatever happens to either process; a child that dies closes its stdout, and
the parent raises :class:`~pipeline.errors.RecordingError`.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import uuid
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass
from typing import IO, Any, Protocol

import numpy as np

from pipeline.errors import RecordingError
from pipeline.ring import shm
from pipeline.ring.naming import shm_name


class StreamView(Protocol):
    """What prefetching uses of a :class:`pipeline.recording.views.StreamView` (views
    imports this module; the prefetch process, ``prefetch_child``, imports views)."""

    dtype: np.dtype
    channel_index: np.ndarray
    timestamps_ns: Any  # indexable by a slice: int64 stamps

    def read(self, key: Any = ..., *, scaled: bool = False) -> np.ndarray: ...
    def spec(self) -> dict[str, Any]: ...


#: Blocks read ahead of the one the caller has.
DEPTH = 2


@dataclass
class Block:
    """Frames ``start`` to ``stop`` of a view: ``data`` (channels, frames) and their timestamps."""

    start: int
    data: np.ndarray
    timestamps_ns: np.ndarray

    @property
    def stop(self) -> int:
        return self.start + self.data.shape[-1]


def iterate_blocks(
    view: StreamView,
    frames: int,
    start: int,
    stop: int,
    scaled: bool,
    prefetch: bool,
    copy: bool,
) -> Generator[Block, None, None]:
    """Blocks of ``frames`` from ``start`` to ``stop`` (the last one may be shorter)."""
    starts = list(range(start, stop, frames))
    if not prefetch:
        return (_read_block(view, s, min(frames, stop - s), scaled) for s in starts)
    return _prefetched(view, frames, starts, stop, scaled, copy)


def _read_block(view: StreamView, start: int, count: int, scaled: bool) -> Block:
    data = view.read((slice(None), slice(start, start + count)), scaled=scaled)
    return Block(start, data, view.timestamps_ns[start : start + count])


class Slots:
    """``depth`` block-sized slots in one shared-memory segment: data, then timestamps."""

    def __init__(self, segment: shm.Segment, channels: int, frames: int, dtype: np.dtype) -> None:
        self.segment = segment
        self.channels, self.dtype = channels, dtype
        self.data_bytes = _round_up(channels * frames * dtype.itemsize, 64)
        self.slot_bytes = self.data_bytes + frames * 8

    @staticmethod
    def size(channels: int, frames: int, dtype: np.dtype, depth: int) -> int:
        return depth * (_round_up(channels * frames * dtype.itemsize, 64) + frames * 8)

    def arrays(self, slot: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The slot's (channels, count) data, Fortran-ordered like ``view.read``, and timestamps."""
        at = slot * self.slot_bytes
        rows = np.ndarray((count, self.channels), self.dtype, self.segment.buf, at)
        stamps = np.ndarray((count,), np.int64, self.segment.buf, at + self.data_bytes)
        return rows.T, stamps


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class _Child:
    """The prefetch process and the pickles going to and from it."""

    def __init__(self, setup: dict[str, Any]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.recording.prefetch_child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._in: IO[bytes] = self.process.stdin
        self._out: IO[bytes] = self.process.stdout
        self.send(setup)

    def send(self, message: Any) -> None:
        try:
            pickle.dump(message, self._in)
            self._in.flush()
        except OSError:
            raise self._died("its reply to a request") from None

    def _died(self, what: str) -> RecordingError:
        code = self.process.wait(5)
        return RecordingError(
            f"the prefetch process exited with code {code} before it sent {what}; "
            "its error, if any, is on stderr"
        )

    def expect(self, what: str, slot: int | None = None) -> None:
        """Wait for the child's ``what``; raise RecordingError if it failed or died."""
        try:
            message = pickle.load(self._out)
        except (EOFError, OSError, pickle.UnpicklingError):
            raise self._died(repr(what)) from None
        if message[0] == "error":
            raise RecordingError(f"the prefetch process failed: {message[-1]}")
        if message[0] != what or (slot is not None and message[1] != slot):
            raise RecordingError(f"prefetch protocol error: expected {what} {slot}, got {message}")

    def stop(self) -> None:
        try:
            pickle.dump(None, self._in)
            self._in.close()
        except OSError:
            pass  # it is gone already
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._out.close()


def _prefetched(
    view: StreamView, frames: int, starts: list[int], stop: int, scaled: bool, copy: bool
) -> Generator[Block, None, None]:
    if not starts:
        return
    dtype = np.dtype(np.float32) if scaled else view.dtype
    channels = len(view.channel_index)
    depth = DEPTH if copy else DEPTH + 1  # the caller holds one slot while it has the block
    name = shm_name(f"prefetch/{os.getpid()}/{uuid.uuid4().hex}")
    segment = shm.Segment.create(name, Slots.size(channels, frames, dtype, depth))
    slots = Slots(segment, channels, frames, dtype)
    child = None
    try:
        try:
            setup = {
                "view": view.spec(),
                "segment": name,
                "channels": channels,
                "frames": frames,
                "dtype": dtype.str,
                "scaled": scaled,
            }
            child = _Child(setup)
            child.expect("ready")
        finally:
            segment.unlink()  # mapped by both processes now (or never): the name is not needed
        pending: deque[tuple[int, int, int]] = deque()  # (slot, start, count) asked for
        queue = deque(starts)
        free = list(range(depth))

        def ask() -> None:
            while free and queue:
                slot, begin = free.pop(0), queue.popleft()
                count = min(frames, stop - begin)
                child.send((slot, begin, count))
                pending.append((slot, begin, count))

        ask()
        while pending:
            slot, begin, count = pending.popleft()
            child.expect("done", slot)
            data, stamps = slots.arrays(slot, count)
            if copy:
                block = Block(begin, data.copy(order="F"), stamps.copy())
                free.append(slot)
                ask()
                yield block
            else:
                data.flags.writeable = stamps.flags.writeable = False
                ask()
                yield Block(begin, data, stamps)
                free.append(slot)
                ask()
    finally:
        if child is not None:
            child.stop()
        segment.close()
