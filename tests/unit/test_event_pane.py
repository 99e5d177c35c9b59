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
    assert list(pane) == [  # one line for the repeated message, moved below the other
        "10:00:03 worker acq: restarted (restart 1, pid 5): exit code -9",
        f"10:00:00-10:00:33 {DISARMED.format(229)} (x33)",
    ]


def test_messages_that_differ_in_words_are_not_collapsed() -> None:
    pane: deque[str] = deque(maxlen=8)
    collapse(pane, "worker stim: armed (Arm request)", "10:00:00")
    collapse(pane, "worker stim: disarmed (Disarm request)", "10:00:01")
    assert len(pane) == 2


def test_a_repeated_message_keeps_one_line_even_with_other_events_between() -> None:
    """A disarmed rule crossing once a second, interleaved with real events: one line
    for the rule with its running count, and every real event stays on the pane."""
    pane: deque[str] = deque(maxlen=8)
    real = [f"worker rec: recording started ({n})" for n in ("a", "b", "c", "d", "e")]
    for second in range(20):
        collapse(pane, DISARMED.format(100 + second), f"10:00:{second:02d}")
        if second % 4 == 0:
            collapse(pane, real[second // 4], f"10:00:{second:02d}")
    assert [line for line in pane if "did not fire" in line] == [
        f"10:00:00-10:00:19 {DISARMED.format(119)} (x20)"
    ]
    assert all(any(text in line for line in pane) for text in real)
