"""``rigpipe stim ...``: stimulation commands from the command line.

Each builds one request of :mod:`pipeline.messages` and prints the answer:
the command id when the stimulator accepted it, or the reason it refused
(exit code 1). The stimulator checks every command against the limits in its
config; nothing here can change those.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.cli.control import request
from pipeline.cli.text import reply_line
from pipeline.control import messages
from pipeline.errors import RigpipeError


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    stim = command("stim", run, "stimulate, silence, arm or disarm (safety-checked)")
    add_arguments(stim)


def run(args: argparse.Namespace) -> int:
    print(reply_line(request(args, request_for(args))))
    return 0


def add_arguments(stim: argparse.ArgumentParser) -> None:
    """The ``stim`` sub-commands."""
    stim.add_argument("--worker", default="stim", help="the stimulation worker (default: stim)")
    # --session, --timeout and --worker after the action too (`rigpipe stim arm --session
    # rig2`), as every other command takes them: SUPPRESS keeps the value given before it
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--session", default=argparse.SUPPRESS, help="which rig")
    after.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help="reply timeout, s")
    after.add_argument("--worker", default=argparse.SUPPRESS, help="the stimulation worker")
    actions = stim.add_subparsers(dest="action", required=True, metavar="ACTION")
    add_parser = functools.partial(actions.add_parser, parents=[after])
    pulse = add_parser(
        "pulse",
        help="a pulse train on one channel",
        description="Examples: rigpipe stim pulse 0 --biphasic 50:200 --frequency-hz 20 "
        "--count 10;  rigpipe stim pulse 0 --phase=-50:200 --phase=25:400",
    )
    pulse.add_argument("channel", type=int)
    shape = pulse.add_mutually_exclusive_group(required=True)
    shape.add_argument(
        "--biphasic",
        metavar="UA:US",
        help="symmetric biphasic pulse, cathodic first: amplitude uA, width us per phase",
    )
    shape.add_argument(
        "--phase",
        action="append",
        metavar="UA:US",
        help="one phase, signed amplitude uA and duration us, in order; repeat it. "
        "Write --phase=-50:200 (with '=') for a negative amplitude",
    )
    pulse.add_argument("--interphase-us", type=float, default=0.0)
    _repeat_arguments(pulse)
    wave = add_parser("waveform", help="an arbitrary waveform (uA samples) on one channel")
    wave.add_argument("channel", type=int)
    wave.add_argument("file", help=".npy, or text with one number (uA) per line or comma")
    wave.add_argument("--sample-rate-hz", type=float, default=50_000.0)
    _repeat_arguments(wave)
    # "stop" too, as it was called before: stop ends a process, silence a channel's output
    silence = add_parser("silence", aliases=["stop"], help="silence one channel, or every channel")
    silence.add_argument("channel", type=int, nargs="?", default=None)
    arm = add_parser("arm", help="allow stimulation; says which trigger rules go live")
    arm.add_argument(
        "--commands-only",
        action="store_true",
        help="allow commands (by hand, a decoder) but keep the config's trigger rules off",
    )
    add_parser("disarm", help="refuse stimulation and silence every channel")


def _repeat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frequency-hz", type=float, default=1.0, help="pulse repetition rate")
    parser.add_argument("--count", type=int, default=1, help="number of pulses")


def request_for(args: argparse.Namespace) -> messages.Message:
    """The request ``args`` describe."""
    worker = args.worker
    match args.action:
        case "pulse":
            return messages.PulseTrain(
                worker=worker,
                channel=args.channel,
                phases=_phases(args),
                interphase_us=args.interphase_us,
                frequency_hz=args.frequency_hz,
                count=args.count,
            )
        case "waveform":
            return messages.Waveform(
                worker=worker,
                channel=args.channel,
                samples_ua=_samples(Path(args.file)).tolist(),
                sample_rate_hz=args.sample_rate_hz,
                frequency_hz=args.frequency_hz,
                count=args.count,
            )
        case "silence" | "stop":
            return messages.StopStimulation(worker=worker, channel=args.channel)
        case "arm":
            return messages.Arm(worker=worker, rules=not args.commands_only)
        case _:
            return messages.Disarm(worker=worker)


def _phases(args: argparse.Namespace) -> list[messages.Phase]:
    if args.biphasic:
        amplitude, width = _phase(args.biphasic, "--biphasic")
        return [messages.Phase(-abs(amplitude), width), messages.Phase(abs(amplitude), width)]
    return [messages.Phase(*_phase(text, "--phase")) for text in args.phase]


def _phase(text: str, option: str) -> tuple[float, float]:
    try:
        amplitude, duration = (float(part) for part in text.split(":"))
    except ValueError:
        raise RigpipeError(
            f"{option} {text!r}: write AMPLITUDE_UA:DURATION_US, e.g. 50:200"
        ) from None
    return amplitude, duration


def _samples(path: Path) -> np.ndarray:
    try:
        if path.suffix == ".npy":
            samples = np.load(path)
        else:
            samples = np.array(path.read_text().replace(",", " ").split(), float)
    except (OSError, ValueError) as exc:
        raise RigpipeError(f"cannot read waveform {str(path)!r}: {exc}") from None
    if samples.ndim != 1 or not len(samples):
        raise RigpipeError(f"waveform {str(path)!r} must hold one row of samples (uA)")
    return samples.astype(float)
