"""Closing a Windows console: the ordered stop instead of a kill.

When the user closes the console window ``rigpipe run`` runs in (or logs
off, or the machine shuts down), Windows sends CTRL_CLOSE_EVENT (LOGOFF,
SHUTDOWN) to every process attached to that console, the supervisor and each
worker, and terminates each one as soon as its handler returns, or about 5 s
after the event if the handler has not returned by then. Python's ``signal``
module sees only CTRL_C and CTRL_BREAK, so without a handler of its own the
recorder would not close its file and the STG would not stop.
:class:`ConsoleClose` registers a console control handler that asks for the
ordered stop and keeps the process alive until it is done (or the grace
runs out). Elsewhere it does nothing: a closed terminal is SIGHUP, and a
rig's processes end through the supervisor's usual stop.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from collections.abc import Callable
from typing import Any

CTRL_C_EVENT = 0
CTRL_BREAK_EVENT = 1
CTRL_CLOSE_EVENT = 2
CTRL_LOGOFF_EVENT = 5
CTRL_SHUTDOWN_EVENT = 6
#: The events that end the process, and the reason given for the stop.
CLOSE_EVENTS = {
    CTRL_CLOSE_EVENT: "console closed",
    CTRL_LOGOFF_EVENT: "user logging off",
    CTRL_SHUTDOWN_EVENT: "system shutting down",
}
#: How long a handler holds the process up: Windows kills it about 5 s after the event.
GRACE_S = 4.5

#: Seams: tests run the Windows path on Linux with a fake kernel32.
WINDOWS = sys.platform == "win32"
_HANDLER_ROUTINE = getattr(ctypes, "WINFUNCTYPE", ctypes.CFUNCTYPE)(ctypes.c_int, ctypes.c_uint32)


def _kernel32() -> Any:
    return ctypes.windll.kernel32  # type: ignore[attr-defined]  # Windows only


class ConsoleClose:
    """While installed, a console close (logoff, shutdown) calls ``on_close(reason)``
    and holds the process up to ``grace_s`` until :meth:`finished` is called.

    ``on_close`` runs on a thread Windows creates for the event, so it should
    only ask for the stop (set a flag); the main thread does the stopping and
    calls ``finished()`` when it is done. Ctrl-C and Ctrl-Break are left to
    Python's own handlers (SIGINT, SIGBREAK).
    """

    def __init__(
        self,
        on_close: Callable[[str], None],
        grace_s: float = GRACE_S,
        windows: bool | None = None,
        kernel32: Any = None,
    ) -> None:
        self._on_close = on_close
        self._grace_s = grace_s
        self._done = threading.Event()
        self.reason: str | None = None
        self.installed = False
        if not (WINDOWS if windows is None else windows):
            return
        self._kernel32 = kernel32 if kernel32 is not None else _kernel32()
        self._routine = _HANDLER_ROUTINE(self._handle)  # kept: Windows calls it later
        self.installed = bool(self._kernel32.SetConsoleCtrlHandler(self._routine, True))

    def _handle(self, event: int) -> int:
        reason = CLOSE_EVENTS.get(event)
        if reason is None:
            return 0  # not ours: the next handler (Python's, for Ctrl-C and Ctrl-Break)
        if self.reason is None:
            self.reason = reason
            self._on_close(reason)
        self._done.wait(self._grace_s)
        return 1

    def finished(self) -> None:
        """The ordered stop is done: a pending close may let the process go."""
        self._done.set()

    def remove(self) -> None:
        """Unregister the handler (after :meth:`finished`)."""
        self.finished()
        if self.installed:
            self._kernel32.SetConsoleCtrlHandler(self._routine, False)
            self.installed = False
