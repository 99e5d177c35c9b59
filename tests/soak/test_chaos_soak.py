"""The long chaos run (opt-in: ``pytest -m soak``; ``RIGPIPE_SOAK_S`` seconds, default 600)."""

from __future__ import annotations

import os

import pytest

from bench.chaos import report, run


@pytest.mark.soak
@pytest.mark.timeout(0)
def test_a_long_chaos_run_loses_nothing_unexplained() -> None:
    seconds = float(os.environ.get("RIGPIPE_SOAK_S", "600"))
    faults, verdict = run(
        seconds=seconds,
        seed=int(os.environ.get("RIGPIPE_SOAK_SEED", "1")),
        channels=256,
        quiet=True,
    )
    print("\n".join(report(faults, verdict, seconds)))
    assert verdict.ok and verdict.referee_dropped == 0, report(faults, verdict, seconds)
