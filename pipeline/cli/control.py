"""Commands that talk to the running rig: status, worker, set, record, annotate, stop."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable

import msgspec

from pipeline.cli.run import render
from pipeline.control import messages, session
from pipeline.control.bus import Client
from pipeline.errors import RequestFailed
from pipeline.host import clock


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    status = command("status", _status, "show workers, streams, rates and lags")
    status.add_argument("--json", action="store_true", help="print the status as JSON")

    annotate = command("annotate", _annotate, "broadcast a time-stamped comment")
    annotate.add_argument("text", nargs="+", help="the comment")

    worker = command(
        "worker", _worker, "start, stop or restart one worker (or kill it, to test a crash)"
    )
    worker.add_argument("action", choices=["start", "stop", "restart", "kill"])
    worker.add_argument("name", help="worker name from the config")

    setp = command("set", _set, "change a worker parameter while the rig runs")
    setp.add_argument("worker", help="worker name from the config")
    setp.add_argument("parameter", help="parameter name")
    setp.add_argument("value", help='new value (JSON: 20, 0.5, true, "text"; else a string)')

    record = command("record", _record, "start or stop recording while the rig runs")
    record.add_argument("action", choices=["start", "stop"])
    record.add_argument("--worker", help="the recording worker (default: the only one)")

    command("stop", _stop, "stop the running rig in order")


def request(args: argparse.Namespace, message: messages.Message) -> messages.Message:
    discovery = session.find(args.session)
    with Client(discovery.endpoints, args.timeout) as client:
        return client.request(message)


def _status(args: argparse.Namespace) -> int:
    reply = request(args, messages.Status())
    assert isinstance(reply, messages.StatusReply)
    if args.json:
        print(msgspec.json.encode(reply).decode())
    else:
        width = shutil.get_terminal_size().columns - 1 if sys.stdout.isatty() else None
        print("\n".join(render(reply, width)))
    return 0


def _annotate(args: argparse.Namespace) -> int:
    reply = request(args, messages.Annotate(text=" ".join(args.text)))
    print(getattr(reply, "detail", reply))
    return 0


def _worker(args: argparse.Namespace) -> int:
    if args.action == "kill":
        return _kill(args)
    kind = {
        "start": messages.StartWorker,
        "stop": messages.StopWorker,
        "restart": messages.RestartWorker,
    }[args.action]
    reply = request(args, kind(worker=args.name))
    print(getattr(reply, "detail", reply))
    return 0


def _kill(args: argparse.Namespace) -> int:
    """SIGKILL this rig's worker ``args.name`` (a crash, as a test of the recovery)."""
    status = request(args, messages.Status())
    assert isinstance(status, messages.StatusReply)
    found = {w.name: w for w in status.workers}
    worker = found.get(args.name)
    if worker is None:
        raise RequestFailed(f"no worker named {args.name!r}; workers: {', '.join(found)}")
    if not worker.pid:
        raise RequestFailed(f"{args.name} is {worker.state}: no process to kill")
    os.kill(worker.pid, getattr(signal, "SIGKILL", signal.SIGTERM))
    print(f"killed {args.name} (pid {worker.pid}); the supervisor restarts it per its policy")
    return 0


def _set(args: argparse.Namespace) -> int:
    try:
        value = msgspec.json.decode(args.value)
    except msgspec.DecodeError:
        value = args.value
    reply = request(
        args, messages.SetParameter(worker=args.worker, name=args.parameter, value=value)
    )
    print(getattr(reply, "detail", reply))
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
        note = next((w.note for w in status.workers if w.name == name), "")
        if note.startswith("recording to ") == on:  # already as asked: nothing to do
            print(f"{name}: already {note if on else 'stopped'}")
            return 0
        client.request(messages.SetParameter(worker=name, name="recording", value=on))
        # The recorder says where in its note, which reaches status with its next heartbeat.
        where, deadline = "", clock.now_s() + 3.0
        while on and not where and clock.now_s() < deadline:
            time.sleep(0.1)
            status = client.request(messages.Status())
            assert isinstance(status, messages.StatusReply)
            note = next((w.note for w in status.workers if w.name == name), "")
            where = note if note.startswith("recording to ") else ""
    print(f"{name}: recording {'started' if on else 'stopped'}" + (f", {where}" if where else ""))
    return 0


def _stop(args: argparse.Namespace) -> int:
    discovery = session.find(args.session)
    with Client(discovery.endpoints, args.timeout) as client:
        reply = client.request(messages.Shutdown())
    print(getattr(reply, "detail", reply))
    deadline = clock.now_s() + 60
    while discovery.alive and clock.now_s() < deadline:
        time.sleep(0.1)
    if discovery.alive:
        print(f"rigpipe: the supervisor (pid {discovery.pid}) is still stopping", file=sys.stderr)
        return 1
    print(f"session {discovery.session!r} stopped")
    return 0
