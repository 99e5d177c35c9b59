"""The supervisor's answers to the control plane: one handler per request, its docstring its spec.

:class:`Controller` is handed the running supervisor and its server socket; it
never imports the supervisor (the arrow points one way), it uses what the
supervisor offers: ``workers``, ``stopping``, ``status()``,
``stream_statuses()``, ``spawn()``, ``ask_to_stop()``, ``publish()``,
``request_stop()``, ``next_id()``. ``dispatch`` turns any exception into an
``Error`` reply, so nothing that arrives on a socket can stop the supervisor.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

import msgspec

from pipeline.control import messages
from pipeline.control.bus import Server
from pipeline.control.messages import Message
from pipeline.errors import ProtocolError
from pipeline.host import clock
from pipeline.supervisor.process import WorkerProcess, WorkerState


class Rig(Protocol):
    """What the controller uses of the running supervisor (its shape, not its class)."""

    name: str
    workers: dict[str, WorkerProcess]

    @property
    def stopping(self) -> bool: ...
    def status(self, request_id: int = 0) -> messages.StatusReply: ...
    def stream_statuses(self) -> list[messages.StreamStatus]: ...
    def spawn(self, worker: WorkerProcess) -> None: ...
    def ask_to_stop(self, worker: WorkerProcess, hold: bool) -> None: ...
    def publish(self, event: Message) -> int: ...
    def request_stop(self, reason: str) -> None: ...
    def next_id(self) -> int: ...
    def write_discovery(self) -> None: ...


log = logging.getLogger("rigpipe.supervisor")
FORWARD_TIMEOUT_S = 3.0


@dataclass
class _Forwarded:
    """A request passed on to a worker, waiting for its reply."""

    client: bytes
    request_id: int
    message: messages.WorkerRequest
    deadline: float


class Controller:
    """Answers what arrives on the supervisor's ROUTER socket."""

    def __init__(self, supervisor: Rig, server: Server) -> None:
        self.supervisor = supervisor
        self.server = server
        self.bad_messages = 0  # undecodable or unexpected messages, answered with Error
        self._forwarded: dict[int, _Forwarded] = {}

    def dispatch(self, peer: bytes, message: Message | ProtocolError) -> None:
        """Answer one message; any failure becomes an Error reply, never an exception."""
        if isinstance(message, ProtocolError):
            self.bad_messages += 1
            self.server.send(peer, messages.Error(text=str(message)))
            return
        request_id = getattr(message, "request_id", 0)
        try:
            reply = self.handle(peer, message)
        except Exception as exc:
            log.exception("handling %r", message)
            reply = messages.Error(request_id=request_id, text=f"internal error: {exc!r}")
        if reply is not None:
            self.server.send(peer, reply)

    def handle(self, peer: bytes, message: Message) -> Message | None:
        """The reply to ``message`` (None: no reply now, or none at all)."""
        match message:
            case messages.Heartbeat():
                return self.heartbeat(peer, message)
            case messages.Hello():
                return self.hello(peer, message)
            case messages.Status(request_id=rid):
                return self.supervisor.status(rid)
            case messages.ListStreams(request_id=rid):
                return messages.StreamsReply(
                    request_id=rid, streams=self.supervisor.stream_statuses()
                )
            case messages.StartWorker() | messages.StopWorker() | messages.RestartWorker():
                return self.worker_command(message)
            case messages.WorkerRequest():
                return self.forward(peer, message)
            case messages.Annotate():
                return self.annotate(message)
            case messages.Shutdown():
                return self.shutdown(message)
            case messages.Report():
                self.report(message)
                return None
            case messages.WorkerEvent():
                self.supervisor.publish(message)  # a worker's own event, published unchanged
                return None
            case messages.Ok() | messages.Error():
                self.worker_reply(message)
                return None
            case _:
                self.bad_messages += 1
                tag = type(message).__struct_config__.tag
                return messages.Error(
                    request_id=getattr(message, "request_id", 0),
                    text=f"{tag!r} is not a request the supervisor accepts",
                )

    # -- one handler per request -----------------------------------------------------------------
    def hello(self, peer: bytes, hello: messages.Hello) -> Message:
        """A worker or client introduces itself; refused if its protocol version differs.

        A worker's Hello (its name and pid match a process the supervisor
        started, or that process's child: a launcher stood in between) binds
        that worker to this socket peer.
        """
        if hello.protocol_version != messages.PROTOCOL_VERSION:
            self.bad_messages += 1
            return messages.Error(
                request_id=hello.request_id,
                text=f"protocol version {hello.protocol_version} is not supported; this "
                f"supervisor speaks {messages.PROTOCOL_VERSION}: install the same rigpipe",
            )
        worker = self.supervisor.workers.get(hello.worker)
        if worker is not None and (worker.pid == hello.pid or worker.adopt(hello.pid)):
            worker.identity = peer
            if hello.direct != worker.direct:
                worker.direct = hello.direct
                self.supervisor.write_discovery()
        return messages.Ok(request_id=hello.request_id, detail=f"session {self.supervisor.name}")

    def heartbeat(self, peer: bytes, beat: messages.Heartbeat) -> Message | None:
        """Record a worker's heartbeat (counters, readers, note) and acknowledge it.

        The first heartbeat that says ready marks a starting worker RUNNING. A
        heartbeat from an earlier process of the worker (one being killed) gets
        no acknowledgement, so nothing keeps it up; an unknown worker gets an Error.
        """
        worker = self.supervisor.workers.get(beat.worker)
        if worker is None:
            self.bad_messages += 1
            return messages.Error(text=f"no worker named {beat.worker!r} in this session")
        if worker.pid != beat.pid or not worker.alive:
            return None
        worker.identity = peer
        worker.last_heartbeat = clock.now_s()
        worker.counters = beat.counters
        worker.readers = beat.readers
        worker.note = beat.note
        if beat.ready and worker.state is WorkerState.STARTING:
            worker.state = WorkerState.RUNNING
            worker.ready_at = worker.last_heartbeat
            self.supervisor.publish(
                messages.WorkerStateChanged(worker=worker.name, state="running", pid=worker.pid)
            )
        return messages.HeartbeatAck()

    def worker_command(
        self, command: messages.StartWorker | messages.StopWorker | messages.RestartWorker
    ) -> Message:
        """Start, stop (and hold) or restart one worker by name.

        Start: a worker that is not running starts now (its failure count
        cleared); Stop: it is asked to stop and stays stopped until started;
        Restart: a running worker is stopped and started again, a stopped one
        started (counted as a restart). Refused for an unknown name (listing
        the workers) and while the session stops.
        """
        rid = command.request_id
        worker = self.supervisor.workers.get(command.worker)
        if worker is None:
            return self._no_such_worker(command.worker, rid)
        if self.supervisor.stopping:
            return messages.Error(request_id=rid, text="the session is stopping")
        match command:
            case messages.StartWorker():
                if worker.alive:
                    return messages.Error(request_id=rid, text=f"{worker.name} is already running")
                worker.held, worker.failures = False, 0
                self.supervisor.spawn(worker)
                return messages.Ok(request_id=rid, detail=f"starting {worker.name}")
            case messages.StopWorker():
                if not worker.alive:
                    worker.held, worker.state = True, WorkerState.STOPPED
                    return messages.Ok(request_id=rid, detail=f"{worker.name} is not running")
                self.supervisor.ask_to_stop(worker, hold=True)
                return messages.Ok(request_id=rid, detail=f"stopping {worker.name}")
            case _:
                if not worker.alive:
                    worker.held, worker.failures = False, 0
                    worker.restarts += 1
                    self.supervisor.spawn(worker)
                else:
                    self.supervisor.ask_to_stop(worker, hold=False)
                return messages.Ok(request_id=rid, detail=f"restarting {worker.name}")

    def forward(self, client: bytes, request: messages.WorkerRequest) -> Message | None:
        """Pass a request (a parameter change, a stimulation command) to its worker.

        The worker's answer is relayed to the client with the client's request
        id; no answer within ``FORWARD_TIMEOUT_S`` becomes an Error. Refused at
        once for an unknown worker or one that is not running.
        """
        rid = request.request_id
        worker = self.supervisor.workers.get(request.worker)
        if worker is None:
            return self._no_such_worker(request.worker, rid)
        if worker.state is not WorkerState.RUNNING or worker.identity is None:
            return messages.Error(
                request_id=rid, text=f"{worker.name} is {worker.state}, not running; try later"
            )
        forward_id = self.supervisor.next_id()
        forwarded = msgspec.structs.replace(request, request_id=forward_id)
        if not self.server.send(worker.identity, forwarded):
            return messages.Error(request_id=rid, text=f"{worker.name} is not reachable")
        self._forwarded[forward_id] = _Forwarded(
            client, rid, request, clock.now_s() + FORWARD_TIMEOUT_S
        )
        return None

    def annotate(self, request: messages.Annotate) -> Message:
        """Publish the text as an ``Annotation`` event, stamped with wall and monotonic time;
        the reply says its number in the session's event log."""
        sequence = self.supervisor.publish(
            messages.Annotation(
                text=request.text, time_ns=time.time_ns(), monotonic_ns=clock.now_ns()
            )
        )
        return messages.Logged(
            request_id=request.request_id,
            detail=f"annotation logged as event {sequence}",
            sequence=sequence,
        )

    def shutdown(self, request: messages.Shutdown) -> Message:
        """Begin the ordered stop of the whole session (what Ctrl-C does)."""
        self.supervisor.request_stop("shutdown requested")
        return messages.Ok(
            request_id=request.request_id, detail=f"stopping session {self.supervisor.name!r}"
        )

    def report(self, report: messages.Report) -> None:
        """A worker's report (a warning, an error) is published as ``Reported``; no reply."""
        self.supervisor.publish(
            messages.Reported(worker=report.worker, level=report.level, text=report.text)
        )

    def worker_reply(self, reply: messages.Ok | messages.Error) -> None:
        """A worker's answer to a forwarded request goes back to the client that asked.

        A successful SetParameter is also published as ``ParameterChanged``.
        The answer to a Stop, or one that came too late, is dropped.
        """
        pending = self._forwarded.pop(reply.request_id, None)
        if pending is None:
            return None
        self.server.send(
            pending.client, msgspec.structs.replace(reply, request_id=pending.request_id)
        )
        request = pending.message
        if isinstance(reply, messages.Ok) and isinstance(request, messages.SetParameter):
            self.supervisor.publish(
                messages.ParameterChanged(
                    worker=request.worker, name=request.name, value=request.value
                )
            )
        return None

    def expire_forwarded(self, now: float) -> None:
        """Answer Error for every forwarded request whose worker did not reply in time."""
        for forward_id, pending in list(self._forwarded.items()):
            if now >= pending.deadline:
                del self._forwarded[forward_id]
                self.server.send(
                    pending.client,
                    messages.Error(
                        request_id=pending.request_id,
                        text=f"{pending.message.worker} did not answer "
                        f"within {FORWARD_TIMEOUT_S:g} s",
                    ),
                )

    def _no_such_worker(self, name: str, request_id: int) -> messages.Error:
        names = ", ".join(self.supervisor.workers)
        return messages.Error(
            request_id=request_id, text=f"no worker named {name!r}; workers: {names}"
        )
