"""``rigpipe inspect``: summarize a recording and check that no frame is missing unexplained.

Reads a segment file, a recording directory (via its manifest) or a manifest
path. Timestamps are scanned in blocks, so a week-long recording is checked in
bounded memory. What is checked (a failure makes ``rigpipe inspect`` exit 1):

- a continuous stream's timestamps step by one sample period; every larger
  step matches a row of ``gaps`` at the same frame;
- each segment starts at the frame where the previous one ended;
- each closed segment holds as many rows per stream as the manifest says;
- a gap blamed on the ring (the recorder fell behind, or was down) lost
  exactly its ring sequence range, and the rows after it start at that range's
  end (the segment's ``sequence_runs``, schema 2).
- every event of the session's log between the first and the last the
  recording holds is a row, stands in a row's count of repeats, or is in a gap
  row of ``supervisor/events``, exactly once (schema 3; older recordings do not
  number their events).

Timestamps that go backwards are reported as warnings: they are data (a
device clock estimate that moved), not missing frames.
"""

from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.errors import RecordingError
from pipeline.recording.format import (
    EVENTS_STREAM,
    GAP_PERIODS,
    LAYOUTS,
    StreamGroup,
    consistency_flags,
    locate,
    open_segment,
)

#: Gap causes that say the ring overwrote the frames: their cursor range is exact.
RING_CAUSES = (
    "recorder fell behind: the ring overwrote these frames",
    "recorder was down longer than the ring holds",
)

_BLOCK_ROWS = 1 << 20


@dataclass
class StreamSummary:
    stream: str
    dtype: str
    frame_shape: tuple[int, ...]
    sample_rate: float
    frames: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    gaps: int = 0
    lost_frames: int = 0
    data_bytes: int = 0

    @property
    def duration_s(self) -> float:
        if self.first_ns is None or self.last_ns is None:
            return 0.0
        return (self.last_ns - self.first_ns) / 1e9


@dataclass
class EventsSummary:
    """The session's events in the recording: which of the log's numbers it accounts for."""

    rows: int = 0  # rows of the events tables, the recorder's own included
    numbered: int = 0  # rows of events from the log (schema 3)
    repeats: int = 0  # events that a held-back row stands for besides itself
    first: int | None = None  # the lowest and highest log number recorded
    last: int | None = None
    lost: int = 0  # events in gap rows of supervisor/events
    gaps: int = 0

    @property
    def accounted(self) -> int:
        return self.numbered + self.repeats + self.lost

    @property
    def expected(self) -> int:
        return 0 if self.first is None or self.last is None else self.last - self.first + 1


@dataclass
class Report:
    """What ``inspect`` found; ``problems`` lists unexplained missing frames and broken files."""

    path: Path
    segments: list[dict[str, Any]] = field(default_factory=list)
    streams: dict[str, StreamSummary] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    restarts: list[dict[str, Any]] = field(default_factory=list)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    events: EventsSummary = field(default_factory=EventsSummary)
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: Why the recording ended before anyone asked it to (its manifest says); "" if it did not.
    stopped_early: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


def _open(path: Path, report: Report) -> h5py.File:
    if consistency_flags(path):
        report.warnings.append(
            f"{path.name} was not finalized (its writer crashed or is still writing); "
            "read with swmr=True. The recorder repairs it when it restarts or the session ends."
        )
    return open_segment(path)


def inspect(path: Path) -> Report:
    """Summarize the recording at ``path`` and check its continuity."""
    report = Report(Path(path))
    expected_first: dict[str, int] = {}
    last_ns: dict[str, int] = {}
    files, manifest = locate(Path(path))
    entries = {entry.file: entry for entry in manifest.segments} if manifest else {}
    if manifest is not None:
        report.stopped_early = manifest.stopped_early
    for file_path in files:
        before = copy.deepcopy((vars(report), expected_first, last_ns))
        try:
            _inspect_segment(report, file_path, entries, expected_first, last_ns)
        except _UNREADABLE as exc:  # a damaged file: say so, and go on with the others
            # nothing of it counts: what it held before failing would be half a segment
            saved, saved_first, saved_last = before
            vars(report).update(saved)
            expected_first.clear()
            expected_first.update(saved_first)
            last_ns.clear()
            last_ns.update(saved_last)
            report.problems.append(
                f"{file_path.name} cannot be read, the file is damaged "
                f"({type(exc).__name__}: {exc}); the other segments are reported as they are"
            )
    _check_events(report)
    return report


#: What h5py raises on a damaged file (and ours for a segment that is not one).
_UNREADABLE = (OSError, ValueError, KeyError, RuntimeError, TypeError, IndexError, RecordingError)


def _inspect_segment(
    report: Report,
    file_path: Path,
    entries: dict[str, Any],
    expected_first: dict[str, int],
    last_ns: dict[str, int],
) -> None:
    with _open(file_path, report) as file:
        if not report.provenance:
            report.provenance = dict(file["provenance"].attrs)
        else:
            report.provenance.update(
                {k: v for k, v in file["provenance"].attrs.items() if k.startswith("finish")}
            )
        gaps = file["gaps"][:]
        report.gaps += [_row(g) for g in gaps]
        report.restarts += [_row(r) for r in file["provenance/restarts"][:]]
        _count_events(report.events, file["events"], gaps)
        sizes = {}
        for group in file["streams"].values():
            stream = StreamGroup.read(group).stream
            _check_stream(report, group, gaps, expected_first, last_ns, file_path.name)
            _check_ring_gaps(report, group, gaps, file_path.name)
            sizes[stream] = len(group["data"])
        entry = entries.get(file_path.name)
        if entry is not None and entry.state != "open":
            for stream in sorted(set(sizes) | set(entry.frames)):
                listed, rows = entry.frames.get(stream), sizes.get(stream)
                if listed != rows:
                    report.problems.append(
                        f"{file_path.name}: {stream} has {rows} rows but the manifest "
                        f"says {listed}: frames were lost after the segment was closed"
                    )
        if entry is not None and entry.repairs:
            report.warnings.append(f"{file_path.name} was repaired: {'; '.join(entry.repairs)}")
        report.segments.append(
            {"file": file_path.name, "bytes": file_path.stat().st_size, "frames": sizes}
        )


def _row(row: np.void) -> dict[str, Any]:
    return {
        name: (
            row[name].decode(errors="replace") if isinstance(row[name], bytes) else row[name].item()
        )
        for name in row.dtype.names or ()
    }


def _check_stream(
    report: Report,
    group: h5py.Group,
    gaps: np.ndarray,
    expected_first: dict[str, int],
    last_ns: dict[str, int],
    file_name: str,
) -> None:
    attrs = StreamGroup.read(group)
    stream = attrs.stream
    data = group["data"]
    dtype = "record" if data.dtype.names else str(data.dtype)
    rate = attrs.sample_rate
    summary = report.streams.setdefault(
        stream,
        StreamSummary(stream, dtype, tuple(data.shape[1:]), rate),
    )
    if attrs.layout not in LAYOUTS:  # readback refuses such a group: so does inspect
        report.problems.append(
            f"{stream}: {file_name} has unknown layout {attrs.layout!r} "
            f"(one of {', '.join(LAYOUTS)}); the file is damaged"
        )
    first_frame = attrs.first_frame
    if stream in expected_first and first_frame != expected_first[stream]:
        report.problems.append(
            f"{stream}: {file_name} starts at frame {first_frame}, "
            f"but the previous segment ended at frame {expected_first[stream]}"
        )
    rows = len(data)
    expected_first[stream] = first_frame + rows
    summary.frames += rows
    summary.data_bytes += data.id.get_storage_size()
    mine = gaps[gaps["stream"] == stream.encode()]
    summary.gaps += len(mine)
    summary.lost_frames += int(mine["lost_frames"].sum())
    explained = set(mine["at_frame"].tolist())
    stamps = group["timestamps_ns"]
    period = 1e9 / summary.sample_rate if summary.sample_rate > 0 else None
    for start in range(0, rows, _BLOCK_ROWS):
        block = stamps[start : start + _BLOCK_ROWS].astype(np.int64)
        if not len(block):
            continue
        if summary.first_ns is None:
            summary.first_ns = int(block[0])
        previous = last_ns.get(stream)
        joined = block if previous is None else np.concatenate(([previous], block))
        offset = first_frame + start - (0 if previous is None else 1)
        steps = np.diff(joined)
        last_ns[stream] = int(block[-1])
        summary.last_ns = int(block[-1])
        backwards = np.flatnonzero(steps < 0)
        if len(backwards):
            frames = ", ".join(str(offset + int(i) + 1) for i in backwards[:5])
            report.warnings.append(
                f"{stream}: timestamps go backwards {len(backwards)} time(s) in {file_name} "
                f"(at frame {frames}{', ...' if len(backwards) > 5 else ''}); "
                "kept as recorded: the source's clock stepped back"
            )
        if period is None:
            continue
        for i in np.flatnonzero(steps > GAP_PERIODS * period):
            frame = offset + int(i) + 1
            lost = round(steps[i] / period) - 1
            if frame not in explained:
                report.problems.append(
                    f"{stream}: about {lost} frame(s) missing before frame {frame} "
                    f"({steps[i] / 1e6:.3f} ms step) and no gap explains it"
                )


def _count_events(summary: EventsSummary, table: h5py.Dataset, gaps: np.ndarray) -> None:
    """Add one segment's events and event gaps to ``summary``."""
    summary.rows += len(table)
    mine = gaps[gaps["stream"] == EVENTS_STREAM.encode()]
    summary.gaps += len(mine)
    summary.lost += int((mine["cursor_end"] - mine["cursor_start"]).sum())
    for gap in mine:
        _span(summary, int(gap["cursor_start"]), int(gap["cursor_end"]) - 1)
    if "sequence" not in (table.dtype.names or ()):
        return
    rows = table[:]
    numbered = rows[rows["sequence"] >= 0]
    if not len(numbered):
        return
    summary.numbered += len(numbered)
    _span(summary, int(numbered["sequence"].min()), int(numbered["sequence"].max()))
    for row in numbered:  # a row the recorder held back stands for its count of repeats
        if b'"first_repeat_ns"' in row["payload"]:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                summary.repeats += int(json.loads(row["payload"])["repeats"]) - 1


def _span(summary: EventsSummary, first: int, last: int) -> None:
    if first > last:
        return
    summary.first = first if summary.first is None else min(summary.first, first)
    summary.last = last if summary.last is None else max(summary.last, last)


def _check_events(report: Report) -> None:
    """Every event numbered between the first and the last recorded is accounted for once."""
    events = report.events
    if events.first is None or events.accounted == events.expected:
        return
    missing = events.expected - events.accounted
    report.problems.append(
        f"events: the recording accounts for {events.accounted} of the "
        f"{events.expected} events numbered {events.first} to {events.last} of the "
        + (
            f"session's log: {missing} are missing and no gap row explains them"
            if missing > 0
            else f"session's log: {-missing} are counted twice"
        )
    )


def _check_ring_gaps(report: Report, group: h5py.Group, gaps: np.ndarray, file_name: str) -> None:
    """A gap blamed on the ring lost exactly its cursor range, and recording resumed at its end."""
    attrs = StreamGroup.read(group)
    stream = attrs.stream
    mine = gaps[
        (gaps["stream"] == stream.encode())
        & np.isin(gaps["cause"], [c.encode() for c in RING_CAUSES])
    ]
    if not len(mine):
        return
    runs = group["sequence_runs"][:] if "sequence_runs" in group else None
    first_frame = attrs.first_frame
    for gap in mine:
        at, lost = int(gap["at_frame"]), int(gap["lost_frames"])
        span = int(gap["cursor_end"]) - int(gap["cursor_start"])
        if span != lost:
            report.problems.append(
                f"{stream}: the gap before frame {at} in {file_name} says {lost} frames were "
                f"overwritten in the ring, but its sequence range holds {span}"
            )
        if runs is None:
            continue
        starting = runs[runs["row"] == at - first_frame]
        if not len(starting) or int(starting[-1]["sequence"]) != int(gap["cursor_end"]):
            report.problems.append(
                f"{stream}: after the gap before frame {at} in {file_name} the rows do not "
                f"start at ring sequence {int(gap['cursor_end'])}, where the gap ends"
            )


def render(report: Report) -> list[str]:
    """The human-readable summary ``rigpipe inspect`` prints."""
    p = report.provenance
    lines = [
        f"recording {p.get('recording_id', '?')}  session {p.get('session', '?')}",
        f"started {p.get('started_at', '?')}  finished {p.get('finished_at', 'not finished')}"
        f"  wall {p.get('wall_seconds', '?')} s",
    ]
    if report.stopped_early:
        lines.append(f"STOPPED EARLY: {report.stopped_early}")
    host = json.loads(p.get("host_json", "{}"))
    versions = json.loads(p.get("versions_json", "{}"))
    if host:
        lines.append(
            f"host {host.get('hostname')} ({host.get('os')}), {host.get('cpu_count_logical')} CPUs"
        )
    if versions:
        lines.append("versions " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    total = sum(s["bytes"] for s in report.segments)
    lines += ["", f"{len(report.segments)} segment(s), {total / 1e6:.1f} MB:"]
    lines += [f"  {s['file']}  {s['bytes'] / 1e6:9.1f} MB" for s in report.segments]
    lines += [
        "",
        f"{'stream':24} {'dtype':>8} {'shape':>8} {'rate Hz':>9} {'frames':>12} {'seconds':>9} "
        f"{'gaps':>5} {'lost':>8}",
    ]
    for s in report.streams.values():
        shape = "x".join(map(str, s.frame_shape)) or "-"
        lines.append(
            f"{s.stream:24} {s.dtype[:8]:>8} {shape:>8} {s.sample_rate:9g} {s.frames:>12} "
            f"{s.duration_s:9.2f} {s.gaps:>5} {s.lost_frames:>8}"
        )
    if report.gaps:
        lines += ["", "gaps:"]
        for g in report.gaps:
            where, what = "frame", "frame(s)"
            if g["stream"] == EVENTS_STREAM:
                where, what = "event row", "event(s)"
            lines.append(
                f"  {g['stream']} before {where} {g['at_frame']}: "
                f"{g['lost_frames']} {what}, {g['cause']}"
            )
    lines += ["", f"{len(report.restarts)} worker restart(s), {report.events.rows} event(s)"]
    for r in report.restarts:
        lines.append(f"  {r['worker']} restart {r['restarts']}: {r['reason']}")
    lines.append(_events_line(report.events))
    lines += [f"warning: {w}" for w in report.warnings]
    if report.ok:
        lines += ["", "continuity: OK (every missing frame and event is explained by a gap)"]
        if report.stopped_early:
            lines.append("the recording ends before its session did: it stopped early (above)")
    else:
        lines += ["", f"continuity: {len(report.problems)} problem(s):"]
        lines += [f"  {problem}" for problem in report.problems[:50]]
    return lines


def _events_line(events: EventsSummary) -> str:
    """What the recording holds of the session's event log, in one line."""
    if events.first is None:
        if events.rows:
            return "  events not numbered (a recording of schema 2 or older)"
        return "  no event of the session's log"
    line = (
        f"  events {events.first} to {events.last} of the session's log: {events.numbered} row(s)"
    )
    if events.repeats:
        line += f", {events.repeats} more in the count of repeated ones"
    lost = f"{events.lost} lost in {events.gaps} gap(s)" if events.lost else "none lost"
    return f"{line}; {lost}"
