"""The ``rigpipe`` command.

rigpipe demo [--seconds S]      a writer process and a live readout, then a clean stop
rigpipe streams                 the streams on this machine and who writes them
rigpipe tail STREAM             live rate, lag, drops and the newest values of a stream
rigpipe sweep                   remove the shared memory of writers that died
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np

from pipeline import demo, segments
from pipeline.errors import EndOfStream, RigpipeError
from pipeline.layout import KIND_STREAM
from pipeline.ring import RingReader, attach


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except RigpipeError as exc:
        print(f"rigpipe: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rigpipe", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run a synthetic writer and read it live")
    demo.add_argument("--seconds", type=float, default=5.0, help="how long to run (default 5)")
    demo.add_argument("--channels", type=int, default=64, help="channels (default 64)")
    demo.add_argument("--rate", type=float, default=30000.0, help="sample rate, Hz (default 30000)")
    demo.add_argument("--stream", default="demo/acq/continuous", help="stream name")
    demo.set_defaults(handler=_demo)

    streams = sub.add_parser("streams", help="list the streams on this machine")
    streams.set_defaults(handler=_streams)

    tail = sub.add_parser("tail", help="follow a stream: rate, lag, drops, newest values")
    tail.add_argument("stream", help="stream name, e.g. demo/acq/continuous")
    tail.add_argument("--seconds", type=float, default=None, help="stop after this long")
    tail.add_argument("--channels", type=int, default=6, help="channels to show (default 6)")
    tail.set_defaults(handler=_tail)

    sweep = sub.add_parser("sweep", help="remove shared memory left by writers that died")
    sweep.set_defaults(handler=_sweep)
    return parser


def _streams(args: argparse.Namespace) -> int:
    found = segments.list_segments()
    if found is None:
        print("this platform cannot list shared memory; attach to a stream by name instead")
        return 0
    streams = [s for s in found if s.kind == KIND_STREAM and s.problem is None]
    if not streams:
        print("no streams on this machine; start one with `rigpipe demo`")
        return 0
    print(f"{'stream':40} {'gen':>4} {'writer':>8} {'alive':>5} {'rate Hz':>9} {'frames':>12}")
    for info in sorted(streams, key=lambda s: s.stream or ""):
        rate, cursor = "-", "-"
        try:
            with attach(info.stream or "") as reader:
                rate, cursor = f"{reader.sample_rate:g}", str(reader.write_cursor)
        except RigpipeError:
            pass  # closed or replaced between listing and attaching
        alive = "yes" if info.writer_alive else "no"
        pid = info.writer_pid
        print(f"{info.stream:40} {info.generation:>4} {pid:>8} {alive:>5} {rate:>9} {cursor:>12}")
    return 0


def _tail(args: argparse.Namespace) -> int:
    with attach(args.stream) as reader:
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


def _demo(args: argparse.Namespace) -> int:
    writer = demo.start(args.stream, args.channels, args.rate, args.seconds)
    try:
        with demo.attach_when_ready(args.stream, writer) as reader:
            print(f"demo: {args.channels} channels at {args.rate:g} Hz into {args.stream!r}")
            print(f"      attach from elsewhere with: rigpipe tail {args.stream}")
            _follow(reader, None, 6)
            written, dropped = reader.write_cursor, reader.dropped_total
        print(f"demo: {written} frames written, {dropped} dropped by this reader")
    finally:
        writer.join(10)
        if writer.is_alive():
            writer.terminate()
            writer.join(5)
    return 0 if writer.exitcode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
