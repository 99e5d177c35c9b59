"""The rigpipe segments on this machine: who writes them, listing them, sweeping dead ones.

A segment's writer is identified by its pid *and* its process creation time,
since pids are reused. ``sweep`` removes what dead writers left behind; the
supervisor runs it when a session starts and ends, and ``rigpipe sweep`` runs
it by hand.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.errors import SegmentCorrupt, SegmentForeign
from pipeline.host.identity import process_alive
from pipeline.ring import naming, shm
from pipeline.ring.layout import (
    KIND_GENERATION,
    KIND_STREAM,
    GenerationSegment,
    Header,
    State,
    StreamSegment,
)

_CREATION_GRACE_S = 10.0  # sweep leaves unreadable segments younger than this alone


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """One rigpipe segment found in shared memory, as ``list_segments`` reports it."""

    name: str
    stream: str | None
    kind: int | None
    generation: int | None
    writer_pid: int
    writer_alive: bool
    problem: str | None = None


def list_segments() -> list[SegmentInfo] | None:
    """Every rigpipe segment on this machine, or None where the OS cannot enumerate them."""
    names = shm.list_names()
    if names is None:
        return None
    found = []
    for name in names:
        try:
            segment = shm.Segment.attach(name)
        except (FileNotFoundError, PermissionError):
            continue
        except SegmentForeign as exc:  # listed, never touched
            found.append(SegmentInfo(name, None, None, None, 0, False, str(exc)))
            continue
        try:
            found.append(_describe(segment))
        finally:
            segment.close()
    return found


def _describe(segment: shm.Segment) -> SegmentInfo:
    try:
        header = Header(segment)
    except SegmentCorrupt as exc:
        return SegmentInfo(segment.name, None, None, None, 0, False, str(exc))
    try:
        pid, start_ms = header.writer
        alive = process_alive(pid, start_ms)
        kind = header.kind
        try:
            header.validate(kind if kind in (KIND_STREAM, KIND_GENERATION) else KIND_STREAM)
            stream, generation, problem = header.stream, header.generation, None
        except SegmentCorrupt as exc:
            stream, generation, problem = None, None, str(exc)
        return SegmentInfo(segment.name, stream, kind, generation, pid, alive, problem)
    finally:
        header.release()


def list_streams() -> list[str] | None:
    """Names of the streams that exist on this machine (None where that cannot be known)."""
    segments = list_segments()
    if segments is None:
        return None
    return sorted(
        s.stream for s in segments if s.kind == KIND_STREAM and s.problem is None and s.stream
    )


@dataclass(frozen=True, slots=True)
class StreamState:
    """A stream's current generation as its segments say, read without attaching a reader."""

    stream: str
    generation: int
    sample_rate: float
    write_cursor: int
    writer_pid: int
    writer_alive: bool
    closed: bool


def stream_state(stream: str) -> StreamState | None:
    """The state of ``stream`` now, or None if it does not exist (yet, or any more)."""
    try:
        meta = StreamSegment.open(stream)
    except (FileNotFoundError, SegmentCorrupt):
        return None
    try:
        header = meta.header
        generation, (pid, start_ms), closed = (
            header.generation,
            header.writer,
            header.state is State.CLOSED,
        )
        if header.state is State.INITIALISING:
            return None
        try:
            mapped = GenerationSegment.open(stream, generation)
        except (FileNotFoundError, SegmentCorrupt):
            return None
        try:
            rate, cursor = mapped.sample_rate, mapped.write_cursor
        finally:
            mapped.close()
    finally:
        meta.close()
    alive = not closed and process_alive(pid, start_ms)
    return StreamState(stream, generation, rate, cursor, pid, alive, closed)


def sweep(streams: Sequence[str] | None = None) -> list[str]:
    """Remove the segments of streams whose writer process no longer exists.

    On Linux every rigpipe segment is checked; elsewhere the OS cannot list
    shared memory, so pass the stream names to check. Readers still attached
    to a swept stream see it closed. Returns the names of removed segments.
    """
    removed: list[str] = []
    if streams is None:
        segments = list_segments()
        if segments is None:
            raise NotImplementedError(
                "this platform cannot enumerate shared memory; call sweep(streams=[...])"
            )
        for info in segments:
            if info.writer_alive or (info.problem and _maybe_being_created(info.name)):
                continue
            if _sweep_segment(info.name):
                removed.append(info.name)
        return removed
    for stream in streams:
        names = [naming.shm_name(stream)]
        try:
            meta = StreamSegment.open(stream)
        except (FileNotFoundError, SegmentCorrupt):
            continue
        try:
            if process_alive(*meta.header.writer) and meta.header.state is not State.CLOSED:
                continue
            current = meta.header.generation
            names += [naming.shm_name(naming.data_key(stream, g)) for g in (current, current - 1)]
        finally:
            meta.close()
        removed += [name for name in names if _sweep_segment(name)]
    return removed


def _maybe_being_created(name: str) -> bool:
    """A segment whose header is not filled in yet may belong to a writer starting right now."""
    age = shm.age_s(name)
    return age is None or age < _CREATION_GRACE_S


def _sweep_segment(name: str) -> bool:
    """Mark a dead writer's generation CLOSED (waking its readers), then unlink it."""
    try:
        segment = shm.Segment.attach(name)
    except (FileNotFoundError, SegmentForeign):  # gone, or another user's: never unlinked
        return False
    try:
        generation = GenerationSegment(segment)
    except SegmentCorrupt:
        segment.close()
    else:
        if generation.header.state is not State.CLOSED:
            generation.end(State.CLOSED)
        generation.close()
    return shm.unlink(name)


HOLD_MODES = ("auto", "on", "off")


def holds_wanted() -> bool:
    """Whether a supervisor should hold its streams' segments (``RIGPIPE_HOLD_SEGMENTS``).

    ``auto`` (the default) holds where a segment dies with its last handle
    (Windows); ``on`` forces it elsewhere (tests do, on Linux); ``off`` never.
    """
    asked = os.environ.get("RIGPIPE_HOLD_SEGMENTS", "auto").strip().lower() or "auto"
    if asked not in HOLD_MODES:
        raise ValueError(f"RIGPIPE_HOLD_SEGMENTS={asked!r} is not one of {', '.join(HOLD_MODES)}")
    return asked == "on" or (asked == "auto" and not shm._POSIX)


class Holds:
    """Handles on streams' segments, kept so that the segments outlive their writer.

    On Windows a shared-memory segment exists only while some process has it
    open: a writer killed while no reader is attached takes its frames, its
    sequence and its stream id with it, and the writer that restarts begins a
    new stream, so a resuming reader's cursor means nothing any more. The
    supervisor holds each stream's segment and its current generation (and
    follows it to each new generation) until the session ends. A stream its
    writer closed is let go: the next writer makes a new stream of it.
    """

    def __init__(self) -> None:
        self._held: dict[str, tuple[StreamSegment, GenerationSegment | None]] = {}

    def refresh(self, streams: Sequence[str]) -> None:
        """Hold each of ``streams`` that exists, at its current generation (cheap: call often)."""
        for stream in streams:
            meta, generation = self._held.get(stream, (None, None))
            if meta is None:
                try:
                    meta = StreamSegment.open(stream)
                except (FileNotFoundError, SegmentCorrupt, SegmentForeign):
                    continue
            elif not meta.segment.linked():  # unlinked and made again under us (POSIX)
                self.release([stream])
                self.refresh([stream])
                continue
            header = meta.header
            if header.state is State.CLOSED:
                self._held[stream] = (meta, generation)
                self.release([stream])
                continue
            number = header.generation
            stale = generation is None or number != _number(generation)
            if header.state is State.VALID and stale:
                try:
                    newer = GenerationSegment.open(stream, number)
                except (FileNotFoundError, SegmentCorrupt, SegmentForeign):
                    newer = None  # replaced again while we looked: the next refresh gets it
                if newer is not None:
                    if generation is not None:
                        generation.close()
                    generation = newer
            self._held[stream] = (meta, generation)

    def held(self) -> dict[str, int | None]:
        """Each held stream and the generation held (None: only the stream segment)."""
        return {
            stream: None if generation is None else _number(generation)
            for stream, (_, generation) in self._held.items()
        }

    def release(self, streams: Sequence[str] | None = None) -> None:
        """Let go of ``streams`` (every held stream if None)."""
        for stream in list(self._held) if streams is None else streams:
            meta, generation = self._held.pop(stream, (None, None))
            if generation is not None:
                generation.close()
            if meta is not None:
                meta.close()


def _number(generation: GenerationSegment) -> int:
    return generation.header.generation
