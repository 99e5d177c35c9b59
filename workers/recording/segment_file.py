"""One HDF5 segment file of a recording, written in SWMR mode.

Every dataset is created before SWMR starts (SWMR allows appending only), so a
segment is opened knowing its streams and their formats; a format change
starts the next segment. ``flush()`` makes everything appended so far durable
against a crash of this process; a live reader with ``swmr=True`` sees it
within milliseconds. ``close()`` ends SWMR, writes the finishing attributes
and leaves a file plain ``h5py.File(path)`` opens.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.recording.format import (
    EVENT_DTYPE,
    EVENTS_CURSOR_DTYPE,
    EVENTS_STREAM,
    FLUSHED_DTYPE,
    FRAMES_BY_CHANNELS,
    GAP_DTYPE,
    RECORDS,
    RESTART_DTYPE,
    RUN_DTYPE,
    SCHEMA_VERSION,
    StreamGroup,
    consistency_flags,
    group_name,
    open_for_update,
    text,
)
from pipeline.recording.repair import repair

_CHUNK_BYTES = 1 << 20  # about 1 MiB per data chunk
_CHUNK_CACHE_BYTES = 64 << 20  # so partial writes never evict a chunk being filled


@dataclass
class StreamFormat:
    """What a stream's datasets are made from (from its ring)."""

    stream: str  # session-relative, "acq/continuous"
    dtype: np.dtype
    frame_shape: tuple[int, ...]
    sample_rate: float
    descriptor: dict[str, Any]


def _rows_per_chunk(fmt: StreamFormat) -> int:
    frame_bytes = fmt.dtype.itemsize * int(np.prod(fmt.frame_shape, dtype=np.int64))
    return int(np.clip(_CHUNK_BYTES // max(1, frame_bytes), 256, 65536))


class _PageCache:
    """Lets go of the page cache a segment's flushed bytes fill.

    A recording is written once and not read back while it is written, yet
    every byte of it stays in the page cache until memory runs short. On a
    day-long recording that pushes out what the rest of the machine had
    cached, and on a virtual machine every new page costs a host page fault: at
    1024 channels (61 MB/s) the copy into ever new pages cost the recorder 13 %
    of a core. At each flush the kernel is asked (``POSIX_FADV_DONTNEED``) to
    write back what the previous flush left and to drop it from the cache once
    it is on disk. Dirty pages are never dropped, only written: nothing is
    lost. Where ``posix_fadvise`` does not exist (Windows, macOS) the cache is
    left to the OS.
    """

    def __init__(self, file: h5py.File) -> None:
        self._fd: int | None = None
        self._flushed = 0  # the file's size at the previous flush
        if hasattr(os, "posix_fadvise"):
            with contextlib.suppress(TypeError, ValueError):  # a driver with no descriptor
                self._fd = int(file.id.get_vfd_handle())

    def let_go(self) -> None:
        if self._fd is None:
            return
        if self._flushed:
            os.posix_fadvise(self._fd, 0, self._flushed, os.POSIX_FADV_DONTNEED)
        self._flushed = os.fstat(self._fd).st_size


class SegmentFile:
    """An open segment file; rows are appended per stream, then flushed."""

    def __init__(self, path: Path, file: h5py.File, repairs: list[str] | None = None) -> None:
        self.path = path
        self.file = file
        #: What crash repair did before this segment was reopened.
        self.repairs = repairs or []
        self.datasets: dict[str, tuple[h5py.Dataset, h5py.Dataset]] = {}
        self.runs: dict[str, h5py.Dataset] = {}
        for group in file["streams"].values():
            stream = StreamGroup.read(group).stream
            self.datasets[stream] = (group["data"], group["timestamps_ns"])
            if "sequence_runs" in group:
                self.runs[stream] = group["sequence_runs"]
        self.rows = {s: len(d) for s, (d, _) in self.datasets.items()}
        self._attributes: dict[str, StreamGroup] = {}
        # Every table whose flushed row count /flushed keeps, in its order.
        self._counted: list[h5py.Dataset] = []
        if "flushed" in file:
            self._counted = [file[row["dataset"].decode()] for row in file["flushed"][:]]
        self._page_cache = _PageCache(file)

    @classmethod
    def create(
        cls,
        path: Path,
        attrs: dict[str, Any],
        provenance: dict[str, Any],
        formats: list[StreamFormat],
        first_frames: dict[str, int],
        first_cursors: dict[str, int],
        stream_ids: dict[str, int] | None = None,
        events_cursor: tuple[int, int] | None = None,
    ) -> SegmentFile:
        """A new segment file with a group per stream, then SWMR on; ``events_cursor`` is
        (stream id, sequence) of the next event of the session's log to record."""
        file = h5py.File(path, "w", libver="latest", rdcc_nbytes=_CHUNK_CACHE_BYTES)
        try:
            file.attrs.update(attrs)
            file.attrs["schema_version"] = SCHEMA_VERSION
            file.attrs["finished"] = False
            file.create_group("streams")  # also when no stream exists yet: they come later
            for fmt in formats:
                group = file.create_group(group_name(fmt.stream))
                rows = _rows_per_chunk(fmt)
                group.create_dataset(
                    "data",
                    shape=(0, *fmt.frame_shape),
                    maxshape=(None, *fmt.frame_shape),
                    dtype=fmt.dtype,
                    chunks=(rows, *fmt.frame_shape),
                )
                group.create_dataset(
                    "timestamps_ns", shape=(0,), maxshape=(None,), dtype="<i8", chunks=(rows,)
                )
                group.create_dataset(
                    "sequence_runs", shape=(0,), maxshape=(None,), dtype=RUN_DTYPE, chunks=(64,)
                )
                StreamGroup(
                    fmt.stream,
                    fmt.sample_rate,
                    first_frames[fmt.stream],
                    first_cursors[fmt.stream],
                    fmt.descriptor,
                    FRAMES_BY_CHANNELS if fmt.frame_shape else RECORDS,
                    (stream_ids or {}).get(fmt.stream, 0),
                ).write(group)
            for name, dtype in (("events", EVENT_DTYPE), ("gaps", GAP_DTYPE)):
                file.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(256,))
            cursor = np.zeros(1, EVENTS_CURSOR_DTYPE)
            cursor[0] = events_cursor or (0, -1)
            file.create_dataset("events_cursor", data=cursor)
            file.create_dataset(
                "provenance/restarts",
                shape=(0,),
                maxshape=(None,),
                dtype=RESTART_DTYPE,
                chunks=(64,),
            )
            counted = [
                f"{group_name(fmt.stream)}/{table}"
                for fmt in formats
                for table in ("data", "sequence_runs")
            ] + ["events", "gaps", "provenance/restarts"]
            flushed = np.zeros(len(counted), FLUSHED_DTYPE)
            flushed["dataset"] = counted
            file.create_dataset("flushed", data=flushed)
            file["provenance"].attrs.update(provenance)
            file.swmr_mode = True
        except BaseException:
            file.close()
            raise
        return cls(path, file)

    @classmethod
    def reopen(cls, path: Path) -> SegmentFile:
        """Continue a segment whose writer crashed: repair it, append again under SWMR."""
        repairs = repair(path)
        file = open_for_update(path, libver="latest", rdcc_nbytes=_CHUNK_CACHE_BYTES)
        try:
            file.swmr_mode = True
        except BaseException:
            file.close()
            raise
        return cls(path, file, repairs)

    def append(self, stream: str, data: np.ndarray, timestamps_ns: np.ndarray) -> None:
        frames, stamps = self.datasets[stream]
        start = self.rows[stream]
        end = start + len(data)
        frames.resize(end, axis=0)
        frames[start:end] = data
        stamps.resize(end, axis=0)
        stamps[start:end] = timestamps_ns
        self.rows[stream] = end

    def add_run(self, stream: str, stream_id: int, generation: int, sequence: int) -> None:
        """Row ``rows[stream]`` onwards holds ring sequence ``sequence`` on, of ``stream_id``."""
        runs = self.runs.get(stream)
        if runs is None:  # a schema 1 segment being resumed
            return
        row = np.zeros((), RUN_DTYPE)
        row["row"], row["stream_id"] = self.rows[stream], stream_id
        row["generation"], row["sequence"] = generation, sequence
        n = len(runs)
        if n and runs[n - 1]["row"] == self.rows[stream]:
            runs[n - 1] = row  # nothing was written under the previous run
            return
        runs.resize(n + 1, axis=0)
        runs[n] = row

    def has_run(self, stream: str) -> bool:
        runs = self.runs.get(stream)
        return runs is None or len(runs) > 0  # schema 1 segments keep no runs

    def resume_point(self, stream: str) -> tuple[int, int]:
        """(stream_id, ring sequence) of the frame after the last one written (0 id: unknown)."""
        runs = self.runs.get(stream)
        if runs is not None and len(runs):
            last = runs[len(runs) - 1]
            return int(last["stream_id"]), int(last["sequence"]) + self.rows[stream] - int(
                last["row"]
            )
        return self.attributes(stream).stream_id, self.next_cursor(stream)

    def add_row(self, dataset: str, row: np.void | np.ndarray) -> None:
        """Append one record to ``events``, ``gaps`` or ``provenance/restarts``."""
        table = self.file[dataset]
        if table.dtype != row.dtype:  # a table of an older schema (a resumed segment)
            older = np.zeros((), table.dtype)
            for name in table.dtype.names or ():
                older[name] = row[name]
            row = older
        n = len(table)
        table.resize(n + 1, axis=0)
        table[n] = row

    def attributes(self, stream: str) -> StreamGroup:
        """The stream group's attributes (written once, when the segment is created).

        Read from the file once per segment: they hold the descriptor's JSON (every
        channel's label), and the writer needs ``first_frame`` for every chunk.
        """
        attributes = self._attributes.get(stream)
        if attributes is None:
            attributes = StreamGroup.read(self.file[group_name(stream)])
            self._attributes[stream] = attributes
        return attributes

    def first_cursor(self, stream: str) -> int:
        return self.attributes(stream).first_cursor

    def first_frame(self, stream: str) -> int:
        return self.attributes(stream).first_frame

    def lost_cursors(self, stream: str) -> int:
        """Ring sequence numbers this segment skipped for ``stream`` (its gaps)."""
        gaps = self.file["gaps"][:]
        mine = gaps[gaps["stream"] == stream.encode()]
        return int((mine["cursor_end"] - mine["cursor_start"]).sum())

    def next_cursor(self, stream: str) -> int:
        """The ring sequence number of the frame after the last one written."""
        return self.first_cursor(stream) + self.rows[stream] + self.lost_cursors(stream)

    def last_timestamp(self, stream: str) -> int | None:
        stamps = self.datasets[stream][1]
        return int(stamps[len(stamps) - 1]) if len(stamps) else None

    def events_resume_point(self) -> tuple[int, int] | None:
        """(stream id, sequence) of the next event of the log to record after the rows this
        segment holds; None if it does not say (an older schema, or no log was read).

        Taken from the rows themselves, never from a cursor kept beside them: a crash
        in the middle of a flush can leave a separately written cursor on disk while
        repair cuts the rows it counted (a 40 min chaos run lost 15 events so). It is
        the furthest of: where the segment began reading the log (``events_cursor``,
        written once before SWMR starts), the last numbered row + 1 (at every flush the
        recorder writes what it holds back, so every event before that is a row or in
        a row's count), and the end of the last gap row of the log.
        """
        if "events_cursor" not in self.file:
            return None
        stream_id, sequence = (int(v) for v in self.file["events_cursor"][0])
        if sequence < 0:
            return None
        rows = self.file["events"][:]
        numbered = rows["sequence"][rows["sequence"] >= 0]
        if len(numbered):
            sequence = max(sequence, int(numbered.max()) + 1)
        gaps = self.file["gaps"][:]
        lost = gaps[gaps["stream"] == EVENTS_STREAM.encode()]
        if len(lost):
            sequence = max(sequence, int(lost["cursor_end"].max()))
        return stream_id, sequence

    def flush(self) -> None:
        """Make every row appended so far durable, and record how many there are."""
        if self._counted:
            self.file["flushed"]["rows"] = np.array([len(d) for d in self._counted], np.int64)
        self.file.flush()
        self._page_cache.let_go()

    def close(self, finished_attrs: dict[str, Any]) -> None:
        """End SWMR and write the finishing attributes; the file then opens anywhere."""
        self.flush()
        self.file.close()
        finalize(self.path, finished_attrs)


def finalize(path: Path, finished_attrs: dict[str, Any]) -> list[str]:
    """Leave ``path`` openable by plain h5py, with its provenance's finishing attributes.

    A file its writer closed is not repaired (nothing in it is cut); a file
    whose writer crashed is, and what repair did is returned.
    """
    done = repair(path) if consistency_flags(path) else []
    with open_for_update(path) as file:
        file["provenance"].attrs.update(finished_attrs)
        file.attrs["finished"] = True
    return done


def event_row(
    time_ns: int, monotonic_ns: int, topic: str, payload: Any, sequence: int = -1
) -> np.ndarray:
    row = np.zeros((), EVENT_DTYPE)
    row["time_ns"], row["monotonic_ns"] = time_ns, monotonic_ns
    row["topic"], row["payload"] = text(topic, 64), text(payload, 2048)
    row["sequence"] = sequence
    return row
