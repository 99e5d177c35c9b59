"""``python -m tests.console_close run CONFIG``: ``rigpipe run`` as on a Windows console,
which the test then closes.

The supervisor's console control handler is registered with a fake kernel32
(the Windows path of :mod:`pipeline.host.console`, switched on). When the file
``$CONSOLE_CLOSE_RESULT.go`` appears, "Windows" calls the handler with
CTRL_CLOSE_EVENT from a thread of its own, as it does when the console window
is closed, and writes what the handler returned and how long it held the
process up to ``$CONSOLE_CLOSE_RESULT`` (JSON).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from pipeline import cli
from pipeline.host import console


class Kernel32:
    def __init__(self) -> None:
        self.routines: list = []

    def SetConsoleCtrlHandler(self, routine, add: bool) -> int:
        (self.routines.append if add else self.routines.remove)(routine)
        return 1


def close_console(kernel32: Kernel32, result: Path) -> None:
    go = result.with_suffix(".go")
    while not (go.exists() and kernel32.routines):
        time.sleep(0.02)
    routine = kernel32.routines[-1]
    start = time.monotonic()
    returned = routine(console.CTRL_CLOSE_EVENT)
    held = time.monotonic() - start
    written = result.with_suffix(".tmp")  # whole or absent: main() waits for it to exist
    written.write_text(json.dumps({"returned": returned, "held_s": held}))
    os.replace(written, result)


def main() -> int:
    kernel32 = Kernel32()
    console.WINDOWS = True
    console._kernel32 = lambda: kernel32
    result = Path(os.environ["CONSOLE_CLOSE_RESULT"])
    threading.Thread(target=close_console, args=(kernel32, result), daemon=True).start()
    code = cli.main(sys.argv[1:])
    deadline = time.monotonic() + 5
    while not result.exists() and time.monotonic() < deadline:  # the handler's last word
        time.sleep(0.02)
    return code


if __name__ == "__main__":
    sys.exit(main())
