"""What the LSL outlet hands liblsl as a chunk's stamps."""

from __future__ import annotations

import numpy as np

from workers.lsl.outlet import _stamps


def test_evenly_spaced_frames_give_liblsl_the_last_stamp_alone() -> None:
    stamps = 1234.5 + np.arange(30) / 30000.0
    assert _stamps(stamps, 30000.0) == stamps[-1]


def test_uneven_frames_give_every_stamp() -> None:
    stamps = 1234.5 + np.arange(30) / 30000.0
    stamps[10] += 5e-6  # one frame 5 us off the sample clock: liblsl must not invent it
    assert _stamps(stamps, 30000.0) == stamps.tolist()
    assert (
        _stamps(1234.5 + np.arange(30) / 29000.0, 30000.0)
        == (1234.5 + np.arange(30) / 29000.0).tolist()
    )  # another rate than the stream says


def test_event_streams_and_single_frames_give_every_stamp() -> None:
    events = np.array([1.0, 1.25, 3.0])
    assert _stamps(events, 0.0) == events.tolist()  # irregular rate
    assert _stamps(np.array([7.0]), 30000.0) == [7.0]
