"""A synthetic extracellular recording: the signal of the ``synthetic`` source.

Per channel it sums, in microvolts:

- a 1/f ("pink") background, Paul Kellet's three-pole filter over white noise;
- an LFP oscillation at ``lfp_hz`` whose amplitude waxes and wanes (0.2 Hz);
- optional line noise at ``line_noise_hz``;
- white amplifier noise;
- spikes: a fraction of channels carry one or two units, each firing as a
  Poisson process at ``spike_rate_hz`` with its own biphasic waveform.

It is cheap enough for 1024 channels at 30 kHz: the slow parts (background,
LFP, line noise) are computed at a control rate near 1 kHz and interpolated
linearly; the white noise is read from a pre-drawn table at a random offset per
chunk. The same seed gives the same signal and the same spikes, chunk for chunk.
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
    """Generates chunks of ``frames_per_chunk`` frames x ``channels`` and their spikes.

    ``scale_uv`` is the microvolts per output unit (the int16 bit size; 1.0 for
    float32 output). Data is produced in output units.
    """

    def __init__(
        self,
        channels: int,
        sample_rate: float,
        chunk_s: float,
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
        blocks = max(1, round(chunk_s * sample_rate / self.decimation))
        self.frames_per_chunk = blocks * self.decimation
        self.params = parameters
        self.frames_generated = 0
        self._rng = np.random.default_rng(seed)
        rng = self._rng
        table_frames = max(2048, 4 * self.frames_per_chunk)
        self._white = rng.standard_normal((table_frames, channels), dtype=np.float32)
        self._pink_state = np.zeros((3, channels))
        self._pink_rms = _kellet_rms()
        self._lfp_gain = rng.uniform(0.5, 1.5, channels)
        self._lfp_phase = rng.uniform(0, 2 * np.pi, channels)
        self._line_gain = rng.uniform(0.5, 1.5, channels)
        self._units = self._make_units(rng, unit_fraction)
        self._ramp = (np.arange(self.decimation, dtype=np.float32) / self.decimation)[None, :, None]
        self._slow_last = self._slow_point(0)
        self._work = np.empty((blocks, self.decimation, channels), np.float32)
        self._out = np.empty((self.frames_per_chunk, channels), self.dtype)
        self._carry: list[tuple[int, np.ndarray]] = []
        info = np.iinfo(self.dtype) if self.dtype.kind == "i" else None
        self._limits = (info.min, info.max) if info else None

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

    def _slow_point(self, frame: int) -> np.ndarray:
        """Background + LFP + line noise at ``frame``, in output units, for every channel."""
        p = self.params
        white = self._rng.standard_normal(self.channels)
        state = self._pink_state
        state *= _KELLET_POLES[:, None]
        state += _KELLET_GAINS[:, None] * white
        pink = (state.sum(axis=0) + _KELLET_DIRECT * white) / self._pink_rms
        t = frame / self.sample_rate
        envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 0.2 * t)
        value = p.background_uv * pink
        value += (
            p.lfp_uv
            * envelope
            * self._lfp_gain
            * np.sin(2 * np.pi * p.lfp_hz * t + self._lfp_phase)
        )
        if p.line_noise_hz > 0:
            value += p.line_noise_uv * self._line_gain * np.sin(2 * np.pi * p.line_noise_hz * t)
        return (value / self.scale_uv).astype(np.float32)

    def next_chunk(self) -> tuple[np.ndarray, np.ndarray]:
        """The next chunk (frames x channels, output dtype) and its spikes (frame offset, channel, unit).

        The data array is reused by the next call; copy it to keep it.
        """
        n, d = self.frames_per_chunk, self.decimation
        blocks = n // d
        work = self._work
        points = [self._slow_last]
        for block in range(1, blocks + 1):
            points.append(self._slow_point(self.frames_generated + block * d))
        slow = np.stack(points)
        np.multiply((slow[1:] - slow[:-1])[:, None, :], self._ramp, out=work)
        work += slow[:-1, None, :]
        self._slow_last = points[-1]
        offset = int(self._rng.integers(0, len(self._white) - n + 1))
        noise = self._white[offset : offset + n].reshape(work.shape)
        work += noise * np.float32(self.params.noise_uv / self.scale_uv)
        flat = work.reshape(n, self.channels)
        spikes = self._add_spikes(flat)
        if self._limits is not None:
            np.rint(flat, out=flat)
            np.clip(flat, *self._limits, out=flat)
        np.copyto(self._out, flat, casting="unsafe")
        self.frames_generated += n
        return self._out, spikes

    def _add_spikes(self, flat: np.ndarray) -> np.ndarray:
        n = len(flat)
        carry, self._carry = self._carry, []
        for channel, rest in carry:
            self._place(flat, 0, channel, rest)
        count = self._rng.poisson(
            self.params.spike_rate_hz * len(self._units) * n / self.sample_rate
        )
        spikes = np.zeros(count, [("frame", "<i8"), ("channel", "<i4"), ("unit", "<i2")])
        if not count:
            return spikes
        which = self._rng.integers(0, len(self._units), count)
        frames = np.sort(self._rng.integers(0, n, count))
        amplitude = self.params.spike_uv / self.scale_uv
        for i, (unit_index, frame) in enumerate(zip(which, frames, strict=True)):
            channel, unit, waveform = self._units[unit_index]
            self._place(flat, int(frame), channel, amplitude * waveform)
            spikes[i] = (self.frames_generated + frame, channel, unit)
        return spikes

    def _place(self, flat: np.ndarray, start: int, channel: int, waveform: np.ndarray) -> None:
        """Add ``waveform`` at ``start``; what runs past the chunk is added to the next one."""
        fits = min(len(waveform), len(flat) - start)
        flat[start : start + fits, channel] += waveform[:fits]
        if fits < len(waveform):
            self._carry.append((channel, waveform[fits:]))
