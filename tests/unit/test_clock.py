"""One host monotonic clock (pipeline.host.clock.now_ns) for every stamp and timeout, and on
Windows before Python 3.13 not the 15.6 ms GetTickCount64 that time.monotonic is there
(issue 22, finding 3): imitated here with a clock quantised to 15.625 ms."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pipeline.host import clock
from pipeline.ring import RingWriter, attach

TICK_NS = 15_625_000


def test_windows_before_3_13_uses_the_performance_counter() -> None:
    assert clock.pick("win32", (3, 11)) == "perf_counter_ns"
    assert clock.pick("win32", (3, 12)) == "perf_counter_ns"
    assert clock.pick("win32", (3, 13)) == "monotonic_ns"
    assert clock.pick("linux", (3, 11)) == "monotonic_ns"
    assert clock.pick("darwin", (3, 11)) == "monotonic_ns"


@pytest.fixture
def windows_clocks(monkeypatch):
    """time.monotonic as coarse as GetTickCount64, and rigpipe's clock picked as on
    Windows with Python 3.11."""
    fine = time.monotonic_ns

    def ticks_ns() -> int:
        return fine() // TICK_NS * TICK_NS

    monkeypatch.setattr(time, "monotonic_ns", ticks_ns)
    monkeypatch.setattr(time, "monotonic", lambda: ticks_ns() / 1e9)
    monkeypatch.setattr(clock, "now_ns", getattr(time, clock.pick("win32", (3, 11))))
    return ticks_ns


def test_the_coarse_clock_really_repeats(windows_clocks) -> None:
    stamps = [windows_clocks() for _ in range(1000)]
    assert len(set(stamps)) < 10  # what ring stamps would be made of on Windows 3.11


def test_ring_stamps_stay_strictly_increasing(windows_clocks) -> None:
    writer = RingWriter(f"clock{time.perf_counter_ns()}/w/out", np.int16, 2, 4096, 30_000.0)
    reader = attach(writer.stream, from_now=False)
    try:
        for _ in range(200):  # 200 chunks of 3 frames, far faster than one 15.6 ms tick
            writer.write(np.zeros((3, 2), np.int16))
        stamps = reader.read(timeout_s=0).timestamps_ns
        assert len(stamps) == 600
        assert np.all(np.diff(stamps) > 0), "stamps repeat or go backwards"
    finally:
        reader.close()
        writer.close()


def test_short_timeouts_stay_short(windows_clocks) -> None:
    writer = RingWriter(f"clock{time.perf_counter_ns()}/w/out", np.int16, 2, 4096, 30_000.0)
    reader = attach(writer.stream)
    try:
        took = []
        for _ in range(20):
            started = time.perf_counter()
            assert reader.read(timeout_s=0.0005).frames == 0
            took.append(time.perf_counter() - started)
        assert np.median(took) < 0.005, f"a 0.5 ms timeout took {np.median(took) * 1e3:.1f} ms"
    finally:
        reader.close()
        writer.close()
