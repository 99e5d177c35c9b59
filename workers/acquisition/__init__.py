"""Acquisition worker: a source of continuous data and spike events, paced in real time.

Streams (inside the session, ``<worker>`` being the configured name):

- ``<worker>/continuous``: frames x channels at ``sample_rate_hz``, int16 (scale
  ``scale_uv`` microvolts per bit) or float32 microvolts; per-frame timestamps
  from the sample clock; the descriptor carries ``channel_labels``, ``units``,
  ``scale`` and ``source``.
- ``<worker>/spikes``: one record per spike, ``(timestamp_ns, channel, unit)``.

The ``synthetic`` source (the default, no hardware) is described in
:mod:`workers.acquisition.synthetic`. Chunk ``k`` is published when the
monotonic clock reaches ``start + frames_so_far / sample_rate``, computed from
integer frame counts, so timing does not drift however long it runs; a worker
that falls behind publishes back to back until it has caught up and counts
``late_chunks``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Annotated, Any, Literal

import msgspec
import numpy as np

from pipeline.worker import Worker
from workers.acquisition.synthetic import SPIKE_DTYPE, SignalParameters, SyntheticSignal

Microvolts = Annotated[float, msgspec.Meta(ge=0)]
SPIKE_CAPACITY = 1 << 16


class AcquisitionSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``[workers.parameters]`` of an acquisition worker."""

    source: Literal["synthetic"] = "synthetic"
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


class AcquisitionWorker(Worker):
    Settings = AcquisitionSettings
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

    def setup(self) -> None:
        s = self.settings
        self.signal = SyntheticSignal(
            s.channels,
            s.sample_rate_hz,
            s.chunk_s,
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
        capacity = max(4 * self.signal.frames_per_chunk, round(s.buffer_s * s.sample_rate_hz))
        self.continuous = self.writer(
            "continuous", s.dtype, (s.channels,), capacity, s.sample_rate_hz, descriptor
        )
        spikes_descriptor = {"channel_labels": labels, "units": self.signal.units, "source": source}
        self.spikes = self.writer("spikes", SPIKE_DTYPE, (), SPIKE_CAPACITY, 0.0, spikes_descriptor)
        self.period_ns = 1e9 / s.sample_rate_hz
        self.start_ns = time.monotonic_ns()
        self.counters.update(frames=0, chunks=0, spikes=0, late_chunks=0, behind_ms=0.0)
        self.log.info(
            "synthetic: %d channels at %g Hz, %d frames per chunk, into %s",
            s.channels,
            s.sample_rate_hz,
            self.signal.frames_per_chunk,
            self.continuous.stream,
        )

    def step(self) -> None:
        data, spikes = self.signal.next_chunk()
        first = self.signal.frames_generated - len(data)
        frames = first + np.arange(len(data))
        timestamps = self.start_ns + np.round(frames * self.period_ns).astype(np.int64)
        due_ns = self.start_ns + round(self.signal.frames_generated * self.period_ns)
        self.wait_until(due_ns / 1e9)
        self.continuous.write(data, timestamps)
        if len(spikes):
            records = np.empty(len(spikes), SPIKE_DTYPE)
            records["timestamp_ns"] = self.start_ns + np.round(spikes["frame"] * self.period_ns)
            records["channel"] = spikes["channel"]
            records["unit"] = spikes["unit"]
            self.spikes.write(records, records["timestamp_ns"])
        behind_ms = (time.monotonic_ns() - due_ns) / 1e6
        c = self.counters
        c["frames"] += len(data)
        c["chunks"] += 1
        c["spikes"] += len(spikes)
        c["behind_ms"] = behind_ms
        if behind_ms > 1000 * len(data) / self.settings.sample_rate_hz:
            c["late_chunks"] += 1

    def on_parameter(self, name: str, value: Any) -> None:
        setattr(self.signal.params, name, float(value))

    def teardown(self) -> None:
        for name in ("continuous", "spikes"):
            ring = getattr(self, name, None)
            if ring is not None:
                ring.close()


WORKER = AcquisitionWorker
