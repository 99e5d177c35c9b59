"""pipeline.host.output: text to a descriptor that stops reading never holds up the writer.

A real pipe is the stalled terminal: nobody reads it until the test says so.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from pipeline.host.output import STALL_S, Output, OutputHandler

PIPE_FILLER = "x" * (1 << 20)  # more than any pipe buffer: the writing thread blocks in it
END = "-- end of the test's output --"


@pytest.fixture
def pipe() -> Iterator[tuple[int, object]]:
    read_fd, write_fd = os.pipe()
    stream = os.fdopen(write_fd, "w")
    try:
        yield read_fd, stream
    finally:
        stream.close()
        os.close(read_fd)


def stall(output: Output) -> None:
    """Hand the writing thread more than the pipe holds, and wait until it is stuck in it."""
    output.line(PIPE_FILLER)
    deadline = time.monotonic() + 5
    while output._lines and time.monotonic() < deadline:  # taken off the queue: writing
        time.sleep(0.01)


def returns_while_stalled(action: Callable[[], None]) -> bool:
    """True if ``action`` returns within 5 s (it would never, blocked on the full pipe)."""
    done = threading.Event()
    thread = threading.Thread(target=lambda: (action(), done.set()), daemon=True)
    thread.start()
    return done.wait(5.0)


def read_all(read_fd: int, output: Output, until: str = "") -> str:
    """Read the pipe up to ``until`` (by default a last line queued here to mark the end).

    Plain blocking reads on a thread (``os.set_blocking`` on a pipe needs Python 3.12
    on Windows); a test that never sees the mark fails after 10 s.
    """
    if not until:
        output.line(END)
        until = f"{END}\n"
    chunks: list[bytes] = []

    def read() -> None:
        while until.encode() not in b"".join(chunks):
            chunks.append(os.read(read_fd, 1 << 20))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), f"the output never reached the pipe: {b''.join(chunks)[-200:]}"
    return b"".join(chunks).decode().replace(f"{END}\n", "")


def test_lines_and_frames_to_a_pipe_nobody_reads_return_at_once(pipe) -> None:
    read_fd, stream = pipe
    output = Output(stream, max_lines=10)
    stall(output)

    def burst() -> None:
        for i in range(50):
            output.line(f"event {i}")
        for i in range(20):
            output.frame([f"table {i}", "row"])

    assert returns_while_stalled(burst), "a write to a stalled pipe held up the caller"
    time.sleep(STALL_S + 0.1)
    assert output.lines_dropped == 40, "the oldest waiting lines go first, and are counted"
    assert output.frames_skipped == 19, "only the newest frame waits"

    text = read_all(read_fd, output, until="table 19\x1b[K\nrow\x1b[K\n\x1b[J")
    assert output.stalls >= 1 and output.stalled_s >= STALL_S
    after = text[len(PIPE_FILLER) + 1 :]
    assert after.startswith("(40 line(s) of output dropped: the terminal was not reading)\n")
    assert [f"event {i}" for i in range(40, 50)] == after.splitlines()[1:11]
    assert "table 19" in after and "table 18" not in after, "only the newest frame is drawn"
    assert output.close()


def test_a_frame_is_drawn_over_the_previous_one(pipe) -> None:
    read_fd, stream = pipe
    output = Output(stream)
    output.frame(["a", "b", "c"])
    assert output.wait_idle(5)
    output.frame(["d", "e"])
    assert output.wait_idle(5)
    text = read_all(read_fd, output)
    assert text == "a\x1b[K\nb\x1b[K\nc\x1b[K\n\x1b[J\x1b[3Fd\x1b[K\ne\x1b[K\n\x1b[J"
    output.close()


def test_close_gives_up_on_a_reader_that_never_reads(pipe) -> None:
    read_fd, stream = pipe
    output = Output(stream)
    stall(output)
    began = time.monotonic()
    assert output.close(timeout_s=0.3) is False
    assert time.monotonic() - began < 3
    output.line("after close")  # taken and ignored: nothing may raise into the caller
    # let the writing thread finish before the pipe closes (Windows serializes the two)
    read = 0
    while read < len(PIPE_FILLER) + 1:
        read += len(os.read(read_fd, 1 << 20))


def test_a_reader_that_left_ends_the_writing_quietly() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    with os.fdopen(write_fd, "w") as stream:
        output = Output(stream)
        output.line("nobody reads this")  # EPIPE in the thread, not in the caller
        assert output.close()
        output.line("nor this")


def test_log_records_go_through_without_blocking(pipe) -> None:
    read_fd, stream = pipe
    output = Output(stream, max_lines=5)
    log = logging.getLogger("rigpipe.test_output")
    handler = OutputHandler(output)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log.addHandler(handler)
    log.propagate = False
    try:
        stall(output)
        assert returns_while_stalled(lambda: [log.warning("record %d", i) for i in range(100)])
        text = read_all(read_fd, output, until="WARNING record 99\n")
    finally:
        log.removeHandler(handler)
        log.propagate = True
    assert text.splitlines()[-5:] == [f"WARNING record {i}" for i in range(95, 100)]
    output.close()
