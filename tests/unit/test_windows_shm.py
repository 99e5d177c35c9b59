"""Shared memory as Windows keeps it, on Linux: a segment lives only while a handle is open.

The POSIX path of :mod:`pipeline.ring.shm` is switched off and its
``SharedMemory`` replaced by a fake that frees a name when its last handle
closes (and whose ``unlink`` does nothing), as Windows does. A writer "killed"
here is one whose handles close without its close protocol, under an
identity no live process has.
"""

from __future__ import annotations

import mmap
import os
from typing import ClassVar

import numpy as np
import pytest

from pipeline.errors import EndOfStream, StreamReplaced
from pipeline.ring import attach, layout, segments, shm, writer
from pipeline.ring.writer import RingWriter

STREAM = "winshm/acq/continuous"
DEAD = (os.getpid(), 1)  # this pid with another start time: no live process has it


class FakeSharedMemory:
    """``multiprocessing.shared_memory.SharedMemory`` with Windows' lifetime: the name
    exists while at least one handle is open, and ``unlink`` is a no-op."""

    names: ClassVar[dict[str, list]] = {}  # name -> [mapping, open handles]

    def __init__(self, name: str, create: bool = False, size: int = 0) -> None:
        if create:
            if name in self.names:
                raise FileExistsError(name)
            self.names[name] = [mmap.mmap(-1, size), 0]
        elif name not in self.names:
            raise FileNotFoundError(name)
        self.name = name
        self._entry: list | None = self.names[name]
        self._entry[1] += 1
        self.buf = memoryview(self._entry[0])
        self.size = len(self.buf)

    def close(self) -> None:
        if self._entry is None:
            return
        self.buf.release()
        self._entry[1] -= 1
        if self._entry[1] == 0:
            del self.names[self.name]
        self._entry = None

    def unlink(self) -> None:
        pass


@pytest.fixture
def windows_shm(monkeypatch):
    FakeSharedMemory.names = {}
    monkeypatch.setattr(shm, "_POSIX", False)
    monkeypatch.setattr(shm, "SharedMemory", FakeSharedMemory)
    yield FakeSharedMemory.names
    assert FakeSharedMemory.names == {}, "a handle was left open"


def _writer_that_will_die(monkeypatch) -> RingWriter:
    """A writer under an identity no live process has (so a later writer may take over)."""
    real = writer.process_identity
    monkeypatch.setattr(writer, "process_identity", lambda: DEAD)
    try:
        return RingWriter(STREAM, np.int16, 4, capacity=1024, sample_rate=1000.0)
    finally:
        monkeypatch.setattr(writer, "process_identity", real)


def _kill(w: RingWriter) -> None:
    """The writer's process is gone: its handles close and nothing else happens."""
    w._segment.close()
    w._meta.close()
    w._closed = True


def test_without_a_holder_a_killed_writers_stream_is_gone_and_a_resume_says_so(
    windows_shm, monkeypatch
) -> None:
    w = _writer_that_will_die(monkeypatch)
    w.write(np.zeros((100, 4), np.int16))
    reader = attach(STREAM, from_now=False)
    stream_id, cursor = reader.stream_id, reader.read().frames
    reader.close()
    _kill(w)
    assert windows_shm == {}  # Windows freed the segments with the last handle
    with RingWriter(STREAM, np.int16, 4, capacity=1024, sample_rate=1000.0) as restarted:
        restarted.write(np.zeros((10, 4), np.int16))
        with pytest.raises(StreamReplaced):
            attach(STREAM, cursor=cursor, stream_id=stream_id)
        with pytest.raises(ValueError, match="another incarnation"):
            attach(STREAM, cursor=cursor)


def test_the_supervisors_hold_keeps_a_killed_writers_frames_and_sequence(
    windows_shm, monkeypatch
) -> None:
    monkeypatch.setenv("RIGPIPE_HOLD_SEGMENTS", "auto")
    assert segments.holds_wanted()  # Windows: yes
    holds = segments.Holds()
    w = _writer_that_will_die(monkeypatch)
    holds.refresh([STREAM, "winshm/not/there"])
    assert holds.held() == {STREAM: 1}
    w.write(np.arange(400, dtype=np.int16).reshape(100, 4))
    reader = attach(STREAM, from_now=False)
    stream_id, first = reader.stream_id, reader.read()
    reader.close()
    _kill(w)
    assert windows_shm  # held: still there
    with RingWriter(STREAM, np.int16, 4, capacity=1024, sample_rate=1000.0) as restarted:
        assert restarted.write_cursor == 100  # the sequence continues
        restarted.write(np.ones((10, 4), np.int16))
        resumed = attach(STREAM, cursor=100, stream_id=stream_id)  # the same stream
        chunk = resumed.read()
        assert (chunk.start_sequence, chunk.frames, chunk.dropped) == (100, 10, 0)
        assert np.array_equal(first.data[-1], np.arange(396, 400))
        holds.refresh([STREAM])
        assert holds.held() == {STREAM: 2}  # followed to the restarted writer's generation
        resumed.close()
    holds.refresh([STREAM])
    assert holds.held() == {}  # closed by its writer: let go
    holds.release()


def test_a_closed_stream_held_by_a_notebook_is_a_new_stream_for_the_next_run(windows_shm) -> None:
    first = RingWriter(STREAM, np.int16, 4, capacity=64, sample_rate=1000.0)
    first.write(np.zeros((50, 4), np.int16))
    notebook = attach(STREAM, from_now=False)
    old_id = notebook.stream_id
    assert notebook.read().frames == 50
    first.close()
    assert windows_shm  # the notebook's handles keep the segments
    with RingWriter(STREAM, np.int16, 4, capacity=64, sample_rate=1000.0) as second:
        assert second.write_cursor == 0  # a new stream, not a continuation
        second.write(np.ones((5, 4), np.int16))
        with pytest.raises(EndOfStream):
            notebook.read(timeout_s=0.1)
        fresh = attach(STREAM, from_now=False)
        assert fresh.stream_id != old_id
        chunk = fresh.read()
        assert (chunk.start_sequence, chunk.frames) == (0, 5) and chunk.data.min() == 1
        with pytest.raises(StreamReplaced):
            attach(STREAM, cursor=0, stream_id=old_id)
        fresh.close()
    notebook.close()


def test_holding_is_chosen_per_platform_and_forced_by_the_environment(monkeypatch) -> None:
    monkeypatch.delenv("RIGPIPE_HOLD_SEGMENTS", raising=False)
    assert segments.holds_wanted() is (not shm._POSIX)
    monkeypatch.setenv("RIGPIPE_HOLD_SEGMENTS", "on")
    assert segments.holds_wanted()
    monkeypatch.setenv("RIGPIPE_HOLD_SEGMENTS", "off")
    monkeypatch.setattr(shm, "_POSIX", False)
    assert not segments.holds_wanted()
    monkeypatch.setenv("RIGPIPE_HOLD_SEGMENTS", "sometimes")
    with pytest.raises(ValueError, match="RIGPIPE_HOLD_SEGMENTS='sometimes'"):
        segments.holds_wanted()


def test_layout_renew_gives_a_new_stream_id(windows_shm) -> None:
    meta = layout.StreamSegment.create(STREAM, DEAD)
    before = meta.stream_id
    meta.renew()
    assert meta.stream_id not in (before, 0)
    meta.close()
