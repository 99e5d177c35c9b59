"""What runs a worker: its bus connection, heartbeats, requests, waiting and lifecycle.

:class:`Service` is the machinery behind :class:`~pipeline.worker.base.Worker`; a worker
kind never sees it. It needs only the worker's shape (:class:`Hooks`), not the class.
It connects to the supervisor, heartbeats (with the cursor of every reader, so
``rigpipe status`` shows lags), answers ``Stop`` and ``SetParameter``, forwards other
requests to the worker's ``on_request`` (also those on the worker's own socket and its
clients' command rings, :mod:`pipeline.control.direct`), and tells a slow supervisor
from a dead one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

import msgspec
import psutil
import zmq

from pipeline.control import messages
from pipeline.control.bus import Client, Router, direct_endpoint, load_keys
from pipeline.control.direct import CommandServer
from pipeline.control.doorbell import Doorbell
from pipeline.errors import RigpipeError
from pipeline.host import clock, scheduling
from pipeline.host.identity import process_alive
from pipeline.host.timer import fine_timer
from pipeline.ring import RingReader, RingWriter, ThresholdWatch, wait_any
from pipeline.settings import explain
from pipeline.worker.spec import EXIT_SUPERVISOR_GONE, WorkerSpec

#: The bus is polled at most this often by service() in a busy step loop; a worker
#: sleeping in wait() or wait_until() wakes the moment a message arrives.
SERVICE_INTERVAL_S = 0.005
#: wait_until() sleeps this long or less without watching the sockets (see there).
PACING_S = 0.002


class Hooks(Protocol):
    """The shape of a worker that the service runs (:class:`~pipeline.worker.base.Worker`)."""

    spec: WorkerSpec
    name: str
    log: logging.Logger
    settings: Any
    counters: dict[str, float]
    note: str
    settable: frozenset[str]
    service_interval_s: ClassVar[float]
    needs_fine_timer: ClassVar[bool]
    direct: ClassVar[bool]

    @classmethod
    def check(cls, settings: Any) -> None: ...
    def setup(self) -> None: ...
    def run(self) -> None: ...
    def teardown(self) -> None: ...
    def on_parameter(self, name: str, value: Any) -> None: ...
    def on_request(self, request: messages.WorkerRequest) -> messages.Message: ...


class Service:
    """Connects one worker to its supervisor and keeps it connected (see the module)."""

    def __init__(self, worker: Hooks) -> None:
        self.worker = worker
        self.spec = worker.spec
        self.log = worker.log
        self.readers: dict[str, RingReader] = {}
        self.writers: dict[RingWriter, int] = {}  # each writer -> relinks already reported
        self.stopping = False
        #: Why the worker stopped without being asked: its supervisor is gone ("" if not).
        self.supervisor_lost = ""
        self._ready = False
        self._bus: Client | None = None
        self._direct: Router | None = None
        self._commands: CommandServer | None = None
        self._doorbell: Doorbell | None = None
        self._zmq_poller: zmq.Poller | None = None
        self._next_heartbeat = 0.0
        self._next_service = 0.0
        self._last_ack = clock.now_s()
        self._silent_since: float | None = None  # the supervisor alive but not answering
        # The bus is used by one thread at a time: the keeper thread of _set_up while
        # setup() runs, the main thread always.
        self._bus_lock = threading.RLock()

    # -- what Worker's "call these" use -----------------------------------------------------------
    def send(self, message: messages.Message) -> None:
        """Send ``message`` to the supervisor (nothing before connecting)."""
        if self._bus is not None:
            with self._bus_lock:
                self._bus.send(message)

    def wait_until(self, deadline: float) -> None:
        """See :meth:`Worker.wait_until <pipeline.worker.base.Worker.wait_until>`."""
        if deadline - clock.now_s() > PACING_S or self._command_rings():
            self.wait((), deadline)
            return
        self.service()
        remaining = deadline - clock.now_s()
        if remaining > 0 and not self.stopping:
            time.sleep(remaining)

    def wait(
        self, readers: Sequence[RingReader | ThresholdWatch] = (), deadline: float | None = None
    ) -> bool:
        """See :meth:`Worker.wait <pipeline.worker.base.Worker.wait>`."""
        woke = False
        while not self.stopping:
            if any(reader.wait(0) for reader in readers):
                # Frames that woke this wait go to the caller at once: the bus is served
                # before the next sleep below (whenever a message waits or a heartbeat is
                # due). A reader with a backlog, which never sleeps, serves it here.
                if not woke:
                    self.service()  # at most every service_interval_s while frames flow
                return True
            rings = self._command_rings()
            if rings and wait_any(rings, 0):
                self._take_commands()
                continue
            now = clock.now_s()
            remaining = math.inf if deadline is None else deadline - now
            if remaining <= 0:
                self.service()
                return False
            sleep_s = max(0.0, min(remaining, self._next_heartbeat - now))
            watched = bool(readers or rings) or sleep_s > PACING_S
            if self._bus is not None:
                if not watched:
                    self.service()  # a short pacing sleep: the sockets wait for the next
                elif self._messages_waiting() or now >= self._next_heartbeat:
                    # Checked right before sleeping: a send since the last drain can have
                    # taken the sockets' descriptor signal for a message that came in.
                    self._serve_bus(now)
                    continue  # and look again: the replies just sent may have done so too
            if readers or rings:
                every = [*readers, *rings]
                with self._bell().sleeping(every[0].nudge) as rung:
                    wait_any(every, sleep_s, rung)
                woke = True
            elif watched and self._bus is not None:
                # the sockets' poll counts whole ms: the last ms is slept precisely below
                self._poller().poll(int(sleep_s * 1000) - 1)
            else:
                time.sleep(sleep_s)
        return False

    def service(self) -> None:
        """Heartbeat when due, handle waiting commands, notice a vanished supervisor."""
        now = clock.now_s()
        if self._bus is None or now < self._next_service:
            return  # a step loop at 1 kHz need not poll the socket 1000 times a second
        self._serve_bus(now)

    def lose_supervisor(self, why: str) -> None:
        """Stop because the supervisor is gone (``why``); the worker exits non-zero."""
        if not self.supervisor_lost:
            self.log.error("%s; stopping", why)
        self.supervisor_lost = self.supervisor_lost or why
        self.stopping = True

    # -- the sockets ------------------------------------------------------------------------------
    def _command_rings(self) -> list[RingReader]:
        return [] if self._commands is None else self._commands.readers

    def _take_commands(self) -> None:
        if self._commands is not None:
            self._commands.take()

    def _messages_waiting(self) -> bool:
        if self._bus is None:
            return False
        return self._bus.pending() or (self._direct is not None and self._direct.pending())

    def _sockets(self) -> list[zmq.Socket]:
        """The sockets messages for this worker arrive on: the bus, and its own (direct)."""
        assert self._bus is not None
        return [self._bus.socket, *([self._direct.socket] if self._direct is not None else [])]

    def _bell(self) -> Doorbell:
        if self._doorbell is None:
            self._doorbell = Doorbell(self._sockets())
        return self._doorbell

    def _poller(self) -> zmq.Poller:
        if self._zmq_poller is None:
            self._zmq_poller = zmq.Poller()
            for sock in self._sockets():
                self._zmq_poller.register(sock, zmq.POLLIN)
        return self._zmq_poller

    def _serve_bus(self, now: float) -> None:
        bus = self._bus
        assert bus is not None
        self._next_service = now + self.worker.service_interval_s
        with self._bus_lock:
            if now >= self._next_heartbeat:
                self._heartbeat()
                self._next_heartbeat = now + self.spec.heartbeat_interval_s
                self._check_supervisor(now)
            while (message := bus.receive(0)) is not None:
                self._handle(message)
            if self._commands is not None:
                self._commands.serve()

    # -- requests ---------------------------------------------------------------------------------
    def _answer(self, request: messages.WorkerRequest) -> messages.Message:
        try:
            reply = self.worker.on_request(request)
        except Exception as exc:  # nothing a client sends may kill the worker
            self.log.exception("request %r failed", request)
            reply = messages.Error(text=f"{self.worker.name} failed on the request: {exc!r}")
        return msgspec.structs.replace(reply, request_id=request.request_id)

    def _handle(self, message: messages.Message | None) -> None:
        match message:
            case None:
                return
            case messages.HeartbeatAck():
                self._acknowledged()
            case messages.Stop(request_id=request_id):
                self.log.info("asked to stop")
                self.stopping = True
                self._reply(messages.Ok(request_id=request_id, detail="stopping"))
            case messages.SetParameter(request_id=request_id, name=name, value=value):
                self._reply(self.set_parameter(request_id, name, value))
            case messages.WorkerRequest():
                self._reply(self._answer(message))
            case messages.Ok() | messages.Error():
                self._acknowledged()  # the answer to Hello
            case _:
                self._reply(messages.Error(text=f"a worker does not handle {type(message)}"))

    def set_parameter(self, request_id: int, name: str, value: Any) -> messages.Message:
        worker = self.worker
        if name not in worker.settable:
            settable = ", ".join(sorted(worker.settable)) or "none"
            return messages.Error(
                request_id=request_id,
                text=f"worker {worker.name!r} has no settable parameter {name!r}; "
                f"settable: {settable}",
            )
        fields = msgspec.to_builtins(worker.settings)
        fields[name] = value
        try:
            settings = msgspec.convert(fields, type(worker.settings), strict=True)
            type(worker).check(settings)
        except msgspec.ValidationError as exc:
            text = f"{worker.name}.{name} = {value!r} refused: {explain(exc)}"
            return messages.Error(request_id=request_id, text=text)
        except ValueError as exc:
            return messages.Error(request_id=request_id, text=f"{name} = {value!r} refused: {exc}")
        previous, worker.settings = worker.settings, settings
        try:
            worker.on_parameter(name, value)
        except (RigpipeError, ValueError) as exc:  # the worker could not act on it: say why
            worker.settings = previous
            return messages.Error(request_id=request_id, text=f"{name} = {value!r} failed: {exc}")
        self.log.info("parameter %s set to %r", name, value)
        return messages.Ok(request_id=request_id, detail=f"{worker.name}.{name} = {value!r}")

    def _reply(self, message: messages.Message) -> None:
        self.send(message)

    # -- heartbeat and the supervisor's life -----------------------------------------------------
    def _heartbeat(self) -> None:
        assert self._bus is not None
        self._report_relinks()
        if self._commands is not None:
            self._commands.drop_dead()
        readers = [
            messages.ReaderReport(stream=s, cursor=r.cursor, dropped=r.dropped_total)
            for s, r in list(self.readers.items())
        ]
        self._bus.send(
            messages.Heartbeat(
                worker=self.worker.name,
                pid=os.getpid(),
                ready=self._ready,
                counters=dict(self.worker.counters),
                readers=readers,
                note=self.worker.note,
            )
        )

    def _report_relinks(self) -> None:
        for writer, reported in list(self.writers.items()):
            if writer.relinks != reported:
                self.writers[writer] = writer.relinks
                self.worker.counters["relinks"] = sum(w.relinks for w in self.writers)
                self.report(writer.relink_reason)

    def report(self, text: str, level: str = "warning") -> None:
        """Publish ``text`` as a session event (and log it)."""
        self.log.log(logging.getLevelName(level.upper()), "%s", text)
        self.send(messages.Report(worker=self.worker.name, level=level, text=text))

    def _check_supervisor(self, now: float) -> None:
        """After ``heartbeat_timeout_s`` without a reply, ask the OS whether the supervisor
        still exists: a slow supervisor is not a dead one.

        While it exists (stopped, starved of CPU, blocked on a terminal that does not
        read) the worker works on: the source acquires, the recorder records; the stall
        is reported once the supervisor answers again. Only a supervisor that is gone
        (its pid and start time no longer a live process) ends the worker, with
        :data:`~pipeline.worker.spec.EXIT_SUPERVISOR_GONE`.
        """
        silent_s = now - self._last_ack
        if silent_s <= self.spec.heartbeat_timeout_s or self.stopping:
            return
        if self._supervisor_alive():
            if self._silent_since is None:
                self._silent_since = self._last_ack
                counters = self.worker.counters
                counters["supervisor_stalls"] = counters.get("supervisor_stalls", 0) + 1
                self.log.warning(
                    "no heartbeat reply from the supervisor for %.1f s, but it is alive "
                    "(pid %d): working on",
                    silent_s,
                    self.spec.supervisor_pid,
                )
            return
        self.lose_supervisor(
            f"the supervisor (pid {self.spec.supervisor_pid}) is gone: no heartbeat reply "
            f"for {silent_s:.1f} s and no such process"
        )

    def _supervisor_alive(self) -> bool:
        pid, start_ms = self.spec.supervisor_pid, self.spec.supervisor_start_ms
        if not start_ms:  # a spec written by hand: the pid is all there is
            return psutil.pid_exists(pid)
        return process_alive(pid, start_ms)

    def _acknowledged(self) -> None:
        """The supervisor answered: end a stall it had, and say how long it was."""
        now = clock.now_s()
        self._last_ack = now
        if self._silent_since is not None:
            self.report(
                f"the supervisor did not answer for {now - self._silent_since:.1f} s "
                "(it was alive: stopped or blocked); this worker kept working meanwhile"
            )
            self._silent_since = None

    # -- the process's life -----------------------------------------------------------------------
    def main(self, inherited_scheduling: str = "") -> int:
        """Connect, set up, run, tear down; the process exit code.

        ``inherited_scheduling``: the real-time policy this process inherited and
        dropped (:func:`pipeline.host.scheduling.drop_inherited`), reported once connected.
        """
        worker = self.worker
        identity = f"worker:{worker.name}:{os.getpid()}"
        endpoints = self.spec.endpoints
        self._bus = Client(endpoints, self.spec.heartbeat_timeout_s, identity)
        if worker.direct:
            direct = Router(direct_endpoint(endpoints, worker.name), load_keys(endpoints))
            self._direct = direct
            self._commands = CommandServer(
                self.spec.session, worker.name, direct, self._answer, worker.counters, self.log
            )
        self._last_ack = clock.now_s()
        endpoint = "" if self._direct is None else self._direct.endpoint
        self._bus.send(messages.Hello(worker=worker.name, pid=os.getpid(), direct=endpoint))
        answer = self._bus.receive(self.spec.heartbeat_timeout_s)
        if isinstance(answer, messages.Error):
            self.log.error("the supervisor refused this worker: %s", answer.text)
            self._close_sockets()
            return 1
        if inherited_scheduling:
            self.report(
                f"dropped {inherited_scheduling}, inherited from the process that started "
                "the supervisor: a worker runs real-time only as its [[workers]] table's "
                "realtime_priority asks, once set up"
            )
        timer = fine_timer() if worker.needs_fine_timer else contextlib.nullcontext()
        with timer:
            return self._live()

    def _live(self) -> int:
        """Set up, run, tear down; the exit code."""
        assert self._bus is not None
        code = 0
        try:
            self._set_up()
            self._go_realtime()
            self._ready = True
            self._next_heartbeat = self._next_service = 0.0
            self.service()
            self.worker.run()
        except RigpipeError as exc:
            self.log.error("%s", exc)
            self.report(f"failed: {exc}", "error")
            code = 1
        except Exception:
            self.log.exception("worker %s failed", self.worker.name)
            code = 1
        finally:
            try:
                self.worker.teardown()
            finally:
                for reader in self.readers.values():
                    reader.close()
                if self._commands is not None:
                    self._commands.close()
                self._close_sockets()
        if self.supervisor_lost and code == 0:
            self.log.error("exiting with code %d: %s", EXIT_SUPERVISOR_GONE, self.supervisor_lost)
            code = EXIT_SUPERVISOR_GONE
        return code

    def _close_sockets(self) -> None:
        if self._doorbell is not None:
            self._doorbell.close()
        if self._direct is not None:
            self._direct.close()
        if self._bus is not None:
            self._bus.close()

    def _set_up(self) -> None:
        """Run setup() while a thread keeps heartbeating (not ready) and answering.

        Opening a device can block for seconds (a Blackrock ``Session()`` takes
        2-3 s on a slow device). Without heartbeats meanwhile, the supervisor's
        replies would seem to have stopped and the worker would take the
        supervisor for gone the moment setup() returned.
        """
        done = threading.Event()
        keeper = threading.Thread(
            target=self._keep_alive, args=(done,), name="setup-heartbeat", daemon=True
        )
        keeper.start()
        try:
            self.worker.setup()
        finally:
            done.set()
            keeper.join()

    def _go_realtime(self) -> None:
        """Real-time scheduling from here on, if the config asks (``realtime_priority``):
        after setup, so a slow device's setup never competes at that priority."""
        priority = self.spec.realtime_priority
        if not priority:
            return
        why = scheduling.make_realtime(priority)
        if why:
            self.report(why, "warning")
        else:
            self.log.info("running under real-time scheduling, priority %d", priority)
        self.worker.counters["realtime_priority"] = 0 if why else priority

    def _keep_alive(self, done: threading.Event) -> None:
        assert self._bus is not None
        while not done.wait(self.spec.heartbeat_interval_s):
            with self._bus_lock:
                self._heartbeat()
                while (message := self._bus.receive(0)) is not None:
                    if isinstance(message, messages.WorkerRequest):
                        text = f"{self.worker.name} is still starting; ask again once it is running"
                        self._reply(messages.Error(request_id=message.request_id, text=text))
                    else:  # acks, Stop
                        self._handle(message)
                self._check_supervisor(clock.now_s())
