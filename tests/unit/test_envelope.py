"""The scope's picture, computed without Qt: traces where the data says, spikes kept."""

from __future__ import annotations

import numpy as np
import pytest

from workers.visualization.envelope import CLIP, CURSOR, MARKER, SPIKE, TRACE, Envelope, Picture


def rasterize(envelope: Envelope, first: int, count: int, height: int, span: float, gain: float):
    return Picture().draw(envelope, first, count, height, span, gain)


def _rows_with(image: np.ndarray, color: np.uint32, column: int) -> np.ndarray:
    return np.flatnonzero(image[:, column] == color)


def test_each_channel_is_drawn_in_its_band_at_its_value() -> None:
    envelope = Envelope(4, 1000.0, 1.0, 100)
    data = np.zeros((1000, 4), np.float32)
    data[:, 0], data[:, 1] = 10.0, -10.0  # a quarter of the span above / below the centre
    envelope.add(data)
    image = rasterize(envelope, 0, 4, 200, span=40.0, gain=1.0)  # bands of 50 rows
    assert list(_rows_with(image, TRACE, 10)) == [12, 88, 125, 175]
    doubled = rasterize(envelope, 0, 4, 200, span=40.0, gain=2.0)
    assert list(_rows_with(doubled, TRACE, 10))[:2] == [0, 100 - 1], "gain 2 reaches the band edges"


def test_min_max_decimation_keeps_a_one_sample_spike() -> None:
    envelope = Envelope(1, 30000.0, 5.0, 100)  # 1500 frames per column
    data = np.zeros((150000, 1), np.float32)
    data[70_123, 0] = 20.0
    envelope.add(data)
    image = rasterize(envelope, 0, 1, 100, span=40.0, gain=1.0)
    column = 70_123 // 1500
    assert list(_rows_with(image, TRACE, column)) == list(range(0, 51))
    assert list(_rows_with(image, TRACE, column + 1)) == [50]


def test_a_sweep_overwrites_the_oldest_columns_and_shows_its_cursor() -> None:
    envelope = Envelope(1, 100.0, 1.0, 10)  # 10 frames per column
    envelope.add(np.full((100, 1), 10.0, np.float32))  # a full envelope at +10
    envelope.add(np.full((25, 1), -10.0, np.float32))  # 2.5 columns of the next one at -10
    image = rasterize(envelope, 0, 1, 40, span=40.0, gain=1.0)
    assert list(_rows_with(image, TRACE, 0)) == [30] and list(_rows_with(image, TRACE, 1)) == [30]
    assert list(_rows_with(image, TRACE, 5)) == [10], "not yet overwritten"
    assert list(_rows_with(image, CURSOR, 2)) == list(range(40)), "the cursor is at column 2"


def test_spike_ticks_and_stimulation_markers() -> None:
    envelope = Envelope(2, 1000.0, 1.0, 100)
    envelope.add(np.zeros((1000, 2), np.float32))
    envelope.mark_spike(frame_offset=500, channel=1)  # 0.5 s before the newest frame
    envelope.mark(np.array([200]))
    image = rasterize(envelope, 0, 2, 100, span=40.0, gain=1.0)
    spike_column = (999 - 500) // 10
    assert 50 in _rows_with(image, SPIKE, spike_column), "the tick starts at channel 1's band"
    marker_column = (999 - 200) // 10
    traces = list(_rows_with(image, TRACE, marker_column))
    assert traces == [25, 75], "the traces at 0 stay visible over the marker"
    assert len(_rows_with(image, MARKER, marker_column)) == 100 - len(traces)


def test_a_marker_never_hides_the_stimulus_under_it() -> None:
    """A pulse on the stimulator's output and its marker in the same columns: every
    pixel of the pulse is drawn, the marker fills only the background around it."""
    envelope = Envelope(1, 1000.0, 1.0, 100)  # 10 frames a column
    signal = np.zeros((1000, 1), np.float32)
    signal[505:525, 0] = 15.0  # a 20 ms pulse, up, from the middle of column 50
    envelope.add(signal)
    envelope.mark(np.array([999 - 505]))  # the marker at the pulse's first frame
    image = rasterize(envelope, 0, 1, 40, span=40.0, gain=1.0)
    pulse_column = 500 // 10
    pulse = _rows_with(image, TRACE, pulse_column)
    assert min(pulse) <= 6 and max(pulse) >= 20, "the pulse spans from +15 down to 0"
    assert set(_rows_with(image, MARKER, pulse_column)) == set(range(40)) - set(pulse)


def test_a_picture_redraws_only_what_changed_and_matches_a_full_drawing() -> None:
    rng = np.random.default_rng(0)
    envelope = Envelope(8, 1000.0, 1.0, 50)
    picture = Picture()
    envelope.add(rng.normal(0, 10, (700, 8)).astype(np.float32))
    picture.draw(envelope, 0, 8, 160, 40.0, 1.0)
    envelope.add(rng.normal(0, 10, (130, 8)).astype(np.float32))
    assert envelope.dirty.sum() <= 16, "only the columns the new frames touched"
    envelope.mark_spike(3, 2)
    incremental = picture.draw(envelope, 0, 8, 160, 40.0, 1.0).copy()
    assert not envelope.dirty.any()
    envelope.dirty[:] = True
    assert np.array_equal(incremental, Picture().draw(envelope, 0, 8, 160, 40.0, 1.0))


@pytest.mark.parametrize("chunk_frames", [1, 7, 1000, 20_000])  # 20 000: past _LOOP_COLUMNS
def test_columns_hold_the_exact_min_and_max_however_the_frames_arrive(chunk_frames) -> None:
    rng = np.random.default_rng(3)
    data = rng.integers(-2000, 2000, (24_000, 5), dtype=np.int16)
    envelope = Envelope(5, 30_000.0, 1.0, 400)  # 75 frames per column, 24 000 frames < 1 sweep
    for start in range(0, len(data), chunk_frames):
        envelope.add(data[start : start + chunk_frames])
    columns = data[: 320 * 75].reshape(320, 75, 5)
    assert np.array_equal(envelope.low[:320], columns.min(axis=1).astype(np.float32))
    assert np.array_equal(envelope.high[:320], columns.max(axis=1).astype(np.float32))
    assert envelope.filled[:320].all() and not envelope.filled[320:].any()


def test_a_trace_the_gain_pushes_past_its_band_is_marked_at_the_edge() -> None:
    envelope = Envelope(2, 1000.0, 1.0, 100)
    data = np.zeros((1000, 2), np.float32)
    data[:500, 0], data[500:, 1] = 10.0, -10.0
    envelope.add(data)
    fits = rasterize(envelope, 0, 2, 100, span=40.0, gain=1.0)  # bands of 50 rows
    assert not (fits == CLIP).any()
    clipped = rasterize(envelope, 0, 2, 100, span=40.0, gain=4.0)  # 4 x 10 = a whole band
    assert list(_rows_with(clipped, CLIP, 10)) == [0], "channel 0 clips at its top edge"
    assert list(_rows_with(clipped, CLIP, 80)) == [99], "channel 1 at its bottom edge"
    assert list(_rows_with(clipped, TRACE, 10)) == [75], "channel 1, unclipped, as it was"


def test_the_raster_has_a_row_band_per_channel_and_a_tick_where_each_spike_fell() -> None:
    from workers.visualization.envelope import raster_image

    envelope = Envelope(8, 1000.0, 1.0, 100)  # 10 frames per column
    envelope.add(np.zeros((1000, 8), np.float32))
    envelope.mark_spike(0, 5)  # the newest frame: column 99
    envelope.mark_spike(505, 6)  # frame 494: column 49
    image = raster_image(envelope, 4, 4, 40)  # channels 4..7, 10 rows each
    assert list(_rows_with(image, SPIKE, 99)) == list(range(10, 20)), "channel 5: 2nd band"
    assert list(_rows_with(image, SPIKE, 49)) == list(range(20, 30)), "channel 6: 3rd band"
    assert (image == SPIKE).sum() == 20, "nothing else is marked"


def test_spikes_and_markers_are_marked_many_at_once_in_their_columns() -> None:
    envelope = Envelope(4, 1000.0, 1.0, 100)  # 10 frames per column
    envelope.add(np.zeros((1000, 4), np.float32))
    envelope.dirty[:] = False
    envelope.mark_spikes(np.array([0, 505, 10, -3, 7]), np.array([1, 2, 4, 0, -1]))
    assert list(zip(*np.nonzero(envelope.spikes), strict=True)) == [(49, 2), (99, 1)], (
        "a channel the envelope lacks (4, -1) or a frame after the newest (-3) is left out"
    )
    envelope.mark(np.array([200, -1, 990]))
    assert list(np.flatnonzero(envelope.markers)) == [0, 79]
    assert list(np.flatnonzero(envelope.dirty)) == [0, 49, 79, 99]


def test_device_channel_ids_map_to_the_streams_columns() -> None:
    from workers.visualization.envelope import stream_columns

    ids = [5, 9, 7, 1]  # column 0 holds device channel 5, column 1 channel 9...
    assert stream_columns(np.array([9, 1, 5, 7, 1]), ids).tolist() == [1, 3, 0, 2, 3]
    assert stream_columns(np.array([3, 12]), ids).tolist() == [3, 12], "unknown ids as they are"
    assert stream_columns(np.array([2, 0]), []).tolist() == [2, 0]
    assert stream_columns(np.array([], np.int32), ids).tolist() == []
