"""The ``synthetic`` source: a realistic extracellular recording with no hardware.

Streams ``<worker>/continuous`` (frames x channels, int16 at ``scale_uv`` microvolts
per step or float32 microvolts) and ``<worker>/spikes``. The signal is described in
:mod:`workers.acquisition.synthetic`. Chunk ``k`` is published when the monotonic
clock reaches ``start + frames_so_far / sample_rate``, computed from integer frame
counts, so timing does not drift however long it runs; a source that falls behind
publishes back to back until it has caught up and counts ``late_chunks``.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

import msgspec
import numpy as np

from pipeline.host import clock
from pipeline.settings import NonNegative, Settings
from workers.acquisition.source import SPIKE_CAPACITY, Source
from workers.acquisition.synthetic import SPIKE_DTYPE, SignalParameters, SyntheticSignal

Microvolts = NonNegative  # a level in µV (0: none)
#: Data is generated a block at a time and published chunk by chunk. A block costs
#: about 40 numpy calls whatever its size, which dominate a narrow rig's cost, so a
#: block holds about BLOCK_SAMPLES samples (10 ms of 1024 channels at 30 kHz): 160 ms
#: at 64 channels, 40 ms at 256; never shorter than BLOCK_MIN_S (the arithmetic of a
#: wide rig is per sample anyway) nor longer than BLOCK_MAX_S (a parameter set with
#: ``rigpipe set`` shows from the next block).
BLOCK_SAMPLES = 300 * 1024
BLOCK_MIN_S, BLOCK_MAX_S = 0.01, 0.2


class SyntheticSettings(
    Settings,
    frozen=True,
    kw_only=True,
    tag_field="source",
    tag="synthetic",
):
    """``[workers.parameters]`` of an acquisition worker with ``source = "synthetic"``."""

    channels: Annotated[int, msgspec.Meta(ge=1, le=65536)] = 64
    sample_rate_hz: Annotated[float, msgspec.Meta(gt=0, le=1_000_000)] = 30000.0
    chunk_s: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.001
    dtype: Literal["int16", "float32"] = "int16"
    scale_uv: Annotated[float, msgspec.Meta(gt=0)] = 0.25
    buffer_s: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    seed: int = 0
    unit_fraction: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.3
    noise_uv: Microvolts = 6.0
    background_uv: Microvolts = 20.0
    lfp_hz: Annotated[float, msgspec.Meta(gt=0)] = 8.0
    lfp_uv: Microvolts = 50.0
    spike_rate_hz: Microvolts = 8.0
    spike_uv: Microvolts = 120.0
    line_noise_hz: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    line_noise_uv: Microvolts = 10.0


_SIGNAL_FIELDS = frozenset(f.name for f in dataclasses.fields(SignalParameters))


class SyntheticSource(Source):
    settable = _SIGNAL_FIELDS

    @classmethod
    def outputs(cls, settings: Any) -> list[str]:
        return ["continuous", "spikes"]

    @classmethod
    def check(cls, settings: Any) -> None:
        nyquist = settings.sample_rate_hz / 2
        for name in ("lfp_hz", "line_noise_hz"):
            if getattr(settings, name) >= nyquist:
                raise ValueError(f"{name} must be below half the sample rate ({nyquist:g} Hz)")
        if settings.buffer_s < 4 * settings.chunk_s:
            raise ValueError("buffer_s must hold at least 4 chunks (4 x chunk_s)")

    def open(self) -> None:
        s = self.settings
        self.chunk_frames = max(1, round(s.chunk_s * s.sample_rate_hz))
        block_s = min(
            max(BLOCK_SAMPLES / (s.channels * s.sample_rate_hz), BLOCK_MIN_S), BLOCK_MAX_S
        )
        chunks_per_block = max(1, round(block_s / (self.chunk_frames / s.sample_rate_hz)))
        self.signal = SyntheticSignal(
            s.channels,
            s.sample_rate_hz,
            self.chunk_frames * chunks_per_block,
            s.dtype,
            s.scale_uv,
            s.seed,
            s.unit_fraction,
            SignalParameters(**{name: getattr(s, name) for name in _SIGNAL_FIELDS}),
        )
        labels = [f"ch{i + 1:03d}" for i in range(s.channels)]
        source = {"kind": "synthetic", "seed": s.seed}
        descriptor = {
            "channel_labels": labels,
            "units": "uV",
            "scale": self.signal.scale_uv,
            "source": source,
        }
        capacity = max(4 * self.chunk_frames, round(s.buffer_s * s.sample_rate_hz))
        self.continuous = self.worker.writer(
            "continuous", s.dtype, (s.channels,), capacity, s.sample_rate_hz, descriptor
        )
        spikes_descriptor = {"channel_labels": labels, "units": self.signal.units, "source": source}
        self.spikes = self.worker.writer(
            "spikes", SPIKE_DTYPE, (), SPIKE_CAPACITY, 0.0, spikes_descriptor
        )
        self.period_ns = 1e9 / s.sample_rate_hz
        self.start_ns = clock.now_ns()
        self.published = 0  # frames written to the ring
        self._chunk_ms = 1000 * self.chunk_frames / s.sample_rate_hz
        self._next_block()
        self.worker.counters.update(frames=0, chunks=0, spikes=0, late_chunks=0, behind_ms=0.0)
        self.worker.log.info(
            "synthetic: %d channels at %g Hz, chunks of %d frames, into %s",
            s.channels,
            s.sample_rate_hz,
            self.chunk_frames,
            self.continuous.stream,
        )

    def _stamps(self, first: int, n: int) -> np.ndarray:
        """Sample-clock timestamps (host monotonic ns) of frames ``first .. first + n``."""
        return self.start_ns + np.round((first + np.arange(n)) * self.period_ns).astype(np.int64)

    def step(self) -> None:
        """Publish the next chunk when its last frame is due; make a new block when needed."""
        if self.published == self._block_start + len(self._block):
            self._next_block()
        begin = self.published - self._block_start
        end = min(begin + self.chunk_frames, len(self._block))
        due_ns = self.start_ns + round((self._block_start + end) * self.period_ns)
        self.worker.wait_until(due_ns / 1e9)
        self.continuous.write(self._block[begin:end], self._timestamps[begin:end])
        lo, hi = self._spike_edges[begin], self._spike_edges[end]
        if hi > lo:
            records = self._spike_records[lo:hi]
            self.spikes.write(records, records["timestamp_ns"])
            self.worker.counters["spikes"] += hi - lo
        self.published = self._block_start + end
        behind_ms = (clock.now_ns() - due_ns) / 1e6
        c = self.worker.counters
        c["frames"] = self.published
        c["chunks"] += 1
        c["behind_ms"] = round(behind_ms, 3)
        if behind_ms > self._chunk_ms:
            c["late_chunks"] += 1

    def _next_block(self) -> None:
        """Make the next block, its stamps and its spike records (once a block, not a chunk)."""
        self._block_start = self.published
        self._block, spikes = self.signal.next_block()
        n = len(self._block)
        self._timestamps = self._stamps(self._block_start, n)
        records = np.empty(len(spikes), SPIKE_DTYPE)
        records["timestamp_ns"] = self.start_ns + np.round(spikes["frame"] * self.period_ns)
        records["channel"] = spikes["channel"]
        records["unit"] = spikes["unit"]
        self._spike_records = records
        # the records of frames [a, b) of the block are records[edges[a]:edges[b]]
        frames = spikes["frame"] - self._block_start
        self._spike_edges = np.searchsorted(frames, np.arange(n + 1)).tolist()

    def on_parameter(self, name: str, value: Any) -> None:
        setattr(self.signal.params, name, float(value))

    def close(self) -> None:
        for name in ("continuous", "spikes"):
            ring = getattr(self, name, None)
            if ring is not None:
                ring.close()
