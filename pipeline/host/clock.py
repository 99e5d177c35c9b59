"""The host monotonic clock every rigpipe timestamp and timeout uses: :func:`now_ns`.

Ring timestamps, stimulation times, event stamps, heartbeats and every
deadline read this one clock, so stamps taken in different processes compare.
On Linux and macOS it is ``time.monotonic_ns`` (CLOCK_MONOTONIC, 1 ns
resolution). On Windows before Python 3.13 ``time.monotonic`` is
GetTickCount64, which advances in 15.6 ms steps: ring timestamps would repeat,
a stimulus would be stamped up to 15.6 ms off, and a 0.5 ms timeout would last
15 ms; there the clock is ``time.perf_counter_ns`` (QueryPerformanceCounter,
system-wide, so processes still agree). Python 3.13 made ``monotonic`` use it
too. Stdlib only: the ring may import it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def pick(platform: str = sys.platform, version: tuple[int, int] = sys.version_info[:2]) -> str:
    """The name of the ``time`` function that gives host monotonic ns here."""
    if platform == "win32" and version < (3, 13):
        return "perf_counter_ns"
    return "monotonic_ns"


#: Host monotonic nanoseconds (see the module docstring).
now_ns: Callable[[], int] = getattr(time, pick())


def now_s() -> float:
    """Host monotonic seconds, on the same clock as :func:`now_ns`."""
    return now_ns() / 1e9
