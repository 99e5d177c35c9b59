"""Output that never holds up the process writing it.

A terminal can stop reading at any moment: Ctrl-S, an SSH connection that
stalls, a Windows console in which someone has clicked to select text
(QuickEdit blocks every write to it), a pipe into a pager that nobody
scrolls. A write to it then blocks, and a supervisor blocked in a write
answers no request and no heartbeat: its workers took it for dead and the
recording ended. So the supervisor's live table, its event lines and the
logs of every rigpipe process go through an :class:`Output`: the caller puts
text in a bounded queue and returns at once; a thread of its own writes it
to the file descriptor and is the only one that ever waits.

What it cannot write in time it drops and counts, the least useful first:

- a *frame* (the whole live table, redrawn in place) replaces the one still
  waiting; only the newest is ever drawn (``frames_skipped``);
- *lines* (events, log records) queue up to ``max_lines``; past that the
  oldest waiting line goes (``lines_dropped``), and once the descriptor
  takes writes again a line says how many went.

``logging.handlers.QueueHandler`` with a ``QueueListener`` would move the
write to a thread too, but a full queue there raises into ``handleError``,
which writes a traceback to stderr: the very write that blocks. Hence this
small class, and :class:`OutputHandler` to send log records through it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import TextIO

#: Lines kept waiting while the descriptor does not take them (about 100 KB of text).
MAX_LINES = 1000
#: How long :meth:`Output.close` waits for what is queued to be written.
CLOSE_TIMEOUT_S = 2.0
#: A descriptor that answers EAGAIN is tried again after this long.
RETRY_S = 0.05
#: A write that waits this long counts as a stall of the reader (see Output.stalls).
STALL_S = 0.5


class Output:
    """Lines and in-place frames written to ``stream`` by a thread: callers never wait.

    ``stream`` is written through its file descriptor (so nothing waits in its
    Python buffer, which a writer blocked at exit would hold locked); a stream
    without one (pytest's capture) is written with ``write`` + ``flush``.
    """

    def __init__(self, stream: TextIO, max_lines: int = MAX_LINES, name: str = "output") -> None:
        self._stream = stream
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = None
        self._lines: deque[str] = deque()
        self._max_lines = max_lines
        self._frame: list[str] | None = None
        self._drawn = 0  # lines of the last frame written, for the cursor to go back up
        self._closed = False
        self._broken = False  # the reader went away (EPIPE): nothing more is written
        self._wake = threading.Condition()
        #: Lines dropped because the descriptor did not take them in time.
        self.lines_dropped = 0
        #: Frames replaced by a newer one before they could be drawn.
        self.frames_skipped = 0
        #: Writes that waited at least ``STALL_S`` for the descriptor, and their total wait.
        self.stalls = 0
        self.stalled_s = 0.0
        self._dropped_unreported = 0
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._drain, name=f"rigpipe-{name}", daemon=True)
        self._thread.start()

    # -- what callers use ----------------------------------------------------------------------
    def line(self, text: str) -> None:
        """Write ``text`` and a newline, after what is already queued."""
        with self._wake:
            if self._closed:
                return
            if len(self._lines) >= self._max_lines:
                self._lines.popleft()
                self.lines_dropped += 1
                self._dropped_unreported += 1
            self._lines.append(text)
            self._idle.clear()
            self._wake.notify()

    def frame(self, lines: list[str]) -> None:
        """Draw ``lines`` in place of the last frame (a terminal's live view)."""
        with self._wake:
            if self._closed:
                return
            if self._frame is not None:
                self.frames_skipped += 1
            self._frame = list(lines)
            self._idle.clear()
            self._wake.notify()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until everything queued is written; False if ``timeout_s`` passed first."""
        return self._idle.wait(timeout_s)

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> bool:
        """Write what is queued, waiting at most ``timeout_s``; nothing is taken after.

        False if the descriptor still did not take it: the process may exit
        anyway (the writing thread is a daemon; it holds no Python lock).
        """
        written = self.wait_idle(timeout_s)
        with self._wake:
            self._closed = True
            self._wake.notify()
        return written

    # -- the writing thread --------------------------------------------------------------------
    def _drain(self) -> None:
        while True:
            with self._wake:
                while not self._lines and self._frame is None and not self._closed:
                    self._idle.set()
                    self._wake.wait()
                if self._closed and not self._lines and self._frame is None:
                    self._idle.set()
                    return
                lines = list(self._lines)
                self._lines.clear()
                frame, self._frame = self._frame, None
                dropped, self._dropped_unreported = self._dropped_unreported, 0
            text = ""
            if dropped:
                text += f"({dropped} line(s) of output dropped: the terminal was not reading)\n"
            text += "".join(f"{line}\n" for line in lines)
            if frame is not None:
                text += self._compose(frame, bool(text))
            self._write(text)

    def _compose(self, frame: list[str], after_lines: bool) -> str:
        """The escape codes that redraw ``frame`` over the previous one."""
        up = f"\x1b[{self._drawn}F" if self._drawn and not after_lines else ""
        self._drawn = len(frame)
        return up + "".join(f"{line}\x1b[K\n" for line in frame) + "\x1b[J"

    def _write(self, text: str) -> None:
        if self._broken or not text:
            return
        data = text.encode(errors="replace")
        began = time.monotonic()
        try:
            if self._fd is None:
                self._stream.write(text)
                self._stream.flush()
                return
            while data:
                try:
                    written = os.write(self._fd, data)
                except BlockingIOError:  # a descriptor another program made non-blocking
                    time.sleep(RETRY_S)
                    continue
                data = data[written:]
        except (BrokenPipeError, ValueError):
            self._broken = True  # the reader left, or the stream was closed: stop writing
        except OSError:  # the descriptor refuses (EIO on a hung-up terminal): drop the text
            with self._wake:
                self.lines_dropped += data.count(b"\n")
        finally:
            waited = time.monotonic() - began
            if waited >= STALL_S:
                with self._wake:
                    self.stalls += 1
                    self.stalled_s += waited


class OutputHandler(logging.Handler):
    """A logging handler that writes each record through an :class:`Output`."""

    def __init__(self, output: Output, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.output = output

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.output.line(self.format(record))
        except Exception:
            self.handleError(record)


def log_without_blocking(stream: TextIO, level: str, fmt: str) -> Output:
    """Configure the root logger to write ``fmt`` records to ``stream`` through an Output."""
    output = Output(stream, name="log")
    handler = OutputHandler(output)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return output
