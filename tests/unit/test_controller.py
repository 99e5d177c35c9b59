"""The controller's handlers and the restart arithmetic, against a fake supervisor: no processes.

The supervisor's integration tests (tests/integration/test_session.py) run the
same paths with real processes and sockets; these pin each handler's spec down.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import config
from pipeline.control import messages
from pipeline.control.bus import Endpoints
from pipeline.errors import ProtocolError
from pipeline.supervisor.controller import FORWARD_TIMEOUT_S, Controller
from pipeline.supervisor.process import WorkerProcess, WorkerState
from pipeline.worker import WorkerSpec

RIG = """
[session]
name = "fake"
[[workers]]
name = "acq"
kind = "acquisition"
max_restarts = 4
backoff_s = 0.5
backoff_max_s = 1.5
stable_s = 10.0
[[workers]]
name = "stim"
kind = "stimulation"
[workers.parameters.limits.default]
max_amplitude_ua = 100.0
max_charge_per_phase_nc = 30.0
"""


class FakePopen:
    """What WorkerProcess asks of its process: a pid and whether it has exited."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.code: int | None = None

    def poll(self) -> int | None:
        return self.code


class FakeServer:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, messages.Message]] = []

    def send(self, peer: bytes, message: messages.Message) -> bool:
        self.sent.append((peer, message))
        return True


class FakeSupervisor:
    """Offers what the controller uses, and records what it was asked to do."""

    name = "fake"

    def __init__(self, tmp_path: Path) -> None:
        rig = config.loads(RIG)
        endpoints = Endpoints("ipc:///nowhere/control", "ipc:///nowhere/events")
        self.workers = {
            plan.name: WorkerProcess(
                plan,
                WorkerSpec(
                    session="fake",
                    name=plan.name,
                    kind=plan.config.kind,
                    endpoints=endpoints,
                    supervisor_pid=1,
                ),
                tmp_path / f"{plan.name}.log",
            )
            for plan in rig.workers
        }
        self.stopping = False
        self.published: list[messages.Message] = []
        self.asked_to_stop: list[tuple[str, bool]] = []
        self.stop_reason: str | None = None
        self._pids = iter(range(1000, 2000))
        self._ids = iter(range(1, 1000))

    def spawn(self, worker: WorkerProcess) -> None:
        worker.popen = FakePopen(next(self._pids))  # type: ignore[assignment]
        worker.state = WorkerState.STARTING

    def ask_to_stop(self, worker: WorkerProcess, hold: bool) -> None:
        self.asked_to_stop.append((worker.name, hold))
        worker.state = WorkerState.STOPPING

    def publish(self, event: messages.Message) -> None:
        self.published.append(event)

    def request_stop(self, reason: str) -> None:
        self.stop_reason = reason

    def next_id(self) -> int:
        return next(self._ids)

    def status(self, request_id: int = 0) -> messages.StatusReply:
        raise RuntimeError("status exploded")  # dispatch must turn this into an Error

    def stream_statuses(self) -> list[messages.StreamStatus]:
        return []


@pytest.fixture
def rig(tmp_path: Path) -> tuple[Controller, FakeSupervisor, FakeServer]:
    supervisor, server = FakeSupervisor(tmp_path), FakeServer()
    return Controller(supervisor, server), supervisor, server  # type: ignore[arg-type]


def _running(controller: Controller, supervisor: FakeSupervisor, name: str) -> WorkerProcess:
    worker = supervisor.workers[name]
    supervisor.spawn(worker)
    controller.handle(b"w-" + name.encode(), messages.Hello(worker=name, pid=worker.pid))
    beat = messages.Heartbeat(worker=name, pid=worker.pid, ready=True)
    assert isinstance(controller.handle(b"w-" + name.encode(), beat), messages.HeartbeatAck)
    return worker


def test_a_ready_heartbeat_marks_a_worker_running_and_is_acknowledged(rig) -> None:
    controller, supervisor, _ = rig
    worker = _running(controller, supervisor, "acq")
    assert worker.state is WorkerState.RUNNING and worker.identity == b"w-acq"
    assert any(
        isinstance(e, messages.WorkerStateChanged) and e.state == "running"
        for e in supervisor.published
    )
    stale = messages.Heartbeat(worker="acq", pid=worker.pid + 1, ready=True)
    assert controller.handle(b"old", stale) is None, "an earlier process gets no ack"
    unknown = controller.handle(b"x", messages.Heartbeat(worker="nobody", pid=1))
    assert isinstance(unknown, messages.Error) and controller.bad_messages == 1


def test_a_hello_of_another_protocol_version_is_refused_naming_both(rig) -> None:
    controller, _, _ = rig
    reply = controller.handle(b"c", messages.Hello(worker="", pid=0, protocol_version=999))
    assert isinstance(reply, messages.Error)
    assert "999" in reply.text and str(messages.PROTOCOL_VERSION) in reply.text


def test_worker_commands_follow_their_spec(rig) -> None:
    controller, supervisor, _ = rig
    reply = controller.handle(b"c", messages.StopWorker(request_id=4, worker="nope"))
    assert isinstance(reply, messages.Error) and reply.request_id == 4
    assert "acq, stim" in reply.text
    acq = _running(controller, supervisor, "acq")
    reply = controller.handle(b"c", messages.StartWorker(worker="acq"))
    assert isinstance(reply, messages.Error) and "already running" in reply.text
    controller.handle(b"c", messages.StopWorker(worker="acq"))
    assert supervisor.asked_to_stop == [("acq", True)]
    acq.popen.code = 0  # it exited
    acq.state = WorkerState.STOPPED
    restarts = acq.restarts
    reply = controller.handle(b"c", messages.RestartWorker(worker="acq"))
    assert isinstance(reply, messages.Ok) and acq.state is WorkerState.STARTING
    assert acq.restarts == restarts + 1 and not acq.held
    supervisor.stopping = True
    reply = controller.handle(b"c", messages.StartWorker(worker="stim"))
    assert isinstance(reply, messages.Error) and "stopping" in reply.text


def test_a_forwarded_request_is_relayed_both_ways_or_times_out(rig) -> None:
    controller, supervisor, server = rig
    set_rate = messages.SetParameter(request_id=7, worker="acq", name="spike_rate_hz", value=3)
    reply = controller.handle(b"client", set_rate)
    assert isinstance(reply, messages.Error) and "not running" in reply.text
    _running(controller, supervisor, "acq")
    assert controller.handle(b"client", set_rate) is None  # the answer comes later
    peer, forwarded = server.sent[-1]
    assert peer == b"w-acq" and forwarded.request_id != 7
    controller.handle(b"w-acq", messages.Ok(request_id=forwarded.request_id, detail="ok"))
    assert server.sent[-1] == (b"client", messages.Ok(request_id=7, detail="ok"))
    assert isinstance(supervisor.published[-1], messages.ParameterChanged)
    # No answer in time: the client gets an Error naming the worker.
    controller.handle(
        b"client", messages.SetParameter(request_id=8, worker="acq", name="x", value=1)
    )
    controller.expire_forwarded(now=float("inf"))
    peer, late = server.sent[-1]
    assert peer == b"client" and isinstance(late, messages.Error) and late.request_id == 8
    assert f"acq did not answer within {FORWARD_TIMEOUT_S:g} s" == late.text


def test_nothing_on_the_wire_raises_out_of_dispatch(rig) -> None:
    controller, supervisor, server = rig
    controller.dispatch(b"c", ProtocolError("garbage"))
    assert server.sent[-1] == (b"c", messages.Error(text="garbage"))
    controller.dispatch(b"c", messages.Status(request_id=3))  # the handler raises
    peer, reply = server.sent[-1]
    assert peer == b"c"
    assert isinstance(reply, messages.Error) and reply.request_id == 3
    assert "status exploded" in reply.text
    controller.dispatch(b"c", messages.Shutdown(request_id=5))
    assert supervisor.stop_reason == "shutdown requested"
    controller.dispatch(b"c", messages.Annotate(request_id=6, text="drug applied"))
    assert isinstance(supervisor.published[-1], messages.Annotation)
    assert supervisor.published[-1].text == "drug applied"


# -- the restart arithmetic ----------------------------------------------------------------------
def test_first_failure_restarts_at_once_then_backs_off_doubling_to_the_cap(rig) -> None:
    _, supervisor, _ = rig
    acq = supervisor.workers["acq"]  # backoff 0.5 s, cap 1.5 s, 4 restarts, stable after 10 s
    acq.ready_at = 100.0
    delays = [acq.next_restart(100.0 + i) for i in range(5)]
    assert delays == [0.0, 0.5, 1.0, 1.5, None], "gives up after max_restarts"


def test_a_worker_that_ran_stable_s_counts_failures_from_zero_again(rig) -> None:
    _, supervisor, _ = rig
    acq = supervisor.workers["acq"]
    acq.ready_at = 0.0
    assert [acq.next_restart(t) for t in (1.0, 2.0)] == [0.0, 0.5]
    acq.ready_at = 2.5  # running again, then 10 s without a failure
    assert acq.next_restart(12.5) == 0.0 and acq.failures == 1


# -- stopping a worker on Windows (the branch run on Linux through the _POSIX seam) ---------------
class FakeWindowsPopen(FakePopen):
    """A Popen whose CTRL_BREAK cannot be delivered (no console), as under pythonw or a service."""

    def __init__(self, pid: int, console: bool | str) -> None:
        super().__init__(pid)
        self.console = console
        self.sent: list[str] = []

    def send_signal(self, sig: int) -> None:
        if self.console == "system error":  # CPython 3.11's os.kill on Windows (gh-58689)
            raise SystemError("<built-in function kill> returned a result with an exception set")
        if not self.console:
            raise OSError(87, "The parameter is incorrect")
        self.sent.append(f"signal {sig}")

    def kill(self) -> None:
        self.sent.append("kill")
        self.code = 1


@pytest.mark.parametrize("console", [True, False, "system error"])
def test_on_windows_a_stop_is_ctrl_break_then_terminate_and_never_crashes(
    rig, monkeypatch, console: bool | str
) -> None:
    from pipeline.supervisor import process

    monkeypatch.setattr(process, "_POSIX", False)
    _, supervisor, _ = rig
    acq = supervisor.workers["acq"]
    acq.popen = popen = FakeWindowsPopen(4242, console)  # type: ignore[assignment]
    acq.stop_deadline, acq.kill_stage = 0.0, 0
    acq.escalate(now=1.0, grace_s=5.0)  # the worker ignored Stop: ask the OS
    if console is True:
        assert popen.sent == [f"signal {process._CTRL_BREAK_EVENT}"] and acq.kill_stage == 1
        acq.escalate(now=10.0, grace_s=5.0)  # still there 2 s later: TerminateProcess
        assert popen.sent[-1] == "kill" and acq.kill_stage == 2
    else:
        assert popen.sent == ["kill"], "no console: terminated instead of raising"
        assert acq.kill_stage == 2, "counted as killed: the session's exit code says so"
