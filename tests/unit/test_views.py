"""Recording views against numpy: any key gives what the same key gives on the whole array.

The segments are written by the recorder's own segment writer (the real format),
with odd sizes, an empty segment and a segment boundary inside every slab.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pipeline
from pipeline.recording import views
from tests import recordings
from workers.recording.segment_file import StreamFormat

CHANNELS = 5
ROWS = [700, 0, 1, 1299, 513]  # rows per segment
RATE = 1000.0


def _write(directory: Path) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    data = rng.integers(-2000, 2000, (sum(ROWS), CHANNELS), dtype=np.int16)
    stamps = 10**12 + np.arange(sum(ROWS), dtype=np.int64) * 1_000_000
    stamps[900:] += 250_000_000  # 250 frames lost before frame 900
    fmt = StreamFormat(
        "acq/continuous",
        np.dtype(np.int16),
        (CHANNELS,),
        RATE,
        {"channel_labels": [f"e{i}" for i in range(CHANNELS)], "scale": 0.25, "units": "uV"},
    )
    gaps = [(900, 250, "timestamps jump: the source skipped frames")]
    recordings.write(directory, [recordings.Stream(fmt, data, stamps, gaps)], [[r] for r in ROWS])
    return data, stamps


@pytest.fixture(scope="module")
def written(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, np.ndarray, np.ndarray]]:
    directory = tmp_path_factory.mktemp("views")
    data, stamps = _write(directory)
    yield directory, data, stamps


@pytest.fixture(autouse=True)
def small_slabs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(views, "_SLAB_BYTES", 7 * CHANNELS * 2)  # 7 rows: many slabs per piece


indices = st.integers(-sum(ROWS) - 3, sum(ROWS) + 3)
steps = st.sampled_from([None, 1, 2, 3, 17, -1, -2, -5])
frame_keys = st.one_of(
    st.builds(slice, st.none() | indices, st.none() | indices, steps),
    st.integers(-sum(ROWS), sum(ROWS) - 1),
    st.lists(st.integers(-sum(ROWS), sum(ROWS) - 1), max_size=12).map(np.array),
)
channel_keys = st.one_of(
    st.builds(slice, st.none() | st.integers(-6, 6), st.none() | st.integers(-6, 6), steps),
    st.integers(-CHANNELS, CHANNELS - 1),
    st.lists(st.integers(0, CHANNELS - 1), min_size=1, max_size=7),
    st.lists(st.booleans(), min_size=CHANNELS, max_size=CHANNELS).map(np.array),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(channel_keys, frame_keys)
def test_any_key_reads_what_numpy_gives(written, channel_key, frame_key) -> None:
    directory, data, stamps = written
    whole = data.T
    try:  # each axis on its own (outer indexing), not numpy's paired fancy indexing
        expected = whole[channel_key, :][..., frame_key]
    except IndexError:
        expected = IndexError
    with pipeline.open_recording(directory) as rec:
        if expected is IndexError:
            with pytest.raises(IndexError):
                rec[channel_key, frame_key]
            return
        got = rec[channel_key, frame_key]
        assert np.shape(got) == np.shape(expected)
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(rec.timestamps_ns[frame_key], stamps[frame_key])


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.floats(-0.1, 3.5), st.floats(0, 1.5))
def test_filled_time_slices_sit_on_the_sample_grid(written, t0_s, length_s) -> None:
    directory, data, stamps = written
    t1_s = t0_s + length_s
    grid_ns = 10**12 + np.arange(int(stamps[-1] - 10**12) // 1_000_000 + 1) * 1_000_000
    start_ns = 10**12
    inside = grid_ns[
        (grid_ns >= start_ns + round(t0_s * 1e9)) & (grid_ns < start_ns + round(t1_s * 1e9))
    ]
    with pipeline.open_recording(directory) as rec:
        filled = rec.time_slice(t0_s, t1_s, fill="nan")
        assert filled.shape == (CHANNELS, len(inside))
        recorded = np.isin(inside, stamps)
        assert np.isnan(filled[:, ~recorded]).all()
        np.testing.assert_array_equal(filled[:, recorded], data[np.isin(stamps, inside)].T)
        masked = rec.time_slice(t0_s, t1_s, fill="mask")
        np.testing.assert_array_equal(masked.mask[0], ~recorded)


def test_views_read_across_empty_and_one_row_segments(written) -> None:
    directory, data, _ = written
    with pipeline.open_recording(directory) as rec:
        assert rec.shape == (CHANNELS, sum(ROWS))
        assert [p.rows for p in rec.default.pieces] == ROWS
        (gap,) = rec.default.gaps
        assert (gap.frame, gap.lost_frames) == (900, 250)
        np.testing.assert_array_equal(rec[:, 695:705], data[695:705].T)
        np.testing.assert_allclose(rec.scaled[2, :9], data[:9, 2] * 0.25)
        blocks = list(rec.blocks(frames=333, prefetch=False))
        np.testing.assert_array_equal(np.concatenate([b.data for b in blocks], axis=1), data.T)
        scaled = [b.data for b in rec.blocks(frames=333, scaled=True)]  # converted by HDF5
        assert scaled[0].dtype == np.float32
        np.testing.assert_array_equal(np.concatenate(scaled, axis=1), rec.scaled[:, :])
