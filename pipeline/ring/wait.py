"""Block a reader until the writer publishes, without spinning.

Each ring generation has two 32-bit words in shared memory:

- the *wake word*, which the writer increments after every publish and every
  state change (reformat, close);
- the *waiters flag*, which a reader sets to 1 before it goes to sleep.

Strategies (``RIGPIPE_WAIT`` = ``auto`` | ``futex`` | ``poll``):

``futex`` (Linux)
    The reader sleeps in ``futex(FUTEX_WAIT)`` on the wake word; the kernel
    compares the word with the value the reader last saw, so a publish between
    the reader's check and its sleep is never missed. The writer calls
    ``futex(FUTEX_WAKE)`` only when the waiters flag is set and clears it, so
    a writer nobody waits for makes no syscalls. Python has no memory fences,
    so a sleep is capped at ``FUTEX_SLICE_S``: if a store/load reordering ever
    hides the flag from the writer, the reader wakes by itself that much later
    instead of hanging.
``poll`` (every platform)
    The reader sleeps in short, growing intervals (``POLL_MIN_S`` up to
    ``POLL_MAX_S``) and re-reads the wake word. Slower to react, but portable;
    an idle poller wakes ``1 / POLL_MAX_S`` times a second.

``auto`` picks ``futex`` where the kernel offers it, else ``poll``. Either way a
reader first spins for ``SPIN_S`` (20 µs): when frames are flowing fast, the
next one is usually caught there and nobody makes a syscall. An idle reader
spins once per ``wait`` call, then sleeps.

:func:`wait_any` sleeps on several rings at once: one ``futex_waitv`` call
(Linux 5.16+) on every wake word, woken by whichever writer publishes first;
elsewhere the poll above, over every word.

A wait can also end early for something other than the ring: pass an
``interrupt`` event, and have whoever sets it call :meth:`WakeWord.nudge`
(a ``FUTEX_WAKE`` that leaves the word alone; other sleepers on the word wake,
find it unchanged and sleep again). A worker waits this way for its ring and
its control sockets at once (``pipeline.control.doorbell``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from pipeline.host import clock

SPIN_S = 20e-6
FUTEX_SLICE_S = 0.02
POLL_MIN_S = 50e-6
POLL_MAX_S = 10e-3

_FUTEX_WAIT = 0  # not FUTEX_PRIVATE_FLAG: the word is shared between processes
_FUTEX_WAKE = 1
_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "arm64": 98}.get(platform.machine())
_SYS_FUTEX_WAITV = {"x86_64": 449, "aarch64": 449, "arm64": 449}.get(platform.machine())
_FUTEX2_SIZE_U32 = 0x02  # and not FUTEX2_PRIVATE: shared between processes
_CLOCK_MONOTONIC = 1  # what clock.now_s() reads on Linux
_WAKE_ALL = 0x7FFFFFFF
STRATEGIES = ("auto", "futex", "poll")


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _FutexWaitv(ctypes.Structure):
    _fields_ = (
        ("val", ctypes.c_uint64),
        ("uaddr", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
    )


def _load_syscall() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux") or _SYS_FUTEX is None:
        return None
    syscall = ctypes.CDLL(None, use_errno=True).syscall
    syscall.restype = ctypes.c_long
    syscall.argtypes = (
        ctypes.c_long,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int,
    )
    return syscall


_syscall = _load_syscall()


def _probe_waitv() -> bool:
    """True if the kernel has futex_waitv (an empty call answers EINVAL, not ENOSYS)."""
    if _syscall is None or _SYS_FUTEX_WAITV is None:
        return False
    if _syscall(_SYS_FUTEX_WAITV, None, 0, 0, None, None, 0) == 0:
        return True
    return ctypes.get_errno() != errno.ENOSYS


_has_waitv = _probe_waitv()


def waitv_available() -> bool:
    """True where :func:`wait_any` sleeps in one ``futex_waitv`` call (Linux 5.16+)."""
    return _has_waitv


def futex_available() -> bool:
    """True where this process can use futex waits (Linux on x86-64 or arm64)."""
    return _syscall is not None


def strategy_from_env() -> str:
    """The wait strategy ``RIGPIPE_WAIT`` asks for, resolved (``futex`` or ``poll``)."""
    asked = os.environ.get("RIGPIPE_WAIT", "auto").strip().lower() or "auto"
    if asked not in STRATEGIES:
        raise ValueError(f"RIGPIPE_WAIT={asked!r} is not one of {', '.join(STRATEGIES)}")
    if asked == "auto":
        return "futex" if futex_available() else "poll"
    if asked == "futex" and not futex_available():
        raise ValueError(
            f"RIGPIPE_WAIT=futex, but futex is not available on {sys.platform}/"
            f"{platform.machine()}; use RIGPIPE_WAIT=poll or auto"
        )
    return asked


class WakeWord:
    """The wake word and waiters flag of one ring generation.

    They are two int32 words at ``offset`` in the shared buffer ``buf``; the
    owner calls ``release()`` before closing the segment.
    """

    __slots__ = ("_address", "_strategy", "_words")

    def __init__(self, buf: memoryview, offset: int, strategy: str | None = None) -> None:
        locator = np.frombuffer(buf, np.int32, 2, offset)
        self._address = locator.ctypes.data  # valid for as long as the mapping is
        del locator
        self._words = buf[offset : offset + 8].cast("i")
        self._strategy = strategy or strategy_from_env()

    def release(self) -> None:
        self._words.release()

    @property
    def strategy(self) -> str:
        return self._strategy

    def load(self) -> int:
        """The current value of the wake word."""
        return self._words[0]

    def notify(self) -> None:
        """Writer side: announce a publish or a state change, waking any sleeper."""
        words = self._words
        words[0] = (words[0] + 1) & _WAKE_ALL
        if words[1]:
            words[1] = 0
            if _syscall is not None:
                _syscall(_SYS_FUTEX, self._address, _FUTEX_WAKE, _WAKE_ALL, None, None, 0)

    def nudge(self) -> None:
        """Wake every sleeper on this word without changing it (see ``interrupt``).

        Safe from any thread, even after the mapping went away (the kernel then
        answers EFAULT, which is ignored)."""
        if _syscall is not None:
            _syscall(_SYS_FUTEX, self._address, _FUTEX_WAKE, _WAKE_ALL, None, None, 0)

    def wait(
        self,
        seen: int,
        timeout_s: float | None,
        interrupt: threading.Event | None = None,
        spin_s: float = SPIN_S,
    ) -> bool:
        """Reader side: sleep until the wake word differs from ``seen`` or the timeout passes.

        Returns True if the word changed. ``timeout_s=None`` waits until it does.
        A set ``interrupt`` ends the wait too (False); its setter calls :meth:`nudge`.
        ``spin_s``: how long to spin first (0: a reader that expects a pause).
        """
        deadline = None if timeout_s is None else clock.now_s() + max(timeout_s, 0.0)
        # A short spin first: a writer publishing at a high rate is caught here,
        # and neither side pays for a syscall.
        spin_until = time.perf_counter() + spin_s
        words = self._words
        while spin_s and time.perf_counter() < spin_until:
            if words[0] != seen:
                return True
        if self._strategy == "futex":
            return self._wait_futex(seen, deadline, interrupt)
        return self._wait_poll(seen, deadline, interrupt)

    def _wait_futex(
        self, seen: int, deadline: float | None, interrupt: threading.Event | None
    ) -> bool:
        words = self._words
        timespec = _Timespec()
        while True:
            if words[0] != seen:
                return True
            if interrupt is not None and interrupt.is_set():
                return False
            slice_s = FUTEX_SLICE_S
            if deadline is not None:
                slice_s = min(slice_s, deadline - clock.now_s())
                if slice_s <= 0:
                    return False
            timespec.tv_sec = int(slice_s)
            timespec.tv_nsec = int((slice_s - int(slice_s)) * 1e9)
            words[1] = 1
            # Returns 0 (woken), or -1 with EAGAIN (word already changed),
            # ETIMEDOUT or EINTR: the loop re-reads the word in every case.
            assert _syscall is not None  # the futex wait is chosen only where it loaded
            _syscall(_SYS_FUTEX, self._address, _FUTEX_WAIT, seen, ctypes.byref(timespec), None, 0)

    def _wait_poll(
        self, seen: int, deadline: float | None, interrupt: threading.Event | None
    ) -> bool:
        words = self._words
        return _poll(lambda: words[0] != seen, deadline, interrupt)


def _poll(
    changed: Callable[[], bool], deadline: float | None, interrupt: threading.Event | None
) -> bool:
    """The portable wait: look, then sleep ``POLL_MIN_S`` growing to ``POLL_MAX_S``, until
    ``changed()`` (True), the deadline or a set ``interrupt`` (False)."""
    interval = POLL_MIN_S
    while True:
        if changed():
            return True
        sleep_s = interval
        if deadline is not None:
            sleep_s = min(sleep_s, deadline - clock.now_s())
            if sleep_s <= 0:
                return False
        if interrupt is None:
            time.sleep(sleep_s)
        elif interrupt.wait(sleep_s):
            return False
        interval = min(interval * 2, POLL_MAX_S)


def wait_any(
    words: Sequence[tuple[WakeWord, int]],
    timeout_s: float | None,
    interrupt: threading.Event | None = None,
) -> bool:
    """Sleep until any ``(word, seen)`` pair's word differs from ``seen``, the timeout
    passes, or ``interrupt`` is set (its setter nudges any of the words). True if one
    changed. No spin: for readers that keep up and sleep between chunks.

    One ``futex_waitv`` call where the kernel has it and every word uses ``futex``;
    otherwise the growing-interval poll over every word.
    """
    if len(words) == 1:
        word, seen = words[0]
        return word.wait(seen, timeout_s, interrupt, spin_s=0.0)
    deadline = None if timeout_s is None else clock.now_s() + max(timeout_s, 0.0)
    if _has_waitv and all(word.strategy == "futex" for word, _ in words):
        return _waitv(words, deadline, interrupt)
    return _poll(lambda: any(word.load() != seen for word, seen in words), deadline, interrupt)


def _waitv(
    words: Sequence[tuple[WakeWord, int]], deadline: float | None, interrupt: threading.Event | None
) -> bool:
    waiters = (_FutexWaitv * len(words))()
    for waiter, (word, seen) in zip(waiters, words, strict=True):
        waiter.val, waiter.uaddr, waiter.flags = seen, word._address, _FUTEX2_SIZE_U32
    timespec = _Timespec()
    while True:
        if any(word.load() != seen for word, seen in words):
            return True
        if interrupt is not None and interrupt.is_set():
            return False
        until = clock.now_s() + FUTEX_SLICE_S  # absolute, on CLOCK_MONOTONIC
        if deadline is not None:
            if deadline <= clock.now_s():
                return False
            until = min(until, deadline)
        timespec.tv_sec = int(until)
        timespec.tv_nsec = int((until - int(until)) * 1e9)
        for word, _ in words:
            word._words[1] = 1  # the waiters flag: writers call FUTEX_WAKE only when set
        # 0+ (woken), or -1 with EAGAIN (a word already changed), ETIMEDOUT or EINTR:
        # the loop re-reads every word in each case.
        assert _syscall is not None  # futex_waitv is chosen only where it loaded
        _syscall(
            _SYS_FUTEX_WAITV,
            ctypes.byref(waiters),
            len(words),
            0,
            ctypes.byref(timespec),
            _CLOCK_MONOTONIC,
            0,
        )
