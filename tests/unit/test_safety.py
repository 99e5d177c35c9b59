"""Stimulation safety: no accepted command exceeds a limit (checked on an independent rendering)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers.stimulation.safety import (
    ChannelLimits,
    Phase,
    PulseTrain,
    SafetyViolation,
    Waveform,
    check,
)

LIMITS = {
    1: ChannelLimits(
        max_amplitude_ua=100.0,
        max_charge_per_phase_nc=20.0,
        charge_balance_nc=0.5,
        max_rate_hz=200.0,
        max_duty=0.3,
    )
}
EPS = 1e-9


def _render(command: PulseTrain | Waveform) -> tuple[np.ndarray, float]:
    """One pulse as current samples (uA) and the sample period (us), drawn independently."""
    if isinstance(command, Waveform):
        return np.asarray(command.samples_ua, float), 1e6 / command.sample_rate_hz
    parts = []  # durations are whole microseconds in these tests: render at 1 us
    for index, phase in enumerate(command.phases):
        if index:
            parts.append(np.zeros(round(command.interphase_us)))
        parts.append(np.full(round(phase.duration_us), phase.amplitude_ua))
    return np.concatenate(parts), 1.0


def _measures(command: PulseTrain | Waveform) -> dict[str, float]:
    """Every limited quantity, computed from the rendering alone."""
    current, dt_us = _render(command)
    flowing = current[current != 0]
    runs = np.split(flowing, np.flatnonzero(np.diff(np.sign(flowing)) != 0) + 1)
    phase_charges = [abs(run.sum()) * dt_us / 1000 for run in runs if len(run)]
    period_us = 1e6 / command.frequency_hz
    repeating = command.count > 1
    return {
        "amplitude": float(np.abs(current).max()),
        "charge": max(phase_charges, default=0.0),
        "balance": abs(current.sum()) * dt_us / 1000,
        "rate": command.frequency_hz,
        "overlap": len(current) * dt_us - period_us if repeating else -1.0,
        "duty": (current != 0).sum() * dt_us / period_us if repeating else 0.0,
    }


def _within(m: dict[str, float], lim: ChannelLimits) -> bool:
    return (
        m["amplitude"] <= lim.max_amplitude_ua + EPS
        and m["charge"] <= lim.max_charge_per_phase_nc + EPS
        and m["balance"] <= lim.charge_balance_nc + EPS
        and m["rate"] <= lim.max_rate_hz + EPS
        and m["overlap"] <= EPS
        and m["duty"] <= lim.max_duty + EPS
    )


amplitudes = st.floats(-150, 150, allow_nan=False).map(lambda a: round(a, 1))
phases = st.builds(Phase, amplitude_ua=amplitudes, duration_us=st.integers(1, 400).map(float))
pulse_trains = st.builds(
    PulseTrain,
    channel=st.just(1),
    phases=st.lists(phases, min_size=1, max_size=4),
    frequency_hz=st.floats(1, 400),
    count=st.integers(1, 50),
    interphase_us=st.integers(0, 100).map(float),
)
waveforms = st.builds(
    Waveform,
    channel=st.just(1),
    samples_ua=st.lists(amplitudes, min_size=1, max_size=200),
    sample_rate_hz=st.sampled_from([10_000.0, 25_000.0, 50_000.0]),
    frequency_hz=st.floats(1, 400),
    count=st.integers(1, 50),
)
biphasic = st.builds(
    lambda amp, width, gap, freq, count: PulseTrain(
        channel=1,
        phases=[Phase(-amp, width), Phase(amp, width)],
        frequency_hz=freq,
        count=count,
        interphase_us=gap,
    ),
    st.floats(1, 150).map(lambda a: round(a, 1)),
    st.integers(1, 400).map(float),
    st.integers(0, 100).map(float),
    st.floats(1, 400),
    st.integers(1, 50),
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(pulse_trains, waveforms, biphasic))
def test_a_command_is_accepted_exactly_when_it_is_within_every_limit(command) -> None:
    measured = _measures(command)
    try:
        check(command, LIMITS)
    except SafetyViolation as violation:
        assert not _within(measured, LIMITS[1]), f"refused a safe command: {violation}"
        assert violation.channel == 1 and violation.value > violation.allowed
    else:
        assert _within(measured, LIMITS[1]), f"accepted an unsafe command: {measured}"


def test_accepted_commands_do_occur_in_the_search() -> None:
    """The property above is not vacuous: safe biphasic pulses pass."""
    safe = PulseTrain(
        channel=1, phases=[Phase(-50, 100), Phase(50, 100)], frequency_hz=100, count=10
    )
    pulse = check(safe, LIMITS)
    assert pulse.peak_ua == 50 and list(pulse.phase_charges_nc) == [-5.0, 5.0]


@pytest.mark.parametrize(
    ("command", "limit", "value"),
    [
        (
            PulseTrain(channel=1, phases=[Phase(-120, 50), Phase(120, 50)], frequency_hz=10),
            "amplitude (uA)",
            120,
        ),
        (
            PulseTrain(channel=1, phases=[Phase(-100, 300), Phase(100, 300)], frequency_hz=10),
            "charge per phase (nC)",
            30,
        ),
        (
            PulseTrain(channel=1, phases=[Phase(-50, 100), Phase(40, 100)], frequency_hz=10),
            "net charge per pulse (nC)",
            1,
        ),
        (
            PulseTrain(
                channel=1, phases=[Phase(-50, 100), Phase(50, 100)], frequency_hz=300, count=5
            ),
            "pulse rate (Hz)",
            300,
        ),
        (
            PulseTrain(
                channel=1, phases=[Phase(-10, 900), Phase(10, 900)], frequency_hz=200, count=5
            ),
            "duty cycle",
            0.36,
        ),
        (
            Waveform(
                channel=1,
                samples_ua=[-10] * 100 + [10] * 100,
                sample_rate_hz=1000.0,
                frequency_hz=1,
            ),
            "charge per phase (nC)",
            1000,
        ),
    ],
)
def test_each_limit_is_named_with_its_value_and_channel(command, limit, value) -> None:
    with pytest.raises(SafetyViolation) as caught:
        check(command, LIMITS)
    assert caught.value.limit == limit and caught.value.channel == 1
    assert math.isclose(caught.value.value, value, rel_tol=1e-9)
    assert f"channel 1: {limit}" in str(caught.value) and "refused" in str(caught.value)


@pytest.mark.parametrize(
    "command",
    [
        PulseTrain(channel=2, phases=[Phase(-1, 1), Phase(1, 1)], frequency_hz=1),
        PulseTrain(channel=1, phases=[], frequency_hz=1),
        PulseTrain(channel=1, phases=[Phase(math.nan, 10)], frequency_hz=1),
        PulseTrain(channel=1, phases=[Phase(-1, -10)], frequency_hz=1),
        PulseTrain(channel=1, phases=[Phase(-1, 10), Phase(1, 10)], frequency_hz=0),
        PulseTrain(channel=1, phases=[Phase(-1, 10), Phase(1, 10)], frequency_hz=10, count=0),
        Waveform(channel=1, samples_ua=[], sample_rate_hz=1000.0, frequency_hz=1),
        Waveform(channel=1, samples_ua=[math.inf], sample_rate_hz=1000.0, frequency_hz=1),
    ],
)
def test_malformed_commands_and_unconfigured_channels_are_refused(command) -> None:
    with pytest.raises(SafetyViolation):
        check(command, LIMITS)
