"""Events that repeat, recorded once a second with a count instead of every time.

A reader that keeps falling behind, or a decoder hammering a disarmed
stimulator, can send the same message several times a second for hours; in
the recording that drowns the rows that matter (a crash, a restart, an
annotation) and fills the NWB tables. Per kind of message ("the same but for
its numbers": a frame number, a channel, an amplitude), the first is recorded
at once; the ones that follow within ``quiet_s`` are counted and the last of
them is recorded with ``repeats`` (how many it stands for) and
``first_repeat_ns`` once ``quiet_s`` has passed, or at the recorder's next
flush if that comes first (:meth:`Repeats.release`: a flushed file then accounts
for every event read, so a restarted recorder resumes the event log exactly;
with ``flush_s`` under a second a flood makes a row per flush). Stimulation that
happened, state changes, annotations and restarts are never held back.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

#: The message kinds (their ``type``) that may be held back.
REPEATABLE = frozenset({"reported", "stimulation_refused"})
QUIET_S = 1.0
_NUMBERS = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


@dataclass
class Event:
    topic: str
    payload: dict[str, Any]
    time_ns: int  # wall clock when published
    monotonic_ns: int  # host monotonic when published
    sequence: int = -1  # its number in the session's event log (-1: the recorder's own)


@dataclass
class _Run:
    written_ns: int  # when the last row of this kind was written (monotonic)
    count: int = 0  # held back since
    first_ns: int = 0
    latest: Event | None = None


class Repeats:
    """Which events to record now; see the module docstring."""

    def __init__(self, quiet_s: float = QUIET_S) -> None:
        self.quiet_ns = int(quiet_s * 1e9)
        self._runs: dict[tuple[str, str], _Run] = {}

    def offer(self, event: Event) -> list[Event]:
        """The rows to record now that ``event`` arrived (it, or nothing if it is held)."""
        due = self.due(event.monotonic_ns)
        if event.payload.get("type") not in REPEATABLE:
            return [*due, event]
        key = (event.topic, _NUMBERS.sub("#", json.dumps(event.payload, sort_keys=True)))
        run = self._runs.get(key)
        if run is None:
            self._runs[key] = _Run(event.monotonic_ns)
            return [*due, event]
        if run.count == 0:
            run.first_ns = event.monotonic_ns
        run.count += 1
        run.latest = event
        return due

    def due(self, now_ns: int) -> list[Event]:
        """Held runs whose quiet time is over, as one row each; forgets quiet kinds."""
        rows = []
        for key, run in list(self._runs.items()):
            if now_ns - run.written_ns < self.quiet_ns:
                continue
            if run.latest is None:
                del self._runs[key]  # quiet for quiet_s: the next one is recorded at once
                continue
            rows.append(self._row(run))
            self._runs[key] = _Run(now_ns)
        return sorted(rows, key=lambda e: e.monotonic_ns)

    def release(self, now_ns: int) -> list[Event]:
        """Every held run as one row now, its kind still held back for ``quiet_s``: after
        this, every event offered so far is in a row that was returned (the recorder then
        knows which events its file holds, at each flush)."""
        rows = []
        for key, run in self._runs.items():
            if run.latest is not None:
                rows.append(self._row(run))
                self._runs[key] = _Run(now_ns)
        return sorted(rows, key=lambda e: e.monotonic_ns)

    @staticmethod
    def _row(run: _Run) -> Event:
        assert run.latest is not None
        latest = run.latest
        payload = {**latest.payload, "repeats": run.count, "first_repeat_ns": run.first_ns}
        return Event(latest.topic, payload, latest.time_ns, latest.monotonic_ns, latest.sequence)
