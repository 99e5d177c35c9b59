"""A synthetic extracellular recording: the signal of the ``synthetic`` source.

Per channel it sums, in microvolts:

- a 1/f ("pink") background, Paul Kellet's three-pole filter over white noise;
- an LFP oscillation at ``lfp_hz`` whose amplitude waxes and wanes (0.2 Hz);
- optional line noise at ``line_noise_hz``;
- white amplifier noise;
- spikes: a fraction of channels carry one or two units, each firing as a
  Poisson process at ``spike_rate_hz`` with its own biphasic waveform.

It is cheap enough for 1024 channels at 30 kHz: data is made in blocks (the
worker publishes each block as several chunks); the 1/f sources are computed at
a control rate near 1 kHz and interpolated; the white noise is read from a
pre-drawn table at a random offset per block. The same seed and block size give
the same signal and the same spikes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

SPIKE_DTYPE = np.dtype([("timestamp_ns", "<i8"), ("channel", "<i4"), ("unit", "<i2")])
_KELLET_POLES = np.array([0.99765, 0.96300, 0.57000])
_KELLET_GAINS = np.array([0.0990460, 0.2965164, 1.0526913])
_KELLET_DIRECT = 0.1848
_CONTROL_RATE_HZ = 1000.0
_WAVEFORM_S = 1.6e-3
#: Control points of the 1/f sources computed in one matrix step at most (1 kHz: 10 per 10 ms).
_PINK_BATCH = 64
#: Rows of a block computed together, at most: what a large L2 cache holds of float32 frames.
#: Blocks of 1024 channels or fewer are one piece (each piece is four numpy calls more).
_CACHE_BYTES = 2 << 20
#: A block's spikes, as :meth:`SyntheticSignal.next_block` returns them.
_SIGNAL_SPIKE = np.dtype([("frame", "<i8"), ("channel", "<i4"), ("unit", "<i2")])
#: No unit fires twice within this (an absolute refractory period, as real neurons have).
REFRACTORY_S = 2e-3


def _kellet_rms() -> float:
    """Exact RMS of the Kellet filter's output for unit-variance white input."""
    a, c = _KELLET_POLES, _KELLET_GAINS
    poles = np.sum(np.outer(c, c) / (1 - np.outer(a, a)))
    return float(np.sqrt(poles + _KELLET_DIRECT**2 + 2 * _KELLET_DIRECT * c.sum()))


@dataclass
class SignalParameters:
    """Amplitudes in microvolts, rates in Hz; the settable part of the source's settings."""

    noise_uv: float = 6.0
    background_uv: float = 20.0
    lfp_hz: float = 8.0
    lfp_uv: float = 50.0
    spike_rate_hz: float = 8.0
    spike_uv: float = 120.0
    line_noise_hz: float = 0.0
    line_noise_uv: float = 10.0


class SyntheticSignal:
    """Generates blocks of ``block_frames`` frames x ``channels`` and their spikes.

    ``scale_uv`` is the microvolts per output unit (the int16 bit size; 1.0 for
    float32 output). Data is produced in output units.

    The slow part is a mix: ``PINK_SOURCES`` independent 1/f sources, the LFP
    (as a sine and a cosine) and line noise form a few basis signals, and a
    fixed random matrix mixes them into the channels (one matrix product per
    block), so neighbouring channels share background as real electrodes do.
    """

    PINK_SOURCES = 6

    def __init__(
        self,
        channels: int,
        sample_rate: float,
        block_frames: int,
        dtype: str,
        scale_uv: float,
        seed: int,
        unit_fraction: float,
        parameters: SignalParameters,
    ) -> None:
        self.channels = channels
        self.sample_rate = sample_rate
        self.dtype = np.dtype(dtype)
        self.scale_uv = scale_uv if self.dtype.kind == "i" else 1.0
        self.decimation = max(1, round(sample_rate / _CONTROL_RATE_HZ))
        self.block_frames = block_frames
        self.params = parameters
        self.frames_generated = 0
        self._rng = rng = np.random.default_rng(seed)
        table_frames = max(2048, 4 * block_frames)
        self._white_unit = rng.standard_normal((table_frames, channels), dtype=np.float32)
        self._white = np.empty_like(self._white_unit)
        self._pink_state = np.zeros((3, self.PINK_SOURCES))
        self._pink_rms = _kellet_rms()
        self._pink_steps: dict[int, tuple[np.ndarray, ...]] = {}  # count -> _kellet_steps
        # where a frame lies between two control points: 0, 1/decimation, ...
        self._ramp_fractions = (np.arange(self.decimation) / self.decimation)[None, :, None]
        self._block_offsets = np.arange(block_frames)
        self._mixing = self._make_mixing(rng)
        self._units = self._make_units(rng, unit_fraction)
        self._unit_channels = np.array([c for c, _, _ in self._units], np.int64)
        self._unit_numbers = np.array([u for _, u, _ in self._units], np.int16)
        waveform_frames = max(2, round(_WAVEFORM_S * sample_rate))
        self._unit_waveforms = np.array([w for _, _, w in self._units], np.float32).reshape(
            len(self._units), waveform_frames
        )
        # a unit never fires again within its refractory period (real ones cannot)
        self._refractory_frames = max(1, round(REFRACTORY_S * sample_rate))
        self._last_spike = [-self._refractory_frames] * len(self._units)
        # control points: point k is at frame k * decimation; the newest two are kept
        self._pink_first = 0  # the point self._pink_values[0] is
        self._pink_values = self._pink_points(1)
        self._basis = np.empty((block_frames, len(self._mixing)), np.float32)
        # The block's frames, then as many again as a spike waveform is long: the part of
        # a waveform that runs past the block waits there for the next block.
        self._spill_frames = waveform_frames
        self._frames = np.zeros((block_frames + waveform_frames, channels), np.float32)
        self._work = self._frames[:block_frames]
        self._out = np.empty((block_frames, channels), self.dtype)
        step = max(1, _CACHE_BYTES // (4 * channels))
        self._row_blocks = [
            slice(r, min(r + step, block_frames)) for r in range(0, block_frames, step)
        ]
        info = np.iinfo(self.dtype) if self.dtype.kind == "i" else None
        self._limits = (info.min, info.max) if info else None
        self._waveform_rows = np.arange(waveform_frames)
        self._units_per_channel = max(np.bincount(self._unit_channels, minlength=1).max(), 1)
        self._no_spikes = np.zeros(0, _SIGNAL_SPIKE)
        self._derived_from: SignalParameters | None = None
        self._derive()

    def _make_mixing(self, rng: np.random.Generator) -> np.ndarray:
        """(basis signals x channels): pink sources, LFP sine, LFP cosine, line noise."""
        pink = rng.standard_normal((self.PINK_SOURCES, self.channels))
        pink /= np.sqrt((pink**2).sum(axis=0))  # each channel: unit-RMS background
        lfp_gain = rng.uniform(0.5, 1.5, self.channels)
        lfp_phase = rng.uniform(0, 2 * np.pi, self.channels)
        line_gain = rng.uniform(0.5, 1.5, self.channels)
        rows = [pink, lfp_gain * np.cos(lfp_phase), lfp_gain * np.sin(lfp_phase), line_gain]
        return np.vstack(rows).astype(np.float32)

    def _make_units(
        self, rng: np.random.Generator, fraction: float
    ) -> list[tuple[int, int, np.ndarray]]:
        """(channel, unit number, waveform in uV at spike_uv = 1) for every unit."""
        n = round(fraction * self.channels)
        channels = np.sort(rng.choice(self.channels, n, replace=False)) if n else np.zeros(0, int)
        t = np.arange(max(2, round(_WAVEFORM_S * self.sample_rate))) / self.sample_rate
        units = []
        for channel in channels:
            for unit in (1, 2) if rng.random() < 0.3 else (1,):
                width = rng.uniform(0.8, 1.3)
                trough = -np.exp(-(((t - 3e-4) / (1.2e-4 * width)) ** 2))
                peak = 0.35 * np.exp(-(((t - 7e-4 * width) / (3e-4 * width)) ** 2))
                gain = rng.uniform(0.6, 1.4) / unit
                units.append((int(channel), unit, (gain * (trough + peak)).astype(np.float32)))
        return units

    @property
    def units(self) -> list[tuple[int, int]]:
        """(channel, unit) of every simulated unit."""
        return [(c, u) for c, u, _ in self._units]

    def _kellet_steps(self, count: int) -> tuple[np.ndarray, ...]:
        """The Kellet filter run ``count`` control points at once, as matrices.

        Point ``j`` (from 0) of pole ``p`` is ``a_p^(j+1) s_p + sum_(i<=j) a_p^(j-i) g_p w_i``
        for the state ``s`` before and white inputs ``w``; the output sums the poles
        plus the direct path. Returns (output from state, output from white, state
        decay, state from white), the outputs already divided by the RMS.
        """
        steps = self._pink_steps.get(count)
        if steps is None:
            poles, gains = _KELLET_POLES[:, None], _KELLET_GAINS[:, None]
            j = np.arange(count)
            lag = j[:, None] - j[None, :]  # j - i
            decay = poles[:, :, None] ** np.maximum(lag, 0)  # (pole, j, i)
            from_white = np.where(lag >= 0, (gains[:, :, None] * decay).sum(axis=0), 0.0)
            from_white += _KELLET_DIRECT * np.eye(count)
            steps = (
                (poles ** (j + 1)).T / self._pink_rms,  # (j, pole)
                from_white / self._pink_rms,  # (j, i)
                poles**count,  # (pole, 1)
                gains * poles ** (count - 1 - j),  # (pole, i)
            )
            self._pink_steps[count] = steps
        return steps

    def _pink_points(self, count: int) -> np.ndarray:
        """The next ``count`` control-rate values of each unit-RMS pink source
        (count x sources): Paul Kellet's filter over white noise, all at once."""
        white = self._rng.standard_normal((count, self.PINK_SOURCES))
        values = np.empty_like(white)
        for first in range(0, count, _PINK_BATCH):  # matrices of at most _PINK_BATCH squared
            batch = white[first : first + _PINK_BATCH]
            from_state, from_white, decay, state_from_white = self._kellet_steps(len(batch))
            values[first : first + len(batch)] = from_state @ self._pink_state + from_white @ batch
            self._pink_state = decay * self._pink_state + state_from_white @ batch
        return values

    def _ramp(self, points: np.ndarray, phase: int, out: np.ndarray) -> None:
        """Into ``out``: ``len(out)`` frames from ``phase`` frames after ``points[0]``,
        each interpolated linearly between the control points around it."""
        starts, steps = points[:-1, None, :], (points[1:] - points[:-1])[:, None, :]
        ramp = (starts + steps * self._ramp_fractions).reshape(-1, points.shape[1])
        out[:] = ramp[phase : phase + len(out)]

    def _derive(self) -> None:
        """What follows from the parameters, made again only when they changed: the
        mixing matrix scaled by the amplitudes, the noise table, the tones' angular
        rates, the spike waveforms at their amplitude and the spikes per block."""
        p = self.params
        if p == self._derived_from:
            return
        self._derived_from = dataclasses.replace(p)
        unit = 1.0 / self.scale_uv
        sources = self.PINK_SOURCES
        amplitudes = np.empty(len(self._mixing), np.float32)
        amplitudes[:sources] = p.background_uv * unit
        amplitudes[sources : sources + 2] = p.lfp_uv * unit
        amplitudes[sources + 2] = p.line_noise_uv * unit if p.line_noise_hz > 0 else 0.0
        self._scaled_mixing = amplitudes[:, None] * self._mixing
        np.multiply(self._white_unit, np.float32(p.noise_uv * unit), out=self._white)
        # radians per frame of: the LFP's waxing and waning (0.2 Hz), the LFP, line noise
        self._tone_rates = 2 * np.pi * np.array([0.2, p.lfp_hz, p.line_noise_hz]) / self.sample_rate
        self._spike_waveforms = (p.spike_uv * unit) * self._unit_waveforms
        rate = p.spike_rate_hz * len(self._units) / self.sample_rate
        self._spikes_per_block = rate * self.block_frames
        # A bound on any sample, to skip clipping a block that cannot reach the output's
        # limits: each basis signal times its largest weight on any channel, plus the
        # largest noise, plus the largest spike times the waveforms that can overlap on
        # a channel: each of its units', as many as fit in a waveform's length one
        # refractory period apart (one at 30 kHz; more at a low sample rate).
        self._mixing_peaks = np.abs(self._scaled_mixing).max(axis=1).astype(np.float64)
        spike_peak = float(np.abs(self._spike_waveforms).max(initial=0.0))
        per_unit = -(-len(self._waveform_rows) // self._refractory_frames)
        overlapping = self._units_per_channel * per_unit
        self._unmixed_peak = float(np.abs(self._white).max()) + overlapping * spike_peak

    def _fill_basis(self) -> None:
        """The block's basis signals, each at unit amplitude, into ``self._basis``."""
        n, decimation, basis = self.block_frames, self.decimation, self._basis
        first = self.frames_generated
        start, end = first // decimation, -(-(first + n) // decimation)  # control points used
        made = self._pink_first + len(self._pink_values)
        if end >= made:
            self._pink_values = np.concatenate(
                (self._pink_values, self._pink_points(end + 1 - made))
            )
        points = self._pink_values[start - self._pink_first : end + 1 - self._pink_first]
        sources = self.PINK_SOURCES
        self._ramp(points, first - start * decimation, basis[:, :sources])
        keep_from = end - 1  # the next block starts at this point or later
        if keep_from > self._pink_first:
            self._pink_values = self._pink_values[keep_from - self._pink_first :]
            self._pink_first = keep_from
        angles = np.multiply.outer(first + self._block_offsets, self._tone_rates)
        sines = np.sin(angles)
        envelope = 0.6 + 0.4 * sines[:, 0]
        np.multiply(envelope, sines[:, 1], out=basis[:, sources])
        np.multiply(envelope, np.cos(angles[:, 1]), out=basis[:, sources + 1])
        basis[:, sources + 2] = sines[:, 2]

    def next_block(self) -> tuple[np.ndarray, np.ndarray]:
        """The next ``block_frames`` frames (frames x channels, output dtype) and their spikes.

        Spikes are records of (frame, channel, unit), ``frame`` counting from the
        first frame generated. The data array is reused by the next call.
        """
        n = self.block_frames
        self._derive()
        self._fill_basis()
        work = self._work
        offset = int(self._rng.integers(0, len(self._white) - n + 1))
        white = self._white[offset : offset + n]
        # Mix and add the noise (in pieces of rows that stay in the CPU's cache, for wide
        # blocks; narrower ones are one piece, as every numpy call costs its own overhead).
        for rows in self._row_blocks:
            np.matmul(self._basis[rows], self._scaled_mixing, out=work[rows])
            work[rows] += white[rows]
        self._spill_in()
        spikes = self._add_spikes()
        if self._limits is not None:
            peak = float(np.abs(self._basis).max(axis=0) @ self._mixing_peaks)
            clip = peak + self._unmixed_peak >= min(-self._limits[0], self._limits[1]) - 1
            for rows in self._row_blocks:
                if clip:  # (a pass over the block saved when no sample can reach a limit)
                    np.clip(work[rows], *self._limits, out=work[rows])
                np.rint(work[rows], out=self._out[rows], casting="unsafe")
        else:
            np.copyto(self._out, work)
        self.frames_generated += n
        return self._out, spikes

    def _spill_in(self) -> None:
        """Add what the previous blocks' spikes left past their end to this block, and
        clear the room past this block for what its own spikes leave."""
        n, spill = self.block_frames, self._frames[self.block_frames :]
        if not spill.any():
            return
        left = spill.copy()
        overlap = min(n, self._spill_frames)
        self._work[:overlap] += left[:overlap]
        spill[:] = 0.0
        if self._spill_frames > n:  # a waveform longer than a block: the rest waits on
            spill[: self._spill_frames - n] = left[n:]

    def _add_spikes(self) -> np.ndarray:
        n = self.block_frames
        count = self._rng.poisson(self._spikes_per_block)
        if not count:
            return self._no_spikes
        which = self._rng.integers(0, len(self._units), count)
        frames = np.sort(self._rng.integers(0, n, count))
        # Which spikes fire is decided one by one (a unit's refractory period depends on
        # its previous spike); adding their waveforms is done for all at once, into the
        # block and the room past it.
        first, refractory, last = self.frames_generated, self._refractory_frames, self._last_spike
        kept = []
        pairs = zip(which.tolist(), frames.tolist(), strict=True)
        for index, (unit_index, frame) in enumerate(pairs):
            at = first + frame
            if at - last[unit_index] >= refractory:
                last[unit_index] = at
                kept.append(index)
        if len(kept) < count:
            which, frames = which[kept], frames[kept]
        channels = self._unit_channels[which]
        rows = frames[:, None] + self._waveform_rows
        np.add.at(self._frames, (rows, channels[:, None]), self._spike_waveforms[which])
        spikes = np.empty(len(frames), _SIGNAL_SPIKE)
        spikes["frame"] = first + frames
        spikes["channel"] = channels
        spikes["unit"] = self._unit_numbers[which]
        return spikes
