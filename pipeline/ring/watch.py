"""Threshold watches: a reader asks the writer to wake it only for chunks that matter.

A reader that must see every threshold crossing on one channel at once (the
stimulation worker's trigger rules, a decoder waiting for a spike) would
otherwise wake for every chunk, a thousand times a second, to find nothing in
almost all of them; on a lab PC that is a fifth of a core per rule spent
looking at silence. With a watch, the writer looks instead: the data is
already in its cache, and one comparison over one column costs it a few
microseconds. The reader sleeps on the watch's own wake word and wakes when a
published chunk holds a sample at or beyond the threshold that follows one
that was not (a possible crossing), when the writer starts checking for it,
when the stream changes state, or when its own timeout passes.

A watch is only a wake-up: the reader still reads every frame from its own
cursor and decides for itself what crossed. A watch that is lost (its slot
taken by another reader in a race, a writer of another rigpipe version, a
writer that died) costs latency until the reader's next timeout, never a
crossing. Readers should therefore wait with a timeout well inside the ring's
capacity and read everything published when they wake.

The watch table lives in the stream segment (see :mod:`pipeline.ring.layout`),
so it outlives a reformat and a writer restarted by the supervisor. Each of
``WATCH_SLOTS`` slots is 64 bytes (one cache line) of int64 fields::

    0   token       random, nonzero: the reader that holds the slot (0: free)
    8   channel     flat index into a frame
    16  threshold   float64, in the stream's units
    24  direction   +1 rising (at or above), -1 falling (at or below)
    32  lease_ns    CLOCK_MONOTONIC ns until which the reader promises to be alive
    40  wake word   int32 word + int32 waiters flag (pipeline.ring.wait.WakeWord)
    48  flagged     chunks the writer woke this watch for
    56  adopted     the token the writer checks chunks for (0: not yet)

A reader claims a slot whose token is 0 or whose lease has run out, writes
its parameters, then the lease; the writer ignores a slot whose lease ran
out, so a reader that died stops costing anything within ``LEASE_S``. The
writer reads the table every ``SCAN_NS``, so a new claim is seen up to that
much later; when it starts checking chunks for a claim it writes the claim's
token into ``adopted`` and wakes the watch once (a chunk published before went
unchecked: the reader reads it now). Until then (:attr:`ThresholdWatch.live` is False) a
watch made by :meth:`pipeline.ring.RingReader.watch` waits on its ring
instead, waking for every chunk, so the first crossing after a claim is not
left to the reader's timeout. Two
readers claiming the same free slot at the same instant is possible (there is
no compare-and-swap from Python): the loser finds another's token at its next
:meth:`ThresholdWatch.keep` and claims again.
"""

from __future__ import annotations

import math
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from pipeline.errors import WatchesFull
from pipeline.host import clock
from pipeline.ring.wait import WakeWord, wait_any

if TYPE_CHECKING:
    from pipeline.ring.layout import StreamSegment

WATCH_AT = 1024  # offset of the table in the stream segment
WATCH_SLOTS = 8
SLOT_BYTES = 64
_TOKEN, _CHANNEL, _THRESHOLD, _DIRECTION, _LEASE, _WAKE, _FLAGGED, _ADOPTED = range(8)
_FIELDS_PER_SLOT = SLOT_BYTES // 8
LEASE_S = 2.0  # a reader renews its lease when half of it is left
SCAN_NS = 50_000_000  # how often a writer reads the table for new, changed or expired watches

Direction = Literal["rising", "falling"]


class _WatchSlots:
    """Typed views of one stream segment's watch table."""

    def __init__(self, meta: StreamSegment) -> None:
        buf = meta.segment.buf
        end = WATCH_AT + WATCH_SLOTS * SLOT_BYTES
        self.buf = buf
        self.ints = buf[WATCH_AT:end].cast("q")
        self.floats = buf[WATCH_AT:end].cast("d")

    def field(self, slot: int, field: int) -> int:
        return self.ints[slot * _FIELDS_PER_SLOT + field]

    def set(self, slot: int, field: int, value: int) -> None:
        self.ints[slot * _FIELDS_PER_SLOT + field] = value

    def threshold(self, slot: int) -> float:
        return self.floats[slot * _FIELDS_PER_SLOT + _THRESHOLD]

    def word(self, slot: int) -> WakeWord:
        return WakeWord(self.buf, WATCH_AT + slot * SLOT_BYTES + _WAKE * 8)

    def release(self) -> None:
        self.ints.release()
        self.floats.release()


class ThresholdWatch:
    """A reader's watch on one channel of a stream (see the module docstring).

    Made by :meth:`pipeline.ring.RingReader.watch`. :meth:`clear` before reading
    the ring, then wait (:meth:`wait`, or ``wait_any`` with rings and other
    watches); :meth:`keep` now and then (every wake does) renews the lease.
    """

    def __init__(
        self,
        stream: str,
        meta: StreamSegment,
        channel: int,
        threshold: float,
        direction: Direction = "rising",
        ring_word: Callable[[], tuple[WakeWord, int] | None] | None = None,
    ) -> None:
        """``ring_word``: the ring's ``wake_word``, waited on while the watch is not
        :attr:`live`."""
        if direction not in ("rising", "falling"):
            raise ValueError(f"direction must be 'rising' or 'falling', given {direction!r}")
        if not math.isfinite(threshold):
            raise ValueError(f"threshold must be a finite number, given {threshold!r}")
        self.stream = stream
        self.channel = channel
        self.threshold = float(threshold)
        self.direction: Direction = direction
        self.claims = 0  # how often a slot was claimed (more than 1: one was lost and taken back)
        self._table = _WatchSlots(meta)
        self._ring_word = ring_word
        self._token = 0
        self._slot = -1
        self._word: WakeWord | None = None
        self._seen = 0
        self._renew_at = 0.0
        self._closed = False
        self._claim()

    def _claim(self) -> None:
        table, now_ns = self._table, clock.now_ns()
        for slot in range(WATCH_SLOTS):
            if table.field(slot, _TOKEN) == 0 or table.field(slot, _LEASE) < now_ns:
                break
        else:
            raise WatchesFull(
                f"stream {self.stream!r} has no free threshold-watch slot ({WATCH_SLOTS} "
                "readers hold one); close watches that are no longer needed"
            )
        token = secrets.randbits(62) + 1
        table.set(slot, _LEASE, 0)  # the writer ignores the slot until it is filled in
        table.set(slot, _TOKEN, token)
        table.set(slot, _CHANNEL, self.channel)
        table.floats[slot * _FIELDS_PER_SLOT + _THRESHOLD] = self.threshold
        table.set(slot, _DIRECTION, 1 if self.direction == "rising" else -1)
        table.set(slot, _FLAGGED, 0)
        table.set(slot, _ADOPTED, 0)
        table.set(slot, _LEASE, now_ns + int(LEASE_S * 1e9))
        if self._word is not None:
            self._word.release()
        self._slot, self._token = slot, token
        self._word = table.word(slot)
        self._seen = self._word.load() - 1  # pending: whatever came before is read first
        self._renew_at = clock.now_s() + LEASE_S / 2
        self.claims += 1

    @property
    def flagged(self) -> int:
        """Chunks the writer woke this watch for (since it was last claimed)."""
        return self._table.field(self._slot, _FLAGGED) if self.held else 0

    @property
    def held(self) -> bool:
        """True while the slot is this watch's (another reader can have taken it in a race)."""
        return not self._closed and self._table.field(self._slot, _TOKEN) == self._token

    @property
    def live(self) -> bool:
        """True once the writer checks chunks for this watch. Until then (up to the
        writer's ``SCAN_NS`` after a claim; for good with a writer that cannot check it,
        such as a channel a reformat took away) a crossing wakes nobody, and
        :meth:`wait` waits for every chunk of the ring instead."""
        return self.held and self._table.field(self._slot, _ADOPTED) == self._token

    def keep(self) -> None:
        """Renew the lease when due; claim a slot again if this one was lost."""
        if self._closed:
            raise ValueError(f"the threshold watch on {self.stream!r} is closed")
        if not self.held:
            self._claim()
            return
        now = clock.now_s()
        if now >= self._renew_at:
            self._table.set(self._slot, _LEASE, clock.now_ns() + int(LEASE_S * 1e9))
            self._renew_at = now + LEASE_S / 2

    def pending(self) -> bool:
        """True if the writer flagged a chunk (or the stream changed) since :meth:`clear`."""
        assert self._word is not None
        return self._word.load() != self._seen

    def clear(self) -> None:
        """Take note of the flags so far; call it right before reading the ring."""
        assert self._word is not None
        self._seen = self._word.load()

    def wait(self, timeout_s: float | None, interrupt: threading.Event | None = None) -> bool:
        """Sleep until :meth:`pending` (True), ``timeout_s`` passes or ``interrupt`` is set.

        The lease is renewed while it sleeps: a wait longer than ``LEASE_S`` would
        otherwise let it run out, and a writer that takes the stream over meanwhile (a
        source restarting slowly) would never adopt the watch, which then slept until its
        timeout whatever the writer published.
        """
        deadline = None if timeout_s is None else clock.now_s() + max(timeout_s, 0.0)
        while True:
            self.keep()
            word = self.wake_word()
            if word is None:
                return True
            left = LEASE_S / 4 if deadline is None else min(LEASE_S / 4, deadline - clock.now_s())
            if left <= 0 or (interrupt is not None and interrupt.is_set()):
                return False
            if wait_any([word], left, interrupt):
                return True

    def nudge(self) -> None:
        """End a :meth:`wait` in another thread whose interrupt is set."""
        if self._word is not None:
            self._word.nudge()

    def wake_word(self) -> tuple[WakeWord, int] | None:
        """``(word, value to sleep on)``, or None if already pending (for ``wait_any``).
        While the watch is not :attr:`live`: its ring's word, which every chunk wakes."""
        word = self._word
        assert word is not None
        seen = self._seen
        if word.load() != seen:
            return None
        if self._ring_word is not None and not self.live:
            return self._ring_word()
        return word, seen

    def close(self) -> None:
        """Give the slot back (if still this watch's). Idempotent."""
        if self._closed:
            return
        if self.held:
            self._table.set(self._slot, _TOKEN, 0)
        self._closed = True
        if self._word is not None:
            self._word.release()
            self._word = None
        self._table.release()

    def __enter__(self) -> ThresholdWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<ThresholdWatch {self.stream!r} channel {self.channel} {self.direction} "
            f"{self.threshold:g}{'' if self.held else ' (not held)'}>"
        )


@dataclass
class _Active:
    """A live watch as the writer sees it."""

    table: _WatchSlots
    slot: int
    token: int
    channel: int
    threshold: float
    rising: bool
    word: WakeWord
    last_beyond: bool = False


class Watches:
    """The writer's side: which watches are live, and which chunks wake them."""

    def __init__(self) -> None:
        self.active: list[_Active] = []
        self._tables: list[_WatchSlots] = []
        self._frame_size = 0
        self.next_scan_ns = 0

    def bind(self, metas: list[StreamSegment], frame_size: int) -> None:
        """Watch the tables of ``metas`` (the stream segment and any orphans) for frames
        of ``frame_size`` values; the next publish rescans."""
        self.release()
        self._tables = [_WatchSlots(meta) for meta in metas]
        self._frame_size = frame_size
        self.next_scan_ns = 0

    def scan(self, now_ns: int) -> None:
        """Re-read the tables: new watches, changed ones, expired leases."""
        self.next_scan_ns = now_ns + SCAN_NS
        previous = {(id(w.table), w.slot, w.token): w for w in self.active}
        active = []
        for table in self._tables:
            for slot in range(WATCH_SLOTS):
                token = table.field(slot, _TOKEN)
                if token == 0 or table.field(slot, _LEASE) < now_ns:
                    continue
                channel = table.field(slot, _CHANNEL)
                if not 0 <= channel < self._frame_size:
                    continue  # a watch from before a reformat; its reader sees format_changed
                threshold, rising = table.threshold(slot), table.field(slot, _DIRECTION) > 0
                old = previous.pop((id(table), slot, token), None)
                if old is not None and (old.channel, old.threshold, old.rising) == (
                    channel,
                    threshold,
                    rising,
                ):
                    active.append(old)
                    continue
                if old is not None:
                    old.word.release()
                adopted = _Active(table, slot, token, channel, threshold, rising, table.word(slot))
                table.set(slot, _ADOPTED, token)
                # and wake it: a chunk published before now went unchecked and may be unread
                adopted.word.notify()
                active.append(adopted)
        for gone in previous.values():
            gone.word.release()
        self.active = active

    def check(self, frames: np.ndarray) -> None:
        """Wake each watch for which ``frames`` (just published) may hold a crossing."""
        flat = frames.reshape(len(frames), -1)
        for watch in self.active:
            column = flat[:, watch.channel]
            threshold = watch.threshold
            beyond = column >= threshold if watch.rising else column <= threshold
            if not beyond.any():
                watch.last_beyond = False
                continue
            # A crossing needs a sample beyond after one that was not: none if every
            # sample is beyond and the last one before them was too.
            possible = not watch.last_beyond or not beyond.all()
            watch.last_beyond = bool(beyond[-1])
            if possible:
                index = watch.slot * _FIELDS_PER_SLOT + _FLAGGED
                watch.table.ints[index] += 1
                watch.word.notify()

    def notify_all(self) -> None:
        """Wake every held watch, whatever its channel: the stream changed state (a new
        generation, the end)."""
        for table in self._tables:
            for slot in range(WATCH_SLOTS):
                if table.field(slot, _TOKEN):
                    word = table.word(slot)
                    word.notify()
                    word.release()

    def release(self) -> None:
        for watch in self.active:
            watch.word.release()
        self.active = []
        for table in self._tables:
            table.release()
        self._tables = []
