"""The scope's display filters: high-pass, low-pass and a line-noise notch, per tab.

What a scope shows filtered is computed in the scope's process and never
touches the ring or the recording. The filters are causal IIR sections
(scipy's Butterworth and notch designs run by ``sosfilt``) whose state is kept
from one chunk to the next, so a trace read in many small chunks is the same
as the whole signal filtered at once: no seam at a chunk boundary.

Only the channels on the page are filtered (64 of 1024 by default): a
Butterworth section costs about as much per sample as the scope's min/max
envelope, and filtering every channel of a 1024-channel array at 30 kHz would
cost the scope a core. When the page changes, its channels start afresh, their
state set as if each had always been at its first value (``sosfilt_zi``), so
a high-pass trace starts at zero, not with a step.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import numpy as np

from pipeline import extras
from pipeline.settings import NonNegative, Settings


class DisplayFilter(Settings, frozen=True, kw_only=True):
    """``[workers.parameters.filters."<stream>"]`` of a scope: 0 leaves a filter off."""

    highpass_hz: NonNegative = 0.0  # e.g. 300 for the spike band
    lowpass_hz: NonNegative = 0.0  # e.g. 250 for LFP
    notch_hz: NonNegative = 0.0  # 50 or 60: the mains
    order: Annotated[int, msgspec.Meta(ge=1, le=8)] = 4  # of each Butterworth filter
    notch_q: Annotated[float, msgspec.Meta(gt=0, le=1000)] = 30.0  # width: notch_hz / notch_q

    @property
    def active(self) -> bool:
        return bool(self.highpass_hz or self.lowpass_hz or self.notch_hz)

    def describe(self) -> str:
        """The filter as the status line shows it: ``HP 300 Hz, notch 60 Hz``."""
        parts = []
        if self.highpass_hz:
            parts.append(f"HP {self.highpass_hz:g} Hz")
        if self.lowpass_hz:
            parts.append(f"LP {self.lowpass_hz:g} Hz")
        if self.notch_hz:
            parts.append(f"notch {self.notch_hz:g} Hz")
        return ", ".join(parts) or "unfiltered"

    def check(self) -> None:
        """Refuse a band that lets nothing through (rate-independent)."""
        if self.highpass_hz and self.lowpass_hz and self.highpass_hz >= self.lowpass_hz:
            raise ValueError(
                f"highpass_hz {self.highpass_hz:g} is not below lowpass_hz "
                f"{self.lowpass_hz:g}: nothing would pass; lower highpass_hz or raise lowpass_hz"
            )

    def problem(self, sample_rate: float) -> str:
        """Why this filter cannot run on a stream of ``sample_rate`` ("" if it can)."""
        nyquist = sample_rate / 2
        for name in ("highpass_hz", "lowpass_hz", "notch_hz"):
            value = getattr(self, name)
            if value and value >= nyquist:
                return (
                    f"{name} = {value:g} is at or above the stream's Nyquist frequency "
                    f"({nyquist:g} Hz at {sample_rate:g} Hz)"
                )
        return ""


def sections(spec: DisplayFilter, sample_rate: float) -> np.ndarray:
    """Second-order sections of ``spec`` at ``sample_rate`` (raises ValueError on a bad one)."""
    signal: Any = extras.require("viz", "scipy.signal", "the scope's display filters")
    parts = []
    if spec.highpass_hz:
        parts.append(
            signal.butter(spec.order, spec.highpass_hz, "highpass", fs=sample_rate, output="sos")
        )
    if spec.lowpass_hz:
        parts.append(
            signal.butter(spec.order, spec.lowpass_hz, "lowpass", fs=sample_rate, output="sos")
        )
    if spec.notch_hz:
        b, a = signal.iirnotch(spec.notch_hz, spec.notch_q, fs=sample_rate)
        parts.append(signal.tf2sos(b, a))
    return np.vstack(parts)


class ChannelFilter:
    """``spec`` run over some channels of a stream, chunk after chunk."""

    def __init__(self, spec: DisplayFilter, sample_rate: float) -> None:
        self.spec = spec
        self._signal: Any = extras.require("viz", "scipy.signal", "the scope's display filters")
        self.sos = sections(spec, sample_rate)
        self._zi_unit = self._signal.sosfilt_zi(self.sos)  # (sections, 2): a step's steady state
        self.channels: tuple[int, int] | None = None  # (first, end) the state is for
        self._zi: np.ndarray | None = None
        self.restarted = False  # the last apply started its channels afresh

    def apply(self, data: np.ndarray, channels: tuple[int, int]) -> np.ndarray:
        """``data`` (frames x the channels ``channels`` = (first, end)) filtered, float32.

        Channels other than those of the previous call start afresh (see the module
        docstring); ``restarted`` then says so, for the caller to clear what it showed.
        """
        x = np.asarray(data, np.float64)
        if not len(x):
            self.restarted = False
            return x.astype(np.float32)
        self.restarted = channels != self.channels or self._zi is None
        if self.restarted:
            self.channels = channels
            self._zi = self._zi_unit[:, :, None] * x[:1][None, :, :]  # (sections, 2, channels)
        y, self._zi = self._signal.sosfilt(self.sos, x, axis=0, zi=self._zi)
        return y.astype(np.float32)
