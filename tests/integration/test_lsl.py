"""The LSL bridge against pylsl itself (liblsl from its wheel) as the peer.

Outlets a test process resolves and reads as any LSL program would; outlets
the test makes, read into a rig by ``lsl_inlet`` and recorded. Every LSL name
here carries the rig's random session name, so concurrent runs and a lab's
own streams on the same network never mix.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import numpy as np
import psutil
import pylsl
import pytest

from pipeline import attach, open_recording
from pipeline.recording.nwb import export_nwb
from pipeline.recording.summary import inspect
from tests.rig import toml_string, wait_for

SOURCE = """
[[workers]]
name = "acq"
kind = "acquisition"
[workers.parameters]
channels = 4
sample_rate_hz = 1000.0
chunk_s = 0.005
"""


def _resolve(prop: str, value: str, timeout: float = 10.0) -> pylsl.StreamInfo:
    found = pylsl.resolve_byprop(prop, value, timeout=timeout)
    assert found, f"no LSL stream with {prop}={value!r}"
    return found[0]


def test_an_lsl_inlet_elsewhere_gets_every_value_of_the_rigs_stream(rigs) -> None:
    rig = rigs.new()
    rig.write(
        SOURCE + '[[workers]]\nname = "lsl"\nkind = "lsl_outlet"\n'
        '[workers.parameters]\nstreams = ["acq/continuous", "acq/spikes"]\n'
        '[workers.parameters.options."acq/continuous"]\ntype = "ECoG"\n'
    )
    rig.start()
    name = f"{rig.name}/acq/continuous"
    info = _resolve("name", name)
    assert info.type() == "ECoG" and info.channel_count() == 4 and info.nominal_srate() == 1000
    assert info.source_id() == f"rigpipe:{name}"
    assert any(i.name() == name for i in pylsl.resolve_byprop("type", "ECoG", timeout=5))
    inlet = pylsl.StreamInlet(info)
    full = inlet.info(timeout=5)
    channel = full.desc().child("channels").child("channel")
    assert channel.child_value("label") == "ch001" and channel.child_value("unit") == "uV"
    inlet.open_stream(timeout=5)
    with attach(name, from_now=True) as ring:
        time.sleep(2.0)
        chunk = ring.read(timeout_s=1)
    samples, stamps = inlet.pull_chunk(timeout=1.0, max_samples=100_000)
    received = np.asarray(samples, np.float32)
    stamps = np.asarray(stamps)
    # every ring frame of that window arrived over LSL, value for value, within 1 ms
    ring_s = chunk.timestamps_ns / 1e9
    index = np.searchsorted(stamps, ring_s - 0.0005)
    assert len(chunk.data) > 1000 and index.max() < len(stamps)
    np.testing.assert_array_equal(received[index], chunk.data.astype(np.float32))
    assert np.abs(stamps[index] - ring_s).max() < 0.001
    spikes = _resolve("name", f"{rig.name}/acq/spikes")
    assert spikes.nominal_srate() == pylsl.IRREGULAR_RATE and spikes.type() == "Markers"
    listed = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "lsl", "--wait", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = next(x for x in listed.stdout.splitlines() if name in x)
    assert line.startswith("* ") and "ECoG" in line and f"rigpipe:{name}" in line


def test_an_outlet_made_here_is_recorded_by_the_rig_with_markers(rigs, tmp_path) -> None:
    tag = uuid.uuid4().hex[:8]
    info = pylsl.StreamInfo(f"Eye{tag}", "Gaze", 4, 500, pylsl.cf_float32, f"eye-{tag}")
    channels = info.desc().append_child("channels")
    for label in ("x", "y", "pupil", "blink"):
        c = channels.append_child("channel")
        c.append_child_value("label", label)
        c.append_child_value("unit", "px")
    outlet = pylsl.StreamOutlet(info)
    markers = pylsl.StreamOutlet(
        pylsl.StreamInfo(f"Task{tag}", "Markers", 1, 0, pylsl.cf_string, f"task-{tag}")
    )
    rig = rigs.new()
    recordings = rig.directory / "recordings"
    rig.write(
        f'[[workers]]\nname = "eye"\nkind = "lsl_inlet"\n[workers.parameters]\nname = "Eye{tag}"\n'
        f'[[workers]]\nname = "task"\nkind = "lsl_inlet"\n[workers.parameters]\n'
        f'source_id = "task-{tag}"\ntype = "Markers"\noutput = "markers"\n'
        '[[workers]]\nname = "rec"\nkind = "recording"\n'
        '[workers.parameters]\nstreams = ["eye/data", "task/markers"]\nflush_s = 0.5\n',
        session_extra=f"recordings_dir = {toml_string(recordings)}",
    )
    rig.start()
    wait_for(lambda: rig.worker("eye").counters.get("connected") == 1, 20, "the eye inlet")
    wait_for(lambda: rig.worker("task").counters.get("connected") == 1, 20, "the task inlet")
    time.sleep(1.0)  # the recorder has found both rings
    pushed, sent_at = [], []
    for i in range(1000):  # 2 s at 500 Hz, in 10-sample chunks
        if i % 10 == 0:
            time.sleep(0.02)
        stamp = pylsl.local_clock()
        sample = [float(i), float(-i), 3.5, float(i % 2)]
        outlet.push_sample(sample, stamp)
        pushed.append(sample)
        sent_at.append(stamp)
        if i % 250 == 0:
            markers.push_sample([f"trial {i // 250} start"], stamp)
    time.sleep(1.5)
    assert rig.worker("rec").restarts == 0, "a recording whose streams all come later"
    assert rig.interrupt() == 0
    found = [p for p in recordings.iterdir() if p.is_dir()]
    assert len(found) == 1, (found, rig.log())
    directory = found[0]
    assert inspect(directory).ok
    with open_recording(directory) as rec:
        eye = rec.stream("eye/data")
        assert eye.channel_labels == ["x", "y", "pupil", "blink"] and eye.units == "px"
        data = eye[:, :].T
        np.testing.assert_array_equal(data, np.asarray(pushed, np.float32))
        stamps_s = eye.timestamps_ns[:] / 1e9
        assert np.abs(stamps_s - np.asarray(sent_at)).max() < 0.001
        task = rec.stream("task/markers")[:]
        assert [t.decode() for t in task["text"]] == [f"trial {k} start" for k in range(4)]
        assert np.abs(task["timestamp_ns"] / 1e9 - np.asarray(sent_at)[::250]).max() < 0.001
        start_s = rec.start_ns / 1e9
    out = tmp_path / "lsl.nwb"
    export_nwb(directory, out)
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(out), "r") as io:
        nwb = io.read()
        series = nwb.acquisition["eye_data"]
        np.testing.assert_array_equal(series.data[:], np.asarray(pushed, np.float32))
        times = np.asarray(series.get_timestamps()[:])
        assert np.abs(times + start_s - np.asarray(sent_at)).max() < 0.001
        table = nwb.events["task_markers"].to_dataframe()
        texts = [t.decode() if isinstance(t, bytes) else t for t in table["text"]]
        assert texts == [f"trial {k} start" for k in range(4)]


def test_a_killed_inlet_or_outlet_worker_recovers(rigs) -> None:
    rig_a, rig_b = rigs.new(), rigs.new()  # two rigs: A's outlet feeds B's inlet
    rig_a.write(
        SOURCE + '[[workers]]\nname = "lsl"\nkind = "lsl_outlet"\nbackoff_s = 0.2\n'
        '[workers.parameters]\nstreams = ["acq/continuous"]\n'
    )
    rig_a.start()
    rig_b.write(
        '[[workers]]\nname = "remote"\nkind = "lsl_inlet"\nbackoff_s = 0.2\n'
        f'[workers.parameters]\nsource_id = "rigpipe:{rig_a.name}/acq/continuous"\n'
    )
    rig_b.start()
    wait_for(lambda: rig_b.worker("remote").counters.get("frames", 0) > 500, 20, "frames in B")
    for rig, worker in ((rig_a, "lsl"), (rig_b, "remote")):
        psutil.Process(rig.worker(worker).pid).kill()
        wait_for(lambda r=rig, w=worker: r.worker(w).restarts == 1, 20, f"{worker} restarted")
        before = rig_b.worker("remote").counters.get("frames", 0)
        wait_for(
            lambda b=before: rig_b.worker("remote").counters.get("frames", 0) > b + 500,
            20,
            f"frames flowing again after {worker} was killed",
        )
    with attach(f"{rig_b.name}/remote/data", from_now=False) as ring:
        chunk = ring.read(timeout_s=1)
    values = chunk.data[:, 0]
    assert chunk.frames > 500 and np.all(np.diff(chunk.timestamps_ns) > 0)
    assert np.isfinite(values).all()


def test_a_stream_that_never_appears_is_waited_for(rigs) -> None:
    rig = rigs.new()
    rig.write(
        '[[workers]]\nname = "eye"\nkind = "lsl_inlet"\n'
        f'[workers.parameters]\nname = "NoSuchStream{uuid.uuid4().hex[:6]}"\n'
    )
    rig.start()
    time.sleep(2.0)
    eye = rig.worker("eye")
    assert eye.state == "running" and eye.restarts == 0
    assert eye.note.startswith("waiting for the LSL stream name='NoSuchStream")
    assert rig.interrupt() == 0


@pytest.mark.parametrize("parameters", ['output = "data"', "streams = []"])
def test_bad_bridge_configs_are_one_line_each(tmp_path, parameters) -> None:
    from pipeline import config
    from pipeline.errors import ConfigError

    kind = "lsl_inlet" if "output" in parameters else "lsl_outlet"
    path = tmp_path / "bad.toml"
    path.write_text(
        f'[[workers]]\nname = "x"\nkind = "{kind}"\n[workers.parameters]\n{parameters}\n'
    )
    with pytest.raises(ConfigError, match=r"say which LSL stream|list the streams"):
        config.load(path)


def test_annotations_and_stimulation_go_out_as_lsl_markers(rigs) -> None:
    import json

    from pipeline.control import messages

    rig = rigs.new()
    rig.write(
        SOURCE + '[[workers]]\nname = "lsl"\nkind = "lsl_outlet"\n'
        '[workers.parameters]\nstreams = ["acq/continuous"]\nmarkers = true\n'
    )
    rig.start()
    info = _resolve("name", f"{rig.name}/events")
    assert info.type() == "Markers" and info.channel_format() == pylsl.cf_string
    inlet = pylsl.StreamInlet(info)
    inlet.open_stream(timeout=5)
    time.sleep(0.5)
    client = rig.client()
    client.request(messages.Annotate(text="drug applied"))
    said_at = pylsl.local_clock()
    sample, stamp = inlet.pull_sample(timeout=5)
    event = json.loads(sample[0])
    assert event["text"] == "drug applied"
    assert abs(stamp - said_at) < 0.05, "stamped when the supervisor took it"
