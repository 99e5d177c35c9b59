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

from dataclasses import dataclass

import numpy as np

SPIKE_DTYPE = np.dtype([("timestamp_ns", "<i8"), ("channel", "<i4"), ("unit", "<i2")])
_KELLET_POLES = np.array([0.99765, 0.96300, 0.57000])
_KELLET_GAINS = np.array([0.0990460, 0.2965164, 1.0526913])
_KELLET_DIRECT = 0.1848
_CONTROL_RATE_HZ = 1000.0
_WAVEFORM_S = 1.6e-3
#: Rows of a block computed together: about what a core's L2 cache holds of float32 frames.
_CACHE_BYTES = 128 << 10
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
        self._white_scale: float | None = None
        self._pink_state = np.zeros((3, self.PINK_SOURCES))
        self._pink_rms = _kellet_rms()
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
        self._pink_frames = [0]  # control points: frames (multiples of decimation) and values
        self._pink_values = [self._pink_point()]
        self._basis = np.empty((block_frames, len(self._mixing)), np.float32)
        self._work = np.empty((block_frames, channels), np.float32)
        self._out = np.empty((block_frames, channels), self.dtype)
        step = max(1, _CACHE_BYTES // (4 * channels))
        self._row_blocks = [
            slice(r, min(r + step, block_frames)) for r in range(0, block_frames, step)
        ]
        self._carry: list[tuple[int, np.ndarray]] = []
        info = np.iinfo(self.dtype) if self.dtype.kind == "i" else None
        self._limits = (info.min, info.max) if info else None

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
        channels = np.sort(rng.choice(self.channels, n, replace=False)) if n else []
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

    def _pink_point(self) -> np.ndarray:
        """The next control-rate value of each unit-RMS pink source."""
        white = self._rng.standard_normal(self.PINK_SOURCES)
        state = self._pink_state
        state *= _KELLET_POLES[:, None]
        state += _KELLET_GAINS[:, None] * white
        return (state.sum(axis=0) + _KELLET_DIRECT * white) / self._pink_rms

    def _fill_basis(self) -> None:
        """The block's basis signals, in output units, into ``self._basis``."""
        p, n = self.params, self.block_frames
        first = self.frames_generated
        frames = first + np.arange(n)
        while self._pink_frames[-1] < first + n:
            self._pink_frames.append(self._pink_frames[-1] + self.decimation)
            self._pink_values.append(self._pink_point())
        keep = max(0, len(self._pink_frames) - 2)  # the next block starts after these
        pink = np.stack(self._pink_values)
        ramped = np.empty((n, self.PINK_SOURCES))
        for source in range(self.PINK_SOURCES):
            ramped[:, source] = np.interp(frames, self._pink_frames, pink[:, source])
        del self._pink_frames[:keep], self._pink_values[:keep]
        unit = 1.0 / self.scale_uv
        sources = self.PINK_SOURCES
        self._basis[:, :sources] = ramped * (p.background_uv * unit)
        t = frames / self.sample_rate
        lfp = p.lfp_uv * unit * (0.6 + 0.4 * np.sin(2 * np.pi * 0.2 * t))
        phase = 2 * np.pi * p.lfp_hz * t
        self._basis[:, sources] = lfp * np.sin(phase)
        self._basis[:, sources + 1] = lfp * np.cos(phase)
        line = p.line_noise_uv * unit * np.sin(2 * np.pi * p.line_noise_hz * t)
        self._basis[:, sources + 2] = line if p.line_noise_hz > 0 else 0.0

    def next_block(self) -> tuple[np.ndarray, np.ndarray]:
        """The next ``block_frames`` frames (frames x channels, output dtype) and their spikes.

        Spikes are records of (frame, channel, unit), ``frame`` counting from the
        first frame generated. The data array is reused by the next call.
        """
        n = self.block_frames
        self._fill_basis()
        work = self._work
        scale = self.params.noise_uv / self.scale_uv
        if scale != self._white_scale:  # rescale the table once, not every block
            np.multiply(self._white_unit, np.float32(scale), out=self._white)
            self._white_scale = scale
        offset = int(self._rng.integers(0, len(self._white) - n + 1))
        white = self._white[offset : offset + n]
        # Mix and add the noise a few rows at a time: each step's rows stay in the CPU's
        # cache instead of passing through memory once per operation.
        for rows in self._row_blocks:
            np.matmul(self._basis[rows], self._mixing, out=work[rows])
            work[rows] += white[rows]
        spikes = self._add_spikes(work)
        if self._limits is not None:
            for rows in self._row_blocks:
                np.clip(work[rows], *self._limits, out=work[rows])
                np.rint(work[rows], out=self._out[rows], casting="unsafe")
        else:
            np.copyto(self._out, work)
        self.frames_generated += n
        return self._out, spikes

    def _add_spikes(self, work: np.ndarray) -> np.ndarray:
        n = len(work)
        carry, self._carry = self._carry, []
        for channel, rest in carry:
            self._place(work, 0, channel, rest)
        rate = self.params.spike_rate_hz * len(self._units) / self.sample_rate
        count = self._rng.poisson(rate * n)
        spikes = np.zeros(count, [("frame", "<i8"), ("channel", "<i4"), ("unit", "<i2")])
        if not count:
            return spikes
        which = self._rng.integers(0, len(self._units), count)
        frames = np.sort(self._rng.integers(0, n, count))
        # Which spikes fire is decided one by one (a unit's refractory period depends on
        # its previous spike); adding their waveforms is done for all at once.
        first, refractory, last = self.frames_generated, self._refractory_frames, self._last_spike
        kept = []
        pairs = zip(which.tolist(), frames.tolist(), strict=True)
        for index, (unit_index, frame) in enumerate(pairs):
            at = first + frame
            if at - last[unit_index] >= refractory:
                last[unit_index] = at
                kept.append(index)
        units, starts = which[kept], frames[kept]
        channels = self._unit_channels[units]
        waveforms = (self.params.spike_uv / self.scale_uv) * self._unit_waveforms[units]
        rows = starts[:, None] + np.arange(waveforms.shape[1])
        inside = rows < n
        columns = np.broadcast_to(channels[:, None], rows.shape)
        np.add.at(work, (rows[inside], columns[inside]), waveforms[inside])
        for spike in np.flatnonzero(~inside[:, -1]):  # runs past the block: the rest is carried
            self._carry.append((int(channels[spike]), waveforms[spike, n - starts[spike] :]))
        spikes = spikes[: len(kept)]
        spikes["frame"] = first + starts
        spikes["channel"] = channels
        spikes["unit"] = self._unit_numbers[units]
        return spikes

    def _place(self, work: np.ndarray, start: int, channel: int, waveform: np.ndarray) -> None:
        """Add ``waveform`` at ``start``; what runs past the block is added to the next one."""
        fits = min(len(waveform), len(work) - start)
        work[start : start + fits, channel] += waveform[:fits]
        if fits < len(waveform):
            self._carry.append((channel, waveform[fits:]))
