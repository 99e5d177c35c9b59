"""Stimulation safety: every command is checked against per-channel limits before any backend.

Limits come only from the config (:class:`ChannelLimits`); nothing on the
control plane can raise them. A command is a pulse train (a list of phases,
repeated at a frequency) or an arbitrary waveform (samples in microamps at a
sample rate, repeated at a frequency); both are reduced to the same
description, a list of *phases*: maximal runs of one polarity (pauses of zero
current inside a run do not end it), with their amplitude and charge.
:func:`check` raises :class:`SafetyViolation` naming the limit, the value and
the channel for the first limit a command breaks:

- ``max_amplitude_ua``: the largest absolute current;
- ``max_charge_per_phase_nc``: the charge of any one phase;
- ``charge_balance_nc``: the net charge of one pulse (cathodic and anodic phases
  must cancel to within this);
- ``max_rate_hz``: how often the pulse repeats;
- ``max_duty``: the fraction of time current flows (pulse duration x rate).

Units: microamps x microseconds = picocoulombs; /1000 = nanocoulombs.

:func:`render` then turns a command into the samples the stimulator will output
(one pulse, at the output rate, quantized to the device's current resolution)
and checks *those samples* against the limits again, so what reaches the
device is exactly what passed the check.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Annotated

import msgspec
import numpy as np

from pipeline.control.messages import Phase, PulseTrain, Waveform
from pipeline.errors import RigpipeError
from pipeline.settings import Positive, Settings


class StimulatorError(RigpipeError):
    """The stimulator cannot do what its config asks: its backend is missing (no DLL,
    no pythonnet, no device, several devices and no serial), the device cannot meet
    the configured limits or channels, or its output failed while running.

    The message names the device and what to change; the worker exits and is restarted
    per its policy.
    """


class SafetyViolation(RigpipeError):
    """A stimulation command breaks a configured limit; it never reaches a backend.

    ``limit`` names the limit, ``value`` what the command asked for, ``allowed``
    the configured maximum and ``channel`` where. Raise the limit in the config
    (never over the control plane) or send a gentler command.
    """

    def __init__(self, channel: int, limit: str, value: float, allowed: float, detail: str = ""):
        self.channel, self.limit, self.value, self.allowed = channel, limit, value, allowed
        if math.isnan(allowed):  # not a limit: a command that cannot be checked or rendered
            problem = f"{limit}: {detail}"
        else:
            extra = f" ({detail})" if detail else ""
            problem = f"{limit} {value:g} exceeds the configured {allowed:g}{extra}"
        super().__init__(f"channel {channel}: {problem}; refused, nothing was sent")


class ChannelLimits(Settings, frozen=True, kw_only=True):
    """``[workers.parameters.limits]`` for one channel (or every channel)."""

    max_amplitude_ua: Positive
    max_charge_per_phase_nc: Positive
    charge_balance_nc: Annotated[float, msgspec.Meta(ge=0)] = 0.1
    max_rate_hz: Positive = 200.0
    max_duty: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5


@dataclass(frozen=True)
class PulseShape:
    """What the checks need to know about one pulse, however it was described."""

    peak_ua: float
    phase_charges_nc: np.ndarray  # signed, one per phase
    active_us: float  # time with current flowing
    duration_us: float  # from the first to the last sample of the pulse


def _require(channel: int, condition: bool, what: str) -> None:
    if not condition:
        raise SafetyViolation(channel, "malformed command", math.nan, math.nan, what)


def shape(command: PulseTrain | Waveform) -> PulseShape:
    """Reduce a command to its pulse's peak, phase charges, active time and duration."""
    channel = command.channel
    _require(channel, command.count >= 1, f"count must be at least 1, got {command.count}")
    _require(
        channel,
        math.isfinite(command.frequency_hz) and command.frequency_hz > 0,
        f"frequency_hz must be a positive number, got {command.frequency_hz!r}",
    )
    if isinstance(command, PulseTrain):
        _require(channel, bool(command.phases), "a pulse train needs at least one phase")
        amplitudes = np.array([p.amplitude_ua for p in command.phases], float)
        durations = np.array([p.duration_us for p in command.phases], float)
        _require(channel, bool(np.isfinite(amplitudes).all()), "amplitudes must be finite")
        _require(
            channel,
            bool(np.isfinite(durations).all() and (durations > 0).all()),
            "phase durations must be positive and finite",
        )
        _require(
            channel,
            math.isfinite(command.interphase_us) and command.interphase_us >= 0,
            "interphase_us must be zero or positive",
        )
        charges = _merge_same_polarity(amplitudes * durations / 1000.0, amplitudes)
        duration = durations.sum() + command.interphase_us * (len(durations) - 1)
        active = durations[amplitudes != 0].sum()
        return PulseShape(float(np.abs(amplitudes).max()), charges, float(active), float(duration))
    samples = np.asarray(command.samples_ua, float)
    _require(channel, len(samples) > 0, "a waveform needs at least one sample")
    _require(channel, bool(np.isfinite(samples).all()), "samples must be finite")
    _require(
        channel,
        math.isfinite(command.sample_rate_hz) and command.sample_rate_hz > 0,
        "sample_rate_hz must be positive",
    )
    period_us = 1e6 / command.sample_rate_hz
    flowing = samples[samples != 0]  # a pause does not discharge the electrode: skip it
    runs = np.flatnonzero(np.diff(np.sign(flowing)) != 0) + 1
    charges = np.array([part.sum() * period_us / 1000.0 for part in np.split(flowing, runs)])
    if not len(flowing):
        charges = np.zeros(0)
    return PulseShape(
        float(np.abs(samples).max()),
        charges,
        float((samples != 0).sum() * period_us),
        float(len(samples) * period_us),
    )


def _merge_same_polarity(charges: np.ndarray, amplitudes: np.ndarray) -> np.ndarray:
    """Phase charges; phases of one polarity count as one phase, even across a pause
    (a pause does not discharge the electrode)."""
    merged: list[float] = []
    previous = 0.0
    for charge, amplitude in zip(charges, amplitudes, strict=True):
        polarity = np.sign(amplitude)
        if polarity == 0:
            continue
        if merged and polarity == previous:
            merged[-1] += charge
        else:
            merged.append(charge)
        previous = polarity
    return np.array(merged)


def check(command: PulseTrain | Waveform, limits: dict[int, ChannelLimits]) -> PulseShape:
    """Return the command's pulse shape if it is within every limit; else SafetyViolation."""
    channel = command.channel
    if channel not in limits:
        raise SafetyViolation(
            channel,
            "channel",
            channel,
            math.nan,
            f"no limits are configured for it; configured channels: {sorted(limits)}",
        )
    lim = limits[channel]
    pulse = shape(command)
    if pulse.peak_ua > lim.max_amplitude_ua:
        raise SafetyViolation(channel, "amplitude (uA)", pulse.peak_ua, lim.max_amplitude_ua)
    phase_charges = np.abs(pulse.phase_charges_nc)
    if len(phase_charges) and phase_charges.max() > lim.max_charge_per_phase_nc:
        raise SafetyViolation(
            channel,
            "charge per phase (nC)",
            float(phase_charges.max()),
            lim.max_charge_per_phase_nc,
        )
    imbalance = abs(float(pulse.phase_charges_nc.sum())) if len(phase_charges) else 0.0
    if imbalance > lim.charge_balance_nc:
        raise SafetyViolation(
            channel,
            "net charge per pulse (nC)",
            imbalance,
            lim.charge_balance_nc,
            "cathodic and anodic phases must balance",
        )
    if command.frequency_hz > lim.max_rate_hz:
        raise SafetyViolation(channel, "pulse rate (Hz)", command.frequency_hz, lim.max_rate_hz)
    period_us = 1e6 / command.frequency_hz
    if command.count > 1 and pulse.duration_us > period_us:
        raise SafetyViolation(
            channel,
            "pulse duration (us)",
            pulse.duration_us,
            period_us,
            "a pulse is longer than the period it repeats at",
        )
    duty = pulse.active_us / period_us if command.count > 1 else 0.0
    if duty > lim.max_duty:
        raise SafetyViolation(channel, "duty cycle", duty, lim.max_duty)
    return pulse


__all__ = [
    "ChannelLimits",
    "Phase",
    "PulseShape",
    "PulseTrain",
    "SafetyViolation",
    "Waveform",
    "check",
    "shape",
]


# -- rendering: what the device will output, checked again ----------------------------------
@dataclass(frozen=True)
class Rendered:
    """One pulse at the output rate, and how it repeats."""

    pulse_ua: np.ndarray  # float64, multiples of the device resolution
    period_samples: int
    count: int

    @property
    def total_samples(self) -> int:
        return (self.count - 1) * self.period_samples + len(self.pulse_ua)

    @functools.cached_property
    def period_ua(self) -> np.ndarray:
        """One whole period: the pulse, then silence until the next (read-only, made once
        however often the command is queued)."""
        period = np.zeros(self.period_samples)
        period[: len(self.pulse_ua)] = self.pulse_ua
        period.flags.writeable = False
        return period


def _samples(channel: int, duration_us: float, rate_hz: float, what: str) -> int:
    exact = duration_us * rate_hz / 1e6
    samples = round(exact)
    if abs(exact - samples) > 1e-6 or (samples == 0 and duration_us > 0):
        step_us = 1e6 / rate_hz
        raise SafetyViolation(
            channel,
            "malformed command",
            math.nan,
            math.nan,
            f"{what} {duration_us:g} us is not a multiple of the output sample period "
            f"{step_us:g} us",
        )
    return samples


def render(
    command: PulseTrain | Waveform,
    limits: dict[int, ChannelLimits],
    rate_hz: float,
    resolution_ua: float,
) -> Rendered:
    """The samples of ``command`` at ``rate_hz``, checked twice: as commanded, and as rendered.

    Raises :class:`SafetyViolation` if either breaks a limit, or if the command
    cannot be rendered exactly (a phase that is not a whole number of samples,
    a waveform at another sample rate).
    """
    check(command, limits)
    channel = command.channel
    if isinstance(command, PulseTrain):
        parts = []
        for index, phase in enumerate(command.phases):
            if index and command.interphase_us:
                gap = _samples(channel, command.interphase_us, rate_hz, "interphase_us")
                parts.append(np.zeros(gap))
            length = _samples(channel, phase.duration_us, rate_hz, "phase duration")
            parts.append(np.full(length, phase.amplitude_ua))
        pulse = np.concatenate(parts)
    else:
        if abs(command.sample_rate_hz - rate_hz) > 1e-9 * rate_hz:
            raise SafetyViolation(
                channel,
                "malformed command",
                math.nan,
                math.nan,
                f"waveform sample_rate_hz {command.sample_rate_hz:g} is not the output rate "
                f"{rate_hz:g}; resample it",
            )
        pulse = np.asarray(command.samples_ua, float)
    pulse = np.round(pulse / resolution_ua) * resolution_ua
    # ceil: the rendered rate is never above the commanded (and checked) one
    period = max(len(pulse), math.ceil(rate_hz / command.frequency_hz - 1e-9))
    as_output = Waveform(
        channel=channel,
        samples_ua=pulse.tolist(),
        sample_rate_hz=rate_hz,
        frequency_hz=rate_hz / period,
        count=command.count,
    )
    check(as_output, limits)
    return Rendered(pulse, period, command.count)
