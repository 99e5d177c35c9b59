"""Rendering stimulation commands to samples, output queues, and trigger detection."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.control.messages import Phase, PulseTrain, Waveform
from workers.stimulation.output import ChannelQueue, Train
from workers.stimulation.safety import ChannelLimits, SafetyViolation, render
from workers.stimulation.trigger import Detector, TriggerRule

RATE = 50_000.0
LIMITS = {0: ChannelLimits(max_amplitude_ua=100, max_charge_per_phase_nc=30, max_rate_hz=200)}


def train(*phases: tuple[float, float], **kw) -> PulseTrain:
    return PulseTrain(channel=0, phases=[Phase(a, d) for a, d in phases], **kw)


def test_pulse_train_renders_phase_by_phase_at_the_output_rate() -> None:
    rendered = render(
        train((-50, 200), (50, 200), interphase_us=60, frequency_hz=100, count=3),
        LIMITS,
        RATE,
        0.1,
    )
    expected = np.concatenate([np.full(10, -50.0), np.zeros(3), np.full(10, 50.0)])
    np.testing.assert_allclose(rendered.pulse_ua, expected)
    assert rendered.period_samples == 500
    assert rendered.total_samples == 2 * 500 + 23


def test_durations_that_are_not_whole_samples_are_refused() -> None:
    with pytest.raises(SafetyViolation, match="not a multiple of the output sample period 20 us"):
        render(train((-50, 210), (50, 210)), LIMITS, RATE, 0.1)


def test_a_waveform_at_another_rate_is_refused() -> None:
    command = Waveform(channel=0, samples_ua=[-10, 10], sample_rate_hz=25_000)
    with pytest.raises(SafetyViolation, match="resample"):
        render(command, LIMITS, RATE, 0.1)


def test_the_rendered_samples_are_checked_again_after_quantization() -> None:
    # 99.96 uA passes as commanded; a 0.5 uA DAC step renders it as 100.0 (at the limit),
    # a 0.7 uA step as 100.1 (above it): refused, although the command itself was fine.
    command = train((-99.96, 20), (99.96, 20))
    assert abs(render(command, LIMITS, RATE, 0.5).pulse_ua).max() == 100.0
    with pytest.raises(SafetyViolation, match="amplitude"):
        render(command, LIMITS, RATE, 0.7)


def test_the_repetition_period_is_rounded_up_so_the_rate_never_exceeds_the_command() -> None:
    rendered = render(train((-50, 100), (50, 100), frequency_hz=30, count=2), LIMITS, RATE, 0.1)
    assert rendered.period_samples == 1667  # 1666.67 rounded up: 29.994 Hz
    assert RATE / rendered.period_samples <= 30


@given(
    chunks=st.lists(st.integers(1, 700), min_size=1, max_size=20),
    count=st.integers(1, 4),
)
@settings(max_examples=50, deadline=None)
def test_a_queue_hands_out_the_train_then_silence_however_it_is_split(chunks, count) -> None:
    rendered = render(train((-50, 100), (50, 100), frequency_hz=200, count=count), LIMITS, RATE, 1)
    queue = ChannelQueue()
    queue.trains.append(Train(1, rendered))
    out = np.concatenate([queue.take(n) for n in chunks])
    period = np.zeros(rendered.period_samples)
    period[: len(rendered.pulse_ua)] = rendered.pulse_ua
    expected = np.tile(period, count)[: rendered.total_samples]
    expected = np.concatenate([expected, np.zeros(max(0, len(out) - len(expected)))])
    np.testing.assert_array_equal(out, expected[: len(out)])


def rule(**kw) -> TriggerRule:
    fields = dict(
        name="r",
        stream="a/b",
        channel=0,
        threshold=-50.0,
        direction="falling",
        refractory_ms=10.0,
        stim_channel=0,
        phases=[Phase(-10, 100), Phase(10, 100)],
    )
    return TriggerRule(**(fields | kw))


def test_crossings_fire_once_per_crossing_and_respect_the_refractory_period() -> None:
    values = np.zeros(100)
    values[[10, 11, 12]] = -80  # one crossing, three samples beyond
    values[15] = -80  # within 10 ms at 1 kHz: refractory
    values[40] = -80  # fires
    detector = Detector(rule(), sample_rate=1000.0)
    assert detector.crossings(values, 1000) == [1010, 1040]


def test_rising_crossings() -> None:
    values = np.array([0, 60, 60, 0, 70.0])
    detector = Detector(rule(threshold=50.0, direction="rising", refractory_ms=0), 1000.0)
    assert detector.crossings(values, 0) == [1, 4]


@given(splits=st.lists(st.integers(1, 50), min_size=1, max_size=30), seed=st.integers(0, 99))
@settings(max_examples=60, deadline=None)
def test_crossings_do_not_depend_on_how_the_stream_is_chunked(splits, seed) -> None:
    values = np.random.default_rng(seed).normal(0, 40, 600)
    whole = Detector(rule(), 1000.0).crossings(values, 0)
    detector, found, start = Detector(rule(), 1000.0), [], 0
    for size in splits * 30:
        if start >= len(values):
            break
        found += detector.crossings(values[start : start + size], start)
        start += size
    found += detector.crossings(values[start:], start)
    assert found == whole
    assert all(b - a >= 10 for a, b in itertools.pairwise(whole))


def _crossings_by_definition(values: np.ndarray, threshold: float, refractory: int) -> list[int]:
    """A sample at or below ``threshold`` after one that was not (NaN is neither), the
    first sample never; then at least ``refractory`` frames after the last one fired."""
    fired: list[int] = []
    for i in range(1, len(values)):
        crossed = values[i] <= threshold and not values[i - 1] <= threshold
        if crossed and (not fired or i >= fired[-1] + refractory):
            fired.append(i)
    return fired


@given(
    runs=st.lists(st.tuples(st.integers(1, 150), st.booleans(), st.booleans()), max_size=40),
    splits=st.lists(st.integers(1, 120), min_size=1, max_size=20),
    refractory_ms=st.sampled_from([0.0, 5.0, 40.0]),
)
@settings(max_examples=150, deadline=None)
# a chunk that starts with a crossing, with a long stretch beyond and with a few samples
@example(runs=[(30, False, False), (100, True, False)], splits=[31, 100], refractory_ms=0.0)
@example(runs=[(30, False, False), (3, True, False)], splits=[31], refractory_ms=0.0)
def test_crossings_match_their_definition_for_short_and_long_runs_and_nan(
    runs, splits, refractory_ms
) -> None:
    """Runs of 1 to 150 samples beyond the threshold or not (a chunk with a few samples
    beyond takes one path, a long stretch beyond another), NaN runs, cut anywhere."""
    values = np.concatenate(
        [np.zeros(1)]
        + [np.full(n, np.nan if nan else (-80.0 if beyond else 0.0)) for n, beyond, nan in runs]
    ).astype(np.float32)
    refractory = int(np.ceil(refractory_ms))  # frames at 1 kHz
    detector, found, start = Detector(rule(refractory_ms=refractory_ms), 1000.0), [], 0
    for size in itertools.cycle(splits):
        if start >= len(values):
            break
        found += detector.crossings(values[start : start + size], start)
        start += size
    assert found == _crossings_by_definition(values, -50.0, refractory)


@pytest.mark.parametrize("view_bytes", [0, 1 << 30], ids=["view", "copy"])
def test_triggers_read_their_channel_through_the_ring_across_its_wrap_and_drops(
    stream, view_bytes, monkeypatch
) -> None:
    """Every crossing of a real ring's channel 2, with its frame's stamp, whatever the wrap
    of the ring; after the reader was lapped, the crossings that are still there. Read
    through a view (a backlog) and as a copy (a chunk or two)."""
    from pipeline.ring import RingWriter, attach
    from workers.stimulation import trigger
    from workers.stimulation.trigger import LiveRule, Triggers

    monkeypatch.setattr(trigger, "VIEW_BYTES", view_bytes)

    seen: list[tuple[int, float, int]] = []
    detached: list[str] = []
    with RingWriter(stream, "int16", (4,), 100, 1000.0) as writer:
        rendered = render(train((-10, 100), (10, 100)), LIMITS, RATE, 0.1)
        watch = LiveRule(rule(stream=stream, channel=2, refractory_ms=0.0), rendered)
        readers: list = []

        def open_reader(name: str):
            readers.append(attach(name))
            return readers[-1]

        triggers = Triggers([watch], open_reader, detached.append, lambda text: None)
        try:

            def publish(start: int, n: int, crossings: list[int]) -> None:
                frames = np.zeros((n, 4), "int16")
                frames[:, 3] = -100  # another channel beyond the threshold all along
                for at in crossings:
                    frames[at - start, 2] = -80
                writer.write(frames, 10_000 + np.arange(start, start + n, dtype=np.int64))

            triggers.poll(lambda w, seq, value, ns: seen.append((seq, value, ns)))  # nothing yet
            publish(0, 70, [5, 60])
            triggers.poll(lambda w, seq, value, ns: seen.append((seq, value, ns)))
            publish(70, 60, [90, 125])  # wraps the 100-frame ring at 100
            triggers.poll(lambda w, seq, value, ns: seen.append((seq, value, ns)))
            assert seen == [(s, -80.0, 10_000 + s) for s in (5, 60, 90, 125)]
            publish(130, 100, [140])  # laps the reader: 140 is overwritten...
            publish(230, 100, [])
            publish(330, 50, [360])  # ...360 is not
            triggers.poll(lambda w, seq, value, ns: seen.append((seq, value, ns)))
            assert seen[4:] == [(360, -80.0, 10_360)]
            assert readers[0].dropped_total == 150
        finally:
            for reader in readers:
                reader.close()
    assert not detached
