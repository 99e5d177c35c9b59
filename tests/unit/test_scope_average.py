"""The scope's event-triggered average: one channel's mean response locked to a trigger
stream, computed from chunks as they are read (in any order against the triggers), never
from a window with a hole in it; and shown under its tab, through real rings."""

from __future__ import annotations

import os

import numpy as np
import pytest

from workers.visualization.average import AVERAGE, Onsets, TriggeredAverage, average_image

RATE = 10_000.0
PERIOD_NS = int(1e9 / RATE)
#: the response to every trigger: -60 for 0.5 ms from the trigger's sample, then +40 for 1 ms
RESPONSE = np.concatenate([np.full(5, -60.0), np.full(10, 40.0)])


def _recording(seconds: float, triggers: np.ndarray, noise: float, seed: int = 3):
    """(timestamps_ns, samples) of one channel: noise plus RESPONSE at each trigger sample."""
    frames = int(seconds * RATE)
    timestamps = 1_000_000_000 + np.arange(frames, dtype=np.int64) * PERIOD_NS
    samples = np.random.default_rng(seed).normal(0, noise, frames)
    for sample in triggers:
        samples[sample : sample + len(RESPONSE)] += RESPONSE
    return timestamps, samples


def test_the_mean_of_noisy_chunks_is_the_response_wherever_the_triggers_come_in() -> None:
    triggers = np.arange(2_000, 58_000, 730)  # 77 triggers over 6 s
    timestamps, samples = _recording(6.0, triggers, noise=30.0)
    average = TriggeredAverage(RATE, before_ms=2.0, after_ms=5.0)
    average.trigger(timestamps[triggers[:10]])  # read before their data...
    rng = np.random.default_rng(5)
    start = 0
    while start < len(samples):  # ...chunks of random sizes, like a scope's reads
        stop = start + int(rng.integers(1, 900))
        average.add(timestamps[start:stop], samples[start:stop])
        if start <= 40_000 < stop:
            average.trigger(timestamps[triggers[10:]])  # ...or after them, while still held
        start = stop
    assert (average.events, average.skipped) == (len(triggers), 0)
    mean = average.mean
    assert mean is not None and len(mean) == 20 + 50
    expected = np.zeros(70)
    expected[20 : 20 + len(RESPONSE)] = RESPONSE
    # 30 of noise over 77 triggers: a standard error of 3.4
    assert np.abs(mean - expected).max() < 15, np.round(mean - expected)
    assert average.times_ms[20] == 0.0 and average.times_ms[0] == -2.0


def test_a_trigger_read_too_late_or_over_a_hole_is_skipped_and_counted() -> None:
    triggers = np.array([1_000, 25_000, 30_000])
    timestamps, samples = _recording(4.0, triggers, noise=0.0)
    hole = slice(30_010, 30_020)  # ten frames of the third trigger's window never arrive
    kept = np.ones(len(samples), bool)
    kept[hole] = False
    average = TriggeredAverage(RATE, before_ms=1.0, after_ms=3.0)
    average.add(timestamps[kept], samples[kept])
    # the first is 2.9 s before the newest sample (more than the 2 s kept)
    average.trigger(timestamps[triggers])
    assert (average.events, average.skipped) == (1, 2)
    assert average.mean is not None
    assert np.array_equal(average.mean[10 : 10 + len(RESPONSE)], RESPONSE)


def test_a_trigger_whose_window_has_not_arrived_waits_for_it() -> None:
    timestamps, samples = _recording(1.0, np.array([5_000]), noise=0.0)
    average = TriggeredAverage(RATE, before_ms=1.0, after_ms=3.0)
    average.add(timestamps[:5_010], samples[:5_010])
    average.trigger(timestamps[[5_000]])
    assert (average.events, average.skipped, average.mean) == (0, 0, None)
    average.add(timestamps[5_010:], samples[5_010:])
    assert average.events == 1


def test_after_time_goes_back_the_history_before_it_is_not_used() -> None:
    """A source whose device clock restarted (a new generation): its new timestamps are
    below the old ones, and a window is never taken across the two."""
    timestamps, samples = _recording(0.6, np.array([5_000]), noise=0.0)
    old = 10**10 + np.arange(15_000, dtype=np.int64) * PERIOD_NS  # 1.5 s of the old clock
    average = TriggeredAverage(RATE, before_ms=1.0, after_ms=3.0)
    average.add(old, np.full(len(old), 1000.0))
    average.add(timestamps, samples)  # the new clock starts again, lower
    average.trigger(timestamps[[5_000]])
    assert (average.events, average.skipped) == (1, 0)
    assert average.mean is not None
    assert np.array_equal(average.mean[10 : 10 + len(RESPONSE)], RESPONSE)
    assert average.mean[:10].max() == 0.0  # none of the old clock's 1000s


def test_onsets_are_each_run_of_active_frames_once_across_chunks() -> None:
    active = np.zeros((40, 2), np.float32)
    active[3:6, 0] = 5.0  # a run
    active[10, 1] = -1.0  # a one-frame run on the other channel
    active[18:25, 0] = 2.0  # a run across the chunk boundary at 20
    timestamps = np.arange(40, dtype=np.int64) * 100
    onsets = Onsets()
    found = [*onsets.times(timestamps[:20], active[:20], True)]
    found += [*onsets.times(timestamps[20:], active[20:], True)]
    assert found == [300, 1000, 1800]
    events = np.arange(3, dtype=np.int64) * 7
    assert list(Onsets().times(events, np.zeros(3), continuous=False)) == [0, 7, 14]


def test_the_picture_fits_the_largest_excursion_and_marks_zero_and_the_trigger() -> None:
    mean = np.zeros(100)
    mean[40:45] = -50.0
    mean[45:50] = 25.0
    image, top = average_image(mean, before=40, width=200, height=101)
    assert top == pytest.approx(50.0, rel=0.03)
    rows = np.flatnonzero((image == AVERAGE).any(axis=1))
    assert rows.max() >= 99  # -50 reaches the bottom (rows count down)
    assert rows.min() <= 26  # +25 half way up
    baseline = image[:, 10]  # before the trigger: on the zero line only
    assert list(np.flatnonzero(baseline == AVERAGE)) == [50]


def test_the_scope_shows_the_average_of_a_channel_locked_to_an_event_stream() -> None:
    from tests import wine

    wine.import_module("PySide6.QtWidgets", "icuuc.dll")
    pytest.importorskip("pyqtgraph")
    pytest.importorskip("scipy")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from pipeline.host import clock
    from pipeline.ring import RingWriter
    from tests.scope import scope_worker

    session = f"scopeavg{os.getpid()}"
    labels = [f"e{c}" for c in range(4)]
    source = RingWriter(
        f"{session}/src/out", np.float32, 4, 100_000, RATE, {"channel_labels": labels}
    )
    events = RingWriter(f"{session}/trig/events", np.dtype([("code", "<i4")]), (), 1000, 0.0)
    scope = scope_worker(
        session,
        {
            "streams": ["src/out"],
            "average": {"trigger": "trig/events", "channel": 2, "before_ms": 2, "after_ms": 5},
            # the traces are filtered; the average is not
            "filters": {"src/out": {"highpass_hz": 1000}},
        },
    )
    scope.setup()
    try:
        source.write(np.zeros((10, 4), np.float32))
        scope._refresh()  # attaches
        panel = scope.panels[0]
        assert panel.average_label.text == "average of e2: waiting for a trigger on trig/events"
        triggers = np.arange(1_000, 20_000, 1_000)
        timestamps, samples = _recording(2.0, triggers, noise=10.0)
        timestamps += clock.now_ns() + 10**9  # after the ten frames the scope attached on
        block = np.zeros((len(samples), 4), np.float32)
        block[:, 2] = samples
        for start in range(0, len(samples), 2_000):  # a trigger's record comes with its data
            source.write(block[start : start + 2_000], timestamps[start : start + 2_000])
            due = triggers[(triggers >= start) & (triggers < start + 2_000)]
            events.write(np.zeros(len(due), events.dtype), timestamps[due])
            scope._refresh()
        scope._refresh()
        assert scope.counters["averaged"] == len(triggers), scope.counters
        assert panel.average_label.text.startswith(
            f"average of e2 locked to trig/events: {len(triggers)} triggers  |  -2 to +5 ms"
        ), panel.average_label.text
        mean = panel.average.mean
        assert mean is not None
        assert np.abs(mean[20 : 20 + len(RESPONSE)] - RESPONSE).max() < 15
        pixels = panel.average_image._pixels
        height = scope.settings.average.height_px
        assert pixels is not None and pixels.shape == (height, scope.settings.width_px)
        drawn = np.flatnonzero((pixels == AVERAGE).any(axis=1))
        assert drawn.max() >= height - 3  # the -60 fills the plot's lower half
        assert drawn.min() < height // 2 - height // 5  # the +40 two thirds of the upper
        # expanding a channel (a double-click, or `rigpipe set scope focus 1`) averages it
        assert scope.set_parameter("focus", 1).detail == "scope.focus = 1"
        scope._refresh()
        assert panel.average_label.text == "average of e1: waiting for a trigger on trig/events"
        assert scope.set_parameter("focus", 7).detail  # not in the stream: the configured one
        scope._refresh()
        assert panel.average_label.text.startswith("average of e2: waiting")
    finally:
        try:
            scope.teardown()
        finally:
            source.close()
            events.close()
