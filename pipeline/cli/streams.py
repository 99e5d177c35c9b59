"""Commands about streams: list them, follow one, sweep what dead writers left."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import numpy as np

from pipeline import attach, extras
from pipeline.cli.control import request
from pipeline.control import messages, session
from pipeline.errors import EndOfStream, RigpipeError
from pipeline.host import clock
from pipeline.ring import RingReader, segments
from pipeline.ring.layout import KIND_STREAM


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    command("streams", _streams, "list the streams (of the running rig, else of this machine)")
    tail = command("tail", _tail, "follow a stream: rate, lag, drops, newest values")
    tail.add_argument(
        "stream", help="acq/continuous (in the running rig) or session/acq/continuous"
    )
    tail.add_argument("--seconds", type=float, default=None, help="stop after this long")
    tail.add_argument("--channels", type=int, default=6, help="channels to show (default 6)")
    command("sweep", _sweep, "remove shared memory left by writers that died", False)
    lsl = command("lsl", _lsl, "list the Lab Streaming Layer streams on the network", False)
    lsl.add_argument("--wait", type=float, default=1.0, help="seconds to listen (default 1)")


def _streams(args: argparse.Namespace) -> int:
    try:
        reply = request(args, messages.ListStreams())
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


def _lsl(args: argparse.Namespace) -> int:
    pylsl = extras.require("lsl", "pylsl", "rigpipe lsl")
    found = sorted(pylsl.resolve_streams(wait_time=args.wait), key=lambda i: i.name())
    if not found:
        print(f"no LSL streams seen in {args.wait:g} s")
        return 0
    print(f"{'':2}{'name':36} {'type':10} {'ch':>4} {'rate Hz':>9} {'host':16} source_id")
    for info in found:
        ours = "* " if info.source_id().startswith("rigpipe:") else "  "
        print(
            f"{ours}{info.name():36} {info.type():10} {info.channel_count():>4} "
            f"{info.nominal_srate():9g} {info.hostname():16} {info.source_id()}"
        )
    print("(* from a rigpipe rig)")
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
    end = None if seconds is None else clock.now_s() + seconds
    interactive = sys.stdout.isatty()
    frames = dropped = 0
    window_t, window_frames = clock.now_s(), 0
    while end is None or clock.now_s() < end:
        try:
            chunk = reader.read(timeout_s=0.5)
        except EndOfStream:
            print("\nstream closed by its writer" if interactive else "stream closed by its writer")
            return
        frames += chunk.frames
        window_frames += chunk.frames
        dropped += chunk.dropped
        now = clock.now_s()
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
    except NotImplementedError:  # macOS, Windows: no list of shared memory; ask the sessions
        streams = session.known_streams()
        print(
            f"this platform cannot list shared memory; checking the {len(streams)} stream(s) "
            "named by the sessions' discovery files"
        )
        removed = segments.sweep(streams=streams)
    print(f"removed {len(removed)} segment(s) left by writers that died" + (":" if removed else ""))
    for name in removed:
        print(f"  {name}")
    return 0
