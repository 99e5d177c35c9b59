"""The stimulation worker in a real rig: commands over the control plane, the simulated
stimulator's output ring, closed-loop triggers, events and the recorder."""

from __future__ import annotations

import subprocess
import sys
import time

import h5py
import msgspec
import numpy as np
import psutil
import pytest

import pipeline
from pipeline import BusTimeout, RequestFailed, StimulationRefused, attach
from pipeline.control import messages
from pipeline.control.bus import Client, Endpoints, Subscriber
from pipeline.control.direct import COMMAND_FRAME, COMMAND_PAYLOAD, REQUEST
from pipeline.control.stimulator import PreparedStimulus, Stimulator
from pipeline.recording.format import read_manifest
from pipeline.ring import RingReader, naming, shm
from pipeline.ring import watch as watch_module
from tests.rig import toml_string, wait_for

RATE = 50_000.0
BUFFER_MS = 20.0

STIM = """
[[workers]]
name = "stim"
kind = "stimulation"
restart = "never"
[workers.parameters]
channels = 2
buffer_ms = {buffer_ms}
{extra}
[workers.parameters.limits.default]
max_amplitude_ua = 100.0
max_charge_per_phase_nc = 30.0
max_rate_hz = 200.0
"""

TRIGGER = """
[[workers.parameters.triggers]]
name = "spk"
stream = "src/out"
channel = 1
threshold = -50.0
direction = "falling"
refractory_ms = 20.0
stim_channel = 1
phases = [[-40.0, 100.0], [40.0, 100.0]]
"""

SOURCE = """
[[workers]]
name = "src"
kind = "tests.workers.spikes"
[workers.parameters]
period_ms = 100.0
"""


def ask(client: Client, request: messages.Message) -> messages.Message:
    """Send ``request`` and return the reply as it came (Refused included, not raised)."""
    request_id = int(time.monotonic_ns() % 1_000_000_000)
    client.send(msgspec.structs.replace(request, request_id=request_id))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        reply = client.receive(1.0)
        if reply is not None and getattr(reply, "request_id", None) == request_id:
            return reply
    raise AssertionError(f"no reply to {request}")


def events(subscriber: Subscriber, seconds: float) -> list[messages.Message]:
    found, deadline = [], time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        got = subscriber.receive(remaining)
        if got is not None:
            found.append(got[1])
    return found


def output(reader: RingReader, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """``seconds`` of the stimulator's output ring: (frames, channels) uA and timestamps."""
    data, stamps, deadline = [], [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        chunk = reader.read(timeout_s=0.05)
        assert chunk.dropped == 0
        data.append(chunk.data)
        stamps.append(chunk.timestamps_ns)
    return np.concatenate(data), np.concatenate(stamps)


def pulses(*phases: tuple[float, int], period: int, count: int) -> np.ndarray:
    """The expected output of a train: phases as (uA, samples), ``count`` periods."""
    one = np.zeros(period, np.float32)
    at = 0
    for amplitude, samples in phases:
        one[at : at + samples] = amplitude
        at += samples
    return np.tile(one, count)[: (count - 1) * period + at]


def active(samples: np.ndarray) -> np.ndarray:
    """``samples`` from the first to the last non-zero one."""
    nonzero = np.flatnonzero(samples)
    return samples[nonzero[0] : nonzero[-1] + 1] if len(nonzero) else samples[:0]


def test_commands_are_checked_answered_output_exactly_and_recorded(rigs) -> None:
    rig = rigs.new()
    recordings = rig.directory / "recordings"
    recorder = """
[[workers]]
name = "rec"
kind = "recording"
[workers.parameters]
streams = ["stim/output"]
recording = true
flush_s = 0.3
"""
    rig.write(
        STIM.format(buffer_ms=BUFFER_MS, extra="") + recorder,
        session_extra=f"recordings_dir = {toml_string(recordings)}",
    )
    rig.start()
    client = rig.client()
    stim_events = rig.subscriber("worker.stim.")
    # A SUB socket gets events only once its subscription reached the publisher: wait for one
    # (a Disarm publishes StimulatorArmed) before counting any.
    wait_for(
        lambda: ask(client, messages.Disarm()) and stim_events.receive(0.2) is not None,
        10,
        "the event subscription to be live",
    )
    events(stim_events, 0.2)
    reader = attach(f"{rig.name}/stim/output", from_now=True)
    try:
        assert reader.sample_rate == RATE and reader.frame_shape == (2,)
        biphasic = [messages.Phase(-30.0, 100.0), messages.Phase(30.0, 100.0)]

        refused = ask(client, messages.PulseTrain(channel=0, phases=biphasic))
        assert isinstance(refused, messages.Refused) and refused.limit == "armed"
        assert "disarmed" in refused.text

        assert isinstance(ask(client, messages.Arm()), messages.Ok)
        unsafe = [messages.Phase(-500.0, 100.0), messages.Phase(500.0, 100.0)]
        refused = ask(client, messages.PulseTrain(channel=0, phases=unsafe))
        assert isinstance(refused, messages.Refused)
        assert (refused.channel, refused.limit, refused.value, refused.allowed) == (
            0,
            "amplitude (uA)",
            500.0,
            100.0,
        )
        unbalanced = [messages.Phase(-30.0, 100.0), messages.Phase(30.0, 60.0)]
        refused = ask(client, messages.PulseTrain(channel=1, phases=unbalanced))
        assert isinstance(refused, messages.Refused) and refused.limit.startswith("net charge")
        no_channel = ask(client, messages.StopStimulation(channel=9))
        assert isinstance(no_channel, messages.Error) and "no channel 9" in no_channel.text

        accepted = ask(
            client, messages.PulseTrain(channel=0, phases=biphasic, frequency_hz=100, count=5)
        )
        assert isinstance(accepted, messages.Accepted), accepted
        data, _ = output(reader, 0.3)
        np.testing.assert_array_equal(
            active(data[:, 0]), pulses((-30.0, 5), (30.0, 5), period=500, count=5)
        )
        assert not data[:, 1].any()

        # a long train, stopped: silent within one output buffer period
        long = ask(
            client, messages.PulseTrain(channel=0, phases=biphasic, frequency_hz=50, count=500)
        )
        assert isinstance(long, messages.Accepted)
        time.sleep(0.2)
        assert isinstance(ask(client, messages.StopStimulation(channel=0)), messages.Ok)
        stopped_ns = time.monotonic_ns()
        data, stamps = output(reader, 0.4)
        last_ns = stamps[np.flatnonzero(data[:, 0])[-1]]
        assert last_ns - stopped_ns < BUFFER_MS * 1e6, (last_ns - stopped_ns) / 1e6
        assert not data[stamps > stopped_ns + BUFFER_MS * 1e6, 0].any()

        seen = events(stim_events, 0.3)
        kinds = [type(e).__name__ for e in seen]
        assert kinds.count("StimulationRefused") >= 3 and "StimulatorArmed" in kinds
        queued = [e for e in seen if isinstance(e, messages.StimulationQueued)]
        assert [q.command_id for q in queued] == [accepted.command_id, long.command_id]
        assert queued[0].phases == biphasic and queued[0].count == 5
        assert isinstance(ask(client, messages.Disarm()), messages.Ok)
        assert isinstance(
            ask(client, messages.PulseTrain(channel=0, phases=biphasic)), messages.Refused
        )
        time.sleep(0.6)  # a flush
    finally:
        reader.close()
        stim_events.close()
    assert rig.interrupt() == 0
    (recording,) = [p for p in recordings.iterdir() if p.is_dir()]
    topics, output_uA = [], []
    for entry in read_manifest(recording).segments:
        with h5py.File(recording / entry.file) as f:
            topics += [t.decode() for t in f["events"]["topic"]]
            output_uA.append(f["streams/stim.output/data"][:])
    assert "worker.stim.stimulation_queued" in topics
    assert topics.count("worker.stim.stimulation_refused") >= 4
    assert "worker.stim.stimulation_stopped" in topics
    recorded = np.concatenate(output_uA)
    assert recorded.min() == -30.0 and recorded.max() == 30.0


def test_a_trigger_fires_from_the_ring_and_its_events_say_when(rigs) -> None:
    rig = rigs.new()
    rig.write(SOURCE + STIM.format(buffer_ms=BUFFER_MS, extra="armed = true") + TRIGGER)
    rig.start()
    stim_events = rig.subscriber("worker.stim.")
    reader = attach(f"{rig.name}/stim/output", from_now=True)
    try:
        seen = events(stim_events, 1.0)
        data, _ = output(reader, 0.3)
        assert isinstance(rig.client().request(messages.Disarm()), messages.Ok)
        disarmed_ns = time.monotonic_ns()
        after = events(stim_events, 0.5)
    finally:
        reader.close()
        stim_events.close()
    triggered = [e for e in seen if isinstance(e, messages.Triggered)]
    queued = {e.command_id: e for e in seen if isinstance(e, messages.StimulationQueued)}
    assert 7 <= len(triggered) <= 12  # a spike every 100 ms
    latencies_ms = []
    for event in triggered:
        assert event.fired and event.rule == "spk" and event.value == -100.0
        q = queued[event.command_id]
        assert q.source == "trigger:spk" and q.channel == 1
        assert q.frame_timestamp_ns == event.frame_timestamp_ns
        latencies_ms.append((q.queued_ns - q.frame_timestamp_ns) / 1e6)
    # the first one too: it came while the writer had not yet adopted the rule's fresh
    # threshold watch, and once waited for the 0.1 s catch-up read (67-90 ms)
    assert all(0 < ms < 50 for ms in latencies_ms), latencies_ms
    # every 100 ms one biphasic pulse of 5 + 5 samples on stim channel 1, nothing on 0
    assert not data[:, 0].any()
    nonzero = np.flatnonzero(data[:, 1])
    runs = np.split(nonzero, np.flatnonzero(np.diff(nonzero) > 1) + 1)
    # a pulse under way when the reader came or left is cut by the window read, not the output
    runs = [run for run in runs if run[0] > 0 and run[-1] < len(data) - 1]
    assert len(runs) >= 10  # 1.3 s of output
    expected = pulses((-40.0, 5), (40.0, 5), period=10, count=1)
    for run in runs:
        np.testing.assert_array_equal(data[run, 1], expected)
    late = [
        e for e in after if isinstance(e, messages.Triggered) and e.frame_timestamp_ns > disarmed_ns
    ]
    assert late and all(not e.fired and e.reason == "disarmed" for e in late)


def test_arming_says_which_rules_go_live_and_can_leave_them_off(rigs) -> None:
    """``rigpipe stim arm --commands-only``: a pulse by hand is accepted and the rule's
    crossings do not fire; ``rigpipe stim arm`` then names the rule it makes live."""
    rig = rigs.new()
    rig.write(SOURCE + STIM.format(buffer_ms=BUFFER_MS, extra="") + TRIGGER)
    rig.start()

    def stim(*args: str) -> str:
        command = [sys.executable, "-m", "pipeline.cli", "stim", *args, "--session", rig.name]
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    stim_events = rig.subscriber("worker.stim.")
    try:
        assert stim("arm", "--commands-only") == "stim armed; commands only; trigger rules off: spk"
        assert stim("pulse", "0", "--biphasic", "50:100").startswith("accepted: command ")
        manual = events(stim_events, 0.6)
        assert stim("arm") == "stim armed; trigger rules now live: spk"
        live = events(stim_events, 0.6)
    finally:
        stim_events.close()
    armed = [e for e in manual if isinstance(e, messages.StimulatorArmed)]
    assert [(e.armed, e.rules) for e in armed] == [(True, [])]
    since = manual[manual.index(armed[0]) :]  # crossings before it said "disarmed"
    crossings = [e for e in since if isinstance(e, messages.Triggered)]
    # (a "disarmed" crossing held back before the arm is published once the reason changes)
    assert {e.reason for e in crossings} <= {"armed for commands only", "disarmed"}, crossings
    assert crossings[-1].reason == "armed for commands only"
    assert not any(e.fired for e in crossings)
    assert [e.rules for e in live if isinstance(e, messages.StimulatorArmed)] == [["spk"]]
    assert any(e.fired for e in live if isinstance(e, messages.Triggered))


def _main_thread_sleeps(pid: int) -> int:
    """The kernel's count of the times the process's main thread went to sleep."""
    with open(f"/proc/{pid}/task/{pid}/status") as status:
        for line in status:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError(f"no voluntary_ctxt_switches in /proc/{pid}/task/{pid}/status")


@pytest.mark.posix
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_an_armed_rule_sleeps_through_quiet_chunks_and_still_fires_on_every_spike(rigs) -> None:
    """The source publishes 1000 chunks a second and a spike every 250 ms. The rule's
    threshold watch has the source's writer wake the stimulator only for chunks that may
    cross: the kernel counts far fewer sleeps of its main thread than chunks (one wake
    per chunk would be at least 1000 a second), and every spike still fires at once.
    (``stay_awake_s = 0``: by default the worker stays awake for 2 s after each pulse.)"""
    rig = rigs.new()
    source = SOURCE.replace("period_ms = 100.0", "period_ms = 250.0")
    extra = "armed = true\nstay_awake_s = 0.0"  # asleep between spikes, not awake after each
    rig.write(source + STIM.format(buffer_ms=BUFFER_MS, extra=extra) + TRIGGER)
    rig.start()
    stim_events = rig.subscriber("worker.stim.")
    try:
        assert wait_for(lambda: stim_events.receive(0.5), 10, "the rule's first crossing")
        pid = rig.worker("stim").pid
        sleeps_before, started = _main_thread_sleeps(pid), time.monotonic()
        seen = events(stim_events, 3.0)
        sleeps_per_s = (_main_thread_sleeps(pid) - sleeps_before) / (time.monotonic() - started)
    finally:
        stim_events.close()
    fired = [e for e in seen if isinstance(e, messages.Triggered) and e.fired]
    queued = {e.command_id: e for e in seen if isinstance(e, messages.StimulationQueued)}
    assert 11 <= len(fired) <= 13, [e.reason for e in seen if isinstance(e, messages.Triggered)]
    latencies = [
        queued[e.command_id].queued_ns - e.frame_timestamp_ns
        for e in fired
        if e.command_id in queued  # the window can cut a pair at either end
    ]
    assert len(latencies) >= len(fired) - 2 and all(ns > 0 for ns in latencies)
    # Found by the catch-up read every 0.1 s instead, the median would be ~50 ms. (A
    # single late one is the scheduler's under load, or the wait's 20 ms slice.)
    assert np.median(latencies) < 10e6, sorted(latencies)
    assert sleeps_per_s < 300, f"{sleeps_per_s:.0f} sleeps/s: the worker wakes for quiet chunks"


@pytest.mark.posix
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_an_armed_stimulator_stays_awake_after_a_pulse_then_sleeps(rigs) -> None:
    """``stay_awake_s`` after a pulse the worker wakes every ms (the next command finds it
    running); then it sleeps until something arrives. The kernel counts the sleeps."""
    rig = rigs.new()
    rig.write(STIM.format(buffer_ms=BUFFER_MS, extra="armed = true\nstay_awake_s = 1.0"))
    rig.start()
    pid = rig.worker("stim").pid

    def sleeps_per_s(seconds: float) -> float:
        before, started = _main_thread_sleeps(pid), time.monotonic()
        time.sleep(seconds)
        return (_main_thread_sleeps(pid) - before) / (time.monotonic() - started)

    asleep_before = sleeps_per_s(0.5)
    phases = [messages.Phase(-30.0, 100.0), messages.Phase(30.0, 100.0)]
    reply = rig.client().request(messages.PulseTrain(channel=0, phases=phases))
    assert isinstance(reply, messages.Accepted)
    awake = sleeps_per_s(0.6)
    time.sleep(0.6)  # stay_awake_s runs out
    asleep_after = sleeps_per_s(1.0)
    # awake: a wake every ms; asleep: the bus, heartbeats and 0.1 s checks (~150-200/s)
    asleep = max(asleep_before, asleep_after)
    assert awake > 300 and awake > 2 * asleep, (asleep_before, awake, asleep_after)


def test_only_an_armed_rule_holds_a_threshold_watch_on_its_stream(rigs) -> None:
    """Disarmed, a rule's crossings only say they would have fired: it gives its watch
    slot back, and the source's writer stops comparing chunks for it."""
    rig = rigs.new()
    rig.write(SOURCE + STIM.format(buffer_ms=BUFFER_MS, extra="") + TRIGGER)
    rig.start()
    reader = attach(f"{rig.name}/src/out")
    table = watch_module._WatchSlots(reader._meta)

    def held() -> int:
        slots = range(watch_module.WATCH_SLOTS)
        return sum(1 for slot in slots if table.field(slot, watch_module._TOKEN))

    try:
        time.sleep(0.3)
        assert held() == 0
        assert isinstance(rig.client().request(messages.Arm()), messages.Ok)
        wait_for(lambda: held() == 1, 5, "the armed rule's watch")
        assert isinstance(rig.client().request(messages.Disarm()), messages.Ok)
        wait_for(lambda: held() == 0, 5, "the disarmed rule to give its watch back")
    finally:
        table.release()
        reader.close()


def test_two_rules_on_one_stream_each_see_every_frame(rigs) -> None:
    """Two rules watch two channels of the same stream (spikes on channel 1, and half a
    period later on channel 0): each fires for each of its own spikes."""
    rig = rigs.new()
    source = SOURCE + "second_channel = 0\n"
    second = TRIGGER.replace('name = "spk"', 'name = "spk0"').replace("channel = 1", "channel = 0")
    rules = TRIGGER + second
    rig.write(source + STIM.format(buffer_ms=BUFFER_MS, extra="armed = true") + rules)
    rig.start()
    stim_events = rig.subscriber("worker.stim.triggered")
    try:
        assert wait_for(lambda: stim_events.receive(0.5), 10, "a first crossing")
        seen = events(stim_events, 2.0)
    finally:
        stim_events.close()
    fired = [e for e in seen if isinstance(e, messages.Triggered) and e.fired]
    by_rule = {rule: [e for e in fired if e.rule == rule] for rule in ("spk", "spk0")}
    assert all(17 <= len(got) <= 23 for got in by_rule.values()), {
        rule: len(got) for rule, got in by_rule.items()
    }
    assert rig.worker("stim").restarts == 0


def test_a_trigger_on_a_stream_that_stops_waits_for_it_and_commands_still_work(rigs) -> None:
    rig = rigs.new()
    rig.write(SOURCE + STIM.format(buffer_ms=BUFFER_MS, extra="armed = true") + TRIGGER)
    rig.start()
    client = rig.client()
    client.request(messages.StopWorker(worker="src"))
    wait_for(lambda: rig.worker("src").state == "stopped", 10, "the source to stop")
    phases = [messages.Phase(-30.0, 100.0), messages.Phase(30.0, 100.0)]
    assert isinstance(
        client.request(messages.PulseTrain(channel=0, phases=phases)), messages.Accepted
    )
    client.request(messages.StartWorker(worker="src"))
    stim_events = rig.subscriber("worker.stim.triggered")
    try:
        assert wait_for(
            lambda: stim_events.receive(0.5), 10, "a trigger after the source came back"
        )
    finally:
        stim_events.close()
    assert rig.worker("stim").state == "running" and rig.worker("stim").restarts == 0


def test_a_decoder_commands_the_stimulator_directly_and_the_rig_still_records_it(rigs) -> None:
    """pipeline.stimulator(): one hop to the worker's own socket, every safety check
    still in the worker, the command still published (so recorded), bad input answered."""
    quiet = SOURCE.replace("period_ms = 100.0", "period_ms = 100.0\nsample_rate_hz = 10.0")
    rig = rigs.new()
    # a quiet trigger stream (one chunk a second) and slow heartbeats: the worker sleeps
    # on the ring, and only the doorbell can wake it for a command in time
    rig.config.write_text(
        f'[session]\nname = "{rig.name}"\nstop_timeout_s = 3.0\n'
        "[control]\nheartbeat_interval_s = 2.0\nheartbeat_timeout_s = 6.0\n"
        + quiet
        + STIM.format(buffer_ms=BUFFER_MS, extra="armed = true")
        + TRIGGER
    )
    rig.start()
    discovery = rig.discovery()
    assert discovery is not None and set(discovery.direct) == {"stim"}
    queued = rig.subscriber("worker.stim.stimulation_queued")
    stim = pipeline.stimulator("stim", rig.name)
    by_socket = Stimulator("stim", rig.name, shared_memory=False)
    try:
        # on the rig's machine requests travel in the client's shared-memory command ring
        assert stim.command_ring.startswith(f"{rig.name}/client-")
        assert by_socket.command_ring == ""
        assert isinstance(
            by_socket.pulse_train(channel=1, phases=[(-30.0, 100.0), (30.0, 100.0)]),
            messages.Accepted,
        )
        events(queued, 0.5)
        started = time.monotonic()
        reply = stim.pulse_train(channel=0, phases=[(-30.0, 100.0), (30.0, 100.0)])
        assert time.monotonic() - started < 1.0, "the worker slept through a command"
        assert isinstance(reply, messages.Accepted)
        published = [
            e
            for e in events(queued, 2.0)
            if isinstance(e, messages.StimulationQueued) and e.source == "command"
        ]
        assert [e.command_id for e in published] == [reply.command_id]
        assert published[0].channel == 0

        with pytest.raises(StimulationRefused, match="amplitude") as refused:
            stim.pulse_train(channel=0, phases=[(-500.0, 100.0), (500.0, 100.0)])
        assert refused.value.reply.limit == "amplitude (uA)"
        assert refused.value.reply.allowed == 100.0
        assert "disarmed" in stim.disarm()
        with pytest.raises(StimulationRefused, match="disarmed"):
            stim.pulse_train(channel=0, phases=[(-30.0, 100.0), (30.0, 100.0)])

        # bad input on the worker's socket: answered, counted, never fatal
        direct = Client(Endpoints(stim.endpoint, "", discovery.endpoints.keys), timeout_s=5.0)
        try:
            direct._sock.send(b"\xc1 not msgpack")
            garbage = direct.receive(5.0)
            assert isinstance(garbage, messages.Error) and "malformed" in garbage.text
            with pytest.raises(RequestFailed, match="is for 'other'; nothing was done"):
                direct.request(messages.Arm(worker="other"))
            with pytest.raises(RequestFailed, match="worker requests only"):
                direct.request(messages.Status())
        finally:
            direct.close()
        with pytest.raises(RequestFailed, match=r"taking direct requests .*stim"):
            pipeline.stimulator("src", rig.name)
        # ...and in a command ring: a length past the frame, bytes that are not msgpack,
        # a frame of no known kind. Each is answered with an error (a reply no request
        # waits for) and counted; the ring's next request is served as usual.
        assert stim._ring is not None
        frame = np.zeros(1, COMMAND_FRAME)
        frame["kind"] = REQUEST
        frame["length"] = COMMAND_PAYLOAD + 1
        stim._ring.write(frame)
        frame["length"] = 3
        frame["payload"][0, :3] = [0xC1, 0x00, 0x01]
        stim._ring.write(frame)
        frame["kind"] = 77
        stim._ring.write(frame)
        assert "armed" in stim.arm()
        counted = lambda: rig.worker("stim").counters.get("bad_requests") == 4  # noqa: E731
        wait_for(counted, 10, "the malformed requests counted in status")
    finally:
        by_socket.close()
        stim.close()
        queued.close()
    stim_status = rig.worker("stim")
    assert stim_status.state == "running" and stim_status.restarts == 0


def test_a_prepared_stimulus_is_checked_once_fired_by_handle_and_prepared_again(rigs) -> None:
    """Stimulator.prepare_pulse_train / fire: the worker checks and renders the train once;
    firing it sends only its handle, outputs exactly the train, and is published (so
    recorded) like any command. A worker that restarted holds no handle of its previous
    run: ``fire`` then prepares the train again, once."""
    rig = rigs.new()
    rig.write(STIM.format(buffer_ms=BUFFER_MS, extra="armed = true"))
    rig.start()
    client = rig.client()
    stim_events = rig.subscriber("worker.stim.")
    wait_for(  # a SUB socket gets events only once its subscription is live
        lambda: ask(client, messages.Disarm()) and stim_events.receive(0.2) is not None,
        10,
        "the event subscription to be live",
    )
    stim = pipeline.stimulator("stim", rig.name)
    by_socket = Stimulator("stim", rig.name, shared_memory=False)
    reader = attach(f"{rig.name}/stim/output", from_now=True)
    biphasic = [(-30.0, 100.0), (30.0, 100.0)]
    try:
        # checked when prepared, armed or not
        with pytest.raises(StimulationRefused, match="amplitude") as unsafe:
            stim.prepare_pulse_train(channel=0, phases=[(-500.0, 100.0), (500.0, 100.0)])
        assert unsafe.value.reply.limit == "amplitude (uA)"
        with pytest.raises(StimulationRefused, match="no channel 9"):
            stim.prepare_pulse_train(channel=9, phases=biphasic)
        burst = stim.prepare_pulse_train(channel=0, phases=biphasic, frequency_hz=100, count=5)
        with pytest.raises(StimulationRefused, match="disarmed") as disarmed:
            stim.fire(burst)
        assert disarmed.value.reply.limit == "armed"
        assert "armed" in stim.arm()
        events(stim_events, 0.3)

        accepted = stim.fire(burst)  # a FIRE frame in the command ring
        data, _ = output(reader, 0.3)
        np.testing.assert_array_equal(
            active(data[:, 0]), pulses((-30.0, 5), (30.0, 5), period=500, count=5)
        )
        assert not data[:, 1].any()
        by_handle = by_socket.fire(burst)  # the handle is the worker's: any client fires it
        with pytest.raises(StimulationRefused, match="no prepared stimulus 12345") as forged:
            client.request(messages.FireStimulus(handle=12345))  # through the supervisor
        assert forged.value.reply.limit == "prepared"
        elsewhere = PreparedStimulus("stim2", burst.stimulus, burst.handle)
        with pytest.raises(ValueError, match="prepared by worker 'stim2'; fire it with"):
            stim.fire(elsewhere)
        seen = events(stim_events, 0.5)
        queued = [e for e in seen if isinstance(e, messages.StimulationQueued)]
        assert [q.command_id for q in queued] == [accepted.command_id, by_handle.command_id]
        assert all(q.source == "command" and q.channel == 0 for q in queued)
        assert queued[0].phases == [messages.Phase(*p) for p in biphasic]
        assert queued[0].count == 5 and queued[0].frequency_hz == 100

        # a restart: the new worker knows no handle of the old one's
        old_handle, old_pid = burst.handle, rig.worker("stim").pid
        client.request(messages.RestartWorker(worker="stim"))
        wait_for(lambda: not psutil.pid_exists(old_pid), 20, "the old stim process to end")
        wait_for(lambda: rig.worker("stim").state == "running", 20, "stim to come back")
        with pytest.raises(BusTimeout):  # into the ring the old worker read: nobody answers
            stim.fire(burst)
        again = stim.fire(burst)  # refused as "prepared", prepared again, fired
        assert burst.handle != old_handle
        seen = events(stim_events, 1.0)
        assert [e.limit for e in seen if isinstance(e, messages.StimulationRefused)] == ["prepared"]
        assert [e.command_id for e in seen if isinstance(e, messages.StimulationQueued)] == [
            again.command_id
        ]
        with pytest.raises(StimulationRefused, match="prepare it again"):
            client.request(messages.FireStimulus(handle=old_handle))
    finally:
        reader.close()
        by_socket.close()
        stim.close()
        stim_events.close()


def test_a_restarted_stimulator_never_runs_a_command_sent_while_it_was_down(rigs) -> None:
    """A command ring is read only from the moment the worker is told of it: a request
    written while the worker restarts times out and is never carried out later."""
    rig = rigs.new()
    rig.write(STIM.format(buffer_ms=BUFFER_MS, extra="armed = true"))
    rig.start()
    queued = rig.subscriber("worker.stim.stimulation_queued")
    stim = pipeline.stimulator("stim", rig.name)
    phases = [(-30.0, 100.0), (30.0, 100.0)]
    try:
        first = stim.pulse_train(channel=0, phases=phases)
        old_pid = rig.worker("stim").pid
        rig.client().request(messages.RestartWorker(worker="stim"))
        wait_for(lambda: not psutil.pid_exists(old_pid), 20, "the old stim process to end")
        with pytest.raises(BusTimeout):  # sent into the old worker's ring, or to nobody
            stim.pulse_train(channel=0, phases=phases)
        wait_for(lambda: rig.worker("stim").state == "running", 20, "stim to come back")
        stim.arm()  # a restarted stimulator starts as its config says: armed here
        again = stim.pulse_train(channel=0, phases=phases)  # the client told it again
        seen = [
            e.command_id
            for e in events(queued, 3.0)
            if isinstance(e, messages.StimulationQueued) and e.source == "command"
        ]
        assert seen == [first.command_id, again.command_id]
    finally:
        stim.close()
        queued.close()


@pytest.mark.posix
def test_the_command_ring_of_a_decoder_that_was_killed_is_removed(rigs) -> None:
    rig = rigs.new()
    rig.write(STIM.format(buffer_ms=BUFFER_MS, extra="armed = true"))
    rig.start()
    decoder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, pipeline\n"
            f"stim = pipeline.stimulator('stim', {rig.name!r})\n"
            "stim.pulse_train(channel=0, phases=[(-30.0, 100.0), (30.0, 100.0)])\n"
            "print(stim.command_ring, flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert decoder.stdout is not None
        stream = decoder.stdout.readline().strip()
        assert stream.startswith(f"{rig.name}/client-{decoder.pid}-")
        segment = naming.shm_name(stream)
        assert segment in shm.list_names()
        decoder.kill()  # no close(): its ring stays behind, until the worker notices
        decoder.wait(10)
        wait_for(lambda: segment not in shm.list_names(), 10, "the dead decoder's ring removed")
    finally:
        decoder.kill()
        decoder.wait(10)
        decoder.stdout.close()
    assert rig.worker("stim").state == "running"


def test_a_rule_that_keeps_not_firing_is_published_once_a_second_with_its_count(rigs) -> None:
    """Disarmed, a rule crossing 10 times a second would flood the session's events, the
    live view and the recording; its crossings are counted into one event a second."""
    rig = rigs.new()
    rig.write(SOURCE + STIM.format(buffer_ms=BUFFER_MS, extra="") + TRIGGER)
    rig.start()
    client = rig.client()
    triggered = rig.subscriber("worker.stim.triggered")
    try:
        # The source crossed before this subscription existed: stop it, let what was
        # held back come out, and count from a quiet start.
        client.request(messages.StopWorker(worker="src"))
        wait_for(lambda: rig.worker("src").state == "stopped", 10, "the source to stop")
        events(triggered, 2.0)
        before = rig.worker("stim").counters["triggers"]
        client.request(messages.StartWorker(worker="src"))
        seen = events(triggered, 3.5)
        client.request(messages.StopWorker(worker="src"))
        seen += events(triggered, 2.5)  # what was held back comes out after QUIET_S
    finally:
        triggered.close()
    assert seen and all(isinstance(e, messages.Triggered) and not e.fired for e in seen)
    assert {e.reason for e in seen} == {"disarmed"}
    crossings = sum(e.repeats for e in seen)
    assert crossings >= 15, "the source crosses 10 times a second"
    assert len(seen) <= 8 and len(seen) <= crossings / 2, f"{len(seen)} for {crossings}"
    counted = lambda: rig.worker("stim").counters["triggers"] - before == crossings  # noqa: E731
    wait_for(counted, 5, "every crossing in an event's count")
