"""Commands on recording files: ``rigpipe inspect PATH`` and ``rigpipe export PATH --nwb OUT.nwb``.

``export`` writes a recording as an NWB file, with a progress bar.

The bar redraws in place on a terminal; when stderr is a file or a pipe (a
batch job's log) it prints one line every 10 %, so the log shows how far a
long export got.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import msgspec
import numpy as np

from pipeline.host import clock

PATH_HELP = (
    "a recording directory, its manifest.json, or a segment; 'latest': the newest "
    "recording of the running rig (else under ./recordings)"
)


def recording_path(path: str) -> str:
    """``path``, or for ``latest`` the newest recording directory: under the running
    rig's recordings_dir, else ./recordings. FileNotFoundError saying where it looked."""
    if path != "latest":
        return path
    from pipeline.control import session
    from pipeline.errors import SessionNotFound
    from pipeline.recording.format import MANIFEST

    try:
        root = Path(session.find().recordings_dir)
    except SessionNotFound:
        root = Path("recordings")
    found = [d for d in root.glob("*") if (d / MANIFEST).is_file()] if root.is_dir() else []
    if not found:
        raise FileNotFoundError(f"no recording in {root} ('latest' looks there)")
    return str(max(found, key=lambda d: (d / MANIFEST).stat().st_mtime))


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    inspect = command(
        "inspect", _inspect, "summarize a recording and check that no frame is missing", False
    )
    inspect.add_argument("path", help=PATH_HELP)
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    export = command("export", run, "write a recording as an NWB file (needs pynwb)", False)
    add_arguments(export)


def add_arguments(export: argparse.ArgumentParser) -> None:
    export.add_argument("path", help=PATH_HELP)
    export.add_argument("--nwb", required=True, metavar="OUT.nwb", help="the NWB file to write")
    export.add_argument("--force", action="store_true", help="replace OUT.nwb if it exists")
    export.add_argument(
        "--block-s", type=float, default=10.0, help="seconds of data read and written at a time"
    )
    export.add_argument(
        "--gzip", action="store_true", help="compress the continuous data (smaller, slower)"
    )
    export.add_argument("--quiet", action="store_true", help="no progress display")
    export.add_argument(
        "--metadata",
        metavar="FILE.toml",
        help="subject, experimenter, institution... (DANDI needs a [subject]); see README",
    )


def run(args: argparse.Namespace) -> int:
    from pipeline.recording.nwb import export_nwb, read_metadata

    if args.block_s <= 0:
        print("rigpipe: --block-s must be positive", file=sys.stderr)
        return 2
    metadata = read_metadata(args.metadata) if args.metadata else None
    if metadata is None or metadata.subject is None:
        print(
            "rigpipe: note: no [subject] (--metadata FILE.toml): DANDI and nwbinspector "
            "require one",
            file=sys.stderr,
        )
    args.path = recording_path(args.path)
    bar = None if args.quiet else ProgressBar(sys.stderr)
    summary = export_nwb(
        args.path,
        args.nwb,
        block_s=args.block_s,
        overwrite=args.force,
        compression="gzip" if args.gzip else None,
        progress=bar,
        metadata=metadata,
    )
    if bar is not None:
        bar.finish()
    series = ", ".join(f"{name} ({frames} frames)" for name, frames in summary.series.items())
    events = ", ".join(f"{name} ({rows})" for name, rows in summary.events.items())
    print(
        f"wrote {summary.path}: {summary.bytes / 1e6:.1f} MB of samples in "
        f"{summary.seconds:.1f} s ({summary.mb_per_s:.0f} MB/s)"
    )
    print(f"  series: {series or 'none'}")
    print(
        f"  units: {summary.units}; events: {events or 'none'}; "
        f"invalid times (gaps): {summary.invalid_times}"
    )
    return 0


class ProgressBar:
    """``progress(done, total, what)`` drawn as a bar with rate and time left."""

    WIDTH = 30

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.live = out.isatty()
        self.started = clock.now_s()
        self.shown = -1  # the last tenth printed, off a terminal
        self.last = 0.0

    def __call__(self, done: int, total: int, what: str) -> None:
        fraction = done / total if total else 1.0
        now = clock.now_s()
        if self.live:
            if now - self.last < 0.1 and done < total:
                return
            self.last = now
            self.out.write("\r" + self.line(done, total, what, fraction, now))
            self.out.flush()
        elif int(fraction * 10) > self.shown:
            self.shown = int(fraction * 10)
            self.out.write(self.line(done, total, what, fraction, now) + "\n")
            self.out.flush()

    def line(self, done: int, total: int, what: str, fraction: float, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        left = (total - done) / rate if rate > 0 else float("inf")
        filled = round(fraction * self.WIDTH)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        eta = f"{left:5.0f} s left" if left != float("inf") else "      "
        return (
            f"[{bar}] {fraction * 100:5.1f} %  {done / 1e6:9.1f} / {total / 1e6:.1f} MB  "
            f"{rate / 1e6:6.1f} MB/s  {eta}  {what}"
        )

    def finish(self) -> None:
        if self.live:
            self.out.write("\n")
            self.out.flush()


def _inspect(args: argparse.Namespace) -> int:
    from pipeline.recording.summary import inspect, render

    try:
        args.path = recording_path(args.path)
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
