"""``rigpipe run CONFIG``: the supervisor in the foreground, with the live status table.

On a terminal the table (workers, streams, rates, lags) is redrawn in place
with the last events below it, fitted to the terminal: every line is cut to
its width (a wrapped line would break the redraw) and, when the table is
taller than the terminal, the parts that matter least go first (counters,
then streams, then events) with a line saying how much is hidden. Otherwise
one line per event and a summary every 10 s. ``rigpipe status`` prints the
same table once, whole.

(rich's Live would do the redraw too; the project keeps its dependencies to
numpy, pyzmq, msgspec, psutil and h5py, and fitting lines is all it takes.)
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline import config
from pipeline.cli.init import EXAMPLES, example_text
from pipeline.cli.text import event_line
from pipeline.control import messages
from pipeline.control.messages import StatusReply
from pipeline.errors import RigpipeError
from pipeline.host import clock
from pipeline.host.output import Output, log_without_blocking


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    run = command("run", run_rig, "run a rig from a config file, in the foreground", False)
    run.add_argument("config", nargs="?", help="TOML config, e.g. configs/demo.toml")
    run.add_argument(
        "--example",
        choices=sorted(EXAMPLES),
        help="run an example rigpipe ships instead of a file (`rigpipe init` writes one out)",
    )
    run.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    run.add_argument("--check", action="store_true", help="validate the config and exit")


def run_rig(args: argparse.Namespace) -> int:
    from pipeline.supervisor.supervisor import Supervisor

    if (args.config is None) == (args.example is None):
        which = "both a config file and --example" if args.config else "no config"
        raise RigpipeError(
            f"{which}: name a config file (`rigpipe run rig.toml`) or an example "
            f"(`rigpipe run --example demo`; examples: {', '.join(sorted(EXAMPLES))})"
        )
    if args.example:
        rig = config.loads(example_text(args.example), f"<example {args.example}>")
        args.config = f"example {args.example}"
    else:
        rig = config.load(args.config)
    if args.check:
        workers = ", ".join(f"{p.name} ({p.config.kind})" for p in rig.workers)
        print(f"{args.config}: valid; session {rig.session.name!r}; workers: {workers}")
        return 0
    # Nothing the supervisor writes may hold up its loop: a terminal that stops reading
    # (Ctrl-S, a stalled SSH session, a Windows console in selection mode) only delays
    # the text (see pipeline.host.output).
    logs = log_without_blocking(
        sys.stderr, rig.session.log_level, "%(asctime)s %(name)s %(message)s"
    )
    screen = Output(sys.stdout, name="screen")
    display = _LiveTable(screen) if sys.stdout.isatty() and enable_vt() else _EventLog(screen)

    def on_event(event: messages.Message | str) -> None:
        display.event(event if isinstance(event, str) else event_line(event))

    supervisor = Supervisor(rig, on_event=on_event, on_tick=display.tick)
    try:
        code = supervisor.run(args.duration)
    finally:
        display.close(supervisor.status())
        screen.close()
        logs.close()
    return code


ENABLE_VIRTUAL_TERMINAL_PROCESSING = 0x0004
STD_OUTPUT_HANDLE = -11


def enable_vt(windows: bool = sys.platform == "win32", kernel32: Any = None) -> bool:
    """True where the terminal understands the table's escape codes.

    A legacy Windows console does only after ``SetConsoleMode`` turns on virtual
    terminal processing; where that fails, ``rigpipe run`` prints events line by line.
    """
    if not windows:
        return True
    import ctypes

    if kernel32 is None:
        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]  # Windows only
    handle = kernel32.GetStdHandle(STD_OUTPUT_HANDLE)
    mode = ctypes.c_uint32()
    if not kernel32.GetConsoleMode(handle, ctypes.byref(mode)):
        return False
    return bool(kernel32.SetConsoleMode(handle, mode.value | ENABLE_VIRTUAL_TERMINAL_PROCESSING))


def stalled(output: Output, reported: int) -> tuple[str, int]:
    """A line about the stalls of ``output`` since its ``stalls`` count was ``reported``,
    and the count now; "" when there was none."""
    if output.stalls == reported:
        return "", reported
    text = (
        f"the terminal did not read for {output.stalled_s:.1f} s in all "
        f"({output.frames_skipped} table redraw(s) skipped, {output.lines_dropped} line(s) "
        "dropped); the rig ran on (every worker's log is in the runtime directory)"
    )
    return text, output.stalls


class _EventLog:
    """Non-interactive output: one line per event, a status summary every 10 s."""

    def __init__(self, output: Output) -> None:
        self._output = output
        self._next = clock.now_s() + 10
        self._reported = 0

    def event(self, text: str) -> None:
        self._output.line(f"{time.strftime('%H:%M:%S')} {text}")

    def tick(self, status: messages.StatusReply) -> None:
        if self._output.wait_idle(0):
            text, self._reported = stalled(self._output, self._reported)
            if text:
                self.event(text)
        if clock.now_s() < self._next:
            return
        self._next = clock.now_s() + 10
        running = sum(w.state == "running" for w in status.workers)
        rates = ", ".join(f"{s.stream} {s.rate_hz:.0f} Hz" for s in status.streams)
        self.event(f"status: {running}/{len(status.workers)} workers running; {rates}")

    def close(self, final: messages.StatusReply) -> None:
        """Every event is already a line; say how the session ended."""
        states = ", ".join(f"{w.name} {w.state}" for w in final.workers)
        self.event(f"session {final.session} {final.state}: {states}")


class _LiveTable:
    """Interactive output: the status table redrawn in place, the last events below it."""

    def __init__(self, output: Output) -> None:
        self._output = output
        self._events: deque[str] = deque(maxlen=8)
        self._last: messages.StatusReply | None = None
        self._reported = 0

    def event(self, text: str) -> None:
        collapse(self._events, text.splitlines()[0], time.strftime("%H:%M:%S"))
        if self._last is not None:
            self.tick(self._last)

    def tick(self, status: messages.StatusReply) -> None:
        self._last = status
        if self._output.wait_idle(0):  # the terminal took the last frame: say what it missed
            text, self._reported = stalled(self._output, self._reported)
            if text:
                collapse(self._events, text, time.strftime("%H:%M:%S"))
        size = shutil.get_terminal_size()
        self._output.frame(fit(status, list(self._events), size.columns, size.lines))

    def close(self, final: messages.StatusReply) -> None:
        """Leave the table as the session ended (every worker stopped), events included:
        it stays on the screen, so nothing is printed again under it."""
        self.tick(final)


_NUMBERS = re.compile(r"\d+")
_REPEATED = re.compile(r"^(\S+?)(?:-(\S+))? (.*?)(?: \(x(\d+)\))?$")


def collapse(events: deque[str], text: str, now: str) -> None:
    """Add ``text`` (seen at ``now``) to the pane. A message the pane already holds,
    numbers aside (a frame number, a pid), takes that line's place at the bottom with a
    time range and a running count: one line per kind of message, so a rule that keeps
    not firing, interleaved with other events, cannot push a crash off the pane."""
    shape = _NUMBERS.sub("#", text)
    for index in range(len(events) - 1, -1, -1):
        match = _REPEATED.match(events[index])
        if match is None:
            continue
        first, _, previous, count = match.groups()
        if _NUMBERS.sub("#", previous) == shape:
            del events[index]
            events.append(f"{first}-{now} {text} (x{int(count or 1) + 1})")
            return
    events.append(f"{now} {text}")


def fit(status: StatusReply, events: list[str], columns: int, rows: int) -> list[str]:
    """The live view in ``rows - 1`` lines of at most ``columns - 1`` characters.

    What does not fit goes in this order: worker counters, stream rows, older
    events; the session line and the worker rows stay as long as they fit.
    """
    width, height = max(20, columns - 1), max(4, rows - 1)
    table = render(status, width)
    blank = [i for i, line in enumerate(table) if line == ""] + [len(table)] * 3
    workers, streams, counters = table[: blank[1]], table[blank[1] : blank[2]], table[blank[2] :]
    recent = ["", *events] if events else []
    tail = ["", "Ctrl-C stops the rig in order"]
    parts = [workers, streams, counters, recent, tail]
    hidden = 0
    for index in (2, 1, 3):  # counters, then streams (from the bottom), then the oldest events
        part = parts[index]
        while part and sum(map(len, parts)) + 1 > height:
            part.pop(1 if index == 3 and len(part) > 1 else -1)
            hidden += 1
        if len(part) == 1:  # a lone blank separator
            part.clear()
    lines = [*workers, *streams, *counters, *recent]
    if hidden:
        lines.append(f"({hidden} more lines: enlarge the terminal, or see rigpipe status)")
    lines = [*lines, *tail][:height]
    return [line if len(line) <= width else line[: width - 1] + "~" for line in lines]


# -- the status table ------------------------------------------------------------------------------
def duration(seconds: float) -> str:
    """``1:02:03`` for hours, ``2:03`` below an hour."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass(frozen=True)
class _Column:
    header: str
    keep: int  # when a row is too wide, the column with the lowest keep goes first
    right: bool = True
    width: int = 0  # at least; the values widen it


def _columns(columns: list[_Column], rows: list[list[str]], width: int | None) -> list[str]:
    """``rows`` under ``columns``' headers, two spaces apart; past ``width`` characters
    the columns that matter least are left out, never the last (a free-width one)."""
    widths = [
        max(c.width, len(c.header), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)
    ]
    shown = list(range(len(columns)))
    while width is not None and len(shown) > 2:
        if sum(widths[i] for i in shown) + 2 * (len(shown) - 1) <= width:
            break
        shown.remove(min(shown[:-1], key=lambda i: columns[i].keep))

    def line(cells: list[str]) -> str:
        parts = [
            cells[i].rjust(widths[i]) if columns[i].right else cells[i].ljust(widths[i])
            for i in shown
        ]
        parts[-1] = cells[shown[-1]]  # the last column is free width
        return "  ".join(parts).rstrip()

    return [line([c.header for c in columns]), *(line(row) for row in rows)]


#: Worker rows, the columns that matter most kept longest (name, state, restarts, beat).
_WORKERS = [
    _Column("worker", 9, right=False),
    _Column("kind", 3, right=False),
    _Column("state", 8, right=False),
    _Column("pid", 4),
    _Column("restarts", 7),
    _Column("uptime", 1),
    _Column("cpu %", 5),
    _Column("mem MB", 2),
    _Column("beat s", 6),
]
#: Stream rows: the readers' lag and drops (what a lab watches most) stay to the last.
_STREAMS = [
    _Column("stream", 9, right=False),
    _Column("writer", 2, right=False),
    _Column("gen", 3),
    _Column("rate Hz", 4),
    _Column("frames", 1),
    _Column("readers (lag, dropped)", 8, right=False),
]


def _kind(kind: str) -> str:
    """A worker kind as the table shows it: a module path by its last part, at most 13
    characters (every shipped kind whole), cut at the end, never at the start."""
    short = kind.rsplit(".", 1)[-1]
    return short if len(short) <= 13 else short[:12] + "~"


def render(status: StatusReply, width: int | None = None) -> list[str]:
    """The lines of the table: session, workers, streams, worker counters; a row wider
    than ``width`` loses its least useful columns first (None: every column)."""
    workers = []
    for w in status.workers:
        beat = "-" if w.heartbeat_age_s is None else f"{w.heartbeat_age_s:.1f}"
        workers.append(
            [
                w.name,
                _kind(w.kind),
                w.state,
                str(w.pid) if w.pid else "-",
                str(w.restarts),
                duration(w.uptime_s),
                f"{w.cpu_percent:.1f}",
                f"{w.rss_bytes / 1e6:.1f}",
                beat,
            ]
        )
    streams = []
    for s in status.streams:
        readers = ", ".join(f"{r.worker} ({r.lag}, {r.dropped})" for r in s.readers) or "-"
        writer = s.writer if s.writer_alive else f"{s.writer}!"
        streams.append(
            [s.stream, writer, str(s.generation), f"{s.rate_hz:.0f}", str(s.write_cursor), readers]
        )
    lines = [
        f"session {status.session}  {status.state}  up {duration(status.uptime_s)}"
        f"  bad messages {status.bad_messages}",
        "",
        *_columns(_WORKERS, workers, width),
        "",
        *_columns(_STREAMS, streams, width),
    ]
    noted = [w for w in status.workers if w.counters or w.note]
    if noted:
        lines.append("")
    for w in noted:
        shown = "  ".join(f"{k} {v:g}" for k, v in sorted(w.counters.items()))
        lines.append(f"{w.name}: {w.note + '  ' if w.note else ''}{shown}")
    return lines
