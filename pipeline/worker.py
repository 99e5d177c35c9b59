"""The ``Worker`` base class and the worker process entry point.

A worker kind is a class with ``setup()``, ``step()`` (or ``run()``) and
``teardown()``; its module names it ``WORKER``. The base class owns the rest:
the bus connection, heartbeats, command dispatch (``Stop``, ``SetParameter``),
signals, and leaving when the supervisor disappears (``PR_SET_PDEATHSIG`` on
Linux; everywhere, a missing ``HeartbeatAck`` for ``heartbeat_timeout_s``).

The supervisor starts each worker as ``python -m pipeline.worker --spec-stdin
SESSION/WORKER`` with the JSON of a :class:`WorkerSpec` on its stdin (``python
-m pipeline.worker SPEC`` takes it as an argument), in its own process group::

    class Counter(Worker):
        Settings = CounterSettings            # msgspec Struct of its parameters

        @classmethod
        def outputs(cls, settings):           # ports it writes: "<worker>/<port>"
            return ["count"]

        def setup(self):
            self.out = self.writer("count", np.int64, (), 1024, 10.0)

        def step(self):
            self.out.write(np.arange(1))
            self.wait_until(clock.now_s() + 0.1)   # sleeps, serving the bus

    WORKER = Counter
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import importlib
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import msgspec
import numpy as np
import psutil
import zmq

from pipeline import clock, scheduling
from pipeline.console import ConsoleClose
from pipeline.control import messages
from pipeline.control.bus import Client, Endpoints, Router, direct_endpoint, load_keys
from pipeline.control.direct import (
    COMMAND_FRAME,
    COMMAND_HEADER,
    COMMAND_PAYLOAD,
    FIRE,
    REQUEST,
)
from pipeline.control.doorbell import Doorbell
from pipeline.errors import EndOfStream, ProtocolError, RigpipeError
from pipeline.identity import process_alive
from pipeline.output import log_without_blocking
from pipeline.ring import RingReader, RingWriter, ThresholdWatch, attach, segments, wait_any
from pipeline.timer import fine_timer

_PR_SET_PDEATHSIG = 1
#: Sent by the kernel when the supervisor dies (Linux); SIGHUP, so that it cannot be
#: mistaken for a second Ctrl-C / SIGTERM, which makes a stopping worker exit at once.
PARENT_DEATH_SIGNAL = getattr(signal, "SIGHUP", signal.SIGTERM)
#: The bus is polled at most this often by service() in a busy step loop; a worker
#: sleeping in wait() or wait_until() wakes the moment a message arrives.
SERVICE_INTERVAL_S = 0.005
_PARENT_WATCHES = ("auto", "pdeathsig", "heartbeat")
#: wait_until() sleeps this long or less without watching the sockets (see there).
PACING_S = 0.002
#: A worker takes requests from at most this many clients' command rings (CommandRing).
MAX_COMMAND_RINGS = 16
#: The exit code of a worker that stopped because its supervisor is gone (sysexits'
#: EX_UNAVAILABLE): not 0, which says "asked to stop, done", so that whoever reads it
#: (a restart policy, a script) never takes the lost rig for a clean stop.
EXIT_SUPERVISOR_GONE = 69


class WorkerSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a worker process needs, given on its command line by the supervisor."""

    session: str
    name: str
    kind: str  # module defining WORKER
    parameters: dict[str, Any] = {}
    endpoints: Endpoints
    supervisor_pid: int
    heartbeat_interval_s: float = 0.25
    heartbeat_timeout_s: float = 2.0
    log_level: str = "info"
    recordings_dir: str = "recordings"
    recordings_access: str = "group"  # "group": 0640/0750; "user": 0600/0700
    session_id: str = ""  # a uuid per supervisor run
    supervisor_start_ms: int = 0  # with supervisor_pid: tells a restarted supervisor from ours
    config_text: str = ""  # the config file as given, for provenance
    realtime_priority: int = 0  # real-time scheduling once set up (0: none)


class NoSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Parameters of a worker kind that takes none."""


class Worker:
    """Base class of every worker kind. Subclasses write the domain logic only."""

    #: The worker's ``[workers.parameters]`` schema; unknown keys are refused.
    Settings: ClassVar[type[msgspec.Struct]] = NoSettings
    #: Parameters that ``rigpipe set`` / ``SetParameter`` may change while it runs.
    settable: ClassVar[frozenset[str]] = frozenset()
    #: How often ``service()`` polls the bus at most; a worker that must answer within
    #: a millisecond (the stimulator) lowers it.
    service_interval_s: ClassVar[float] = SERVICE_INTERVAL_S
    #: Waits of about 1 ms while the worker lives (Windows: ``timeBeginPeriod(1)``; see
    #: :mod:`pipeline.timer`), for kinds that pace or refill every millisecond.
    needs_fine_timer: ClassVar[bool] = False
    #: Take requests (``on_request``) on the worker's own socket too, not only through
    #: the supervisor: one hop instead of two, for a closed loop run by another process.
    #: Its endpoint is in the discovery file (``direct``); see :mod:`pipeline.control.direct`.
    direct: ClassVar[bool] = False

    @classmethod
    def settings_type(cls, parameters: dict[str, Any]) -> type[msgspec.Struct]:
        """The Struct that ``parameters`` must match (a kind with variants picks one here).

        Raise ValueError naming the allowed choices for a selection that does not exist.
        """
        return cls.Settings

    @classmethod
    def parse_settings(cls, parameters: dict[str, Any]) -> Any:
        """``parameters`` validated into the kind's settings (msgspec errors propagate)."""
        return msgspec.convert(parameters, cls.settings_type(parameters), strict=True)

    @classmethod
    def outputs(cls, settings: Any) -> list[str]:
        """Ports this worker writes; stream ``<session>/<worker>/<port>`` each."""
        return []

    @classmethod
    def inputs(cls, settings: Any) -> list[str]:
        """Session-relative streams (``acq/continuous``) this worker reads."""
        return []

    @classmethod
    def check(cls, settings: Any) -> None:
        """Raise ValueError for settings that are valid field by field but not together."""

    @classmethod
    def after_session(cls, spec: WorkerSpec, settings: Any) -> list[str]:
        """Run by the supervisor after every worker has exited; say what was done.

        For what a worker that died could not finish itself (the recorder
        repairs a recording it left open).
        """
        return []

    def __init__(self, spec: WorkerSpec, settings: Any) -> None:
        self.spec = spec
        self.settings = settings
        self.name = spec.name
        self.log = logging.getLogger(f"rigpipe.{spec.name}")
        #: Numbers shown by ``rigpipe status`` (chunks, late chunks, drift...).
        self.counters: dict[str, float] = {}
        #: One line shown by ``rigpipe status`` next to the worker ("recording to ...", an error).
        self.note = ""
        self._readers: dict[str, RingReader] = {}
        self._writers: dict[RingWriter, int] = {}  # each writer -> relinks already reported
        self._stopping = False
        self._ready = False
        self._bus: Client | None = None
        self._direct: Router | None = None
        self._doorbell: Doorbell | None = None
        self._zmq_poller: zmq.Poller | None = None
        # clients' command rings (Worker.direct): stream -> (reader, the peer to answer)
        self._command_rings: dict[str, tuple[RingReader, bytes]] = {}
        self._next_heartbeat = 0.0
        self._next_service = 0.0
        self._last_ack = clock.now_s()
        self._silent_since: float | None = None  # the supervisor alive but not answering
        #: Why the worker stopped without being asked: its supervisor is gone ("" if not).
        self.supervisor_lost = ""
        # The bus is used by one thread at a time: the keeper thread of _set_up while
        # setup() runs, the main thread always.
        self._bus_lock = threading.RLock()

    # -- for subclasses -------------------------------------------------------------------------
    def setup(self) -> None:
        """Open devices, create rings. The worker counts as ready when this returns."""

    def step(self) -> None:
        """One unit of work; called until the worker is asked to stop."""
        raise NotImplementedError(f"{type(self).__name__} must define step() or run()")

    def run(self) -> None:
        """Call :meth:`step` and serve the bus until asked to stop."""
        while not self._stopping:
            self.step()
            self.service()

    def teardown(self) -> None:
        """Close what ``setup`` opened. Runs even when setup or run raised."""

    def on_parameter(self, name: str, value: Any) -> None:
        """Called after ``self.settings`` took a new value for ``name``. Raise ValueError
        (or a RigpipeError) if it cannot be acted on: the setting is undone and the
        request answered with the reason."""

    def on_request(self, request: messages.WorkerRequest) -> messages.Message:
        """Answer a request forwarded to this worker (stimulation commands...); the reply's
        ``request_id`` is filled in by the caller."""
        tag = type(request).__struct_config__.tag
        return messages.Error(
            text=f"worker {self.name!r} ({type(self).__name__}) does not handle {tag!r} requests"
        )

    def publish(self, event: messages.WorkerEvent) -> None:
        """Send ``event`` to the supervisor, which publishes it to the session (and so to
        the recorder)."""
        if self._bus is not None:
            self._bus.send(event)

    def stop(self) -> None:
        """End the run loop after this step: the work is done (the worker exits 0)."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        """True once the worker was asked to stop (Stop message, signal, supervisor gone)."""
        return self._stopping

    def stream(self, port: str) -> str:
        """Full name of this worker's stream ``port``: ``<session>/<worker>/<port>``."""
        return f"{self.spec.session}/{self.name}/{port}"

    def writer(
        self,
        port: str,
        dtype: np.typing.DTypeLike,
        frame_shape: int | Sequence[int],
        capacity: int,
        sample_rate: float,
        descriptor: dict[str, Any] | None = None,
    ) -> RingWriter:
        """A :class:`RingWriter` on this worker's stream ``port`` (taking over a dead one's).

        If another program unlinks its segments, the writer re-creates them and
        the next heartbeat reports it as a warning (``relinks`` in status).
        """
        writer = RingWriter(
            self.stream(port), dtype, frame_shape, capacity, sample_rate, descriptor
        )
        self._writers[writer] = 0
        return writer

    def reader(
        self,
        stream: str,
        *,
        from_now: bool = False,
        cursor: int | None = None,
        stream_id: int | None = None,
    ) -> RingReader:
        """Attach to session stream ``stream`` (``acq/continuous``) as a lossless reader.

        Its cursor is reported in every heartbeat, so ``rigpipe status`` shows
        its lag. ``cursor`` resumes at a sequence number of stream ``stream_id``
        (see ``attach``).
        """
        reader = attach(
            f"{self.spec.session}/{stream}", from_now=from_now, cursor=cursor, stream_id=stream_id
        )
        self.close_reader(stream)
        self._readers[stream] = reader
        return reader

    def close_reader(self, stream: str) -> None:
        """Detach the reader of ``stream`` (it stops counting in status)."""
        reader = self._readers.pop(stream, None)
        if reader is not None:
            reader.close()

    def report(self, text: str, level: str = "warning") -> None:
        """Publish ``text`` as a session event (and log it)."""
        self.log.log(logging.getLevelName(level.upper()), "%s", text)
        if self._bus is not None:
            with self._bus_lock:
                self._bus.send(messages.Report(worker=self.name, level=level, text=text))

    def wait_until(self, deadline: float) -> None:
        """Serve the bus, then sleep until ``deadline`` (monotonic seconds) or a stop.

        A sleep of up to ``PACING_S`` (a source waiting for its next chunk's time,
        a thousand times a second) is one plain sleep after :meth:`service`, which
        serves the bus every ``service_interval_s`` as in a busy step loop. A
        longer one is :meth:`wait`'s, which wakes for a message at once.
        """
        if deadline - clock.now_s() > PACING_S or self._command_rings:
            self.wait((), deadline)
            return
        self.service()
        remaining = deadline - clock.now_s()
        if remaining > 0 and not self._stopping:
            time.sleep(remaining)

    def wait(
        self, readers: Sequence[RingReader | ThresholdWatch] = (), deadline: float | None = None
    ) -> bool:
        """Serve the bus, then sleep until one of ``readers`` has frames (or its stream
        changed: a new generation, an end; the next read says which), a message for
        this worker arrives, or ``deadline`` (monotonic seconds) passes, whichever is
        first. True if a reader has something to read. A
        :class:`~pipeline.ring.watch.ThresholdWatch` among them wakes the wait only
        for chunks that may cross its threshold.

        It never polls: on a ring it sleeps in the ring's own wait while a
        :class:`~pipeline.control.doorbell.Doorbell` watches the sockets; with no
        ring it sleeps in the sockets' poll (the last 2 ms before ``deadline`` in
        ``time.sleep``, for pacing). On several rings it sleeps on all of them
        at once (:func:`~pipeline.ring.wait_any`).
        """
        woke = False
        while not self._stopping:
            if any(reader.wait(0) for reader in readers):
                # Frames that woke this wait go to the caller at once: the bus is served
                # before the next sleep below (whenever a message waits or a heartbeat is
                # due). A reader with a backlog, which never sleeps, serves it here.
                if not woke:
                    self.service()  # at most every service_interval_s while frames flow
                return True
            rings = [reader for reader, _ in self._command_rings.values()]
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

    # -- bus ------------------------------------------------------------------------------------
    def service(self) -> None:
        """Heartbeat when due, handle waiting commands, notice a vanished supervisor."""
        now = clock.now_s()
        if self._bus is None or now < self._next_service:
            return  # a step loop at 1 kHz need not poll the socket 1000 times a second
        self._serve_bus(now)

    def _serve_bus(self, now: float) -> None:
        bus = self._bus
        assert bus is not None
        self._next_service = now + self.service_interval_s
        with self._bus_lock:
            if now >= self._next_heartbeat:
                self._heartbeat()
                self._next_heartbeat = now + self.spec.heartbeat_interval_s
                self._check_supervisor(now)
            while (message := bus.receive(0)) is not None:
                self._handle(message)
            if self._direct is not None:
                for peer, request in self._direct.receive(0):
                    if isinstance(request, messages.CommandRing):
                        self._direct.send(peer, self._open_command_ring(peer, request))
                    else:
                        self._direct.send(peer, self._answer_direct(request))
                self._take_commands()

    def _open_command_ring(self, peer: bytes, request: messages.CommandRing) -> messages.Message:
        """Take requests from a client's ring too, answering ``peer`` (see CommandRing)."""

        def refuse(text: str) -> messages.Error:
            return messages.Error(request_id=request.request_id, text=text)

        stream = request.stream
        if (wrong := self._not_mine(request)) is not None:
            return wrong
        if not stream.startswith(f"{self.spec.session}/"):
            return refuse(f"a command ring must be a stream of session {self.spec.session!r}")
        if stream not in self._command_rings and len(self._command_rings) >= MAX_COMMAND_RINGS:
            return refuse(f"{self.name} already reads {MAX_COMMAND_RINGS} command rings")
        try:
            reader = attach(stream, from_now=True)
        except RigpipeError as exc:
            return refuse(f"cannot read command ring {stream}: {exc}")
        if reader.dtype != COMMAND_FRAME or reader.frame_shape != ():
            reader.close()
            return refuse(f"{stream} is not a command ring (frames of {COMMAND_FRAME})")
        previous = self._command_rings.pop(stream, None)
        if previous is not None:
            previous[0].close()
        self._command_rings[stream] = (reader, peer)
        return messages.Ok(request_id=request.request_id, detail=f"{self.name} reads {stream}")

    def _drop_dead_command_rings(self) -> None:
        """Forget the command rings of clients that died without closing them, and remove
        their segments (a stream of this session whose writer is gone: no one else's)."""
        for stream, (reader, _) in list(self._command_rings.items()):
            try:
                alive = reader.writer_alive
            except RigpipeError:
                alive = False
            if not alive:
                reader.close()
                del self._command_rings[stream]
                segments.sweep(streams=[stream])
                self.log.info("the client of command ring %s is gone; removed it", stream)

    def _take_commands(self) -> None:
        """Answer every request waiting in the clients' command rings."""
        if self._direct is None:
            return
        for stream, (reader, peer) in list(self._command_rings.items()):
            try:
                chunk = reader.read(timeout_s=0)
            except (EndOfStream, RigpipeError):  # the client closed it, or it is gone
                reader.close()
                del self._command_rings[stream]
                continue
            if chunk.dropped:  # never answered: the client's requests time out
                self.counters["commands_lost"] = self.counters.get("commands_lost", 0) + 1
            frames = chunk.data.tobytes()  # COMMAND_FRAMEs (one numpy call: ~20 µs less cold)
            for at in range(0, len(frames), COMMAND_FRAME.itemsize):
                kind, length, request_id, handle = COMMAND_HEADER.unpack_from(frames, at)
                if kind == FIRE:  # built here: nothing to decode, and it is for this worker
                    fire = messages.FireStimulus(
                        worker=self.name, handle=handle, request_id=request_id
                    )
                    self._direct.send(peer, self._answer(fire))
                    continue
                request: messages.Message | ProtocolError
                try:
                    if kind != REQUEST:
                        raise ProtocolError(f"a command frame of unknown kind {kind}")
                    if length > COMMAND_PAYLOAD:
                        raise ProtocolError(f"a command frame says {length} bytes")
                    payload = at + COMMAND_HEADER.size
                    request = messages.decode(frames[payload : payload + length])
                except ProtocolError as exc:
                    request = exc
                self._direct.send(peer, self._answer_direct(request))

    def _answer_direct(self, request: messages.Message | ProtocolError) -> messages.Message:
        """The reply to a request that came to this worker's own socket."""
        if isinstance(request, ProtocolError):
            self.counters["bad_requests"] = self.counters.get("bad_requests", 0) + 1
            return messages.Error(text=f"malformed request to {self.name}: {request}")
        if not isinstance(request, messages.WorkerRequest):
            tag = type(request).__struct_config__.tag
            return messages.Error(
                request_id=getattr(request, "request_id", 0),
                text=f"{self.name}'s own socket takes worker requests only, not {tag!r}; "
                "send the others to the supervisor",
            )
        if (wrong := self._not_mine(request)) is not None:
            return wrong
        return self._answer(request)

    def _not_mine(self, request: messages.WorkerRequest) -> messages.Error | None:
        """The refusal of a request on this worker's own socket meant for another worker."""
        if request.worker == self.name:
            return None
        return messages.Error(
            request_id=request.request_id,
            text=f"this is worker {self.name!r}'s socket, but the request is for "
            f"{request.worker!r}; nothing was done",
        )

    def _answer(self, request: messages.WorkerRequest) -> messages.Message:
        try:
            reply = self.on_request(request)
        except Exception as exc:  # nothing a client sends may kill the worker
            self.log.exception("request %r failed", request)
            reply = messages.Error(text=f"{self.name} failed on the request: {exc!r}")
        return msgspec.structs.replace(reply, request_id=request.request_id)

    def _check_supervisor(self, now: float) -> None:
        """After ``heartbeat_timeout_s`` without a reply, ask the OS whether the supervisor
        still exists: a slow supervisor is not a dead one.

        While it exists (stopped, starved of CPU, blocked on a terminal that does not
        read) the worker works on: the source acquires, the recorder records; the stall
        is reported once the supervisor answers again. Only a supervisor that is gone
        (its pid and start time no longer a live process) ends the worker, with
        :data:`EXIT_SUPERVISOR_GONE`.
        """
        silent_s = now - self._last_ack
        if silent_s <= self.spec.heartbeat_timeout_s or self._stopping:
            return
        if self._supervisor_alive():
            if self._silent_since is None:
                self._silent_since = self._last_ack
                self.counters["supervisor_stalls"] = self.counters.get("supervisor_stalls", 0) + 1
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

    def lose_supervisor(self, why: str) -> None:
        """Stop because the supervisor is gone (``why``); the worker exits non-zero."""
        if not self.supervisor_lost:
            self.log.error("%s; stopping", why)
        self.supervisor_lost = self.supervisor_lost or why
        self._stopping = True

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

    def _report_relinks(self) -> None:
        for writer, reported in list(self._writers.items()):
            if writer.relinks != reported:
                self._writers[writer] = writer.relinks
                self.counters["relinks"] = sum(w.relinks for w in self._writers)
                self.report(writer.relink_reason)

    def _heartbeat(self) -> None:
        assert self._bus is not None
        self._report_relinks()
        self._drop_dead_command_rings()
        readers = [
            messages.ReaderReport(stream=s, cursor=r.cursor, dropped=r.dropped_total)
            for s, r in list(self._readers.items())
        ]
        self._bus.send(
            messages.Heartbeat(
                worker=self.name,
                pid=os.getpid(),
                ready=self._ready,
                counters=dict(self.counters),
                readers=readers,
                note=self.note,
            )
        )

    def _handle(self, message: messages.Message | None) -> None:
        match message:
            case None:
                return
            case messages.HeartbeatAck():
                self._acknowledged()
            case messages.Stop(request_id=request_id):
                self.log.info("asked to stop")
                self._stopping = True
                self._reply(messages.Ok(request_id=request_id, detail="stopping"))
            case messages.SetParameter(request_id=request_id, name=name, value=value):
                self._reply(self._set_parameter(request_id, name, value))
            case messages.WorkerRequest():
                self._reply(self._answer(message))
            case messages.Ok() | messages.Error():
                self._acknowledged()  # the answer to Hello
            case _:
                self._reply(messages.Error(text=f"a worker does not handle {type(message)}"))

    def _set_parameter(self, request_id: int, name: str, value: Any) -> messages.Message:
        if name not in self.settable:
            settable = ", ".join(sorted(self.settable)) or "none"
            return messages.Error(
                request_id=request_id,
                text=f"worker {self.name!r} has no settable parameter {name!r}; "
                f"settable: {settable}",
            )
        fields = msgspec.to_builtins(self.settings)
        fields[name] = value
        try:
            settings = msgspec.convert(fields, type(self.settings), strict=True)
            type(self).check(settings)
        except (msgspec.ValidationError, ValueError) as exc:
            return messages.Error(request_id=request_id, text=f"{name} = {value!r} refused: {exc}")
        previous, self.settings = self.settings, settings
        try:
            self.on_parameter(name, value)
        except (RigpipeError, ValueError) as exc:  # the worker could not act on it: say why
            self.settings = previous
            return messages.Error(request_id=request_id, text=f"{name} = {value!r} failed: {exc}")
        self.log.info("parameter %s set to %r", name, value)
        return messages.Ok(request_id=request_id, detail=f"{self.name}.{name} = {value!r}")

    def _reply(self, message: messages.Message) -> None:
        if self._bus is not None:
            with self._bus_lock:
                self._bus.send(message)

    # -- process lifecycle ----------------------------------------------------------------------
    def main(self, inherited_scheduling: str = "") -> int:
        """Connect, set up, run, tear down; the process exit code.

        ``inherited_scheduling``: the real-time policy this process inherited and
        dropped (:func:`pipeline.scheduling.drop_inherited`), reported once connected.
        """
        identity = f"worker:{self.name}:{os.getpid()}"
        endpoints = self.spec.endpoints
        self._bus = Client(endpoints, self.spec.heartbeat_timeout_s, identity)
        if self.direct:
            self._direct = Router(direct_endpoint(endpoints, self.name), load_keys(endpoints))
        self._last_ack = clock.now_s()
        direct = "" if self._direct is None else self._direct.endpoint
        self._bus.send(messages.Hello(worker=self.name, pid=os.getpid(), direct=direct))
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
        timer = fine_timer() if self.needs_fine_timer else contextlib.nullcontext()
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
            self.run()
        except RigpipeError as exc:
            self.log.error("%s", exc)
            self.report(f"failed: {exc}", "error")
            code = 1
        except Exception:
            self.log.exception("worker %s failed", self.name)
            code = 1
        finally:
            try:
                self.teardown()
            finally:
                for reader in self._readers.values():
                    reader.close()
                for reader, _ in self._command_rings.values():
                    reader.close()
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
            self.setup()
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
        self.counters["realtime_priority"] = 0 if why else priority

    def _keep_alive(self, done: threading.Event) -> None:
        assert self._bus is not None
        while not done.wait(self.spec.heartbeat_interval_s):
            with self._bus_lock:
                self._heartbeat()
                while (message := self._bus.receive(0)) is not None:
                    if isinstance(message, messages.WorkerRequest):
                        text = f"{self.name} is still starting; ask again once it is running"
                        self._reply(messages.Error(request_id=message.request_id, text=text))
                    else:  # acks, Stop
                        self._handle(message)
                self._check_supervisor(clock.now_s())


def parent_watch() -> str:
    """How a worker notices its supervisor died: ``pdeathsig`` (Linux) or ``heartbeat``.

    ``RIGPIPE_PARENT_WATCH=heartbeat`` forces the portable one (tests do that on Linux).
    """
    chosen = os.environ.get("RIGPIPE_PARENT_WATCH", "auto")
    if chosen not in _PARENT_WATCHES:
        raise ValueError(f"RIGPIPE_PARENT_WATCH={chosen!r}; use one of {_PARENT_WATCHES}")
    linux = sys.platform.startswith("linux")
    if chosen == "auto":
        return "pdeathsig" if linux else "heartbeat"
    if chosen == "pdeathsig" and not linux:
        raise ValueError(
            f"RIGPIPE_PARENT_WATCH=pdeathsig needs Linux (this is {sys.platform}); "
            "use 'heartbeat' or 'auto'"
        )
    return chosen


def _die_with_parent(supervisor_pid: int) -> None:
    """Linux: get PARENT_DEATH_SIGNAL when the supervisor dies; exit now if it already has."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, PARENT_DEATH_SIGNAL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != supervisor_pid:  # it died between our fork and the prctl
        raise SystemExit(EXIT_SUPERVISOR_GONE)


#: ``python -m pipeline.worker --spec-stdin SESSION/WORKER``: the spec comes on stdin.
SPEC_ON_STDIN = "--spec-stdin"
#: Directories a worker kind's module may be in, set by the supervisor (its working
#: directory first); read here because an isolated interpreter ignores PYTHONPATH.
WORKER_PATH_ENV = "RIGPIPE_WORKER_PATH"


def worker_path() -> list[str]:
    """Where a worker kind named by module (``mylab.decoder``) is looked for besides the
    installed packages: the working directory, then ``PYTHONPATH``.

    ``python -m`` puts the working directory on ``sys.path`` and the ``rigpipe``
    console script does not; an isolated interpreter (python.org's embeddable
    Windows build) ignores ``PYTHONPATH``. The supervisor, resolving a config, and
    every worker it starts look in the same places whichever way they were run.
    """
    return [p for p in (os.getcwd(), *os.environ.get("PYTHONPATH", "").split(os.pathsep)) if p]


def use_worker_path(directories: Sequence[str]) -> None:
    """Put ``directories`` on ``sys.path`` (first to last) where they are not yet."""
    for directory in reversed(directories):
        if directory and directory not in sys.path:
            sys.path.insert(0, directory)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m pipeline.worker SPEC_JSON`` (or ``--spec-stdin NAME``).

    The supervisor passes the spec on stdin: a command line is readable by every
    user of the machine (``ps``, ``/proc/PID/cmdline``) and is capped (32 KiB on
    Windows), and the spec holds the whole config. ``SESSION/WORKER`` after the
    option only names the process for ``ps``.
    """
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == SPEC_ON_STDIN:
        text = sys.stdin.buffer.read()
    elif len(argv) == 1 and not argv[0].startswith("-"):
        text = argv[0].encode()
    else:
        print(
            "usage: python -m pipeline.worker SPEC_JSON | --spec-stdin SESSION/WORKER "
            "(started by the supervisor)"
        )
        return 2
    # Real-time only if the config asks (after setup): not a policy handed down by
    # whoever started the supervisor, and not for the heavy imports that follow.
    inherited_scheduling = scheduling.drop_inherited()
    spec = msgspec.json.decode(text, type=WorkerSpec)
    faulthandler.enable()  # a crash in native code leaves its traceback in the worker's log
    # A log line to a pipe nobody reads must not stop acquisition or recording.
    logs = log_without_blocking(
        sys.stderr,
        spec.log_level,
        f"%(asctime)s {spec.name}[%(process)d] %(levelname)s %(message)s",
    )
    use_worker_path(os.environ.get(WORKER_PATH_ENV, "").split(os.pathsep))
    cls = importlib.import_module(spec.kind).WORKER
    worker = cls(spec, cls.parse_settings(spec.parameters))

    def stop(signum: int, frame: object) -> None:
        if worker.stopping:
            worker.log.warning("signal %d while stopping: exiting now", signum)
            raise SystemExit(128 + signum)  # asked twice: stop now
        worker.log.info("signal %d: stopping", signum)
        worker._stopping = True

    def orphaned(signum: int, frame: object) -> None:
        # The parent-death signal can arrive again: once per thread of the dying supervisor
        # (the kernel re-parents us across its threads), and whenever a thread of the new
        # parent (a subreaper) exits, even while the interpreter finalizes, when Python's
        # handler is gone and the signal's default would kill: ignore it from now on.
        signal.signal(PARENT_DEATH_SIGNAL, signal.SIG_IGN)
        worker.lose_supervisor(f"the supervisor (pid {spec.supervisor_pid}) died")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if hasattr(signal, "SIGBREAK"):  # Windows: how the supervisor asks a worker to stop
        signal.signal(signal.SIGBREAK, stop)
    if parent_watch() == "pdeathsig":
        signal.signal(PARENT_DEATH_SIGNAL, orphaned)
        _die_with_parent(spec.supervisor_pid)

    def console_closed(reason: str) -> None:  # on a thread of Windows' making: only flag it
        worker.log.info("%s: stopping", reason)
        worker._stopping = True

    closing = ConsoleClose(console_closed)  # Windows: every process on the console gets it
    try:
        return worker.main(inherited_scheduling)
    finally:
        closing.remove()
        logs.close()


if __name__ == "__main__":
    sys.exit(main())
