"""The synthetic source's signal: deterministic, with the spectrum and spikes it claims."""

from __future__ import annotations

import numpy as np
import pytest

from workers.acquisition.synthetic import SignalParameters, SyntheticSignal


def _make(
    seed: int = 0, dtype: str = "float32", rate: float = 2000.0, block: int = 200, **params
) -> SyntheticSignal:
    return SyntheticSignal(16, rate, block, dtype, 0.25, seed, 0.5, SignalParameters(**params))


def _run(signal: SyntheticSignal, blocks: int) -> tuple[np.ndarray, np.ndarray]:
    data, spikes = [], []
    for _ in range(blocks):
        block, found = signal.next_block()
        data.append(block.copy())
        spikes.append(found)
    return np.concatenate(data), np.concatenate(spikes)


def test_the_same_seed_gives_the_same_signal_and_spikes() -> None:
    a_data, a_spikes = _run(_make(seed=3, dtype="int16"), 20)
    b_data, b_spikes = _run(_make(seed=3, dtype="int16"), 20)
    c_data, _ = _run(_make(seed=4, dtype="int16"), 20)
    assert np.array_equal(a_data, b_data) and np.array_equal(a_spikes, b_spikes)
    assert not np.array_equal(a_data, c_data)
    assert len(a_spikes) > 0


def _power(data: np.ndarray, rate: float) -> tuple[np.ndarray, np.ndarray]:
    spectrum = np.abs(np.fft.rfft(data - data.mean(axis=0), axis=0)) ** 2
    return np.fft.rfftfreq(len(data), 1 / rate), spectrum.mean(axis=1)


def test_spectrum_has_the_lfp_and_line_peaks_and_a_one_over_f_background() -> None:
    signal = _make(spike_rate_hz=0, lfp_hz=10.0, line_noise_hz=60.0, noise_uv=1.0)
    data, _ = _run(signal, 200)  # 20 s at 2 kHz
    freqs, power = _power(data, 2000.0)

    def band(lo: float, hi: float) -> float:
        return float(power[(freqs >= lo) & (freqs < hi)].mean())

    assert band(9.9, 10.1) > 20 * band(13, 18), "no LFP peak at 10 Hz"
    assert band(59.9, 60.1) > 20 * band(63, 70), "no line-noise peak at 60 Hz"
    assert band(1, 4) > 10 * band(100, 200) > 0, "background is not falling with frequency"


@pytest.mark.parametrize("block", [200, 20])  # a waveform (48 frames) crosses 1 or 3 edges
def test_spikes_are_drawn_where_the_events_say(block: int) -> None:
    signal = _make(
        rate=30000.0,
        block=block,
        noise_uv=0,
        background_uv=0,
        lfp_uv=0,
        spike_rate_hz=20.0,
        spike_uv=100.0,
    )
    data, spikes = _run(signal, 120_000 // block)  # 4 s, so many cross a block edge
    assert 0.6 < len(spikes) / (20.0 * len(signal.units) * 4.0) < 1.4
    waveform_frames = round(1.6e-3 * 30000.0)
    expected = np.zeros_like(data, dtype=bool)
    for frame, channel in zip(spikes["frame"], spikes["channel"], strict=True):
        expected[frame : frame + waveform_frames, channel] = True
    drawn = np.abs(data) > 1e-3
    assert not (drawn & ~expected).any(), "signal where no spike was reported"
    for frame, channel in zip(spikes["frame"], spikes["channel"], strict=True):
        window = data[frame : frame + waveform_frames, channel]
        near = spikes["frame"][spikes["channel"] == channel] - frame
        alone = np.count_nonzero(np.abs(near) < waveform_frames) == 1  # another unit's peak
        if len(window) == waveform_frames and alone:  # can cancel a weak unit's trough
            assert window.min() < -20, "no trough after a reported spike"
    assert {c for c, _ in signal.units} == set(np.unique(spikes["channel"]))


def test_int16_output_is_scaled_and_clipped_not_wrapped() -> None:
    quiet = _make(dtype="int16", spike_rate_hz=0, background_uv=0, lfp_uv=0, noise_uv=10.0)
    data, _ = _run(quiet, 20)
    assert 30 < data.std() < 50  # 10 uV RMS at 0.25 uV per step
    loud = _make(dtype="int16", spike_rate_hz=0, lfp_uv=50_000.0)
    data, _ = _run(loud, 20)
    assert data.max() == 32767 and data.min() == -32768
    assert np.abs(np.diff(data.astype(np.int32), axis=0)).max() < 20000, "values wrapped around"


def test_settable_parameters_take_effect_on_the_next_block() -> None:
    signal = _make(spike_rate_hz=0, background_uv=0, lfp_uv=0, noise_uv=1.0)
    before, _ = signal.next_block()
    low = before.std()
    signal.params.noise_uv = 10.0
    after, _ = signal.next_block()
    assert 8 < after.std() / low < 12


def test_no_unit_fires_twice_within_its_refractory_period() -> None:
    from workers.acquisition.synthetic import REFRACTORY_S

    rate = 30_000.0
    signal = _make(seed=5, rate=rate, spike_rate_hz=200.0)  # dense: collisions are likely
    _, spikes = _run(signal, 600)  # 4 s
    assert len(spikes) > 1000
    for channel, unit in {(int(c), int(u)) for c, u in spikes[["channel", "unit"]]}:
        frames = np.sort(spikes["frame"][(spikes["channel"] == channel) & (spikes["unit"] == unit)])
        assert np.diff(frames).min() >= REFRACTORY_S * rate, (channel, unit)


def test_the_pink_sources_are_the_same_drawn_in_batches_of_any_size_and_unit_rms() -> None:
    one_by_one, batched = _make(seed=7), _make(seed=7)
    singles = np.concatenate([one_by_one._pink_points(1) for _ in range(3000)])
    batches = np.concatenate([batched._pink_points(k) for k in (1, 2, 997, 10, 1990)])
    assert np.allclose(singles, batches, rtol=0, atol=1e-9)
    long = _make(seed=8)._pink_points(200_000)
    assert 0.9 < long.std(axis=0).min() <= long.std(axis=0).max() < 1.1


@pytest.mark.parametrize("lfp_uv", [50.0, 20_000.0, 40_000.0])  # far from, near, past the limits
def test_int16_output_is_the_float_signal_rounded_and_clipped(lfp_uv: float) -> None:
    def make(dtype: str) -> SyntheticSignal:
        parameters = SignalParameters(lfp_uv=lfp_uv, spike_rate_hz=50.0, spike_uv=3000.0)
        return SyntheticSignal(16, 2000.0, 200, dtype, 1.0, 9, 0.5, parameters)

    as_int16, as_float = _run(make("int16"), 100)[0], _run(make("float32"), 100)[0]
    expected = np.clip(np.rint(as_float.astype(np.float64)), -32768, 32767)
    assert np.array_equal(as_int16, expected.astype(np.int16))
