"""A thread asleep on a ring wakes for a ZeroMQ message (the Doorbell), with the futex
wait and with the portable poll, and still wakes for frames."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import zmq

from pipeline.control.doorbell import Doorbell
from pipeline.ring import RingWriter, attach
from pipeline.ring.wait import futex_available

STRATEGIES = ["poll", *(["futex"] if futex_available() else [])]


@pytest.fixture(params=STRATEGIES)
def ring(request, monkeypatch) -> Iterator[tuple[RingWriter, object]]:
    monkeypatch.setenv("RIGPIPE_WAIT", request.param)
    writer = RingWriter(f"bell{time.monotonic_ns()}/w/out", np.int16, 4, 1024, 1000.0)
    reader = attach(writer.stream)
    try:
        yield writer, reader
    finally:
        reader.close()
        writer.close()


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    context = zmq.Context.instance()
    inbox, outbox = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    address = f"inproc://bell{time.monotonic_ns()}"
    inbox.bind(address)
    outbox.connect(address)
    try:
        yield inbox, outbox
    finally:
        inbox.close(linger=0)
        outbox.close(linger=0)


def drain(sock: zmq.Socket) -> None:
    """What Worker.wait does before sleeping: nothing left to receive (checked with
    zmq.EVENTS, which also clears a descriptor signal that carried no message)."""
    assert not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN


def later(seconds: float, action) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(seconds), action()))
    thread.start()
    return thread


def test_a_message_wakes_a_sleeper_on_a_quiet_ring(ring, pair) -> None:
    _, reader = ring
    inbox, outbox = pair
    bell = Doorbell([inbox])
    try:
        for round_ in range(3):  # again and again: the bell re-arms after each drain
            drain(inbox)
            sender = later(0.1, lambda: outbox.send(b"wake"))
            started = time.monotonic()
            with bell.sleeping(reader.nudge) as rung:
                has_frames = reader.wait(10.0, rung)
            took = time.monotonic() - started
            sender.join()
            assert not has_frames and rung.is_set(), f"round {round_}"
            assert took < 5.0, f"round {round_}: slept {took:.1f} s through a message"
            assert inbox.recv(zmq.NOBLOCK) == b"wake"
    finally:
        bell.close()


def test_frames_still_wake_the_sleeper_and_a_quiet_bell_does_not(ring, pair) -> None:
    writer, reader = ring
    inbox, _ = pair
    bell = Doorbell([inbox])
    try:
        drain(inbox)
        writer_thread = later(0.1, lambda: writer.write(np.ones((3, 4), np.int16)))
        with bell.sleeping(reader.nudge) as rung:
            assert reader.wait(10.0, rung)
        writer_thread.join()
        assert not rung.is_set()
        assert reader.read(timeout_s=0).frames == 3
        started = time.monotonic()
        with bell.sleeping(reader.nudge) as rung:
            assert not reader.wait(0.2, rung)  # nothing came: the timeout ends it
        assert time.monotonic() - started >= 0.2
    finally:
        bell.close()


def test_a_closed_bell_stops_its_thread(pair) -> None:
    inbox, _ = pair
    bell = Doorbell([inbox])
    bell.close()
    assert not bell._thread.is_alive()
