"""The blackrock source's clock and start-up checks, without a device."""

from __future__ import annotations

import numpy as np
import pytest

from workers.acquisition.blackrock import (
    REQUIRED_RMEM_MAX,
    DeviceClock,
    check_receive_buffer,
    receive_buffer_max,
)
from workers.acquisition.source import SourceError

PERIOD = 1e9 / 30000


def _batches(clock: DeviceClock, estimates: list[int], n: int = 30) -> np.ndarray:
    """Feed batches of ``n`` samples at 30 kHz, one SDK estimate each; the host ns of all."""
    out, first = [], 0
    for estimate in estimates:
        device = np.round((first + np.arange(n)) * PERIOD).astype(np.int64) + 10**15
        clock.update(int(device[-1]), estimate)
        out.append(clock.host_ns(device))
        first += n
    return np.concatenate(out)


def test_an_estimate_that_steps_is_followed_by_slewing_and_timestamps_stay_on_the_grid() -> None:
    clock = DeviceClock()
    estimates = [-(10**15)] * 5 + [-(10**15) + 720_000] * 400 + [-(10**15) + 629_000] * 100
    host = _batches(clock, estimates)
    steps = np.diff(host)
    assert steps.min() >= PERIOD * 0.995 - 1 and steps.max() <= PERIOD * 1.005 + 1
    assert clock.offset == -(10**15) + 629_000, "it arrives at the estimate"
    assert clock.steps == 0


def test_a_jump_beyond_step_ns_is_taken_at_once_and_counted() -> None:
    clock = DeviceClock(step_ns=50_000_000)
    host = _batches(clock, [0, 0, 2_000_000_000, 2_000_000_000])
    assert clock.steps == 1 and clock.offset == 2_000_000_000
    assert host[-1] - host[0] > 2e9


def test_a_batch_of_another_group_inside_the_line_is_interpolated() -> None:
    clock = DeviceClock()
    clock.update(1_000_000, 0)
    clock.update(2_000_000, 10_000)  # slewed: 0.5 % of 1 ms = 5 µs
    assert clock.offset == 5_000
    middle = clock.host_ns(np.array([1_500_000], np.int64))
    assert middle[0] == 1_502_500


def test_receive_buffer_check_names_the_fix(tmp_path) -> None:
    setting = tmp_path / "rmem_max"
    setting.write_text("4194304\n")
    assert receive_buffer_max(setting) == 4194304
    assert receive_buffer_max(tmp_path / "absent") is None
    with pytest.raises(SourceError, match=r"rmem_max is 4194304 bytes.*sysctl -w net.core"):
        check_receive_buffer(receive_buffer_max(setting))
    check_receive_buffer(REQUIRED_RMEM_MAX)
    check_receive_buffer(None)  # no such setting (macOS, Windows): nothing to check
