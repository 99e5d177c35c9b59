"""A whole rig: a real supervisor process, real worker processes, real sockets and shared memory."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from pipeline import StreamNotFound, attach
from pipeline.control import bus, messages, session
from pipeline.errors import RequestFailed
from pipeline.ring import naming, segments, shm
from tests import wine
from tests.rig import DEMO_WORKER, exited, slow_reader, toml_string, wait_for

#: A worker that ignores Stop and SIGTERM (CTRL_BREAK): only a kill ends it.
DEAF_WORKER = (
    '[[workers]]\nname = "deaf"\nkind = "tests.workers.misbehaving"\n'
    '[workers.parameters]\nmode = "deaf"\n'
)


def _read_frames(reader, seconds: float) -> list:
    chunks = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        chunks.append(reader.read(timeout_s=0.5))
    return chunks


def _assert_contiguous(chunks) -> None:
    cursor = chunks[0].start_sequence
    for chunk in chunks:
        assert chunk.dropped == 0
        assert chunk.start_sequence == cursor, "a chunk does not start where the last ended"
        cursor = chunk.end_sequence
    stamps = np.concatenate([c.timestamps_ns for c in chunks if c.frames])
    assert np.all(np.diff(stamps) > 0), "timestamps must increase frame by frame"


def test_outside_reader_gets_contiguous_frames_at_the_configured_rate(rigs) -> None:
    rig = rigs.new().start()
    with attach("acq/continuous") as reader:  # session-relative: the only rig running
        assert reader.stream == f"{rig.name}/acq/continuous"
        assert reader.frame_shape == (8,) and reader.dtype == np.int16
        assert reader.descriptor["channel_labels"][0] == "ch001"
        start = time.monotonic()
        chunks = _read_frames(reader, 1.0)
        elapsed = time.monotonic() - start
    _assert_contiguous(chunks)
    frames = sum(c.frames for c in chunks)
    assert 0.8 * 10000 * elapsed < frames < 1.2 * 10000 * elapsed + 1000
    with attach(f"{rig.name}/acq/spikes", from_now=False) as spikes:
        records = spikes.read(timeout_s=2).data
    assert records.dtype.names == ("timestamp_ns", "channel", "unit")
    # each spike once, in order, stamped as one of the frames it was drawn into
    assert len(records) and np.all(np.diff(records["timestamp_ns"]) >= 0)
    assert len(np.unique(records[["timestamp_ns", "channel", "unit"]])) == len(records)
    stamps = np.concatenate([c.timestamps_ns for c in chunks])
    inside = records["timestamp_ns"][
        (records["timestamp_ns"] >= stamps[0]) & (records["timestamp_ns"] <= stamps[-1])
    ]
    assert len(inside) and np.isin(inside, stamps).all()


def test_an_unknown_short_name_lists_the_streams_of_that_rig_only(rigs, monkeypatch) -> None:
    """``rigpipe tail nosuch/stream`` with two rigs running: the error names the streams
    of the rig the name was taken in, not the other rig's."""
    mine, other = rigs.new().start(), rigs.new().start()
    monkeypatch.setenv("RIGPIPE_SESSION", mine.name)
    with pytest.raises(StreamNotFound) as missing:
        attach("nosuch/stream")
    text = str(missing.value)
    assert f"stream '{mine.name}/nosuch/stream' does not exist" in text
    if missing.value.existing is not None:  # where shared memory can be listed (not Windows)
        assert f"{mine.name}/acq/continuous" in text
    assert other.name not in text


def test_killed_acquisition_worker_restarts_and_readers_follow(rigs) -> None:
    rig = rigs.new().start()
    with attach("acq/continuous") as reader:
        _read_frames(reader, 0.3)
        pid = rig.worker("acq").pid
        psutil.Process(pid).kill()
        killed_at = time.monotonic()

        def restarted():
            worker = rig.worker("acq")
            return worker.state == "running" and worker.pid != pid and worker.restarts == 1

        # Wine starts a Windows process in 1-3 s (a real Windows or Linux: well under 1 s)
        within_s = 5.0 if wine.UNDER_WINE else 2.0
        wait_for(restarted, within_s, "the acquisition worker to be restarted")
        assert time.monotonic() - killed_at < within_s
        chunks = _read_frames(reader, 1.0)
        assert reader.generation == 2
    assert any(c.format_changed for c in chunks)
    after = [c for c in chunks if c.generation == 2]
    assert sum(c.frames for c in after) > 5000
    _assert_contiguous(after)
    assert "restarted (restart 1" in rig.log()


def _shm_mapped_by(pid: int) -> set[str]:
    """Names of the /dev/shm segments process ``pid`` maps, unlinked ones left out."""
    return {
        Path(m.path).name
        for m in psutil.Process(pid).memory_maps(grouped=True)
        if m.path.startswith("/dev/shm/") and not m.path.endswith("(deleted)")
    }


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/maps")
@pytest.mark.posix
def test_a_supervisor_holding_segments_follows_a_restarted_writer_and_lets_go(rigs) -> None:
    """What Windows does by default (RIGPIPE_HOLD_SEGMENTS=on here): the supervisor maps each
    stream's segment and current generation, so a killed writer's frames outlive it."""
    rig = rigs.new().start(env={"RIGPIPE_HOLD_SEGMENTS": "on"})
    stream = f"{rig.name}/acq/continuous"
    meta, first = naming.shm_name(stream), naming.shm_name(naming.data_key(stream, 1))
    wait_for(lambda: {meta, first} <= _shm_mapped_by(rig.proc.pid), 5, "the hold on generation 1")
    with attach(stream) as reader:
        pid = rig.worker("acq").pid
        psutil.Process(pid).kill()
        wait_for(lambda: rig.worker("acq").pid not in (pid, None), 5, "acq to restart")
        second = naming.shm_name(naming.data_key(stream, 2))
        held = wait_for(
            lambda: (m := _shm_mapped_by(rig.proc.pid)) >= {meta, second} and first not in m,
            5,
            "the hold to follow generation 2 and let generation 1 go",
        )
        assert held
        chunks = _read_frames(reader, 0.5)
    assert not any(c.dropped for c in chunks)
    assert chunks[-1].generation == 2
    assert rig.interrupt() == 0
    assert meta not in (shm.list_names() or [])


def test_closing_the_windows_console_stops_the_rig_in_order(rigs, tmp_path) -> None:
    """The supervisor's console-close handler (registered with a fake kernel32) asks for the
    ordered stop and holds the process up until it is done, within Windows' 5 s."""
    result = tmp_path / "console-close.json"
    rig = rigs.new().start(runner="tests.console_close", env={"CONSOLE_CLOSE_RESULT": str(result)})
    stream = f"{rig.name}/acq/continuous"
    assert segments.stream_state(stream) is not None
    result.with_suffix(".go").touch()  # the user closes the console window
    assert rig.proc.wait(15) == 0  # 0: every worker stopped when asked, none was killed
    closed = json.loads(result.read_text())
    assert closed["returned"] == 1 and closed["held_s"] < 4.5
    assert "stopping (console closed)" in rig.log()
    assert "asked to stop" in (rig.log_dir() / "acq.log").read_text()  # Stop, not a kill
    assert segments.stream_state(stream) is None  # closed and gone


@pytest.mark.parametrize("watch", ["pdeathsig", "heartbeat"])
@pytest.mark.posix
def test_killed_supervisor_takes_its_workers_down_cleanly(rigs, watch) -> None:
    rig = rigs.new().start(env={"RIGPIPE_PARENT_WATCH": watch})
    workers = rig.worker_processes()
    assert len(workers) == 1
    stream = f"{rig.name}/acq/continuous"
    rig.proc.kill()
    rig.proc.wait(5)
    killed_at = time.monotonic()
    assert not exited(workers, 2.0), "workers still running 2 s after the supervisor died"
    assert time.monotonic() - killed_at < 2.0
    # They stopped in order: their rings were closed and unlinked, not abandoned.
    assert naming.shm_name(stream) not in (shm.list_names() or [])
    assert "stopping" in (rig.log_dir() / "acq.log").read_text()


@pytest.mark.posix
def test_next_run_cleans_up_after_a_supervisor_killed_with_its_workers(rigs) -> None:
    rig = rigs.new().start()
    workers = rig.worker_processes()
    stream = f"{rig.name}/acq/continuous"
    workers[0].suspend()  # the worker cannot react to its parent dying
    rig.proc.kill()
    rig.proc.wait(5)
    for worker in workers:
        worker.kill()
    assert not exited(workers, 5)
    assert session.read(rig.name) is not None, "a killed supervisor leaves its discovery file"
    assert naming.shm_name(stream) in (shm.list_names() or [])

    rig.start()  # same session name: the stale one is detected and cleaned first
    # two segments for each of acq/continuous, acq/spikes and the event log supervisor/events
    assert "cleaned up after a supervisor that died: removed 6 shared-memory segment(s)" in (
        rig.log()
    ), rig.log()
    with attach(stream) as reader:
        assert reader.generation == 1, "a fresh stream, not a takeover of the stale one"
    with attach(f"{rig.name}/supervisor/events") as reader:
        assert reader.generation == 1, "a fresh event log, numbered from 0 again"
    assert rig.interrupt() == 0
    assert naming.shm_name(stream) not in (shm.list_names() or [])


@pytest.mark.posix
def test_ctrl_c_stops_in_order_and_leaves_nothing(rigs) -> None:
    rig = rigs.new()
    rig.write(DEMO_WORKER + slow_reader(50000.0))
    rig.start()
    discovery = rig.discovery()
    runtime = discovery.runtime_dir
    names = [naming.shm_name(s) for s in discovery.streams]
    workers = rig.worker_processes()
    assert rig.interrupt() == 0
    log = rig.log()
    assert log.index("worker acq: stopped") < log.index("worker slow: stopped"), log
    assert not exited(workers, 1)
    assert not set(names) & set(shm.list_names() or [])
    assert session.read(rig.name) is None
    assert not [e.name for e in os.scandir(runtime) if e.name.endswith(".sock")]


@wine.gap("console events")
def test_second_ctrl_c_kills_a_worker_that_ignores_stop(rigs) -> None:
    rig = rigs.new()
    rig.write(DEAF_WORKER)
    rig.start()
    workers = rig.worker_processes()
    rig.proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert rig.proc.poll() is None, "the deaf worker should hold up the ordered stop"
    assert rig.interrupt(timeout_s=10) == 1  # forced
    assert not exited(workers, 2)


def test_an_ordered_stop_ends_a_worker_that_ignores_it_within_the_documented_timeouts(
    rigs,
) -> None:
    """Stop, then SIGTERM (Windows: CTRL_BREAK, which fails without a console, under
    pythonw, a service or Wine), then a kill: ``stop_timeout_s`` + 2 s whatever happens."""
    rig = rigs.new()
    rig.write(DEAF_WORKER)
    rig.start()
    workers = rig.worker_processes()
    asked = time.monotonic()
    rig.client().request(messages.Shutdown())
    assert rig.proc.wait(3.0 + 2.0 + 5.0) == 1, rig.log()  # 1: a worker had to be killed
    assert time.monotonic() - asked < 3.0 + 2.0 + 5.0
    assert not exited(workers, 2)
    assert "Traceback" not in rig.log(), rig.log()


@pytest.mark.parametrize("transport", ["auto", "tcp"])
def test_a_clean_stop_leaves_only_the_logs_in_the_runtime_directory(rigs, transport) -> None:
    """Even after a worker with its own socket was killed: its socket file, the control
    sockets and a TCP session's secret keys all go; the logs stay."""
    from tests.integration.test_stimulation import STIM

    rig = rigs.new()
    rig.write(
        DEMO_WORKER + STIM.format(buffer_ms=20.0, extra="").replace('restart = "never"', ""),
        control=f'transport = "{transport}"',
    )
    rig.start()
    runtime = Path(rig.discovery().runtime_dir)
    assert rig.discovery().direct, "the stimulator takes requests on a socket of its own"
    pid = rig.worker("stim").pid
    psutil.Process(pid).kill()
    rig.restarted("stim", pid, 20)
    assert rig.interrupt() == 0, rig.log()
    assert sorted(entry.name for entry in runtime.iterdir()) == ["logs"]


@pytest.mark.posix
def test_malformed_and_random_messages_never_stop_the_supervisor(rigs) -> None:
    import zmq

    from pipeline.control import bus

    rig = rigs.new().start()
    endpoints = rig.discovery().endpoints
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    bus._secure_client(sock, bus.load_keys(endpoints))  # over TCP: an authenticated peer
    sock.connect(endpoints.control)
    rng = np.random.default_rng(7)
    bad = [rng.bytes(int(n)) for n in rng.integers(0, 300, 300)]
    bad += [
        b"",
        b"\x81\xa4type\xa6status\xa0",  # truncated msgpack
        b"\x82\xa4type\xa6status\xaarequest_id\xa1x",  # request_id of the wrong type
        b"\x81\xa4type\xa7explode",  # unknown tag
        messages.encode(messages.StatusReply(session="x", uptime_s=0, state="y")),  # not a request
        messages.encode(messages.Hello(protocol_version=99)),  # another protocol version
    ]
    try:
        for payload in bad:
            sock.send(payload)
        sock.send_multipart([b"two", b"frames"])
        replies = []
        deadline = time.monotonic() + 10
        while len(replies) < len(bad) + 1 and time.monotonic() < deadline:
            if sock.poll(500):
                replies.append(messages.decode(sock.recv()))
    finally:
        sock.close()
    assert len(replies) == len(bad) + 1
    assert all(isinstance(r, messages.Error) for r in replies)
    assert rig.status().bad_messages == len(bad) + 1
    # Raw bytes that are not ZeroMQ at all, on the same endpoint (libzmq may read them
    # as old-protocol frames: those are answered and counted too, or dropped).
    if endpoints.control.startswith("ipc://"):
        import socket

        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.connect(endpoints.control.removeprefix("ipc://"))
        raw.sendall(rng.bytes(4096))
        raw.close()
    time.sleep(0.3)
    status = rig.status()
    assert status.bad_messages >= len(bad) + 1
    assert all(w.state == "running" for w in status.workers)
    assert rig.proc.poll() is None


def test_parameters_annotations_and_events(rigs) -> None:
    rig = rigs.new().start()
    with rig.subscriber() as events:
        time.sleep(0.3)  # let the subscription reach the PUB socket
        reply = rig.client().request(
            messages.SetParameter(worker="acq", name="spike_rate_hz", value=40)
        )
        assert isinstance(reply, messages.Ok)
        rig.client().request(messages.Annotate(text="drug applied"))
        seen = []
        deadline = time.monotonic() + 5
        while len(seen) < 2 and time.monotonic() < deadline:
            event = events.receive(0.5)
            if event and isinstance(event[1], messages.ParameterChanged | messages.Annotation):
                seen.append(event)
    assert seen[0][0] == "worker.acq.parameter_changed" and seen[0][1].value == 40
    assert seen[1][0] == "session.annotated" and seen[1][1].text == "drug applied"
    assert abs(seen[1][1].time_ns - time.time_ns()) < 10e9
    with pytest.raises(RequestFailed, match=r"settable: .*spike_rate_hz"):
        rig.client().request(messages.SetParameter(worker="acq", name="channels", value=4))
    # in rigpipe's words, not msgspec's ("Expected `float`, got `str` - at `$.lfp_uv`")
    with pytest.raises(
        RequestFailed, match=r"^acq\.lfp_uv = 'big' refused: must be a number, not text$"
    ):
        rig.client().request(messages.SetParameter(worker="acq", name="lfp_uv", value="big"))
    with pytest.raises(
        RequestFailed, match=r"acq\.lfp_uv = -3 refused: must be a number at least 0"
    ):
        rig.client().request(messages.SetParameter(worker="acq", name="lfp_uv", value=-3))
    with pytest.raises(RequestFailed, match="no worker named 'nope'; workers: acq"):
        rig.client().request(messages.StopWorker(worker="nope"))


def test_stop_start_and_restart_one_worker(rigs) -> None:
    rig = rigs.new().start()
    first = rig.worker("acq").pid
    rig.client().request(messages.StopWorker(worker="acq"))
    wait_for(lambda: rig.worker("acq").state == "stopped", 5, "the worker to stop")
    time.sleep(0.8)  # longer than its backoff: a stopped worker stays stopped
    assert rig.worker("acq").state == "stopped"
    rig.client().request(messages.StartWorker(worker="acq"))
    wait_for(lambda: rig.worker("acq").state == "running", 10, "the worker to start")
    second = rig.worker("acq").pid
    rig.client().request(messages.RestartWorker(worker="acq"))
    wait_for(
        lambda: (w := rig.worker("acq")).state == "running" and w.pid not in (first, second),
        10,
        "the worker to restart",
    )
    assert rig.worker("acq").restarts == 1


def test_restart_policy_backs_off_then_gives_up(rigs) -> None:
    rig = rigs.new()
    rig.write(
        '[[workers]]\nname = "flaky"\nkind = "tests.workers.misbehaving"\n'
        "max_restarts = 2\nbackoff_s = 0.1\nbackoff_max_s = 0.2\n"
        '[workers.parameters]\nmode = "crash"\nafter_s = 0.1\n'
    )
    rig.start(wait=False)
    wait_for(lambda: rig.discovery() and rig.worker("flaky").state == "failed", 30, "failed")
    flaky = rig.worker("flaky")
    assert flaky.restarts == 2 and flaky.exit_code == 3
    log = rig.log()
    assert "restarting in 0 s" in log and "restarting in 0.1 s" in log
    assert "gave up after 2 restarts" in log


def test_a_worker_that_stops_heartbeating_is_killed_and_restarted(rigs) -> None:
    rig = rigs.new()
    rig.write(
        '[[workers]]\nname = "hang"\nkind = "tests.workers.misbehaving"\nrestart = "always"\n'
        '[workers.parameters]\nmode = "hang"\nafter_s = 0.3\n'
    )
    rig.start()
    wait_for(lambda: rig.worker("hang").restarts >= 1, 10, "the hung worker to be restarted")
    assert "no heartbeat for" in rig.log()


def test_a_setup_longer_than_the_heartbeat_timeout_neither_kills_nor_ends_the_worker(
    rigs,
) -> None:
    rig = rigs.new()  # heartbeat_timeout_s = 1.0; setup blocks 2.5 s
    rig.write(
        '[[workers]]\nname = "slow"\nkind = "tests.workers.misbehaving"\nrestart = "on-failure"\n'
        'start_timeout_s = 10.0\n[workers.parameters]\nmode = "crash"\nafter_s = 3600\n'
        "setup_s = 2.5\n"
    )
    rig.start()
    first = rig.worker("slow")
    time.sleep(2.0)  # several heartbeat timeouts after setup returned
    slow = rig.worker("slow")
    assert (slow.state, slow.pid, slow.restarts) == ("running", first.pid, 0)
    assert "it is gone" not in rig.log() and "no heartbeat for" not in rig.log()


def test_status_shows_a_lossless_readers_lag(rigs) -> None:
    rig = rigs.new()
    rig.write(DEMO_WORKER + slow_reader(2000.0))
    rig.start()

    def lagging():
        stream = next(s for s in rig.status().streams if s.stream.endswith("acq/continuous"))
        return stream.readers and stream.readers[0].lag > 3000 and stream.readers[0]

    reader = wait_for(lagging, 10, "the slow reader's lag to show")
    assert reader.worker == "slow"


def test_control_plane_over_tcp_when_forced(rigs) -> None:
    rig = rigs.new().start(env={"RIGPIPE_TRANSPORT": "tcp"})
    endpoints = rig.discovery().endpoints
    assert endpoints.control.startswith("tcp://127.0.0.1:")
    assert rig.status().workers[0].state == "running"


def _raw_request(endpoint: str, secure=None) -> bytes | None:
    """One Status request from a plain DEALER (optionally with given CURVE keys)."""
    import zmq

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if secure is not None:
        secure(sock)
    sock.connect(endpoint)
    try:
        sock.send(messages.encode(messages.Status()))
        return sock.recv() if sock.poll(1500) else None
    finally:
        sock.close()


def test_a_reader_that_leaves_the_pipe_early_is_not_a_traceback(rigs) -> None:
    rig = rigs.new().start()
    for command in (["status", "--session", rig.name], ["status", "--session", rig.name, "--json"]):
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        proc.stdout.close()  # as `rigpipe status | head -0` does
        stderr = proc.stderr.read()  # not communicate(): on Windows it reads stdout too
        proc.stderr.close()
        proc.wait(30)
        assert proc.returncode == 0 and b"Traceback" not in stderr, stderr
        assert b"Exception ignored" not in stderr, stderr


def test_tcp_control_answers_only_peers_with_the_sessions_keys(rigs, tmp_path) -> None:
    import zmq

    from pipeline.control import bus

    rig = rigs.new().start(env={"RIGPIPE_TRANSPORT": "tcp"})
    endpoints = rig.discovery().endpoints
    keys_file = endpoints.keys
    if os.name == "posix":  # Windows keeps a user's files private through their ACL
        assert oct(os.stat(keys_file).st_mode & 0o777) == "0o600", "the keys are private"
    assert rig.status().state == "running", "the session's own clients get in"
    assert _raw_request(endpoints.control) is None, "a peer without keys gets nothing"
    keys = bus.load_keys(endpoints)
    public, secret = zmq.curve_keypair()  # knows the server's key, but is not the client

    def stranger(sock):
        sock.curve_serverkey = keys.server_public.encode()
        sock.curve_publickey, sock.curve_secretkey = public, secret

    assert _raw_request(endpoints.control, stranger) is None, "an unknown client key neither"
    assert rig.status().state == "running" and rig.worker("acq").restarts == 0
    copied = tmp_path / "copied-keys.json"  # as on another machine: a copy of the file
    copied.write_bytes(Path(keys_file).read_bytes())
    elsewhere = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "status", "--session", rig.name],
        env={**os.environ, "RIGPIPE_CURVE_KEYS": str(copied)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert elsewhere.returncode == 0 and "acq" in elsewhere.stdout, elsewhere.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "status", "--session", rig.name],
        env={**os.environ, "RIGPIPE_CURVE_KEYS": str(tmp_path / "nowhere.json")},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert "CURVE key file" in missing.stderr and "is missing" in missing.stderr


def test_a_keys_file_keeps_a_remote_clients_copy_valid_across_restarts(rigs, tmp_path) -> None:
    keys_file = tmp_path / "keys" / "rig-curve.json"
    rig = rigs.new()
    rig.write(control=f'transport = "tcp"\nkeys_file = {toml_string(keys_file)}')
    rig.start()
    assert rig.discovery().endpoints.keys == str(keys_file)
    assert os.name != "posix" or keys_file.stat().st_mode & 0o777 == 0o600
    copied = tmp_path / "on-another-machine.json"
    copied.write_bytes(keys_file.read_bytes())
    assert rig.interrupt() == 0
    rig.start()  # the same session again: the same keys

    def status_with(keys: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "status", "--session", rig.name],
            env={**os.environ, "RIGPIPE_CURVE_KEYS": str(keys)},
            capture_output=True,
            text=True,
            timeout=30,
        )

    kept = status_with(copied)
    assert kept.returncode == 0 and "acq" in kept.stdout, kept.stderr
    stale = tmp_path / "a-session-without-keys-file.json"  # keys of another start
    bus.make_keys(tmp_path, stale.name)
    refused = status_with(stale)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr


def test_a_second_supervisor_for_a_running_session_is_refused(rigs) -> None:
    rig = rigs.new().start()
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", str(rig.config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "already running" in result.stderr and "Traceback" not in result.stderr


def test_cli_against_a_running_rig(rigs) -> None:
    rig = rigs.new().start()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pipeline.cli", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )

    status = cli("status")
    assert status.returncode == 0 and "acq" in status.stdout and "running" in status.stdout
    tail = cli("tail", "acq/continuous", "--seconds", "1.2")
    assert tail.returncode == 0 and "frames/s" in tail.stdout
    assert re.fullmatch(r"annotation logged as event \d+", cli("annotate", "hello").stdout.strip())
    assert "acq.spike_rate_hz = 3" in cli("set", "acq", "spike_rate_hz", "3").stdout
    pid = rig.worker("acq").pid
    killed = cli("worker", "kill", "acq")
    assert killed.returncode == 0 and f"killed acq (pid {pid})" in killed.stdout
    rig.restarted("acq", pid, 10)
    assert rig.worker("acq").restarts == 1
    unknown = cli("worker", "kill", "nobody")
    assert unknown.returncode == 1 and "no worker named 'nobody'" in unknown.stderr
    stop = cli("stop")
    assert stop.returncode == 0 and "stopped" in stop.stdout
    assert rig.proc.wait(10) == 0


def test_cli_without_a_rig_says_how_to_start_one(rigs) -> None:
    for command in (["status"], ["stop"], ["annotate", "x"], ["tail", "acq/continuous"]):
        result = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", *command],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 1, command
        assert result.stderr.strip() == (
            "rigpipe: no rig is running; start one with `rigpipe run configs/demo.toml`"
        )


def test_the_readme_worker_example_runs_in_a_rig(rigs, monkeypatch) -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Write a worker") :]
    start = section.index("```python\n") + len("```python\n")
    code = section[start : section.index("\n```", start)]
    rig = rigs.new()
    package = rig.directory / "mylab"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "decoder.py").write_text(code)
    monkeypatch.setenv("PYTHONPATH", str(rig.directory))
    rig.write(DEMO_WORKER + '[[workers]]\nname = "decoder"\nkind = "mylab.decoder"\n')
    rig.start()
    with attach(f"{rig.name}/decoder/rate", from_now=False) as rate:
        values = rate.read(timeout_s=5).data
    assert values.shape[1:] == (1,) and values.min() > 0
    rig.client().request(messages.SetParameter(worker="decoder", name="gain", value=2.0))
    stream = next(s for s in rig.status().streams if s.stream.endswith("acq/continuous"))
    assert [r.worker for r in stream.readers] == ["decoder"]


def test_a_workers_spec_is_not_on_its_command_line_and_a_large_config_runs(rigs) -> None:
    """The spec (the whole config) goes on stdin: argv is readable by every user (ps,
    /proc) and capped (128 KiB per argument on Linux, 32 KiB in all on Windows)."""
    rig = rigs.new()
    rig.write(DEMO_WORKER, session_extra="# " + "x" * 200_000)  # a config of 200 KB
    rig.start()
    (worker,) = rig.worker_processes()
    cmdline = worker.cmdline()
    assert cmdline[-2:] == ["--spec-stdin", f"{rig.name}/acq"]
    assert not any("xxxx" in a or "sample_rate_hz" in a for a in cmdline)
    assert rig.interrupt() == 0


@pytest.mark.skipif(not hasattr(os, "fchown") or os.geteuid() != 0, reason="needs root to chown")
@pytest.mark.posix
def test_a_segment_squatted_by_another_user_is_refused_in_one_line_and_left_alone(rigs) -> None:
    import _posixshmem

    rig = rigs.new()
    name = naming.shm_name(f"{rig.name}/acq/continuous")
    fd = _posixshmem.shm_open("/" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o666)
    try:
        os.ftruncate(fd, 4096)
        os.fchown(fd, 65534, 65534)  # as if user nobody had created it first
        rig.write(
            DEMO_WORKER.replace('kind = "acquisition"', 'kind = "acquisition"\nrestart = "never"')
        )
        rig.start(wait=False)
        wait_for(lambda: rig.discovery() and rig.worker("acq").state == "failed", 30, "failure")
        log = rig.log()
        assert f"shared-memory segment '{name}' belongs to nobody (uid 65534)" in log, log
        assert "Traceback" not in log
        assert rig.status().state == "running", "the supervisor is not crashed by it"
        swept = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "sweep"], capture_output=True, text=True
        )
        assert "Traceback" not in swept.stderr, swept.stderr
        assert os.path.exists(f"/dev/shm/{name}"), "another user's segment is never unlinked"
        assert rig.interrupt() == 1, "a session that ended with a failed worker exits 1"
        assert "worker acq ended the session failed" in rig.log()
    finally:
        os.close(fd)
        shm.unlink(name)
