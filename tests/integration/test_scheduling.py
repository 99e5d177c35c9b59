"""``realtime_priority``: a worker's threads under SCHED_FIFO, checked by asking the kernel.

The referee is the kernel itself (``sched_getscheduler`` and ``sched_getparam``
of every thread psutil lists for the worker's process). Without the right to
real-time scheduling (``setpriv`` drops ``CAP_SYS_NICE``, ``prlimit`` sets
``RLIMIT_RTPRIO`` to 0), the worker must say so and run on, not fail.
"""

from __future__ import annotations

import os
import shutil
import sys

import psutil
import pytest

from pipeline.control import messages
from pipeline.host import scheduling
from tests.integration.test_stimulation import SOURCE, STIM, TRIGGER
from tests.rig import wait_for

pytestmark = [
    pytest.mark.posix,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_FIFO is Linux's"),
]

PRIORITY = 10


def _config(rig_name: str) -> str:
    stim = STIM.format(buffer_ms=20.0, extra="armed = true").replace(
        'restart = "never"', f'restart = "never"\nrealtime_priority = {PRIORITY}'
    )
    return (
        f'[session]\nname = "{rig_name}"\nstop_timeout_s = 3.0\n'
        "[control]\nheartbeat_timeout_s = 2.0\n" + SOURCE + stim + TRIGGER
    )


def _threads(pid: int) -> list[int]:
    return [thread.id for thread in psutil.Process(pid).threads()]


def _pid(rig, worker: str) -> int:
    return rig.worker(worker).pid


def _may_use_fifo() -> bool:
    if not hasattr(os, "sched_setscheduler"):  # evaluated at collection, on every OS
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except PermissionError:
        return False
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    return True


@pytest.mark.skipif(not _may_use_fifo(), reason="this user may not use SCHED_FIFO")
def test_a_realtime_worker_runs_every_thread_under_sched_fifo_and_the_others_do_not(rigs) -> None:
    rig = rigs.new()
    rig.config.write_text(_config(rig.name))
    rig.start()
    stim, src = _pid(rig, "stim"), _pid(rig, "src")
    threads = _threads(stim)
    assert len(threads) >= 3  # main, the device's clock, ZeroMQ's I/O thread at least
    for tid in threads:
        assert os.sched_getscheduler(tid) == os.SCHED_FIFO, f"thread {tid}"
        assert os.sched_getparam(tid).sched_priority == PRIORITY
    assert all(os.sched_getscheduler(tid) == os.SCHED_OTHER for tid in _threads(src))
    assert rig.worker("stim").counters["realtime_priority"] == PRIORITY
    # and it does its work: a command is answered, the trigger rule fires
    reply = rig.client().request(messages.PulseTrain(worker="stim", channel=0, phases=PHASES))
    assert isinstance(reply, messages.Accepted)
    wait_for(lambda: rig.worker("stim").counters.get("fired", 0) > 0, 10, "the rule to fire")
    # threads started later inherit it (the doorbell starts at the first sleep on a ring)
    assert all(os.sched_getscheduler(tid) == os.SCHED_FIFO for tid in _threads(stim))
    assert rig.interrupt() == 0


@pytest.mark.skipif(not _may_use_fifo(), reason="this user may not use SCHED_FIFO")
@pytest.mark.skipif(shutil.which("chrt") is None, reason="needs util-linux chrt")
def test_workers_do_not_inherit_a_realtime_supervisor_only_their_own_priority(rigs) -> None:
    # A supervisor started under SCHED_FIFO (by chrt here; by a real-time decoder that
    # starts a rig) hands its policy to every child. A scope or recorder at the
    # stimulator's priority would delay it by milliseconds: each worker drops it.
    rig = rigs.new()
    rig.config.write_text(_config(rig.name))
    rig.start(prefix=["chrt", "--fifo", str(PRIORITY + 5)])
    assert os.sched_getscheduler(rig.proc.pid) == os.SCHED_FIFO  # what it was started under
    stim, src = _pid(rig, "stim"), _pid(rig, "src")
    assert all(os.sched_getscheduler(tid) == os.SCHED_OTHER for tid in _threads(src))
    for tid in _threads(stim):  # its own priority, not the inherited one
        assert os.sched_getscheduler(tid) == os.SCHED_FIFO, f"thread {tid}"
        assert os.sched_getparam(tid).sched_priority == PRIORITY
    wait_for(lambda: rig.log().count("dropped SCHED_FIFO priority 15") >= 2, 10, "two reports")
    report = next(line for line in rig.log().splitlines() if "dropped SCHED_FIFO" in line)
    assert "realtime_priority" in report
    assert rig.interrupt() == 0


def test_a_process_under_normal_scheduling_has_nothing_to_drop(monkeypatch) -> None:
    assert scheduling.drop_inherited() == ""
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    monkeypatch.delattr(os, "sched_getscheduler")  # Windows, macOS: nothing is inherited
    assert scheduling.drop_inherited() == ""


@pytest.mark.skipif(
    shutil.which("setpriv") is None or shutil.which("prlimit") is None,
    reason="needs util-linux setpriv and prlimit",
)
def test_without_the_right_the_worker_warns_how_to_allow_it_and_runs_on(rigs) -> None:
    rig = rigs.new()
    rig.config.write_text(_config(rig.name))
    no_rights = [
        "prlimit",
        "--rtprio=0:0",
        "--",
        "setpriv",
        "--bounding-set=-sys_nice",
        "--inh-caps=-sys_nice",
    ]
    rig.start(prefix=no_rights)
    stim = _pid(rig, "stim")
    assert all(os.sched_getscheduler(tid) == os.SCHED_OTHER for tid in _threads(stim))
    assert rig.worker("stim").counters["realtime_priority"] == 0
    wait_for(lambda: "ulimit -r" in rig.log(), 10, "the warning in the supervisor's output")
    warning = next(line for line in rig.log().splitlines() if "ulimit -r" in line)
    assert "not allowed to use real-time scheduling" in warning and "CAP_SYS_NICE" in warning
    assert rig.worker("stim").state == "running"
    assert rig.interrupt() == 0


def test_a_priority_out_of_range_is_refused() -> None:
    for wrong in (-1, scheduling.MAX_PRIORITY + 1):
        with pytest.raises(ValueError, match=r"realtime priority must be 0\.\.49"):
            scheduling.make_realtime(wrong)


def test_where_the_os_has_no_sched_fifo_the_process_is_told_and_runs_on(monkeypatch) -> None:
    # macOS: os has no sched_setscheduler (forced here by removing it)
    monkeypatch.delattr(os, "sched_setscheduler")
    why = scheduling.make_realtime(PRIORITY)
    assert "not available" in why and "normal priority" in why
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


PHASES = [messages.Phase(-40.0, 100.0), messages.Phase(40.0, 100.0)]
