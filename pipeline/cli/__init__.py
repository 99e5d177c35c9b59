"""The ``rigpipe`` command: one module per command group (run, control, streams, stim,
recordings).

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
rigpipe export PATH --nwb OUT.nwb     write a recording as an NWB file (pip install -e ".[nwb]")
rigpipe stop                          stop the running rig in order
rigpipe sweep                         remove the shared memory of writers that died
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable, Sequence

from pipeline.cli import control, init, recordings, run, stim, streams
from pipeline.errors import ConfigError, RigpipeError


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code = args.handler(args)
        sys.stdout.flush()  # inside the try: a reader that left is handled below
        return code
    except ConfigError as exc:
        print(f"rigpipe: config error: {exc}", file=sys.stderr)
        return 2
    except RigpipeError as exc:
        print(f"rigpipe: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # whoever read our output left (rigpipe status | head): nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # a file or socket we cannot use: say which, in one line
        if _reader_left(exc):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        if os.environ.get("RIGPIPE_DEBUG"):
            raise
        print(f"rigpipe: {exc} (RIGPIPE_DEBUG=1 shows where)", file=sys.stderr)
        return 1


def _reader_left(exc: OSError) -> bool:
    """True if ``exc`` says the reader of stdout left: Windows says EINVAL where POSIX
    says EPIPE (a write to a pipe whose reader closed it). Told apart from an EINVAL of
    something else by an empty write to stdout, which fails the same way (measured on
    python.org's 3.11: a second flush does not, the failed one dropped its buffer)."""
    if os.name != "nt" or exc.errno != errno.EINVAL:
        return False
    try:
        os.write(sys.stdout.fileno(), b"")
    except OSError:
        return True
    return False


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rigpipe",
        description="Run and observe a rigpipe rig.",
        epilog=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(
        name: str,
        handler: Callable[[argparse.Namespace], int],
        help: str,
        session_option: bool = True,
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        if session_option:
            p.add_argument("--session", help="which rig, when several run (default: the only one)")
            p.add_argument("--timeout", type=float, default=5.0, help="reply timeout, s")
        p.set_defaults(handler=handler)
        return p

    for group in (run, init, control, streams, recordings, stim):  # the order of rigpipe --help
        group.add_commands(command)
    return parser
