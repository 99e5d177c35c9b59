"""The rigpipe recording format: constants, record types and the manifest.

A recording is a directory ``<recordings_dir>/<session>-<YYYYmmdd-HHMMSS>/``
holding ``manifest.json`` and segment files ``segment-0000.h5``,
``segment-0001.h5``, ... (docs/recording-format.md describes every group,
dataset and attribute). This module is what both the recorder (which writes)
and ``rigpipe inspect`` (which reads) need to agree on; it knows nothing about
workers.

Whether a segment was finished is :func:`consistency_flags`; making an unfinished one
open with plain h5py is :mod:`pipeline.recording.repair`'s.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from pipeline.errors import ManifestCorrupt, RecordingError
from pipeline.host import clock
from pipeline.host.files import atomic_replace, read_bytes
from pipeline.ring.naming import EVENTS_STREAM as EVENTS_STREAM

#: 2: per-stream ``sequence_runs`` and ``stream_id``, the ``flushed`` row counts, manifest
#: ``repairs``. 3: the events' ``sequence`` in the session's event log, ``events_cursor``, gap
#: rows of the event log. Versions 1 and 2 are still read (1 is repaired the version 1 way).
SCHEMA_VERSION = 3
MANIFEST = "manifest.json"
#: In a continuous stream, a timestamp step this many sample periods long (or more) is a gap.
GAP_PERIODS = 1.5

#: One row per control-plane event (annotations, restarts, parameter changes, reports).
#: ``sequence``: its number in the session's event log (``supervisor/events``); -1 for a row
#: the recorder wrote of its own (schema 3; older tables have no such column).
EVENT_DTYPE = np.dtype(
    [
        ("time_ns", "<i8"),
        ("monotonic_ns", "<i8"),
        ("topic", "S64"),
        ("payload", "S2048"),
        ("sequence", "<i8"),
    ]
)
#: ``events_cursor`` (one row, written when the segment is made): the event log's stream id
#: and the sequence where this segment's events begin. A restarted recorder resumes after the
#: furthest of it, the last numbered event row and the last event gap row.
EVENTS_CURSOR_DTYPE = np.dtype([("stream_id", "<i8"), ("sequence", "<i8")])
# A gap row whose ``stream`` is EVENTS_STREAM ("supervisor/events", the event log) counts
# events the recording is missing. That stream has no stream group (its rows are the
# ``events`` table): ``at_frame`` is the row of this segment's ``events`` table the gap
# precedes, ``lost_frames`` the number of events lost, the cursors their sequence numbers.
#: One row per stretch of a stream that is missing from the recording, and why.
GAP_DTYPE = np.dtype(
    [
        ("stream", "S128"),
        ("at_frame", "<i8"),  # recording frame index of the first frame after the gap
        ("lost_frames", "<i8"),  # estimated from the timestamps (or exact from the ring)
        ("cursor_start", "<i8"),  # ring sequence numbers lost: [cursor_start, cursor_end)
        ("cursor_end", "<i8"),
        ("start_ns", "<i8"),  # timestamp of the last frame before the gap
        ("end_ns", "<i8"),  # timestamp of the first frame after it
        ("cause", "S128"),
    ]
)
#: Per stream: where the rows' ring sequence numbers start afresh. Row ``r`` of the stream holds
#: ring sequence ``sequence + (r - row)`` of stream ``stream_id``, from the last run with
#: ``row <= r``. A new run begins wherever the ring skipped frames or the stream was re-created.
RUN_DTYPE = np.dtype(
    [("row", "<i8"), ("stream_id", "<i8"), ("generation", "<i8"), ("sequence", "<i8")]
)
#: ``/flushed``: how many rows of each table the writer had written at its last flush.
#: Rows past these counts were never flushed, so repair may cut them; nothing else is cut.
FLUSHED_DTYPE = np.dtype([("dataset", "S160"), ("rows", "<i8")])
#: One row per worker restart seen during the recording.
RESTART_DTYPE = np.dtype(
    [("time_ns", "<i8"), ("worker", "S64"), ("restarts", "<i4"), ("reason", "S256")]
)


#: ``layout`` attribute values: how a stream's ``data`` is laid out on disk.
FRAMES_BY_CHANNELS = "frames x channels"
CHANNELS_BY_FRAMES = "channels x frames"  # read, never written by the recorder
RECORDS = "records"  # an event stream of structured records
LAYOUTS = (FRAMES_BY_CHANNELS, CHANNELS_BY_FRAMES, RECORDS)


@dataclass(frozen=True)
class StreamGroup:
    """The attributes of one stream's group in a segment: written here, read here.

    ``write`` also stores the descriptor's common fields as attributes of their
    own (``channel_labels``, ``units``, ``scale``, ``offset``, ``source``) so that
    any HDF5 tool shows them; ``read`` takes them from ``descriptor_json``.
    """

    stream: str  # session-relative, "acq/continuous"
    sample_rate: float  # Hz; 0 for an event stream
    first_frame: int  # recording frame index of row 0
    first_cursor: int  # ring sequence of row 0 (schema 1 resumes from it)
    descriptor: dict[str, Any]
    layout: str = FRAMES_BY_CHANNELS
    stream_id: int = 0  # the ring's stream id when the segment began (schema 2; 0 unknown)

    def write(self, group: Any) -> None:
        d = self.descriptor
        attrs = group.attrs
        attrs["stream"] = self.stream
        attrs["sample_rate"] = self.sample_rate
        attrs["first_frame"] = self.first_frame
        attrs["first_cursor"] = self.first_cursor
        attrs["stream_id"] = self.stream_id
        attrs["descriptor_json"] = json.dumps(d, default=str)
        if "channel_labels" in d:
            attrs["channel_labels"] = [str(x) for x in d["channel_labels"]]
        for key in ("units", "scale", "offset"):
            if isinstance(d.get(key), str | int | float):
                attrs[key] = d[key]
        if "source" in d:
            attrs["source"] = json.dumps(d["source"], default=str)
        attrs["layout"] = self.layout

    @classmethod
    def read(cls, group: Any) -> StreamGroup:
        if group is None:  # what h5py yields for a link that leads nowhere: a damaged file
            raise KeyError("a stream's group cannot be found where its link points")
        attrs = group.attrs
        return cls(
            stream=str(attrs["stream"]),
            sample_rate=float(attrs["sample_rate"]),
            first_frame=int(attrs["first_frame"]),
            first_cursor=int(attrs.get("first_cursor", 0)),
            descriptor=json.loads(attrs.get("descriptor_json", "{}")),
            layout=str(attrs.get("layout", FRAMES_BY_CHANNELS)),
            stream_id=int(attrs.get("stream_id", 0)),
        )


def group_name(stream: str) -> str:
    """HDF5 group of a session stream: ``acq/continuous`` -> ``streams/acq.continuous``."""
    return "streams/" + stream.replace("/", ".")


class SegmentEntry(msgspec.Struct, kw_only=True):
    """One segment file in the manifest."""

    file: str
    index: int
    started_at: str
    finished_at: str = ""
    state: str = "open"  # open (being written or crashed), closed, repaired
    first_frames: dict[str, int] = {}  # stream -> recording frame index of its row 0
    frames: dict[str, int] = {}  # stream -> rows in this segment (when closed)
    bytes: int = 0
    repairs: list[str] = []  # what crash repair did to this file (schema 2)


class Manifest(msgspec.Struct, kw_only=True):
    """``manifest.json``: the segments of one recording, in order."""

    schema_version: int = SCHEMA_VERSION
    recording_id: str
    session: str
    session_id: str
    started_at: str
    started_monotonic_ns: int = 0  # host monotonic clock at the start (schema 2)
    finished_at: str = ""
    #: Why the recording ended before it was asked to ("" for a stop asked for: the
    #: session's, or ``rigpipe record stop``): its supervisor vanished, the disk filled,
    #: its recorder died and never came back to close it.
    stopped_early: str = ""
    streams: list[str] = []
    segments: list[SegmentEntry] = []


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Replace the manifest atomically (and durably: fsync before the rename)."""
    temporary = directory / f".{MANIFEST}.{os.getpid()}.tmp"
    with open(temporary, "wb") as out:
        out.write(msgspec.json.format(msgspec.json.encode(manifest)))
        out.flush()
        os.fsync(out.fileno())
    atomic_replace(temporary, directory / MANIFEST)


def read_manifest(directory: Path) -> Manifest:
    """The manifest of ``directory``; :class:`ManifestCorrupt` if it is not one."""
    path = directory / MANIFEST
    try:
        return msgspec.json.decode(read_bytes(path), type=Manifest)
    except msgspec.DecodeError as exc:  # also: not JSON, cut short, wrong types
        raise ManifestCorrupt(
            f"{path} is not a rigpipe manifest ({exc}); move it aside to open the "
            f"segments by their names, and run rigpipe inspect {directory}"
        ) from None


def segment_files(path: Path) -> list[Path]:
    """The segment files of a recording directory, its manifest, or one file, in order."""
    files, _ = locate(Path(path))
    return files


def locate(path: Path) -> tuple[list[Path], Manifest | None]:
    """The segment files of ``path`` in recording order, and the manifest if there is one.

    A directory without a manifest gives its ``segment-*.h5`` files by name.
    FileNotFoundError when ``path`` holds no recording.
    """
    if path.is_dir() or path.name == MANIFEST:
        directory = path if path.is_dir() else path.parent
        if not (directory / MANIFEST).exists():
            found = sorted(directory.glob("segment-*.h5"))
            if not found:
                raise FileNotFoundError(f"{directory} holds no {MANIFEST} and no segment files")
            _check_numbering(found)
            return found, None
        manifest = read_manifest(directory)
        return [directory / entry.file for entry in manifest.segments], manifest
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    return [path], None


def _check_numbering(found: list[Path]) -> None:
    """Without a manifest, only the names tell a missing segment: they must run 0, 1, 2..."""
    numbers = []
    for path in found:
        try:
            numbers.append(int(path.stem.split("-", 1)[1]))
        except (IndexError, ValueError):
            continue
    for expected, number in enumerate(numbers):
        if number != expected:
            raise RecordingError(
                f"{found[0].parent} has no {MANIFEST} and segment {expected:04d} is missing "
                f"(segment-{number:04d}.h5 follows); restore it, or open the segments that "
                "are there as a list to read them anyway"
            )


def open_segment(path: Path) -> Any:
    """Open a segment read-only: with SWMR when its writer has not finished (or crashed).

    A segment still being written is opened without HDF5's file lock: a reader
    holding the lock would make the recorder's rotation, finishing and repair
    fail (on Windows even its flushes). The SWMR protocol, not the lock, keeps
    a live reader consistent. Other programs reading a live recording should
    do the same (``h5py.File(path, "r", swmr=True, locking=False)``, or
    ``HDF5_USE_FILE_LOCKING=FALSE`` in their environment). A finished segment
    is opened as plain h5py would, so both can have it open in one process
    (HDF5 refuses one file opened with two lock settings in one process).
    """
    import h5py

    if consistency_flags(Path(path)):
        return h5py.File(path, "r", swmr=True, locking=False)
    return h5py.File(path, "r")


#: How long the recorder waits for another program's lock on a segment before writing anyway
#: (short: a reader keeps the lock as long as it keeps the file open, and the recorder must
#: go on heartbeating meanwhile).
LOCK_WAIT_S = 0.25


def open_for_update(path: Path, **kwargs: Any) -> Any:
    """Open a segment for writing although another program may hold HDF5's lock on it.

    A reader that opened the file with HDF5's default locking (an outside
    ``h5py.File(path, "r", swmr=True)``) holds the lock as long as it keeps the
    file open. The recorder waits ``LOCK_WAIT_S`` for it, then opens without
    the lock: finishing or repairing a recording must not fail because
    someone is looking at it.
    """
    import h5py

    deadline = clock.now_s() + LOCK_WAIT_S
    while True:
        try:
            return h5py.File(path, "a", **kwargs)
        except OSError as exc:  # BlockingIOError: errno 11, "unable to lock file"
            if "lock" not in str(exc):
                raise
            if clock.now_s() >= deadline:
                return h5py.File(path, "a", locking=False, **kwargs)
            time.sleep(0.05)


def text(value: Any, limit: int) -> bytes:
    """UTF-8 bytes for a fixed-width field, cut at ``limit`` with a visible marker."""
    raw = (value if isinstance(value, str) else json.dumps(value, default=str)).encode()
    return raw if len(raw) <= limit else raw[: limit - 3] + b"..."


# -- is a segment finished? ----------------------------------------------------------------------
SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: Where a version 2/3 superblock keeps its file-consistency flags.
FLAGS_AT = 11


def consistency_flags(path: Path) -> int:
    """The superblock's file-consistency flags (0 for a cleanly closed file)."""
    with open(path, "rb") as f:
        head = f.read(12)
    if head[:8] != SIGNATURE or head[8] < 2:
        raise ValueError(f"{path} is not an HDF5 file with a version 2/3 superblock")
    return head[FLAGS_AT]
