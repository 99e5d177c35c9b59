"""The simulated stimulator: stimuli play when queued, silence by itself, true underruns.

Run in one process with real threads and a real output ring, read back with a
real ring reader.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

import pipeline
from pipeline.control.messages import Phase, PulseTrain
from pipeline.host import clock
from workers.stimulation.output import Output, Train
from workers.stimulation.safety import ChannelLimits, render
from workers.stimulation.simulated import SimulatedSettings, SimulatedStimulator

RATE = 50_000.0
LIMITS = {0: ChannelLimits(max_amplitude_ua=100, max_charge_per_phase_nc=30, max_rate_hz=200)}


class CountingWriter(pipeline.RingWriter):
    """The real output ring, counting the device's writes (one per block it output)."""

    writes = 0

    def write(self, frames: np.ndarray, timestamps_ns: np.ndarray | None = None) -> int:
        self.writes += 1
        return super().write(frames, timestamps_ns)


@pytest.fixture
def device(stream: str) -> Iterator[tuple[SimulatedStimulator, pipeline.RingReader]]:
    def make_writer(capacity: int) -> pipeline.RingWriter:
        return CountingWriter(stream, "float32", 2, capacity, RATE, {})

    stim = SimulatedStimulator(SimulatedSettings(), 2, RATE, make_writer, 0.0025, 0.025)
    reader = pipeline.attach(stream)
    stim.start()
    try:
        yield stim, reader
    finally:
        reader.close()
        stim.close()


def _read(reader: pipeline.RingReader, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Everything output in the next ``seconds``: samples and their stamps."""
    data, stamps, deadline = [], [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        chunk = reader.read(timeout_s=0.1)
        data.append(chunk.data)
        stamps.append(chunk.timestamps_ns)
    return np.concatenate(data), np.concatenate(stamps)


def _train(stim: SimulatedStimulator, count: int):
    """A 100 Hz train of ``count`` biphasic 10 uA pulses, 20 samples each, rendered."""
    command = PulseTrain(
        channel=0, phases=[Phase(-10.0, 100.0), Phase(10.0, 100.0)], frequency_hz=100.0, count=count
    )
    return render(command, LIMITS, RATE, stim.resolution_ua)


def test_a_stimulus_queued_on_a_silent_device_plays_from_the_next_sample(device) -> None:
    stim, reader = device
    _read(reader, 0.2)
    pulse = np.concatenate([np.full(25, -20.0), np.full(25, 20.0)])
    queued_ns = clock.now_ns()
    stim.enqueue(1, pulse)
    stim.end(1)
    stim.wake()
    data, stamps = _read(reader, 0.2)
    (played,) = np.nonzero(data[:, 1])
    np.testing.assert_array_equal(data[played, 1], pulse)  # whole, in order, once
    assert np.all(np.diff(played) == 1)
    assert not data[:, 0].any()
    # it came out after it was queued, and within a sample or two of it
    assert 0 <= stamps[played[0]] - queued_ns < 3 * 1e9 / RATE + 1e6
    assert stim.underruns == 0


def test_running_dry_is_an_underrun_only_in_the_middle_of_a_stimulus(device) -> None:
    stim, reader = device
    stim.enqueue(0, np.full(100, 5.0))  # 2 ms, and no end: more was to follow
    _read(reader, 0.1)
    assert stim.underruns > 0
    stim.end(0)
    counted = stim.underruns
    stim.enqueue(1, np.full(100, 5.0))
    stim.end(1)
    _read(reader, 0.1)
    assert stim.underruns == counted


def test_a_silent_device_wakes_seldom_and_a_busy_one_often(device) -> None:
    stim, reader = device
    _read(reader, 0.1)
    before = stim._writer.writes
    _, stamps = _read(reader, 0.5)
    idle_writes = stim._writer.writes - before
    assert idle_writes <= 0.5 / stim.idle_block_s + 3  # about 20, not 200
    assert np.all(np.diff(stamps) == pytest.approx(1e9 / RATE, abs=1))  # no sample left out
    long_train = _train(stim, count=60)
    output = Output(stim, buffer_samples=1000, refill_interval_s=0.002)
    output.start()
    try:
        before = stim._writer.writes
        output.submit(0, Train(1, long_train))
        data, _ = _read(reader, 0.5)
        busy_writes = stim._writer.writes - before
    finally:
        output.close()
    assert busy_writes >= 0.5 / stim.block_s / 2  # it followed the train block by block
    assert np.count_nonzero(data[:, 0]) > 0 and stim.underruns == 0


def test_a_stop_in_the_middle_of_a_train_is_silence_not_an_underrun(device) -> None:
    stim, reader = device
    rendered = _train(stim, count=200)
    output = Output(stim, buffer_samples=1000, refill_interval_s=0.002)
    output.start()
    try:
        output.submit(0, Train(1, rendered))
        _read(reader, 0.1)
        assert output.silence(0) == 1
        data, _ = _read(reader, 0.2)
    finally:
        output.close()
    assert stim.underruns == 0
    # what was queued when the stop came plays out (at most one buffer: 2 pulses of the
    # 100 Hz train, 20 samples), then silence
    assert np.count_nonzero(data[:, 0]) <= 2 * 20
    assert not data[-2500:, 0].any()
