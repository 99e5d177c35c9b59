"""What the LSL bridge's two worker kinds share: pylsl, formats and the clock.

pylsl (extra ``lsl``; its wheels carry liblsl) is imported here only (and by
``rigpipe lsl``), when a bridge worker starts; importing this module does not.
LSL timestamps are seconds of liblsl's ``local_clock()``; ring timestamps are
host ``CLOCK_MONOTONIC`` nanoseconds. On Linux the two are
the same clock (measured: they agree to microseconds), elsewhere they need not
be, so :class:`ClockMap` always converts, through an offset it measures by
reading both clocks back to back and keeping the tightest bracket.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline import extras
from pipeline.host import clock

#: numpy dtype -> pylsl channel format name (``cf_*``); anything else is sent as double.
FORMATS = {
    np.dtype(np.float32): "cf_float32",
    np.dtype(np.float64): "cf_double64",
    np.dtype(np.int16): "cf_int16",
    np.dtype(np.int32): "cf_int32",
    np.dtype(np.int8): "cf_int8",
    np.dtype(np.int64): "cf_int64",
}
#: pylsl channel format code -> numpy dtype of the ring an inlet fills (strings: see inlet).
DTYPES = {1: np.float32, 2: np.float64, 4: np.int32, 5: np.int16, 6: np.int8, 7: np.int64}
STRING_FORMAT = 3  # pylsl.cf_string


def pylsl() -> Any:
    """The pylsl module, or a one-line error saying how to get it."""
    return extras.require("lsl", "pylsl", "the LSL bridge")


class ClockMap:
    """Host monotonic ns <-> LSL ``local_clock()`` seconds."""

    def __init__(self, local_clock: Any) -> None:
        self._local_clock = local_clock
        self.offset_s = self.measure()

    def measure(self, rounds: int = 20) -> float:
        """``local_clock() - monotonic`` in seconds, from the tightest of ``rounds`` brackets."""
        best, offset = float("inf"), 0.0
        for _ in range(rounds):
            before = clock.now_ns()
            lsl = self._local_clock()
            after = clock.now_ns()
            if after - before < best:
                best, offset = after - before, lsl - (before + after) / 2e9
        return offset

    def to_lsl(self, host_ns: np.ndarray) -> np.ndarray:
        return np.asarray(host_ns, np.int64) / 1e9 + self.offset_s

    def to_host_ns(self, lsl_s: np.ndarray) -> np.ndarray:
        return np.round((np.asarray(lsl_s, np.float64) - self.offset_s) * 1e9).astype(np.int64)
