"""How finely this process can wait, and asking the OS for finer.

A timed wait ends on the OS's timer tick. On Linux and macOS that is well
under a millisecond; on Windows it is 15.6 ms unless the process asks for 1 ms
with ``timeBeginPeriod`` (winmm), which a worker that refills a stimulator's
queue or paces a source every millisecond must do. :func:`fine_timer` asks
(on Windows; elsewhere there is nothing to ask), and :func:`wake_period_s`
measures what a 1 ms sleep really takes, so a worker can refuse a buffer its
waits cannot keep filled.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any


def _winmm() -> Any:
    import ctypes

    return ctypes.WinDLL("winmm")  # type: ignore[attr-defined]  # Windows only


@contextlib.contextmanager
def fine_timer(
    windows: bool = sys.platform == "win32", winmm: Callable[[], Any] = _winmm
) -> Iterator[None]:
    """Within the block, timed waits wake within about 1 ms (``timeBeginPeriod(1)``)."""
    if not windows:
        yield
        return
    library = winmm()
    raised = library.timeBeginPeriod(1) == 0  # TIMERR_NOERROR
    try:
        yield
    finally:
        if raised:
            library.timeEndPeriod(1)


def wake_period_s(
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.perf_counter,
    rounds: int = 20,
) -> float:
    """How long ``sleep(0.001)`` takes here, the median of ``rounds`` (seconds)."""
    took = []
    for _ in range(rounds):
        start = clock()
        sleep(0.001)
        took.append(clock() - start)
    took.sort()
    return took[len(took) // 2]
