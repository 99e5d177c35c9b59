"""The scope's display filters (workers/visualization/filters.py): the same as scipy
filtering the whole signal at once, however the chunks fall; they take out what they
should; and the scope shows a filtered trace, says so, and lets F switch it off."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests import wine

signal = pytest.importorskip("scipy.signal")

from workers.visualization.filters import ChannelFilter, DisplayFilter, sections  # noqa: E402

RATE = 30000.0


def _sines(frames: int, *parts: tuple[float, float], channels: int = 4) -> np.ndarray:
    t = np.arange(frames) / RATE
    one = sum(amplitude * np.sin(2 * np.pi * hz * t) for hz, amplitude in parts)
    return np.repeat(np.asarray(one)[:, None], channels, axis=1)


def test_chunk_by_chunk_is_scipy_filtering_the_whole_signal() -> None:
    """The referee is scipy's sosfilt run once over the whole signal, from the same start."""
    spec = DisplayFilter(highpass_hz=300, notch_hz=60)
    rng = np.random.default_rng(3)
    x = rng.normal(0, 100, (20000, 6)) + _sines(20000, (60, 400), channels=6)
    sos = sections(spec, RATE)
    whole, _ = signal.sosfilt(sos, x, axis=0, zi=signal.sosfilt_zi(sos)[:, :, None] * x[:1])
    run = ChannelFilter(spec, RATE)
    cuts = np.sort(rng.choice(np.arange(1, len(x)), 40, replace=False))
    parts = []
    for piece in np.split(x, cuts):
        parts.append(run.apply(piece, (0, 6)))
        assert run.restarted == (len(parts) == 1), "only the first chunk starts afresh"
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-4, atol=1e-2)


def test_each_filter_takes_out_what_it_should() -> None:
    slow_and_fast = _sines(60000, (10, 1000.0), (1000, 50.0))
    settled = slice(15000, None)  # after half a second
    high = ChannelFilter(DisplayFilter(highpass_hz=300), RATE).apply(slow_and_fast, (0, 4))
    assert abs(high[settled].std() - 50 / np.sqrt(2)) < 2, "the 1 kHz part, not the 10 Hz"
    low = ChannelFilter(DisplayFilter(lowpass_hz=100), RATE).apply(slow_and_fast, (0, 4))
    assert abs(low[settled].std() - 1000 / np.sqrt(2)) < 10, "the 10 Hz part, not the 1 kHz"
    mains = _sines(60000, (60, 1000.0))
    notched = ChannelFilter(DisplayFilter(notch_hz=60), RATE).apply(mains, (0, 4))
    assert notched[settled].std() < 1000 / np.sqrt(2) / 100, "60 Hz down by more than 40 dB"


def test_other_channels_start_afresh_from_their_first_value() -> None:
    run = ChannelFilter(DisplayFilter(highpass_hz=300), RATE)
    run.apply(np.full((100, 4), 500.0), (0, 4))
    assert run.restarted and run.channels == (0, 4)
    out = run.apply(np.full((100, 4), -2000.0), (4, 4))  # the next page: no step from 500
    assert run.restarted and np.abs(out).max() < 1e-3


def test_a_band_that_passes_nothing_and_a_cutoff_past_nyquist_are_named() -> None:
    with pytest.raises(ValueError, match="highpass_hz 500 is not below lowpass_hz 300"):
        DisplayFilter(highpass_hz=500, lowpass_hz=300).check()
    assert "at or above the stream's Nyquist frequency (500 Hz" in DisplayFilter(
        highpass_hz=600
    ).problem(1000.0)
    assert DisplayFilter(highpass_hz=300, notch_hz=60).describe() == "HP 300 Hz, notch 60 Hz"


# -- in the scope ----------------------------------------------------------------------------------
def _trace_rows(scope) -> int:
    """How many pixel rows of the first band hold trace pixels."""
    from workers.visualization.envelope import TRACE

    panel = scope.panels[0]
    band = scope.settings.height_px // min(scope.settings.channels_per_page, 4)
    image = panel.picture.pixels
    assert image is not None
    return int((image[:band] == TRACE).any(axis=1).sum())


def test_the_scope_shows_the_filtered_trace_says_so_and_f_switches_it_off() -> None:
    wine.import_module("PySide6.QtWidgets", "icuuc.dll")
    pytest.importorskip("pyqtgraph")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from pipeline.ring import RingWriter
    from tests.scope import scope_worker

    session = f"scopefilter{os.getpid()}"
    source = RingWriter(f"{session}/src/out", np.int16, 4, 200_000, RATE)
    scope = scope_worker(
        session,
        {
            "streams": ["src/out"],
            "filters": {"src/out": {"highpass_hz": 300}},
            "window_s": 1.0,
            "height_px": 400,
            "span_uv": 400.0,
        },
    )
    scope.setup()
    try:
        source.write(np.zeros((10, 4), np.int16))
        scope._refresh()  # attaches
        swing = _sines(int(RATE), (3, 150.0)).astype(np.int16)  # slow: a high-pass takes it out
        source.write(swing)
        scope._refresh()
        status = scope.panels[0].status.text
        assert status.endswith("  |  HP 300 Hz"), status
        filtered = _trace_rows(scope)
        assert scope.set_parameter("filtering", False).detail  # what F does
        source.write(swing)
        scope._refresh()
        unfiltered = _trace_rows(scope)
        assert "filters off (HP 300 Hz; F)" in scope.panels[0].status.text
        assert "filters off" in scope.note
        # 150 uV of a 400 uV band is ~37 of its 100 rows each way; filtered, a line.
        assert filtered <= 3 and unfiltered >= 60, (filtered, unfiltered)
    finally:
        try:
            scope.teardown()
        finally:
            source.close()
