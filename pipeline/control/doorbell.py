"""Wake a thread sleeping on a ring when one of its ZeroMQ sockets has a message.

A worker's main thread waits for frames in a ring's futex (or the portable
poll) and for control messages on ZeroMQ sockets, and neither wait can hold
the other. Without help it would have to alternate short waits on each, that
is: poll. The :class:`Doorbell` is the help. Its thread watches the sockets'
notification descriptors (``zmq.FD``: readable whenever a socket's state may
have changed) with ``select``, but only while the main thread sleeps. When one
turns readable it sets :attr:`Doorbell.rung` and calls the sleeper's ``nudge``
(``RingReader.nudge``: a futex wake that leaves the ring alone), repeating the
nudge until the sleeper is up, so no race between "checked the event" and
"went to sleep" can lose it. The main thread then drains its sockets, which
resets the descriptors, and sleeps again.

ZeroMQ sockets are not thread-safe; this thread never touches one, it only
selects on their descriptors. ``select`` takes sockets on Windows and any
descriptor elsewhere; ``zmq.FD`` is a socket on Windows, so this is portable.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

import zmq

from pipeline.host import clock

#: How often the thread repeats its nudge until the sleeper is awake.
NUDGE_REPEAT_S = 0.0002
#: ...and for how long at most (a sleeper that never wakes is not the doorbell's to fix).
NUDGE_FOR_S = 0.05


class Doorbell:
    """Rings :attr:`rung` (and nudges the sleeper) when any socket in ``sockets`` has news."""

    def __init__(self, sockets: list[zmq.Socket]) -> None:
        self.rung = threading.Event()
        self._fds = [_fd(sock) for sock in sockets]
        self._armed = threading.Event()
        self._nudge: Callable[[], None] | None = None
        self._closing = False
        self._stop_in, self._stop_out = socket.socketpair()
        self._thread = threading.Thread(target=self._watch, name="doorbell", daemon=True)
        self._thread.start()

    def add(self, sock: zmq.Socket) -> None:
        """Watch ``sock`` too (from the next sleep on)."""
        self._fds = [*self._fds, _fd(sock)]
        self._stop_out.send(b"r")  # a select under way starts again with the new list

    @contextlib.contextmanager
    def sleeping(self, nudge: Callable[[], None]) -> Iterator[threading.Event]:
        """While the block sleeps, a message sets the event it gets and calls ``nudge``.

        The caller drained its sockets just before: received until nothing was
        left, or found ``zmq.EVENTS`` without ``POLLIN`` (ZeroMQ signals the
        descriptor only for a socket it has seen empty). Whatever arrives from
        here on rings.
        """
        self.rung.clear()
        self._nudge = nudge
        self._armed.set()
        try:
            yield self.rung
        finally:
            self._nudge = None

    def close(self) -> None:
        self._closing = True
        self._stop_out.send(b"x")
        self._armed.set()
        self._thread.join(2.0)
        self._stop_in.close()
        self._stop_out.close()

    def _watch(self) -> None:
        stop = self._stop_in
        while True:
            self._armed.wait()
            if self._closing:
                return
            readable, _, _ = select.select([*self._fds, stop.fileno()], [], [])
            if stop.fileno() in readable:
                stop.recv(4096)
                continue  # closing (checked above) or a new socket to watch
            nudge = self._nudge
            self._armed.clear()  # until the main thread, having drained, sleeps again
            if nudge is None:
                continue  # it is awake and will drain the socket itself
            self.rung.set()
            until = clock.now_s() + NUDGE_FOR_S
            while self._nudge is nudge and clock.now_s() < until:
                nudge()
                time.sleep(NUDGE_REPEAT_S)


def _fd(sock: zmq.Socket) -> int:
    """The descriptor that signals ``sock``'s events (``zmq.FD``: an int on every OS)."""
    return int(sock.getsockopt(zmq.FD))  # typed int | bytes: bytes only for string options
