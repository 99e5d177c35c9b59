"""Waiting without polling: a thread asleep on rings wakes for a frame on any of them
(``wait_any``: one futex_waitv, or the portable poll) and for a ZeroMQ message (the
Doorbell), and sleeps through to its timeout when nothing comes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import zmq

from pipeline.control.doorbell import Doorbell
from pipeline.host import clock
from pipeline.ring import RingWriter, attach, wait_any
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
        started = clock.now_s()  # the clock the wait keeps its deadline on (Windows:
        with bell.sleeping(reader.nudge) as rung:  # time.monotonic ticks in 15.6 ms)
            assert not reader.wait(0.2, rung)  # nothing came: the timeout ends it
        assert clock.now_s() - started >= 0.2
    finally:
        bell.close()


def test_a_frame_on_any_of_several_rings_wakes_the_sleeper(ring, monkeypatch) -> None:
    first_writer, first = ring
    others = [
        RingWriter(f"bell{time.monotonic_ns()}/w{i}/out", np.float32, 2, 256, 100.0)
        for i in range(2)
    ]
    readers = [first, *(attach(w.stream) for w in others)]
    try:
        for index, writer in enumerate([first_writer, *others]):
            rows = np.ones((2, *writer.frame_shape), writer.dtype)
            publisher = later(0.1, lambda writer=writer, rows=rows: writer.write(rows))
            started = time.monotonic()
            assert wait_any(readers, 10.0), f"ring {index}"
            assert time.monotonic() - started < 5.0
            publisher.join()
            assert [r.read(timeout_s=0).frames for r in readers] == [
                2 if i == index else 0 for i in range(3)
            ]
        started = clock.now_s()  # the clock wait_any times itself with (Windows:
        assert not wait_any(readers, 0.2)  # perf_counter, not the 15.6 ms monotonic)
        assert clock.now_s() - started >= 0.2 - 1e-6, "the timeout, not earlier, ends it"
        others[1].close()  # an end of stream is news too: the next read says which
        assert wait_any(readers, 10.0)
    finally:
        for reader in readers[1:]:
            reader.close()
        for writer in others:
            writer.close()


def test_a_closed_bell_stops_its_thread(pair) -> None:
    inbox, _ = pair
    bell = Doorbell([inbox])
    bell.close()
    assert not bell._thread.is_alive()
