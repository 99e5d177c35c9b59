"""The live view's event pane: a repeated message collapses into one line with a time
range and a count, so it cannot push a crash off the pane."""

from __future__ import annotations

from collections import deque

from pipeline.cli.run import collapse

DISARMED = "worker stim: trigger spike0 at frame {} did not fire: disarmed"


def test_repeats_collapse_and_a_different_message_keeps_its_own_line() -> None:
    pane: deque[str] = deque(maxlen=8)
    for second, frame in enumerate([12, 99, 150]):
        collapse(pane, DISARMED.format(frame), f"10:00:0{second}")
    collapse(pane, "worker acq: restarted (restart 1, pid 5): exit code -9", "10:00:03")
    for second, frame in enumerate(range(200, 230), start=4):
        collapse(pane, DISARMED.format(frame), f"10:00:{second:02d}")
    assert list(pane) == [
        f"10:00:00-10:00:02 {DISARMED.format(150)} (x3)",
        "10:00:03 worker acq: restarted (restart 1, pid 5): exit code -9",
        f"10:00:04-10:00:33 {DISARMED.format(229)} (x30)",
    ]


def test_messages_that_differ_in_words_are_not_collapsed() -> None:
    pane: deque[str] = deque(maxlen=8)
    collapse(pane, "worker stim: armed (Arm request)", "10:00:00")
    collapse(pane, "worker stim: disarmed (Disarm request)", "10:00:01")
    assert len(pane) == 2
