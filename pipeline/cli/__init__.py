"""The ``rigpipe`` command.

rigpipe run CONFIG [--duration S]     run a rig in the foreground, with a live status table
rigpipe status                        workers, streams, rates, lags of the running rig
rigpipe streams                       the running rig's streams (or every stream on the machine)
rigpipe tail STREAM                   live rate, lag, drops and the newest values of a stream
rigpipe annotate TEXT                 a time-stamped comment, broadcast to every listener
rigpipe worker start|stop|restart W   control one worker
rigpipe set WORKER PARAMETER VALUE    change a worker parameter while it runs
rigpipe record start|stop             start or stop recording while the rig runs
rigpipe stim pulse|waveform|stop|arm|disarm   safety-checked stimulation commands
rigpipe inspect PATH                  summarize a recording; non-zero exit if frames are missing
rigpipe export PATH --nwb OUT.nwb     write a recording as an NWB file (pip install 'rigpipe[nwb]')
rigpipe stop                          stop the running rig in order
rigpipe sweep                         remove the shared memory of writers that died
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import deque
from collections.abc import Sequence

import msgspec
import numpy as np

from pipeline import attach, config
from pipeline.cli import recordings as cli_export
from pipeline.cli import stim as cli_stim
from pipeline.cli import table
from pipeline.control import messages, session
from pipeline.control.bus import Client
from pipeline.errors import ConfigError, EndOfStream, RequestFailed, RigpipeError
from pipeline.ring import RingReader, segments
from pipeline.ring.layout import KIND_STREAM


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"rigpipe: config error: {exc}", file=sys.stderr)
        return 2
    except RigpipeError as exc:
        print(f"rigpipe: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rigpipe",
        description="Run and observe a rigpipe rig.",
        epilog=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, handler, help: str, session_option: bool = True):
        p = sub.add_parser(name, help=help, description=help)
        if session_option:
            p.add_argument("--session", help="which rig, when several run (default: the only one)")
            p.add_argument("--timeout", type=float, default=5.0, help="reply timeout, s")
        p.set_defaults(handler=handler)
        return p

    run = command("run", _run, "run a rig from a config file, in the foreground", False)
    run.add_argument("config", help="TOML config, e.g. configs/demo.toml")
    run.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    run.add_argument("--check", action="store_true", help="validate the config and exit")

    status = command("status", _status, "show workers, streams, rates and lags")
    status.add_argument("--json", action="store_true", help="print the status as JSON")

    command("streams", _streams, "list the streams (of the running rig, else of this machine)")

    tail = command("tail", _tail, "follow a stream: rate, lag, drops, newest values")
    tail.add_argument(
        "stream", help="acq/continuous (in the running rig) or session/acq/continuous"
    )
    tail.add_argument("--seconds", type=float, default=None, help="stop after this long")
    tail.add_argument("--channels", type=int, default=6, help="channels to show (default 6)")

    annotate = command("annotate", _annotate, "broadcast a time-stamped comment")
    annotate.add_argument("text", nargs="+", help="the comment")

    worker = command("worker", _worker, "start, stop or restart one worker")
    worker.add_argument("action", choices=["start", "stop", "restart"])
    worker.add_argument("name", help="worker name from the config")

    setp = command("set", _set, "change a worker parameter while the rig runs")
    setp.add_argument("worker", help="worker name from the config")
    setp.add_argument("parameter", help="parameter name")
    setp.add_argument("value", help='new value (JSON: 20, 0.5, true, "text"; else a string)')

    record = command("record", _record, "start or stop recording while the rig runs")
    record.add_argument("action", choices=["start", "stop"])
    record.add_argument("--worker", help="the recording worker (default: the only one)")

    inspect = command(
        "inspect", _inspect, "summarize a recording and check that no frame is missing", False
    )
    inspect.add_argument("path", help="a recording directory, its manifest.json, or a segment")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")

    export = command(
        "export", cli_export.run, "write a recording as an NWB file (needs pynwb)", False
    )
    cli_export.add_arguments(export)

    stim = command("stim", _stim, "stimulate, stop, arm or disarm (safety-checked)")
    cli_stim.add_arguments(stim)

    command("stop", _stop, "stop the running rig in order")
    command("sweep", _sweep, "remove shared memory left by writers that died", False)
    return parser


# -- run ------------------------------------------------------------------------------------------
def _run(args: argparse.Namespace) -> int:
    from pipeline.supervisor.supervisor import Supervisor

    rig = config.load(args.config)
    if args.check:
        workers = ", ".join(f"{p.name} ({p.config.kind})" for p in rig.workers)
        print(f"{args.config}: valid; session {rig.session.name!r}; workers: {workers}")
        return 0
    logging.basicConfig(
        level=rig.session.log_level.upper(), format="%(asctime)s %(name)s %(message)s"
    )
    display = _LiveTable() if sys.stdout.isatty() else _EventLog()
    supervisor = Supervisor(rig, on_event=display.event, on_tick=display.tick)
    code = supervisor.run(args.duration)
    display.close()
    return code


class _EventLog:
    """Non-interactive output: one line per event, a status summary every 10 s."""

    def __init__(self) -> None:
        self._next = time.monotonic() + 10

    def event(self, text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)

    def tick(self, status: messages.StatusReply) -> None:
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + 10
        running = sum(w.state == "running" for w in status.workers)
        rates = ", ".join(f"{s.stream} {s.rate_hz:.0f} Hz" for s in status.streams)
        self.event(f"status: {running}/{len(status.workers)} workers running; {rates}")

    def close(self) -> None:
        sys.stdout.flush()


class _LiveTable:
    """Interactive output: the status table redrawn in place, the last events below it."""

    def __init__(self) -> None:
        self._events: deque[str] = deque(maxlen=8)
        self._drawn = 0
        self._last: messages.StatusReply | None = None

    def event(self, text: str) -> None:
        self._events.append(f"{time.strftime('%H:%M:%S')} {text.splitlines()[0]}")
        if self._last is not None:
            self.tick(self._last)

    def tick(self, status: messages.StatusReply) -> None:
        self._last = status
        lines = [*table.render(status), "", *self._events, "", "Ctrl-C stops the rig in order"]
        up = f"\x1b[{self._drawn}F" if self._drawn else ""
        sys.stdout.write(up + "".join(line + "\x1b[K\n" for line in lines) + "\x1b[J")
        sys.stdout.flush()
        self._drawn = len(lines)

    def close(self) -> None:
        for text in list(self._events)[-3:]:
            print(text)


# -- talking to a running rig ---------------------------------------------------------------------
def _request(args: argparse.Namespace, message: messages.Message) -> messages.Message:
    discovery = session.find(args.session)
    with Client(discovery.endpoints, args.timeout) as client:
        return client.request(message)


def _status(args: argparse.Namespace) -> int:
    reply = _request(args, messages.Status())
    assert isinstance(reply, messages.StatusReply)
    if args.json:
        print(msgspec.json.encode(reply).decode())
    else:
        print("\n".join(table.render(reply)))
    return 0


def _annotate(args: argparse.Namespace) -> int:
    reply = _request(args, messages.Annotate(text=" ".join(args.text)))
    print(getattr(reply, "detail", reply))
    return 0


def _worker(args: argparse.Namespace) -> int:
    kind = {
        "start": messages.StartWorker,
        "stop": messages.StopWorker,
        "restart": messages.RestartWorker,
    }[args.action]
    reply = _request(args, kind(worker=args.name))
    print(getattr(reply, "detail", reply))
    return 0


def _set(args: argparse.Namespace) -> int:
    try:
        value = msgspec.json.decode(args.value)
    except msgspec.DecodeError:
        value = args.value
    reply = _request(
        args, messages.SetParameter(worker=args.worker, name=args.parameter, value=value)
    )
    print(getattr(reply, "detail", reply))
    return 0


def _stim(args: argparse.Namespace) -> int:
    print(cli_stim.describe(_request(args, cli_stim.request(args))))
    return 0


def _record(args: argparse.Namespace) -> int:
    discovery = session.find(args.session)
    with Client(discovery.endpoints, args.timeout) as client:
        status = client.request(messages.Status())
        assert isinstance(status, messages.StatusReply)
        recorders = [w.name for w in status.workers if w.kind.split(".")[-1] == "recording"]
        if args.worker:
            name = args.worker
        elif len(recorders) == 1:
            name = recorders[0]
        else:
            found = ", ".join(recorders) or "none"
            raise RequestFailed(f"choose the recording worker with --worker (recorders: {found})")
        on = args.action == "start"
        client.request(messages.SetParameter(worker=name, name="recording", value=on))
    print(f"{name}: recording {'started' if on else 'stopped'}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from pipeline.recording.inspect import inspect, render

    try:
        report = inspect(args.path)
    except (OSError, ValueError, KeyError) as exc:
        print(f"rigpipe: cannot inspect {args.path}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(msgspec.json.encode(report, enc_hook=_plain).decode())
    else:
        print("\n".join(render(report)))
    return 0 if report.ok else 1


def _plain(value: object) -> object:
    """JSON for numpy scalars and paths in an inspect report."""
    return value.item() if isinstance(value, np.generic) else str(value)


def _stop(args: argparse.Namespace) -> int:
    discovery = session.find(args.session)
    with Client(discovery.endpoints, args.timeout) as client:
        reply = client.request(messages.Shutdown())
    print(getattr(reply, "detail", reply))
    deadline = time.monotonic() + 60
    while discovery.alive and time.monotonic() < deadline:
        time.sleep(0.1)
    if discovery.alive:
        print(f"rigpipe: the supervisor (pid {discovery.pid}) is still stopping", file=sys.stderr)
        return 1
    print(f"session {discovery.session!r} stopped")
    return 0


def _streams(args: argparse.Namespace) -> int:
    try:
        reply = _request(args, messages.ListStreams())
    except RigpipeError as exc:
        if args.session:
            raise
        print(f"({exc}; listing every stream on this machine)")
        return _machine_streams()
    assert isinstance(reply, messages.StreamsReply)
    print(f"{'stream':40} {'gen':>4} {'writer':>10} {'rate Hz':>9} {'frames':>12}")
    for s in reply.streams:
        print(
            f"{s.stream:40} {s.generation:>4} {s.writer:>10} {s.rate_hz:9.0f} {s.write_cursor:>12}"
        )
    return 0


def _machine_streams() -> int:
    found = segments.list_segments()
    if found is None:
        print("this platform cannot list shared memory; attach to a stream by name instead")
        return 0
    streams = [s for s in found if s.kind == KIND_STREAM and s.problem is None]
    if not streams:
        print(f"no streams on this machine; {session.START_HINT}")
        return 0
    print(f"{'stream':40} {'gen':>4} {'writer':>8} {'alive':>5} {'rate Hz':>9} {'frames':>12}")
    for info in sorted(streams, key=lambda s: s.stream or ""):
        state = segments.stream_state(info.stream or "")
        rate = f"{state.sample_rate:g}" if state else "-"
        cursor = str(state.write_cursor) if state else "-"
        alive = "yes" if info.writer_alive else "no"
        pid = info.writer_pid
        print(f"{info.stream:40} {info.generation:>4} {pid:>8} {alive:>5} {rate:>9} {cursor:>12}")
    return 0


def _tail(args: argparse.Namespace) -> int:
    stream = session.resolve_stream(args.stream, args.session)
    with attach(stream) as reader:
        print(f"following {stream} (Ctrl-C to stop)")
        _follow(reader, args.seconds, args.channels)
    return 0


def _follow(reader: RingReader, seconds: float | None, channels: int) -> None:
    """Print one status line per half second until the stream ends or time is up."""
    end = None if seconds is None else time.monotonic() + seconds
    interactive = sys.stdout.isatty()
    frames = dropped = 0
    window_t, window_frames = time.monotonic(), 0
    while end is None or time.monotonic() < end:
        try:
            chunk = reader.read(timeout_s=0.5)
        except EndOfStream:
            print("\nstream closed by its writer" if interactive else "stream closed by its writer")
            return
        frames += chunk.frames
        window_frames += chunk.frames
        dropped += chunk.dropped
        now = time.monotonic()
        if now - window_t >= 0.5:
            rate = window_frames / (now - window_t)
            newest = _newest(chunk.data, channels)
            writer = "up" if reader.writer_alive else "DOWN"
            line = (
                f"gen {reader.generation}  {rate:9.0f} frames/s  total {frames}  "
                f"lag {reader.lag}  dropped {dropped}  writer {writer}  newest {newest}"
            )
            print("\r" + line + "\x1b[K" if interactive else line, end="" if interactive else "\n")
            sys.stdout.flush()
            window_t, window_frames = now, 0
    if interactive:
        print()


def _newest(data: np.ndarray, channels: int) -> str:
    if not len(data):
        return "-"
    last = data[-1]
    if last.dtype.names:
        return str(last)
    flat = np.ravel(last)
    more = " ..." if flat.size > channels else ""
    return "[" + " ".join(f"{v:g}" for v in flat[:channels]) + more + "]"


def _sweep(args: argparse.Namespace) -> int:
    try:
        removed = segments.sweep()
    except NotImplementedError as exc:
        print(f"rigpipe: {exc}", file=sys.stderr)
        return 1
    print(f"removed {len(removed)} segment(s) left by writers that died" + (":" if removed else ""))
    for name in removed:
        print(f"  {name}")
    return 0
