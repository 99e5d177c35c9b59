"""Reading a recording back: every segment of a stream as one array, sliced without loading it.

::

    import pipeline
    with pipeline.open_recording("recordings/default-20261122-101500") as rec:
        rec.shape                       # (channels, frames) of the first continuous stream
        x = rec[5:15, 0:30000]          # channels 5..14, the first 30000 frames (int16 stays int16)
        y = rec.time_slice(60.0, 61.5)  # by seconds since the recording's first frame
        t = rec.timestamps_ns[0:30000]  # host monotonic ns of those frames
        v1 = rec.select(["ch001", "ch007"])   # a view of two channels, sharing the files
        for block in rec.blocks(seconds=10):  # the next block is read by a background process
            process(block.data, block.timestamps_ns)

A view's frames (``pipeline.views``) are the recorded rows of every segment
in manifest order. Frames lost while recording are not rows; ``view.gaps``
lists them, and ``time_slice(..., fill="nan")`` or ``fill="mask"`` puts them
back as NaN or masked columns. Arrays are ``(channels, frames)`` whatever the
on-disk layout.

Every slice is checked against a memory limit before anything is read
(:class:`pipeline.errors.SliceTooLarge`): reading a week of 1024 channels by
accident should fail at once with advice, not swap the machine to death.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.errors import RecordingError
from pipeline.recording.format import (
    CHANNELS_BY_FRAMES,
    EVENTS_STREAM,
    LAYOUTS,
    MANIFEST,
    Manifest,
    StreamGroup,
    locate,
)
from pipeline.recording.opened import DEFAULT_MEMORY_LIMIT_BYTES, Files, Guard
from pipeline.recording.views import EventView, Gap, Piece, StreamView


def open_recording(
    path: str | Path | Sequence[str | Path],
    *,
    stream: str | None = None,
    memory_limit_bytes: int | None = DEFAULT_MEMORY_LIMIT_BYTES,
) -> Recording:
    """Open a recording: a directory, its ``manifest.json``, one segment file, or a list of them.

    ``stream`` picks the continuous stream that ``rec[...]``, ``rec.time_slice``
    and the other array methods use (default: the first continuous stream the
    recorder was configured with). ``memory_limit_bytes`` bounds one slice
    (None: no bound).
    """
    return Recording(path, stream=stream, memory_limit_bytes=memory_limit_bytes)


@dataclass(frozen=True)
class Event:
    """One control-plane event from the recording's ``events`` table."""

    t_s: float  # seconds since the recording's first frame (host monotonic clock)
    time_ns: int  # wall clock when the recorder stored it, ns since 1970
    monotonic_ns: int  # when it happened (the payload's own time if it has one), host monotonic
    topic: str
    payload: Any  # the decoded JSON, or the text when it was cut or is not JSON
    #: its number in the session's event log (-1: a row the recorder wrote of its own, or a
    #: recording of schema 2 or older)
    sequence: int = -1


class Recording:
    """An open recording: its streams as views, its events, gaps and provenance."""

    def __init__(
        self,
        path: str | Path | Sequence[str | Path],
        *,
        stream: str | None = None,
        memory_limit_bytes: int | None = DEFAULT_MEMORY_LIMIT_BYTES,
    ) -> None:
        self.path, self.segment_paths, self.manifest = _locate(path)
        self.guard = Guard(memory_limit_bytes)
        self.files = Files()
        self._views: dict[str, StreamView | EventView] = {}
        try:
            self._groups = self._scan()
            self.streams = list(self._groups)
            listed = [
                s for s in (self.manifest.streams if self.manifest else []) if s in self._groups
            ]
            ordered = listed + [s for s in self.streams if s not in listed]
            continuous = [s for s in ordered if self._rate(s) > 0]
            if stream is not None and stream not in continuous:
                raise RecordingError(
                    f"{stream!r} is not a continuous stream of {self.path}; "
                    f"its continuous streams are {continuous}"
                )
            self.default_stream = stream or (continuous[0] if continuous else None)
            self.start_ns = self._start_ns()
        except RecordingError:
            self.files.close()
            raise
        except (KeyError, OSError, RuntimeError, ValueError, TypeError) as exc:
            self.files.close()
            raise RecordingError(
                f"{self.path} is damaged ({type(exc).__name__}: {exc}); "
                f"rigpipe inspect {self.path} says what can still be read"
            ) from None
        except BaseException:
            self.files.close()
            raise

    # -- streams ---------------------------------------------------------------------------------
    def stream(self, name: str) -> StreamView | EventView:
        """The view of stream ``name`` (``acq/continuous``); ``rec[name]`` is the same."""
        if name not in self._groups:
            raise RecordingError(
                f"stream {name!r} is not in the recording {self.path}; it has {self.streams}"
            )
        view = self._views.get(name)
        if view is None:
            try:
                pieces, attrs = _pieces(name, self._groups[name])
            except (KeyError, OSError, RuntimeError, ValueError, TypeError) as exc:
                raise RecordingError(
                    f"{name}: a segment's metadata cannot be read, the file is damaged "
                    f"({type(exc).__name__}: {exc}); rigpipe inspect {self.path} says which"
                ) from None
            cls = StreamView if self._rate(name) > 0 else EventView
            view = cls(name, pieces, attrs, self.files, self.guard, self.start_ns)
            self._views[name] = view
        return view

    @property
    def default(self) -> StreamView:
        """The continuous stream that ``rec[...]`` and the array methods read."""
        if self.default_stream is None:
            raise RecordingError(f"{self.path} has no continuous stream; it has {self.streams}")
        view = self.stream(self.default_stream)
        assert isinstance(view, StreamView)
        return view

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return self.stream(key)
        return self.default[key]

    def __getattr__(self, name: str) -> Any:
        # The array side of the default stream: rec.shape, rec.time_slice, rec.select, ...
        if name in _DELEGATED:
            return getattr(self.default, name)
        raise AttributeError(f"'Recording' object has no attribute {name!r}")

    @contextlib.contextmanager
    def allow_large(self, limit_bytes: int | None = None) -> Iterator[None]:
        """Within the block, slices up to ``limit_bytes`` (None: any size) are allowed."""
        saved = self.guard.limit_bytes
        self.guard.limit_bytes = limit_bytes
        try:
            yield
        finally:
            self.guard.limit_bytes = saved

    # -- tables ----------------------------------------------------------------------------------
    @property
    def events(self) -> list[Event]:
        """Every control-plane event recorded (annotations, state changes, stimulation, ...)."""
        events = []
        table = self._table("events")
        numbered = "sequence" in (table.dtype.names or ())
        for row in table:
            raw = row["payload"].decode(errors="replace")
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw
            stamp = int(row["monotonic_ns"])
            if isinstance(payload, dict):  # when it happened, not when the recorder heard of it
                stamp = next((int(payload[k]) for k in _WHEN if payload.get(k)), stamp)
            events.append(
                Event(
                    t_s=(stamp - self.start_ns) / 1e9,
                    time_ns=int(row["time_ns"]),
                    monotonic_ns=stamp,
                    topic=row["topic"].decode(errors="replace"),
                    payload=payload,
                    sequence=int(row["sequence"]) if numbered else -1,
                )
            )
        return events

    def event_clocks(self) -> np.ndarray:
        """The recorder's (time_ns, monotonic_ns) pair for every event: wall vs host clock."""
        table = self._table("events")
        if not len(table):
            return np.empty(0, [("time_ns", "<i8"), ("monotonic_ns", "<i8")])
        return table[["time_ns", "monotonic_ns"]]

    @property
    def gaps(self) -> dict[str, list[Gap]]:
        """Per stream, the stretches that are not in the recording."""
        return {name: self.stream(name).gaps for name in self.streams}

    @property
    def event_gaps(self) -> list[Gap]:
        """Events of the session's log that are not in the recording: ``frame`` is the index
        in :attr:`events` of the first event after the gap, ``lost_frames`` how many events
        were lost (the session's event log no longer held them)."""
        gaps, before = [], 0
        for path in self.segment_paths:
            file = self.files.get(str(path))
            table = file["gaps"][:]
            for row in table[table["stream"] == EVENTS_STREAM.encode()]:
                gaps.append(Gap.from_row(row, before + int(row["at_frame"])))
            before += len(file["events"])
        return gaps

    @property
    def restarts(self) -> list[dict[str, Any]]:
        return [
            {
                "time_ns": int(r["time_ns"]),
                "worker": r["worker"].decode(errors="replace"),
                "restarts": int(r["restarts"]),
                "reason": r["reason"].decode(errors="replace"),
            }
            for r in self._table("provenance/restarts")
        ]

    @property
    def provenance(self) -> dict[str, Any]:
        """The first segment's provenance, with the last segment's finishing attributes."""
        first = dict(self.files.get(str(self.segment_paths[0]))["provenance"].attrs)
        last = self.files.get(str(self.segment_paths[-1]))["provenance"].attrs
        first.update({k: v for k, v in last.items() if k.startswith("finish") or k == "crashed"})
        return {k: v.item() if isinstance(v, np.generic) else v for k, v in first.items()}

    def _table(self, name: str) -> np.ndarray:
        """Table ``name`` (events, gaps, restarts) of every segment, checked against the limit."""
        files = [self.files.get(str(p)) for p in self.segment_paths]
        tables = [file[name] for file in files if name in file]
        nbytes = sum(t.size * t.dtype.itemsize for t in tables)
        self.guard.check(nbytes, lambda: f"the {name} tables ({sum(t.size for t in tables)} rows)")
        return np.concatenate([t[:] for t in tables]) if tables else np.empty(0)

    # -- lifecycle -------------------------------------------------------------------------------
    def close(self) -> None:
        self.files.close()

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<Recording {self.path}: {len(self.segment_paths)} segment(s), "
            f"streams {self.streams}, default {self.default_stream!r}>"
        )

    # -- opening ---------------------------------------------------------------------------------
    def _scan(self) -> dict[str, list[tuple[str, h5py.Group]]]:
        """Per stream, the (segment path, group) of every segment that has it, in order."""
        groups: dict[str, list[tuple[str, h5py.Group]]] = {}
        for path in self.segment_paths:
            file = self.files.get(str(path))
            try:
                if "streams" not in file:
                    raise RecordingError(f"{path} is not a rigpipe segment: no /streams group")
                for group in file["streams"].values():
                    stream = StreamGroup.read(group).stream
                    for name in ("data", "timestamps_ns"):
                        if name not in group:
                            raise RecordingError(
                                f"{path}: stream {stream!r} has no {name} dataset; "
                                f"rigpipe inspect {self.path} says what can still be read"
                            )
                    groups.setdefault(stream, []).append((str(path), group))
            except (KeyError, OSError, RuntimeError, ValueError, TypeError) as exc:
                raise RecordingError(
                    f"{path} is damaged ({type(exc).__name__}: {exc}); "
                    f"rigpipe inspect {self.path} says what can still be read"
                ) from None
        return groups

    def _rate(self, stream: str) -> float:
        return StreamGroup.read(self._groups[stream][0][1]).sample_rate

    def _start_ns(self) -> int:
        firsts = [
            int(group["timestamps_ns"][0])
            for segments in self._groups.values()
            for _, group in segments[:1]
            if len(group["timestamps_ns"])
        ]
        return min(firsts) if firsts else 0


#: Payload fields that say when an event happened (host monotonic ns), best first.
_WHEN = ("monotonic_ns", "queued_ns")
_DELEGATED = frozenset(
    {
        "shape",
        "dtype",
        "sample_rate",
        "channel_labels",
        "positions",
        "scale",
        "units",
        "descriptor",
        "frames",
        "duration_s",
        "timestamps_ns",
        "times_s",
        "scaled",
        "time_slice",
        "frame_range",
        "select",
        "blocks",
        "first_frame",
    }
)


def _locate(path: str | Path | Sequence[str | Path]) -> tuple[Path, list[Path], Manifest | None]:
    if not isinstance(path, str | Path):
        paths = [Path(p) for p in path]
        if not paths:
            raise RecordingError("open_recording was given an empty list of segment files")
        return paths[0].parent, paths, None
    path = Path(path)
    try:
        files, manifest = locate(path)
    except FileNotFoundError as exc:
        raise RecordingError(f"no recording at {path}: {exc}") from None
    directory = path if path.is_dir() else path.parent
    missing = [f for f in files if not f.exists()]
    if missing:
        raise RecordingError(
            f"{directory / MANIFEST} lists {missing[0].name}, which does not exist; "
            "restore it, or open the segments that are there as a list"
        )
    return path, files, manifest


def _signature(group: h5py.Group) -> dict[str, Any]:
    """What must be equal in every segment for a stream to be mapped end to end."""
    data = group["data"]
    attrs = StreamGroup.read(group)
    if attrs.layout not in LAYOUTS:
        raise RecordingError(
            f"{group.file.filename}: {group.name} has unknown layout {attrs.layout!r}"
        )
    shape = tuple(data.shape[:-1] if attrs.layout == CHANNELS_BY_FRAMES else data.shape[1:])
    descriptor = attrs.descriptor
    return {
        "dtype": data.dtype,
        "frame shape": shape,
        "sample rate": attrs.sample_rate,
        "channel labels": _labels(descriptor, shape),
        "scale": descriptor.get("scale", 1.0),
        "units": descriptor.get("units", ""),
    }


def _pieces(stream: str, groups: list[tuple[str, h5py.Group]]) -> tuple[list[Piece], dict]:
    """The pieces of ``stream``, checking that every segment has the first one's layout."""
    first_path, first_group = groups[0]
    reference = _signature(first_group)
    pieces, first = [], 0
    for path, group in groups:
        signature = _signature(group)
        differs = [k for k in reference if signature[k] != reference[k]]
        if differs:
            what = "; ".join(f"{k} {reference[k]} -> {signature[k]}" for k in differs[:3])
            raise RecordingError(
                f"{stream}: {Path(path).name} has another layout than {Path(first_path).name} "
                f"({what}), so the segments cannot be mapped end to end. Open the segments "
                f"before it and from it separately, e.g. open_recording([...segment files...])"
            )
        group_attrs = StreamGroup.read(group)
        transposed = group_attrs.layout == CHANNELS_BY_FRAMES
        data = group["data"]
        rows = data.shape[-1] if transposed else data.shape[0]
        rows = min(rows, len(group["timestamps_ns"]))
        pieces.append(Piece(path, group.name, first, rows, group_attrs.first_frame, transposed))
        first += rows
    attrs = dict(reference)
    attrs["descriptor"] = StreamGroup.read(first_group).descriptor
    return pieces, attrs


def _labels(descriptor: dict[str, Any], frame_shape: tuple[int, ...]) -> list[str]:
    channels = int(np.prod(frame_shape, dtype=np.int64)) if frame_shape else 1
    labels = descriptor.get("channel_labels") or descriptor.get(
        "labels"
    )  # "labels": older stim recordings
    if isinstance(labels, list) and len(labels) == channels:
        return [str(x) for x in labels]
    return [f"ch{i}" for i in range(channels)]
