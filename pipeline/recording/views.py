"""Array views of one recorded stream: every segment's rows end to end, read on demand.

:class:`StreamView` is a continuous stream shaped ``(channels, frames)``;
:class:`EventView` an event stream of structured records. Both are made by
:class:`pipeline.readback.Recording` and share its open files and memory
limit. A view's frames are the recorded rows of every segment in order, so
frame ``i`` of the view is recording frame ``first_frame + i``; frames lost
while recording are not rows, and ``view.gaps`` lists them.

Reading goes through :meth:`_Rows._runs`: a frame selection (start, count,
step) is cut at segment boundaries, and each piece is read in slabs of at most
``_SLAB_BYTES``, straight into the output where the columns are contiguous.
The output is allocated ``(frames, channels)`` and returned transposed (Fortran
order), which is how rows come off the disk.

One module although over 500 lines: both views are one row reader (``_Rows``: pieces
across files, slabs, gaps) with a face each; the files they share and the memory limit
are :mod:`.opened`.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from pipeline.errors import RecordingError
from pipeline.recording import selection as keys
from pipeline.recording.opened import Files, Guard, reading
from pipeline.recording.prefetch import Block, iterate_blocks
from pipeline.recording.selection import Rows

_SLAB_BYTES = 32 << 20  # read at most this much from one dataset at a time


@dataclass(frozen=True)
class Piece:
    """One segment's rows of a stream: where they are and where they go in the view."""

    path: str
    group: str  # the stream's HDF5 group, "streams/acq.continuous"
    first: int  # the view's frame index of row 0
    rows: int
    first_frame: int  # the recording's frame index of row 0 (the group's first_frame attribute)
    transposed: bool  # stored channels x frames


@dataclass(frozen=True)
class Gap:
    """Frames of a stream that are not in the recording, before view frame ``frame``."""

    frame: int  # the view's index of the first frame after the gap
    lost_frames: int
    start_ns: int  # timestamp of the last frame before the gap (0 if unknown)
    end_ns: int  # timestamp of the first frame after it
    cause: str

    @classmethod
    def from_row(cls, row: np.void, frame: int) -> Gap:
        """The gap of a ``gaps`` table row, ``frame`` being where the reader puts it."""
        return cls(
            frame=frame,
            lost_frames=int(row["lost_frames"]),
            start_ns=int(row["start_ns"]),
            end_ns=int(row["end_ns"]),
            cause=row["cause"].decode(errors="replace"),
        )


class _Rows:
    """What continuous and event views share: pieces, timestamps, time search, gaps."""

    def __init__(
        self,
        stream: str,
        pieces: list[Piece],
        attrs: dict[str, Any],
        files: Files,
        guard: Guard,
        start_ns: int,
    ) -> None:
        self.stream = stream
        self.pieces = pieces
        self.attrs = attrs
        self.files = files
        self.guard = guard
        self.start_ns = start_ns
        self.frames = sum(p.rows for p in pieces)
        self.sample_rate: float = attrs["sample rate"]
        self.dtype = np.dtype(attrs["dtype"])
        self.first_frame = pieces[0].first_frame if pieces else 0
        self.timestamps_ns = keys.Indexer(self._timestamps)
        self.times_s = keys.Indexer(lambda key: (self._timestamps(key) - self.start_ns) / 1e9)

    def _dataset(self, piece: Piece, name: str) -> h5py.Dataset:
        return self.files.dataset(piece.path, f"{piece.group}/{name}")

    def _runs(self, rows: Rows) -> Iterator[tuple[Piece, int, int, int]]:
        """(piece, its first row, output start, output end) for every piece ``rows`` touches."""
        for piece in self.pieces:
            lo = max(0, -(-(piece.first - rows.start) // rows.step))
            hi = min(rows.count, -(-(piece.first + piece.rows - rows.start) // rows.step))
            if lo < hi:
                yield piece, rows.start + lo * rows.step - piece.first, lo, hi

    def _timestamps(self, key: Any) -> np.ndarray:
        selection, reverse, squeeze = keys.frame_selection(key, self.frames)
        out = np.empty(keys.count(selection), np.int64)
        self._fill_1d("timestamps_ns", selection, out)
        return keys.shape(out, reverse, squeeze)

    @reading
    def _fill_1d(self, name: str, selection: Rows | np.ndarray, out: np.ndarray) -> np.ndarray:
        if isinstance(selection, Rows):
            for piece, row, lo, hi in self._runs(selection):
                stop = row + (hi - lo - 1) * selection.step + 1
                out[lo:hi] = self._dataset(piece, name)[row : stop : selection.step]
            return out
        unique, inverse = np.unique(selection, return_inverse=True)
        buffer = np.empty(len(unique), out.dtype)
        for piece, rows, at in self._points(unique):
            buffer[at] = self._dataset(piece, name)[rows]
        out[:] = buffer[inverse]
        return out

    def _points(self, unique: np.ndarray) -> Iterator[tuple[Piece, np.ndarray, np.ndarray]]:
        """(piece, its rows, where they go) for sorted unique view frames."""
        for piece in self.pieces:
            at = np.flatnonzero((unique >= piece.first) & (unique < piece.first + piece.rows))
            if len(at):
                yield piece, unique[at] - piece.first, at

    def frame_at(self, t_ns: int) -> int:
        """The first frame whose timestamp is at or after ``t_ns`` (``frames`` if none)."""
        for piece in self.pieces:
            if not piece.rows:
                continue
            stamps = self._dataset(piece, "timestamps_ns")
            if int(stamps[piece.rows - 1]) < t_ns:
                continue
            lo, hi = 0, piece.rows - 1  # stamps[hi] >= t_ns
            while lo < hi:
                mid = (lo + hi) // 2
                if int(stamps[mid]) >= t_ns:
                    hi = mid
                else:
                    lo = mid + 1
            return piece.first + lo
        return self.frames

    def frame_range(self, t0_s: float, t1_s: float) -> slice:
        """The frames recorded from ``t0_s`` (included) to ``t1_s`` (excluded)."""
        if not t1_s >= t0_s:
            raise ValueError(f"time_slice needs t0_s <= t1_s, got {t0_s} and {t1_s}")
        start = self.frame_at(self.start_ns + round(t0_s * 1e9))
        stop = self.frame_at(self.start_ns + round(t1_s * 1e9))
        return slice(start, stop)

    @property
    def duration_s(self) -> float:
        if not self.frames:
            return 0.0
        first, last = self._timestamps(0), self._timestamps(self.frames - 1)
        return (int(last) - int(first)) / 1e9

    @property
    @reading
    def gaps(self) -> list[Gap]:
        """The stretches of this stream that are not in the recording, in order."""
        gaps, seen = [], set()
        for piece in self.pieces:
            if piece.path in seen:
                continue
            seen.add(piece.path)
            table = self.files.get(piece.path)["gaps"][:]
            for row in table[table["stream"] == self.stream.encode()]:
                frame = piece.first + int(row["at_frame"]) - piece.first_frame
                gaps.append(Gap.from_row(row, frame))
        return sorted(gaps, key=lambda g: g.frame)


class StreamView(_Rows):
    """A continuous stream over all its segments, shaped ``(channels, frames)``."""

    def __init__(self, *args: Any, channels: np.ndarray | None = None) -> None:
        super().__init__(*args)
        frame_shape = self.attrs["frame shape"]
        if len(frame_shape) > 1:
            raise RecordingError(
                f"{self.stream} has frames of shape {frame_shape}; only streams with one channel "
                "axis can be viewed as (channels, frames). Read its datasets with h5py."
            )
        total = frame_shape[0] if frame_shape else 1
        self.channel_index = np.arange(total) if channels is None else channels
        self.scaled = keys.Indexer(self._scaled)

    # -- the descriptor, following the selection -----------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return len(self.channel_index), self.frames

    @property
    def nbytes(self) -> int:
        """The size of the whole view in memory, as its recorded dtype."""
        return len(self.channel_index) * self.frames * self.dtype.itemsize

    @property
    def channel_labels(self) -> list[str]:
        labels = self.attrs["channel labels"]
        return [labels[i] for i in self.channel_index]

    @property
    def units(self) -> str:
        return str(self.attrs["units"])

    @property
    def scale(self) -> np.ndarray:
        """Per selected channel: physical value (in ``units``, µV for neural data) per count."""
        scale = np.broadcast_to(np.asarray(self.attrs["scale"], np.float64), (self._channels(),))
        return scale[self.channel_index].copy()

    @property
    def positions(self) -> np.ndarray | None:
        """Per selected channel, its position fields (``descriptor['position_fields']``)."""
        positions = self.attrs["descriptor"].get("positions")
        if not isinstance(positions, list) or len(positions) != self._channels():
            return None
        return np.asarray(positions, np.float64)[self.channel_index]

    @property
    def descriptor(self) -> dict[str, Any]:
        """The recorded descriptor, with every per-channel list cut to the selection."""
        full = self.attrs["descriptor"]
        out = {}
        for key, value in full.items():
            if isinstance(value, list) and len(value) == self._channels():
                out[key] = [value[i] for i in self.channel_index]
            else:
                out[key] = value
        out["channel_labels"] = self.channel_labels
        return out

    def _channels(self) -> int:
        frame_shape = self.attrs["frame shape"]
        return frame_shape[0] if frame_shape else 1

    # -- selection ---------------------------------------------------------------------------------
    def select(self, channels: Any) -> StreamView:
        """A view of some channels: a boolean mask, labels, or indices (of this view)."""
        if isinstance(channels, str):
            channels = [channels]
        wanted = list(channels) if not isinstance(channels, np.ndarray) else channels
        if len(wanted) and all(isinstance(k, str) for k in wanted):
            labels = self.channel_labels
            unknown = [k for k in wanted if k not in labels]
            if unknown:
                raise RecordingError(
                    f"{self.stream} has no channel labelled {unknown[:5]}; "
                    f"its labels are {labels[:8]}{' ...' if len(labels) > 8 else ''}"
                )
            index = np.array([labels.index(k) for k in wanted], np.int64)
        else:
            mask = np.asarray(wanted)
            if mask.dtype == bool and mask.shape != (len(self.channel_index),):
                raise RecordingError(
                    f"a channel mask for {self.stream} must have {len(self.channel_index)} "
                    f"elements, not {mask.shape}"
                )
            index = np.arange(len(self.channel_index))[mask]
        view = StreamView(
            self.stream, self.pieces, self.attrs, self.files, self.guard, self.start_ns,
            channels=self.channel_index[np.atleast_1d(index)],
        )  # fmt: skip
        return view

    # -- reading ---------------------------------------------------------------------------------
    def __getitem__(self, key: Any) -> np.ndarray:
        return self.read(key)

    def _scaled(self, key: Any) -> np.ndarray:
        return self.read(key, scaled=True)

    def read(self, key: Any = slice(None), *, scaled: bool = False) -> np.ndarray:
        """``view[key]``; with ``scaled``, float32 in ``units`` (value x scale).

        Each axis is indexed on its own, as in h5py and MATLAB: lists on both
        axes select every listed channel at every listed frame (numpy would
        pair them up point by point instead).
        """
        channel_key, frame_key = keys.split_key(key)
        positions = np.arange(len(self.channel_index))[channel_key]
        squeeze_channel = np.ndim(positions) == 0
        channels = self.channel_index[np.atleast_1d(positions)]
        selection, reverse, squeeze = keys.frame_selection(frame_key, self.frames)
        dtype = np.dtype(np.float32) if scaled else self.dtype
        count = keys.count(selection)
        self.guard.check(
            len(channels) * count * dtype.itemsize,
            lambda: (
                f"{self.stream}[{keys.key_text(channel_key)}, {keys.key_text(frame_key)}] "
                f"({len(channels)} channels x {count} frames of {dtype})"
            ),
        )
        out = np.empty((count, len(channels)), dtype).T
        self._fill(channels, selection, out)
        if scaled:
            out *= self.scale[np.atleast_1d(positions)].astype(np.float32)[:, None]
        out = keys.shape(out, reverse, squeeze)
        if squeeze_channel:
            return np.ascontiguousarray(out[0]) if out.ndim == 2 else out[0]
        return out

    def fill_block(
        self, start: int, count: int, data: np.ndarray, stamps: np.ndarray, scaled: bool
    ) -> None:
        """Frames ``start`` to ``start + count`` into ``data`` (channels, count) and ``stamps``."""
        rows = Rows(start, count)
        self._fill(self.channel_index, rows, data)
        if scaled:
            data *= self.scale.astype(np.float32)[:, None]
        self._fill_1d("timestamps_ns", rows, stamps)

    @reading
    def _fill(self, channels: np.ndarray, selection: Rows | np.ndarray, out: np.ndarray) -> None:
        """Read ``channels`` x ``selection`` into ``out`` (channels, frames) in bounded slabs."""
        if not len(channels):
            return
        low, high = int(channels.min()), int(channels.max()) + 1
        columns = slice(None) if np.array_equal(channels, np.arange(low, high)) else channels - low
        rows_out = out.T  # (frames, channels), C-contiguous when out came from read()
        slab_rows = max(1, _SLAB_BYTES // ((high - low) * self.dtype.itemsize))
        if isinstance(selection, Rows):
            step = selection.step
            for piece, row, lo, hi in self._runs(selection):
                data = self._dataset(piece, "data")
                for k in range(lo, hi, slab_rows):
                    end = min(hi, k + slab_rows)
                    first = row + (k - lo) * step
                    stop = first + (end - k - 1) * step + 1
                    if piece.transposed:
                        rows_out[k:end] = data[low:high, first:stop:step][columns].T
                    elif isinstance(columns, slice):  # straight into the output, no copy
                        data.read_direct(rows_out, np.s_[first:stop:step, low:high], np.s_[k:end])
                    else:
                        rows_out[k:end] = data[first:stop:step, low:high][:, columns]
            return
        unique, inverse = np.unique(selection, return_inverse=True)
        buffer = np.empty((len(unique), len(channels)), self.dtype)
        for piece, rows, at in self._points(unique):
            data = self._dataset(piece, "data")
            for k in range(0, len(rows), slab_rows):
                part = rows[k : k + slab_rows]
                if piece.transposed:
                    buffer[at[k : k + slab_rows]] = data[low:high, part][columns].T
                else:
                    buffer[at[k : k + slab_rows]] = data[part, low:high][:, columns]
        rows_out[:] = buffer[inverse]

    def time_slice(
        self,
        t0_s: float,
        t1_s: float,
        *,
        scaled: bool = False,
        fill: str | None = None,
    ) -> np.ndarray:
        """The frames from ``t0_s`` to ``t1_s`` (seconds since the recording's first frame).

        ``fill="nan"`` puts every frame lost in a gap back as a column of NaN
        (float output: float32, or float64 for 64-bit data); ``fill="mask"``
        returns a masked array with those columns masked. Without ``fill``, the
        recorded frames only (``view.timestamps_ns[view.frame_range(t0_s, t1_s)]``
        gives their times).
        """
        frames = self.frame_range(t0_s, t1_s)
        if fill is None:
            return self.read((slice(None), frames), scaled=scaled)
        if fill not in ("nan", "mask"):
            raise ValueError(f"fill must be None, 'nan' or 'mask', not {fill!r}")
        t0_ns, t1_ns = self.start_ns + round(t0_s * 1e9), self.start_ns + round(t1_s * 1e9)
        holes = self._holes(frames.start, frames.stop, t0_ns, t1_ns)
        recorded = frames.stop - frames.start
        total = recorded + sum(n for _, n in holes)
        dtype = np.dtype(np.float32) if scaled else self.dtype
        if fill == "nan" and dtype.kind != "f":
            dtype = np.dtype(np.float64 if dtype.itemsize > 4 else np.float32)
        self.guard.check(
            len(self.channel_index) * total * dtype.itemsize,
            lambda: (
                f"{self.stream}.time_slice({t0_s}, {t1_s}, fill={fill!r}) "
                f"({len(self.channel_index)} channels x {total} frames of {dtype}, gaps filled)"
            ),
        )
        data = self.read((slice(None), frames), scaled=scaled)
        out = np.zeros((total, len(self.channel_index)), dtype).T
        missing = np.zeros(total, bool)
        at, taken = 0, 0
        for frame, lost in [*holes, (frames.stop, 0)]:
            take = frame - frames.start - taken
            out[:, at : at + take] = data[:, taken : taken + take]
            at, taken = at + take, taken + take
            missing[at : at + lost] = True
            at += lost
        if fill == "nan":
            out[:, missing] = np.nan
            return out
        return np.ma.masked_array(out, mask=np.broadcast_to(missing, out.shape).copy())

    def _holes(self, start: int, stop: int, t0_ns: int, t1_ns: int) -> list[tuple[int, int]]:
        """(frame, lost frames from t0_ns to t1_ns) for every gap from ``start`` to ``stop``."""
        period = 1e9 / self.sample_rate
        holes = []
        for gap in self.gaps:
            if not (start <= gap.frame <= stop and 0 < gap.frame < self.frames):
                continue
            before = int(self._timestamps(gap.frame - 1))
            after = int(self._timestamps(gap.frame))
            lost = round((after - before) / period) - 1
            first = max(1, math.ceil((t0_ns - before) / period))
            last = min(lost, math.ceil((t1_ns - before) / period) - 1)
            if last >= first:
                holes.append((gap.frame, last - first + 1))
        return holes

    def blocks(
        self,
        frames: int | None = None,
        *,
        seconds: float | None = None,
        start: int = 0,
        stop: int | None = None,
        scaled: bool = False,
        prefetch: bool = True,
        copy: bool = True,
    ) -> Generator[Block, None, None]:
        """Blocks of ``frames`` (or ``seconds``; default 1 s) from frame ``start`` to ``stop``.

        With ``prefetch`` a background process reads the next blocks into
        shared memory while the caller works on this one. With ``copy=False``
        a block's arrays are read-only views of that shared memory, valid until
        the next block is asked for (faster; do not keep them).
        """
        if frames is None:
            frames = max(1, round((seconds if seconds is not None else 1.0) * self.sample_rate))
        if frames < 1:
            raise ValueError(f"blocks need at least 1 frame each, not {frames}")
        stop = self.frames if stop is None else min(stop, self.frames)
        dtype = np.dtype(np.float32) if scaled else self.dtype
        self.guard.check(
            len(self.channel_index) * frames * dtype.itemsize,
            lambda: (
                f"one block of {self.stream} ({len(self.channel_index)} channels x {frames} frames)"
            ),
        )
        return iterate_blocks(self, frames, start, stop, scaled, prefetch, copy)

    def spec(self) -> dict[str, Any]:
        """What a process needs to rebuild this view (for the prefetch process)."""
        return {
            "stream": self.stream,
            "pieces": self.pieces,
            "attrs": self.attrs,
            "start_ns": self.start_ns,
            "channels": self.channel_index,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any], files: Files) -> StreamView:
        return cls(
            spec["stream"], spec["pieces"], spec["attrs"], files, Guard(None), spec["start_ns"],
            channels=spec["channels"],
        )  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"<StreamView {self.stream}: {len(self.channel_index)} channels x {self.frames} frames "
            f"of {self.dtype} at {self.sample_rate:g} Hz, {len(self.pieces)} segment(s)>"
        )


class EventView(_Rows):
    """An event stream (spikes, clock records) over all its segments: structured records."""

    def __len__(self) -> int:
        return self.frames

    @property
    def shape(self) -> tuple[int]:
        return (self.frames,)

    @property
    def descriptor(self) -> dict[str, Any]:
        return dict(self.attrs["descriptor"])

    def __getitem__(self, key: Any) -> np.ndarray:
        selection, reverse, squeeze = keys.frame_selection(key, self.frames)
        count = keys.count(selection)
        self.guard.check(
            count * self.dtype.itemsize,
            lambda: f"{self.stream}[{keys.key_text(key)}] ({count} records)",
        )
        out = np.empty(count, self.dtype)
        self._fill_1d("data", selection, out)
        return keys.shape(out, reverse, squeeze)

    def time_slice(self, t0_s: float, t1_s: float) -> np.ndarray:
        """The records from ``t0_s`` to ``t1_s`` (seconds since the recording's first frame)."""
        return self[self.frame_range(t0_s, t1_s)]

    def chunks(self, records: int = 1 << 20) -> Iterator[np.ndarray]:
        """All records, ``records`` at a time (bounded memory for any length)."""
        for start in range(0, self.frames, records):
            yield self[start : start + records]

    def __repr__(self) -> str:
        return f"<EventView {self.stream}: {self.frames} records, {len(self.pieces)} segment(s)>"
