"""The recorder under every fault at once, refereed by an outside reader (bench/chaos.py):
every frame it saw, and every annotation and stimulus the rig acknowledged.

About a minute: every kind of fault once, in a fixed order, on a small rig. The
long form is ``python bench/chaos.py --seconds 3600`` (or ``pytest -m soak``).
"""

from __future__ import annotations

import pytest

from bench.chaos import FAULTS, run


@pytest.mark.posix  # its faults are SIGKILL, SIGSTOP and SIGCONT
def test_no_frame_or_event_is_lost_without_a_true_gap_row_under_every_fault() -> None:
    faults, verdict = run(
        seconds=50, seed=7, channels=32, quiet=True, first=tuple(FAULTS), pause_s=(1.5, 3.0)
    )
    dealt = {f.kind for f in faults}
    assert dealt >= set(FAULTS) - {"source-then-recorder x"} and len(faults) >= len(FAULTS) + 1
    assert verdict.seen > 30_000 * 30 and verdict.referee_dropped == 0
    assert verdict.unexplained == 0, verdict
    assert verdict.false_causes == [], verdict.false_causes
    assert verdict.inspect_problems == [], verdict.inspect_problems
    # Annotations and stimuli sent through every fault: each acknowledged one is recorded.
    assert verdict.events_sent["annotation"] > 50 and verdict.events_sent["stimulus"] > 30
    assert verdict.events_unexplained == [], verdict.events_unexplained
    # Each clean source restart is one gap row blaming the source, never the recorder.
    causes = [g["cause"] for g in verdict.gaps]
    assert sum(c.startswith("source restarted") for c in causes) >= 3, causes
    assert not any("skipped" in c for c in causes), causes
