"""The supervisor: runs a session's workers, watches them, restarts them, stops them in order.

One loop, one thread. Each tick (50 ms) it answers what arrived on the
ROUTER, reaps exited workers, checks heartbeats and start deadlines, starts
workers whose backoff has elapsed, advances a start-up or shutdown that is
under way, and samples stream cursors and psutil figures.

- Start: workers start level by level (a reader after the writers of what it
  reads); a level starts when every worker of the previous one is ready.
- Restart: per policy (``always``, ``on-failure``, ``never``) with
  exponential backoff from ``backoff_s`` to ``backoff_max_s``; after
  ``max_restarts`` consecutive failures the worker is left FAILED. A worker
  that stops heartbeating for ``heartbeat_timeout_s`` is killed and counts
  as failed.
- Stop (Ctrl-C, SIGTERM, ``rigpipe stop``, ``--duration``): sources first,
  then the readers of their streams (which drain what is left), then the
  rest; each gets ``Stop``, then SIGTERM, then SIGKILL. A second Ctrl-C kills
  everything at once. Finally every segment of the session's streams is
  unlinked and the discovery file removed.
- Nothing that arrives on a socket can stop it: undecodable or unexpected
  messages are answered with ``Error`` and counted in ``bad_messages``.

One module although over 500 lines: it is one state machine (start levels, watching,
restarts with backoff, the ordered stop, cleanup) whose steps read each other's state;
what a person reads of its events is :mod:`pipeline.cli.text`, its request handlers
:mod:`.controller`, one worker's process :mod:`.process`.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import RigConfig
from pipeline.control import bus, messages, session
from pipeline.control.eventlog import EventLog, events_stream
from pipeline.control.messages import Message
from pipeline.errors import SessionRunning
from pipeline.host import clock
from pipeline.host.console import ConsoleClose
from pipeline.host.identity import process_identity
from pipeline.ring import segments
from pipeline.supervisor.controller import Controller
from pipeline.supervisor.process import WorkerProcess, WorkerState
from pipeline.worker import WorkerSpec

log = logging.getLogger("rigpipe.supervisor")
TICK_S = 0.05
SAMPLE_S = 1.0
_ALIVE = (WorkerState.STARTING, WorkerState.RUNNING, WorkerState.STOPPING)


class SessionState(enum.StrEnum):
    """Where the session as a whole is (``rigpipe status`` shows it)."""

    STARTING = "starting"  # workers start level by level
    RUNNING = "running"  # every level has started
    STOPPING = "stopping"  # the ordered stop is under way
    STOPPED = "stopped"  # every worker has exited


class Supervisor:
    """Runs the session described by ``rig`` until it is stopped.

    ``on_event`` receives every event the session publishes (a message; the CLI turns it
    into a line, :func:`pipeline.cli.text.event_line`) and the supervisor's own lines
    (text);
    ``on_tick(status)`` receives a :class:`~pipeline.messages.StatusReply`
    about once a second (``rigpipe run`` draws its table from it).
    """

    def __init__(
        self,
        rig: RigConfig,
        on_event: Callable[[Message | str], None] | None = None,
        on_tick: Callable[[messages.StatusReply], None] | None = None,
    ) -> None:
        self.rig = rig
        self.name = rig.session.name
        self.on_event = on_event or (lambda event: log.info("%s", event))
        self.on_tick = on_tick
        self.streams = {
            f"{self.name}/{stream}": plan.name for plan in rig.workers for stream in plan.outputs
        }
        self.streams[events_stream(self.name)] = "supervisor"
        self.state = SessionState.STARTING
        self.workers: dict[str, WorkerProcess] = {}
        self._levels = sorted({plan.level for plan in rig.workers})
        self._started_levels = 0
        self._stop_groups: list[list[WorkerProcess]] = []
        self._stopping_group: list[WorkerProcess] = []
        self._stop_requested: str | None = None
        self._forced = False
        self._killed_any = False
        self._ids = itertools.count(1)
        self._rates: dict[str, tuple[float, int, float]] = {}
        self._next_sample = 0.0
        self._t0 = clock.now_s()
        self._last_tick = self._t0  # when the loop last ran (see _forgive_own_stall)
        self.session_id = str(uuid.uuid4())
        self.server: bus.Server | None = None
        self.event_log: EventLog | None = None
        self.controller: Controller | None = None
        # Where a segment dies with its last handle (Windows), hold the streams' segments
        # so that a writer killed with no reader attached leaves them to its restart.
        self.holds = segments.Holds() if segments.holds_wanted() else None

    # -- session lifecycle ----------------------------------------------------------------------
    def run(self, duration_s: float | None = None) -> int:
        """Run until stopped; 0 after an ordered stop, 1 if a worker had to be killed or
        ended the session failed (so a script that runs a rig learns it)."""
        existing = session.read(self.name)
        if existing is not None and existing.alive:
            raise SessionRunning(
                f"session {self.name!r} is already running (supervisor pid {existing.pid}); "
                f"stop it with `rigpipe stop --session {self.name}` or rename this session"
            )
        for line in session.clean_stale(self.name):
            self.on_event(f"cleaned up after a supervisor that died: {line}")
        self.runtime_dir = session.runtime_dir(self.name, self.rig.session.runtime_dir)
        self.server = bus.Server(self._endpoints())
        self.controller = Controller(self, self.server)
        self._make_workers()
        previous = self._install_signals()
        closing = ConsoleClose(self.request_stop)  # Windows: closing the console stops in order
        try:
            # Every event published from now on is also logged, numbered, for the recorders.
            self.event_log = EventLog(self.name, self.rig.session.events_buffer)
            self.write_discovery()
            self.on_event(
                f"session {self.name!r} up: control {self.server.endpoints.control}, "
                f"logs in {self.runtime_dir / 'logs'}"
            )
            deadline = None if duration_s is None else clock.now_s() + duration_s
            self._last_tick = clock.now_s()
            while self.state is not SessionState.STOPPED:
                if deadline is not None and clock.now_s() >= deadline:
                    self.request_stop(f"--duration {duration_s:g} s elapsed")
                    deadline = None
                self.tick()
        finally:
            self._kill_all()
            self._restore_signals(previous)
            try:
                self._cleanup()
            finally:
                closing.remove()  # lets a pending console close end the process
        failed = [w for w in self.workers.values() if w.state is WorkerState.FAILED]
        for worker in failed:
            self.on_event(f"worker {worker.name} ended the session failed: {worker.reason}")
        return 1 if self._killed_any or failed else 0

    def _endpoints(self) -> bus.Endpoints:
        control = self.rig.control
        if bus.transport_from_env(control.transport) == "ipc":
            return bus.ipc_endpoints(self.runtime_dir)
        host = control.host
        return bus.Endpoints(
            f"tcp://{host}:{control.control_port}",
            f"tcp://{host}:{control.events_port}",
            str(bus.session_keys(self.runtime_dir, control.keys_file)),
        )

    def _make_workers(self) -> None:
        assert self.server is not None
        for plan in self.rig.workers:
            spec = WorkerSpec(
                session=self.name,
                name=plan.name,
                kind=plan.worker_class.__module__,
                parameters=plan.config.parameters,
                endpoints=self.server.endpoints,
                supervisor_pid=os.getpid(),
                heartbeat_interval_s=self.rig.control.heartbeat_interval_s,
                heartbeat_timeout_s=self.rig.control.heartbeat_timeout_s,
                log_level=self.rig.session.log_level,
                recordings_dir=str(Path(self.rig.session.recordings_dir).resolve()),
                recordings_access=self.rig.session.recordings_access,
                session_id=self.session_id,
                supervisor_start_ms=process_identity()[1],
                config_text=self.rig.text,
                realtime_priority=plan.config.realtime_priority,
            )
            log_path = self.runtime_dir / "logs" / f"{plan.name}.log"
            self.workers[plan.name] = WorkerProcess(plan, spec, log_path)

    def write_discovery(self) -> None:
        """Replace the discovery file: endpoints, live workers, streams, workers' own sockets."""
        assert self.server is not None
        identities = {n: i for n, w in self.workers.items() if (i := w.identity_now()) is not None}
        pid, start_ms = process_identity()
        session.write(
            session.Discovery(
                session=self.name,
                pid=pid,
                start_ms=start_ms,
                endpoints=self.server.endpoints,
                runtime_dir=str(self.runtime_dir),
                config_path=str(self.rig.path.resolve()),
                recordings_dir=str(Path(self.rig.session.recordings_dir).resolve()),
                started_at=session.now_iso(),
                streams=sorted(self.streams),
                workers=identities,
                direct={n: w.direct for n, w in self.workers.items() if w.direct},
            )
        )

    def _install_signals(self) -> dict[int, Any]:
        def on_signal(signum: int, frame: object) -> None:
            if self._stop_requested is None:
                self._stop_requested = signal.Signals(signum).name
            else:
                self._forced = True

        previous = {}
        # Windows: Ctrl-Break (a test's, or a script's CTRL_BREAK_EVENT) too
        extra = (signal.SIGBREAK,) if hasattr(signal, "SIGBREAK") else ()
        for sig in (signal.SIGINT, signal.SIGTERM, *extra):
            previous[sig] = signal.signal(sig, on_signal)
        return previous

    @staticmethod
    def _restore_signals(previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    @property
    def stopping(self) -> bool:
        """True once the ordered stop has begun (or is over)."""
        return self.state in (SessionState.STOPPING, SessionState.STOPPED)

    def request_stop(self, reason: str) -> None:
        """Begin the ordered stop (idempotent)."""
        if self._stop_requested is None:
            self._stop_requested = reason

    def _kill_all(self) -> None:
        """SIGKILL whatever still runs (a forced stop, or an error in the loop)."""
        alive = [w for w in self.workers.values() if w.alive]
        for worker in alive:
            worker.kill()
            self._killed_any = True
        for worker in alive:
            with contextlib.suppress(Exception):
                assert worker.popen is not None
                worker.popen.wait(5)

    def _cleanup(self) -> None:
        for worker in self.workers.values():
            plan = worker.plan
            try:
                for line in plan.worker_class.after_session(worker.spec, plan.settings):
                    self.on_event(f"worker {worker.name}: {line}")
            except Exception as exc:  # a broken hook must not stop the cleanup
                log.exception("after_session of %s", worker.name)
                self.on_event(f"worker {worker.name}: cleanup after the session failed: {exc}")
        if self.event_log is not None:
            self.event_log.close()
            self.event_log = None
        if self.holds is not None:
            self.holds.release()
        removed = segments.sweep(streams=list(self.streams))
        if removed:
            self.on_event(f"unlinked {len(removed)} segment(s) the workers left behind")
        if self.server is not None:
            self.server.close()
            endpoints = self.server.endpoints
            for endpoint in (endpoints.control, endpoints.events):
                if endpoint.startswith("ipc://"):
                    Path(endpoint.removeprefix("ipc://")).unlink(missing_ok=True)
            for worker in self.workers.values():
                self._remove_direct_socket(worker)
            if endpoints.keys and not self.rig.control.keys_file:
                Path(endpoints.keys).unlink(missing_ok=True)  # this session's own secret keys
        session.remove(self.name)
        self.on_event(f"session {self.name!r} stopped")

    def _remove_direct_socket(self, worker: WorkerProcess) -> None:
        """Remove the ``ipc://`` socket file of a worker's own request socket, which a
        worker that was killed leaves behind (a clean exit removes it itself)."""
        assert self.server is not None
        endpoint = bus.direct_endpoint(self.server.endpoints, worker.name)
        if endpoint.startswith("ipc://") and not worker.alive:
            Path(endpoint.removeprefix("ipc://")).unlink(missing_ok=True)

    # -- the loop -------------------------------------------------------------------------------
    def tick(self) -> None:
        assert self.server is not None and self.controller is not None  # made by run()
        for peer, message in self.server.receive(TICK_S):
            self.controller.dispatch(peer, message)
        now = clock.now_s()
        self._forgive_own_stall(now)
        if self.holds is not None:
            self.holds.refresh(list(self.streams))
        for worker in self.workers.values():
            self._check_on(worker, now)
        self.controller.expire_forwarded(now)
        if self._forced:
            self.on_event("second interrupt: killing every worker now")
            self._kill_all()
            self.state = SessionState.STOPPED
            return
        if self._stop_requested is not None and self.state in (
            SessionState.STARTING,
            SessionState.RUNNING,
        ):
            self._begin_stop(self._stop_requested)
        if self.state is SessionState.STARTING:
            self._advance_start()
        elif self.state is SessionState.STOPPING:
            self._advance_stop(now)
        if now >= self._next_sample:
            self._next_sample = now + SAMPLE_S
            self._sample(now)

    def _forgive_own_stall(self, now: float) -> None:
        """Time in which this loop did not run does not count against the workers.

        A supervisor that was stopped (SIGSTOP, a suspended VM) or starved of
        the CPU saw no heartbeat meanwhile, but that says nothing of the
        workers: their heartbeat, start and stop deadlines move on by the time
        it was away, so a stalled supervisor never kills a working rig.
        """
        away = now - self._last_tick - TICK_S
        self._last_tick = now
        if away < self.rig.control.heartbeat_timeout_s / 2:
            return
        for worker in self.workers.values():
            if worker.last_heartbeat is not None:
                worker.last_heartbeat += away
            worker.started_at += away
            if worker.stop_deadline is not None:
                worker.stop_deadline += away
        self.on_event(
            f"the supervisor itself did not run for {away:.1f} s (stopped, suspended or "
            "starved of CPU); that time does not count against the workers' heartbeats"
        )

    def _advance_start(self) -> None:
        if self._started_levels:
            level = self._levels[self._started_levels - 1]
            if any(
                w.state is WorkerState.STARTING
                for w in self.workers.values()
                if w.plan.level == level
            ):
                return
        if self._started_levels == len(self._levels):
            self.state = SessionState.RUNNING
            self.publish(messages.SessionStateChanged(session=self.name, state="running"))
            return
        level = self._levels[self._started_levels]
        self._started_levels += 1
        for worker in self.workers.values():
            if worker.plan.level == level:
                self.spawn(worker)

    def spawn(self, worker: WorkerProcess) -> None:
        worker.spawn()
        self.write_discovery()
        self.publish(
            messages.WorkerStateChanged(worker=worker.name, state="starting", pid=worker.pid)
        )

    def _check_on(self, worker: WorkerProcess, now: float) -> None:
        code = worker.reap()
        if code is not None:
            self._exited(worker, code, now)
            return
        hb_timeout = self.rig.control.heartbeat_timeout_s
        match worker.state:
            case WorkerState.STARTING if (
                now - worker.started_at > worker.plan.config.start_timeout_s
            ):
                self._kill(worker, f"not ready within {worker.plan.config.start_timeout_s:g} s")
            case WorkerState.RUNNING if (
                worker.last_heartbeat is not None and now - worker.last_heartbeat > hb_timeout
            ):
                self._kill(worker, f"no heartbeat for {now - worker.last_heartbeat:.1f} s")
            case WorkerState.STOPPING:
                worker.escalate(now, self.rig.session.stop_timeout_s)
                self._killed_any |= worker.kill_stage >= 2
            case WorkerState.BACKOFF if worker.restart_at is not None and now >= worker.restart_at:
                reason, worker.restarts = worker.reason or "restart policy", worker.restarts + 1
                self.spawn(worker)
                self.publish(
                    messages.WorkerRestarted(
                        worker=worker.name, restarts=worker.restarts, reason=reason, pid=worker.pid
                    )
                )

    def _kill(self, worker: WorkerProcess, reason: str) -> None:
        self.on_event(f"worker {worker.name}: {reason}; killing it")
        worker.reason = reason
        worker.kill()

    def _exited(self, worker: WorkerProcess, code: int, now: float) -> None:
        self._remove_direct_socket(worker)
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        # A worker may stop itself (a closed Windows console reaches every process on it)
        # before this loop has begun the stop that was asked for: an ordered exit too.
        if worker.expected_exit or self.stopping or self._stop_requested is not None:
            restart = worker.state is WorkerState.STOPPING and not worker.held
            worker.state = WorkerState.STOPPED
            self.publish(
                messages.WorkerStateChanged(
                    worker=worker.name, state="stopped", exit_code=code, detail=how
                )
            )
            if restart and not self.stopping:
                worker.restarts += 1
                self.spawn(worker)
                self.publish(
                    messages.WorkerRestarted(
                        worker=worker.name,
                        restarts=worker.restarts,
                        reason="requested",
                        pid=worker.pid,
                    )
                )
            return
        tail = worker.log_tail() if code != 0 else ""
        worker.reason = f"{worker.reason}; {how}" if worker.reason else how
        if worker.should_restart(code):
            delay = worker.next_restart(now)
            if delay is None:
                worker.state = WorkerState.FAILED
                detail = f"{how}; gave up after {worker.plan.config.max_restarts} restarts"
            else:
                worker.state = WorkerState.BACKOFF
                detail = f"{how}; restarting in {delay:g} s"
        else:
            worker.state = WorkerState.FAILED if code != 0 else WorkerState.EXITED
            detail = f"{how}; restart policy {worker.plan.config.restart!r}"
        self.publish(
            messages.WorkerStateChanged(
                worker=worker.name, state=str(worker.state), exit_code=code, detail=detail
            )
        )
        if tail:
            self.on_event(f"worker {worker.name} log ends with:\n{tail}")

    def _begin_stop(self, reason: str) -> None:
        self.on_event(f"stopping ({reason}): sources first, then readers, then the rest")
        self.state = SessionState.STOPPING
        self.publish(messages.SessionStateChanged(session=self.name, state="stopping"))
        levels = sorted({w.plan.level for w in self.workers.values()})
        self._stop_groups = [
            [w for w in self.workers.values() if w.plan.level == level] for level in levels
        ]
        for worker in self.workers.values():
            if worker.state is WorkerState.BACKOFF:
                worker.state = WorkerState.STOPPED
        self._stop_next_group()

    def _stop_next_group(self) -> None:
        while self._stop_groups:
            group = self._stop_groups.pop(0)
            alive = [w for w in group if w.alive]
            for worker in alive:
                self.ask_to_stop(worker, hold=True)
            if alive:
                self._stopping_group = alive
                return
        self.state = SessionState.STOPPED

    def _advance_stop(self, now: float) -> None:
        if not any(w.alive for w in self._stopping_group):
            self._stop_next_group()

    def ask_to_stop(self, worker: WorkerProcess, hold: bool) -> None:
        """Send Stop (SIGTERM if it never connected); escalate at the stop deadline."""
        assert self.server is not None
        worker.held = hold
        worker.expected_exit = True
        worker.state = WorkerState.STOPPING
        worker.kill_stage = 0
        worker.stop_deadline = clock.now_s() + self.rig.session.stop_timeout_s
        sent = worker.identity is not None and self.server.send(
            worker.identity, messages.Stop(request_id=next(self._ids))
        )
        if not sent:
            worker.kill_stage = 2 if worker.terminate() else 1
            self._killed_any |= worker.kill_stage >= 2
        self.publish(messages.WorkerStateChanged(worker=worker.name, state="stopping"))

    # -- sampling and status --------------------------------------------------------------------
    def _sample(self, now: float) -> None:
        for worker in self.workers.values():
            worker.sample_usage()
        for stream in self.streams:
            state = segments.stream_state(stream)
            if state is None:
                continue
            t, cursor, rate = self._rates.get(stream, (now, state.write_cursor, 0.0))
            if now > t:
                rate = max(0.0, (state.write_cursor - cursor) / (now - t))
            self._rates[stream] = (now, state.write_cursor, rate)
        if self.on_tick is not None:
            self.on_tick(self.status())

    def status(self, request_id: int = 0) -> messages.StatusReply:
        now = clock.now_s()
        return messages.StatusReply(
            request_id=request_id,
            session=self.name,
            uptime_s=now - self._t0,
            state=self.state,
            workers=[w.status(now) for w in self.workers.values()],
            streams=self.stream_statuses(),
            bad_messages=self.controller.bad_messages if self.controller else 0,
        )

    def stream_statuses(self) -> list[messages.StreamStatus]:
        """Streams as they are now (a lag needs the current write cursor, not a sampled one)."""
        statuses = []
        for stream, writer in sorted(self.streams.items()):
            state = segments.stream_state(stream)
            cursor = state.write_cursor if state else 0
            readers = [
                messages.ReaderLag(
                    worker=w.name, cursor=r.cursor, lag=max(0, cursor - r.cursor), dropped=r.dropped
                )
                for w in self.workers.values()
                for r in w.readers
                if f"{self.name}/{r.stream}" == stream
            ]
            statuses.append(
                messages.StreamStatus(
                    stream=stream,
                    writer=writer,
                    generation=state.generation if state else 0,
                    sample_rate=state.sample_rate if state else 0.0,
                    write_cursor=cursor,
                    rate_hz=self._rates.get(stream, (0, 0, 0.0))[2],
                    writer_alive=state.writer_alive if state else False,
                    readers=readers,
                )
            )
        return statuses

    # -- what the controller uses --------------------------------------------------------------
    def publish(self, event: Message) -> int:
        """Log ``event`` in the session's event log, send it to every subscriber and to
        ``on_event``; its sequence number in the log (-1 before the log exists)."""
        sequence = -1 if self.event_log is None else self.event_log.append(event)
        if self.server is not None:
            self.server.publish(event)
        self.on_event(event)
        return sequence

    def next_id(self) -> int:
        """A request id for a message the supervisor sends itself."""
        return next(self._ids)
