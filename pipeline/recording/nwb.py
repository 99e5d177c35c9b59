"""``rigpipe export REC --nwb OUT.nwb``: a recording as one NWB 2 file, written with pynwb.

What goes where:

- continuous streams in µV (or mV, V) -> ``acquisition/<worker>_<port>`` ElectricalSeries,
  raw values (int16 stays int16) with ``conversion``/``channel_conversion`` to volts,
  streamed block by block (prefetched) so any length fits in memory; other continuous
  streams -> TimeSeries (a stimulator's output under ``stimulus``);
- the descriptor -> a device and electrode group per stream and one electrodes-table
  row per channel (``label``, ``rel_x``/``rel_y`` from the positions, ``scale``);
- spike streams (records with ``timestamp_ns``, ``channel``, ``unit``) -> the units
  table, one unit per (channel, unit); other event streams -> an EventsTable each;
- annotations, stimulation events and the other control-plane events -> EventsTables;
- gaps -> ``invalid_times`` (tagged with the stream, with the cause; events the
  session's event log no longer held are tagged ``supervisor/events``);
- provenance (host, versions, config, restarts) -> ``notes`` as JSON, the session
  id and ``was_generated_by``.

Times are seconds since the recording's first frame (``Recording.start_ns``), which is
the file's ``timestamps_reference_time``; a stream with gaps, or whose timestamps
drift from its nominal rate by more than one sample, gets explicit timestamps
instead of ``starting_time`` + ``rate``. The file is written as ``OUT.partial.nwb``
and renamed when complete, so an interrupted export never looks finished.

One module although over 500 lines: it is one mapping, a rigpipe recording to one NWB
file; every table's conversion must agree with the others on timestamps, units and
``invalid_times``, so they are read together.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import tomllib
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np

from pipeline import extras
from pipeline.errors import RecordingError
from pipeline.host import clock
from pipeline.recording.format import EVENTS_STREAM
from pipeline.recording.readback import Recording, open_recording
from pipeline.recording.views import EventView, StreamView

#: Called as progress(bytes done, bytes in all, what is being written).
Progress = Callable[[int, int, str], None]
_VOLTS = {"uV": 1e-6, "µV": 1e-6, "mV": 1e-3, "V": 1.0, "nV": 1e-9}
_AMPERES = {"uA": 1e-6, "µA": 1e-6, "mA": 1e-3, "A": 1.0, "nA": 1e-9}
_SPIKE_FIELDS = {"timestamp_ns", "channel", "unit"}
_CHUNK_BYTES = 1 << 20
_RECORDS = 1 << 20  # event records read at a time
_STIMULATION = ("stimulation_", "triggered", "stimulator_")


@dataclass
class Summary:
    """What an export wrote."""

    path: Path
    series: dict[str, int] = field(default_factory=dict)  # name -> frames
    units: int = 0
    events: dict[str, int] = field(default_factory=dict)  # table -> rows
    invalid_times: int = 0
    bytes: int = 0
    seconds: float = 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


def _pynwb() -> Any:
    pynwb = extras.require("nwb", "pynwb", "NWB export")
    from hdmf.data_utils import AbstractDataChunkIterator  # pynwb's own dependency

    # Our block iterators speak hdmf's chunk-iterator protocol without importing hdmf
    # at module level; registering makes hdmf's isinstance checks accept them.
    AbstractDataChunkIterator.register(_Blocks)
    AbstractDataChunkIterator.register(_Times)
    return pynwb


class Subject(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[subject]`` of a metadata file: NWB's Subject (DANDI requires one)."""

    subject_id: str
    species: str = ""  # binomial, e.g. "Mus musculus", or an NCBI taxonomy URL
    sex: Literal["M", "F", "U", "O"] = "U"
    age: str = ""  # ISO 8601 duration, e.g. "P90D"
    description: str = ""


class Metadata(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What a recording does not know and NWB (and DANDI) want: ``rigpipe export --metadata``."""

    subject: Subject | None = None
    experimenter: list[str] = []
    institution: str = ""
    lab: str = ""
    experiment_description: str = ""
    keywords: list[str] = []
    #: where the electrodes are (for a mouse: an Allen CCF name or acronym, e.g. "VISp")
    electrode_location: str = "unknown"


def read_metadata(path: str | Path) -> Metadata:
    """A metadata TOML file; :class:`RecordingError` naming the file and the field if wrong."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        return msgspec.convert(raw, Metadata, strict=True)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RecordingError(f"cannot read the metadata file {path}: {exc}") from None
    except msgspec.ValidationError as exc:
        raise RecordingError(f"metadata file {path}: {exc}") from None


def export_nwb(
    source: str | Path | Recording,
    out: str | Path,
    *,
    block_s: float = 10.0,
    overwrite: bool = False,
    compression: str | None = None,
    progress: Progress | None = None,
    metadata: Metadata | None = None,
) -> Summary:
    """Write the recording at ``source`` to the NWB file ``out``; see the module docstring.

    ``metadata`` adds the subject, experimenter, institution... that DANDI and
    nwbinspector require and a recording does not hold.
    """
    pynwb = _pynwb()
    out = Path(out)
    if out.exists() and not overwrite:
        raise RecordingError(f"{out} exists; choose another name, or replace it with --force")
    partial = out.with_name(out.stem + ".partial.nwb")  # pynwb warns about other suffixes
    rec = source if isinstance(source, Recording) else open_recording(source)
    started = clock.now_s()
    writer = _Writer(pynwb, rec, block_s, compression, progress, metadata or Metadata())
    try:
        nwbfile = writer.build()
        _create_private(partial, _access_of(rec))
        with pynwb.NWBHDF5IO(partial, "w") as io:
            io.write(nwbfile)
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        writer.close()  # stops prefetch processes of an export that failed half way
        if not isinstance(source, Recording):
            rec.close()
    writer.summary.path = out
    writer.summary.seconds = clock.now_s() - started
    return writer.summary


def _access_of(rec: Recording) -> int:
    """The permissions the recording's files allow every one of them (0640, 0600...)."""
    mode = 0o666
    for path in rec.segment_paths:
        mode &= stat.S_IMODE(Path(path).stat().st_mode)
    return mode


def _create_private(path: Path, mode: int) -> None:
    """Create ``path`` empty with ``mode`` less the umask: an export is no more readable
    than its recording. HDF5 then truncates it in place, keeping the mode."""
    path.unlink(missing_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))


class _Writer:
    """Builds the NWBFile; the continuous data is pulled from iterators while pynwb writes."""

    def __init__(
        self,
        pynwb: Any,
        rec: Recording,
        block_s: float,
        compression: str | None,
        progress: Progress | None,
        metadata: Metadata,
    ) -> None:
        self.pynwb = pynwb
        self.metadata = metadata
        self.rec = rec
        self.block_s = block_s
        self.compression = compression
        self.progress = progress
        self.summary = Summary(Path())
        self.total_bytes = sum(
            v.nbytes for v in map(rec.stream, rec.streams) if isinstance(v, StreamView)
        )
        self.done_bytes = 0
        self.devices: dict[str, Any] = {}
        self.iterators: list[_Blocks] = []

    def close(self) -> None:
        for iterator in self.iterators:
            iterator.close()

    def build(self) -> Any:
        rec, pynwb = self.rec, self.pynwb
        provenance = rec.provenance
        reference = _wall_time(rec)
        nwbfile = pynwb.NWBFile(
            session_description=f"rigpipe recording of session {provenance.get('session', '?')}",
            identifier=str(provenance.get("recording_id", rec.path.name)),
            session_start_time=reference,
            timestamps_reference_time=reference,
            session_id=str(provenance.get("session_id", "")) or None,
            notes=json.dumps(_provenance(rec, provenance), indent=1, default=str),
            was_generated_by=[["rigpipe", _version()]],
            source_script=f"rigpipe export {rec.path}",
            source_script_file_name=str(rec.path),
            experimenter=self.metadata.experimenter or None,
            institution=self.metadata.institution or None,
            lab=self.metadata.lab or None,
            experiment_description=self.metadata.experiment_description or None,
            keywords=self.metadata.keywords or None,
        )
        if self.metadata.subject is not None:
            given = msgspec.structs.asdict(self.metadata.subject)
            nwbfile.subject = pynwb.file.Subject(**{k: v for k, v in given.items() if v})
        for name in rec.streams:
            view = rec.stream(name)
            if isinstance(view, StreamView):
                self._continuous(nwbfile, view)
        for name in rec.streams:
            view = rec.stream(name)
            if isinstance(view, EventView):
                self._events_stream(nwbfile, view)
        self._control_events(nwbfile)
        self._gaps(nwbfile)
        return nwbfile

    # -- continuous ------------------------------------------------------------------------------
    def _device(self, nwbfile: Any, view: StreamView) -> Any:
        worker = view.stream.split("/")[0]
        if worker not in self.devices:
            source = view.descriptor.get("source", {})
            self.devices[worker] = nwbfile.create_device(
                name=worker, description=json.dumps(source, default=str)
            )
        return self.devices[worker]

    def _continuous(self, nwbfile: Any, view: StreamView) -> None:
        name = view.stream.replace("/", "_")
        blocks = _Blocks(view, self.block_s, self._advance)
        self.iterators.append(blocks)
        data = self.pynwb.H5DataIO(
            blocks,
            chunks=_chunks(view),
            compression=self.compression,
        )
        timing = _timing(view)
        volts = _VOLTS.get(view.units)
        self.summary.series[name] = view.frames
        if volts is not None:
            group = nwbfile.create_electrode_group(
                name=view.stream.replace("/", "."),
                description=f"the channels of rigpipe stream {view.stream}",
                location=self.metadata.electrode_location,
                device=self._device(nwbfile, view),
            )
            if nwbfile.electrodes is None:  # only a recording with electrodes gets the table
                nwbfile.add_electrode_column("label", "the channel's label in the recording")
                nwbfile.add_electrode_column(  # NeuroConv's name: SpikeInterface's channel ids
                    "channel_name", "the channel's name (its label), as NeuroConv writes it"
                )
                nwbfile.add_electrode_column("stream", "the rigpipe stream the channel belongs to")
                nwbfile.add_electrode_column(
                    "scale", "the recorded value's scale to the stream's units"
                )
            first_row = len(nwbfile.electrodes) if nwbfile.electrodes is not None else 0
            positions = view.positions
            for i, label in enumerate(view.channel_labels):
                place = {}
                if positions is not None and positions.shape[1] >= 2:
                    place = {"rel_x": float(positions[i, 0]), "rel_y": float(positions[i, 1])}
                nwbfile.add_electrode(
                    group=group,
                    location=self.metadata.electrode_location,
                    label=label,
                    channel_name=label,
                    stream=view.stream,
                    scale=float(view.scale[i]),
                    **place,
                )
            region = nwbfile.create_electrode_table_region(
                list(range(first_row, first_row + view.shape[0])), f"channels of {view.stream}"
            )
            scale = view.scale
            uniform = bool(np.all(scale == scale[0]))
            series = self.pynwb.ecephys.ElectricalSeries(
                name=name,
                data=data,
                electrodes=region,
                conversion=float(scale[0] * volts) if uniform else volts,
                channel_conversion=None if uniform else scale.astype(np.float32),
                description=f"rigpipe stream {view.stream}, raw {view.dtype} values",
                **timing,
            )
            nwbfile.add_acquisition(series)
            return
        amperes = _AMPERES.get(view.units)
        series = self.pynwb.TimeSeries(
            name=name,
            data=data,
            unit="amperes" if amperes else (view.units or "n/a"),
            conversion=float(view.scale[0] * amperes) if amperes else float(view.scale[0]),
            description=(
                f"rigpipe stream {view.stream}; channels {view.channel_labels}; "
                f"recorded in {view.units or 'no unit'}"
            ),
            **timing,
        )
        source = view.descriptor.get("source", {})
        if isinstance(source, dict) and source.get("kind") == "stimulation":
            nwbfile.add_stimulus(series)
        else:
            nwbfile.add_acquisition(series)

    def _advance(self, nbytes: int, what: str) -> None:
        self.done_bytes += nbytes
        self.summary.bytes = self.done_bytes
        if self.progress is not None:
            self.progress(self.done_bytes, self.total_bytes, what)

    # -- events ----------------------------------------------------------------------------------
    def _events_stream(self, nwbfile: Any, view: EventView) -> None:
        fields = set(view.dtype.names or ())
        if fields >= _SPIKE_FIELDS:
            self._units(nwbfile, view)
            return
        names = [f for f in view.dtype.names or () if f != "timestamp_ns"]
        times: list[np.ndarray] = []
        columns: dict[str, list[np.ndarray]] = {f: [] for f in names}
        for chunk, seconds in self._records(view):
            times.append(seconds)
            for f in names:
                columns[f].append(chunk[f])
        self._events_table(
            nwbfile,
            view.stream.replace("/", "_"),
            f"the records of rigpipe event stream {view.stream}",
            np.concatenate(times) if times else np.empty(0),
            {f: _column(parts, view.dtype[f]) for f, parts in columns.items()},
        )

    def _events_table(
        self,
        nwbfile: Any,
        name: str,
        description: str,
        times: np.ndarray,
        columns: dict[str, Any],
    ) -> None:
        """An EventsTable built from whole columns (no per-row Python calls)."""
        from hdmf.common import VectorData
        from pynwb.event import TimestampVectorData

        data = [TimestampVectorData(name="timestamp", description="seconds", data=times)]
        for column, values in columns.items():
            description = f"the {column} of each event"
            data.append(VectorData(name=column, description=description, data=values))
        nwbfile.create_events_table(name=name, description=description, columns=data)
        self.summary.events[name] = len(times)

    def _records(self, view: EventView) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(records, their times in seconds since the first frame), a million at a time."""
        for start in range(0, len(view), _RECORDS):
            stamps = view.timestamps_ns[start : start + _RECORDS]
            yield view[start : start + _RECORDS], (stamps - self.rec.start_ns) / 1e9

    def _units(self, nwbfile: Any, view: EventView) -> None:
        """One unit per (channel, unit) of a spike stream, linked to its electrode if known."""
        trains: dict[tuple[int, int], list[np.ndarray]] = {}
        for chunk, times in self._records(view):
            order = np.lexsort((chunk["unit"], chunk["channel"]))  # by channel, then unit
            channels, units = chunk["channel"][order], chunk["unit"][order]
            starts = np.flatnonzero(
                np.concatenate(([True], (np.diff(channels) != 0) | (np.diff(units) != 0)))
            )
            for first, part in zip(starts, np.split(times[order], starts[1:]), strict=True):
                trains.setdefault((int(channels[first]), int(units[first])), []).append(part)
        labels = _spike_labels(view)
        rows = _electrode_rows(nwbfile, view.stream.split("/")[0])
        if nwbfile.units is None:  # the first spike stream adds the columns
            rates = [
                v.sample_rate
                for v in map(self.rec.stream, self.rec.streams)
                if isinstance(v, StreamView) and v.sample_rate > 0
            ]
            if rates and nwbfile.units is None:  # spike times are on the fastest sample grid
                nwbfile.units = self.pynwb.misc.Units(
                    name="units", description="rigpipe spike streams", resolution=1 / max(rates)
                )
            nwbfile.add_unit_column("channel", "the channel the spike was detected on")
            nwbfile.add_unit_column("sorted_unit", "the unit number the source gave it")
            nwbfile.add_unit_column("channel_label", "the channel's label")
            nwbfile.add_unit_column("stream", "the rigpipe stream of the spikes")
        for (channel, unit), parts in sorted(trains.items()):
            label = labels(channel)
            extra = {"electrodes": [rows[label]]} if label in rows else {}
            nwbfile.add_unit(
                spike_times=np.concatenate(parts),
                channel=channel,
                sorted_unit=unit,
                channel_label=label,
                stream=view.stream,
                **extra,
            )
        self.summary.units += len(trains)

    def _control_events(self, nwbfile: Any) -> None:
        annotations, stimulation, control = [], [], []
        for event in self.rec.events:
            kind = event.payload.get("type", "") if isinstance(event.payload, dict) else ""
            if kind == "annotated":
                annotations.append(event)
            elif kind.startswith(_STIMULATION):
                stimulation.append(event)
            else:
                control.append(event)
        for name, description, events in (
            ("annotations", "comments sent to the rig while it recorded", annotations),
            ("stimulation", "stimulation commands, triggers and refusals", stimulation),
            ("control_events", "worker states, restarts, reports and other events", control),
        ):
            if not events:
                continue
            # in time order: a repeated message is recorded up to a second after it happened
            events = sorted(events, key=lambda e: e.t_s)
            columns = {"topic": [e.topic for e in events], **_typed_columns(events)}
            # its number in the session's event log (-1: the recorder's own, or not numbered)
            columns["log_sequence"] = np.array([e.sequence for e in events], np.int64)
            if name == "annotations":
                columns["annotation"] = columns.pop("text")
            times = np.array([e.t_s for e in events])
            self._events_table(nwbfile, name, description, times, columns)

    def _gaps(self, nwbfile: Any) -> None:
        gaps = [(stream, g) for stream, found in self.rec.gaps.items() for g in found]
        gaps += [(EVENTS_STREAM, g) for g in self.rec.event_gaps]
        if not gaps:
            return
        nwbfile.add_invalid_times_column("cause", "why these frames are not in the recording")
        nwbfile.add_invalid_times_column(
            "lost_frames", f"how many frames are missing (for {EVENTS_STREAM}: events)"
        )
        for stream, gap in gaps:
            rate = 0.0 if stream == EVENTS_STREAM else self.rec.stream(stream).sample_rate
            period_ns = 1e9 / rate if rate > 0 else 0.0
            start_ns = gap.start_ns or int(gap.end_ns - gap.lost_frames * period_ns)
            nwbfile.add_invalid_time_interval(
                start_time=(start_ns - self.rec.start_ns) / 1e9,
                stop_time=(gap.end_ns - self.rec.start_ns) / 1e9,
                tags=[stream],
                cause=gap.cause,
                lost_frames=gap.lost_frames,
            )
        self.summary.invalid_times = len(gaps)


class _Blocks:
    """An hdmf AbstractDataChunkIterator over a view's blocks, as (frames, channels) chunks."""

    def __init__(self, view: StreamView, block_s: float, advance: Callable[[int, str], None]):
        from hdmf.data_utils import DataChunk

        self._chunk = DataChunk
        self.view = view
        self.frames_per_block = max(1, round(block_s * view.sample_rate))
        self.advance = advance
        self._blocks: Generator[Any, None, None] | None = None

    def close(self) -> None:
        """Stop reading (and the prefetch process) if the export ends before the data does."""
        if self._blocks is not None:
            self._blocks.close()

    def __iter__(self) -> _Blocks:
        return self

    def __next__(self) -> Any:
        if self._blocks is None:
            self._blocks = self.view.blocks(self.frames_per_block)
        block = next(self._blocks)
        rows = block.data.T  # (frames, channels), C-contiguous
        self.advance(rows.nbytes, self.view.stream)
        return self._chunk(data=rows, selection=np.s_[block.start : block.stop, :])

    def recommended_chunk_shape(self) -> tuple[int, int]:
        return _chunks(self.view)

    def recommended_data_shape(self) -> tuple[int, int]:
        return self.view.frames, self.view.shape[0]

    @property
    def dtype(self) -> np.dtype:
        return self.view.dtype

    @property
    def maxshape(self) -> tuple[int, int]:
        return self.view.frames, self.view.shape[0]


def _chunks(view: StreamView) -> tuple[int, int]:
    channels = view.shape[0]
    rows = max(1, min(view.frames, _CHUNK_BYTES // max(1, channels * view.dtype.itemsize)))
    return rows, channels


def _timing(view: StreamView) -> dict[str, Any]:
    """``starting_time`` and ``rate`` when they describe every frame, else ``timestamps``."""
    first_s = float(view.times_s[0]) if view.frames else 0.0
    regular = not view.gaps
    if regular and view.frames > 1:
        span_ns = int(view.timestamps_ns[view.frames - 1]) - int(view.timestamps_ns[0])
        regular = (
            abs(span_ns - (view.frames - 1) * 1e9 / view.sample_rate) <= 1e9 / view.sample_rate
        )
    if regular:
        return {"starting_time": first_s, "rate": float(view.sample_rate)}
    return {"timestamps": _Times(view)}


class _Times:
    """The view's timestamps in seconds, as an hdmf chunk iterator (bounded memory)."""

    _ROWS = 1 << 20

    def __init__(self, view: StreamView) -> None:
        from hdmf.data_utils import DataChunk

        self._chunk = DataChunk
        self.view = view
        self._at = 0

    def __iter__(self) -> _Times:
        return self

    def __next__(self) -> Any:
        if self._at >= self.view.frames:
            raise StopIteration
        stop = min(self.view.frames, self._at + self._ROWS)
        times = self.view.times_s[self._at : stop]
        chunk = self._chunk(data=times, selection=np.s_[self._at : stop])
        self._at = stop
        return chunk

    def recommended_chunk_shape(self) -> tuple[int]:
        return (min(self.view.frames, 1 << 16),)

    def recommended_data_shape(self) -> tuple[int]:
        return (self.view.frames,)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float64)

    @property
    def maxshape(self) -> tuple[int]:
        return (self.view.frames,)


def _wall_time(rec: Recording) -> dt.datetime:
    """The wall-clock time of the recording's first frame (from the events' two clocks)."""
    table = rec.event_clocks()
    if len(table):
        offset_ns = int(np.median(table["time_ns"] - table["monotonic_ns"]))
        wall_ns = rec.start_ns + offset_ns
        return dt.datetime.fromtimestamp(wall_ns / 1e9, tz=dt.UTC)
    started = str(
        rec.provenance.get("started_at") or (rec.manifest.started_at if rec.manifest else "")
    )
    try:
        when = dt.datetime.fromisoformat(started)
    except ValueError:
        raise RecordingError(
            f"{rec.path}: no events and no valid started_at ({started!r}) to date the recording"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _provenance(rec: Recording, provenance: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"rigpipe_recording": str(rec.path.resolve())}
    for key, value in provenance.items():
        if key.endswith("_json") and isinstance(value, str):
            try:
                out[key[: -len("_json")]] = json.loads(value)
                continue
            except ValueError:
                pass
        out[key] = value
    out["restarts"] = rec.restarts
    out["segments"] = [p.name for p in rec.segment_paths]
    return out


def _spike_labels(view: EventView) -> Callable[[int], str]:
    """channel number -> label: by ``channel_ids`` (Blackrock) or as an index (synthetic)."""
    descriptor = view.descriptor
    labels = descriptor.get("channel_labels") or []
    ids = descriptor.get("channel_ids")
    if isinstance(ids, list) and len(ids) == len(labels):
        by_id = dict(zip(ids, labels, strict=True))
        return lambda channel: str(by_id.get(channel, f"channel {channel}"))
    return lambda channel: str(labels[channel]) if 0 <= channel < len(labels) else f"ch{channel}"


def _electrode_rows(nwbfile: Any, worker: str) -> dict[str, int]:
    """label -> electrodes-table row, for the channels of ``worker``'s streams."""
    if nwbfile.electrodes is None:
        return {}
    labels = nwbfile.electrodes["label"].data
    streams = nwbfile.electrodes["stream"].data
    return {
        label: row
        for row, (label, stream) in enumerate(zip(labels, streams, strict=True))
        if stream.split("/")[0] == worker
    }


#: Names an events table has already as columns or attributes (hdmf's DynamicTable): a
#: payload field so named becomes ``event_<name>`` (ParameterChanged's ``name``).
_RESERVED = frozenset(
    {"timestamp", "duration", "topic", "annotation", "event", "id", "name", "description",
     "colnames", "columns", "fields", "parent", "children", "object_id", "data_type",
     "neurodata_type", "container_source", "namespace"}
)  # fmt: skip
_INT64 = 2**63 - 1


def _typed_columns(events: list[Any]) -> dict[str, Any]:
    """The events' payload fields as typed columns, one per field any of them has.

    ``type`` becomes ``event``; nested tables are flattened (``phases.amplitude_ua``),
    a list of records becomes one list per field, so no cell holds a dictionary
    (nwbinspector's check). A field every event has is numbers (int64 or float64),
    flags (bool) or text; a field some events lack is float64 with NaN where
    missing if it is numeric, text with "" otherwise. A payload that is not a
    JSON object becomes ``text``.
    """
    rows = [
        _flatten(e.payload if isinstance(e.payload, dict) else {"text": str(e.payload)})
        for e in events
    ]
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    columns: dict[str, Any] = {}
    for key in names:
        values = [row.get(key) for row in rows]
        if all(v is None for v in values):
            continue
        name = "event" if key == "type" else (f"event_{key}" if key in _RESERVED else key)
        columns[name] = _typed(values)
    return columns


def _flatten(payload: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in payload.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            fields: dict[str, None] = {}
            for item in value:
                fields.update(dict.fromkeys(item))
            for field_name in fields:  # a list of records: one list per field
                flat[f"{name}.{field_name}"] = [item.get(field_name) for item in value]
        else:
            flat[name] = value
    return flat


def _typed(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    complete = len(present) == len(values)
    if all(isinstance(v, bool) for v in present):
        if complete:
            return np.array(values, dtype=bool)
    elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        if complete and all(isinstance(v, int) and abs(v) <= _INT64 for v in present):
            return np.array(values, dtype=np.int64)
        try:
            return np.array([np.nan if v is None else float(v) for v in values])
        except OverflowError:  # an int beyond any float: keep it as text
            pass
    return [_text(v) for v in values]


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def _column(parts: list[np.ndarray], dtype: np.dtype) -> Any:
    """One field of every record: an array, or text for byte strings."""
    values = np.concatenate(parts) if parts else np.empty(0, dtype)
    if values.dtype.kind == "S":
        return [v.decode(errors="replace") for v in values]
    return values


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rigpipe")
    except PackageNotFoundError:
        return "unknown"
