"""The session's events are recorded like frames: resumed after a recorder restart, and a
loss is an exact gap row (pipeline/control/eventlog.py, workers/recording/events.py).

A real supervisor, recorder and simulated stimulator; the numbers each request's reply
gives (an annotation's event number, a stimulus's command id) are checked against the
recording read back with plain h5py, ``open_recording``, ``rigpipe inspect`` and NWB.
"""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np
import psutil
import pytest

import pipeline
from pipeline.control import messages
from pipeline.recording.format import read_manifest
from pipeline.recording.summary import inspect, render
from tests.rig import SIMULATED_STIMULATOR, toml_string, wait_for

WORKERS = """
[[workers]]
name = "acq"
kind = "acquisition"
backoff_s = 0.3
[workers.parameters]
channels = 4
sample_rate_hz = 10000.0
chunk_s = 0.002

[[workers]]
name = "rec"
kind = "recording"
backoff_s = 0.3
[workers.parameters]
flush_s = 0.5
"""
PULSE = [(-30.0, 100.0), (30.0, 100.0)]


def _rig(rigs, events_buffer: int = 4096):
    rig = rigs.new()
    recordings = rig.directory / "recordings"
    rig.write(
        WORKERS + SIMULATED_STIMULATOR,
        session_extra=f"recordings_dir = {toml_string(recordings)}\n"
        f"events_buffer = {events_buffer}",
    )
    rig.start()
    wait_for(lambda: rig.worker("rec").note.startswith("recording to"), 10, "recording to start")
    return rig, recordings


def _annotate(rig, text: str) -> int:
    reply = rig.client().request(messages.Annotate(text=text))
    assert isinstance(reply, messages.Logged), reply
    return reply.sequence


def _recording(recordings: Path) -> Path:
    (found,) = [p for p in recordings.iterdir() if p.is_dir()]
    return found


def _rows(directory: Path, table: str) -> np.ndarray:
    """Table ``table`` of every segment, read with plain h5py (every file must open)."""
    parts = []
    for entry in read_manifest(directory).segments:
        with h5py.File(directory / entry.file) as f:
            parts.append(f[table][:])
    return np.concatenate(parts)


def test_events_published_while_the_recorder_is_down_are_recorded_once(rigs) -> None:
    """The issue's case: annotate, kill the recorder, annotate, it restarts, annotate;
    and stimuli given before and while it was down. Every one is in the recording, once."""
    rig, recordings = _rig(rigs)
    sent = {_annotate(rig, "before kill"): "before kill"}
    with pipeline.stimulator("stim", rig.name) as stim:
        stim.arm()
        commands = [stim.pulse_train(channel=0, phases=PULSE)]
        pid = rig.worker("rec").pid
        psutil.Process(pid).kill()
        sent[_annotate(rig, "while rec down")] = "while rec down"
        commands.append(stim.pulse_train(channel=1, phases=PULSE))
        rig.restarted("rec", pid, 10)
        sent[_annotate(rig, "after restart")] = "after restart"
        time.sleep(0.3)
    assert rig.interrupt() == 0
    directory = _recording(recordings)

    rows = _rows(directory, "events")
    numbered = rows["sequence"][rows["sequence"] >= 0]
    assert len(numbered) == len(set(numbered.tolist())), "an event recorded twice"
    with pipeline.open_recording(directory) as rec:
        events = rec.events
    annotations = {e.sequence: e.payload["text"] for e in events if e.topic == "session.annotated"}
    assert annotations == sent
    queued = [e.payload["command_id"] for e in events if e.topic.endswith(".stimulation_queued")]
    assert sorted(queued) == sorted(c.command_id for c in commands)
    # The recorder's restart is in the recording too, and nothing was lost.
    assert any(e.payload.get("type") == "worker_restarted" for e in events if e.sequence >= 0)
    report = inspect(directory)
    assert report.ok, report.problems
    assert report.events.lost == 0 and report.events.first == 0
    assert report.events.accounted == report.events.expected > 10
    assert any("none lost" in line for line in render(report))


def test_events_the_log_no_longer_held_are_one_exact_gap_row(rigs, tmp_path: Path) -> None:
    """A recorder frozen (then killed by the supervisor) while 80 annotations are made and
    the log keeps 16: the ones it lost are one gap row with their exact numbers, every
    other one is recorded, and inspect and NWB say so."""
    rig, recordings = _rig(rigs, events_buffer=16)
    pid = rig.worker("rec").pid
    time.sleep(0.6)  # a flush: the recorder resumes from its flushed events cursor
    psutil.Process(pid).suspend()  # hung: the supervisor kills it after 1 s without heartbeats
    sent = {_annotate(rig, f"note {k}"): f"note {k}" for k in range(80)}
    rig.restarted("rec", pid, 10)
    sent[_annotate(rig, "after")] = "after"
    time.sleep(0.6)
    assert rig.interrupt() == 0
    directory = _recording(recordings)

    gaps = _rows(directory, "gaps")
    (gap,) = gaps[gaps["stream"] == b"supervisor/events"]
    assert gap["cause"] == b"recorder was down longer than the ring holds"
    lost = range(int(gap["cursor_start"]), int(gap["cursor_end"]))
    assert gap["lost_frames"] == len(lost) > 80 - 16
    with pipeline.open_recording(directory) as rec:
        recorded = {
            e.sequence: e.payload["text"] for e in rec.events if e.topic == "session.annotated"
        }
        (event_gap,) = rec.event_gaps
    assert event_gap.lost_frames == len(lost)
    for sequence, text in sent.items():  # each acknowledged one: recorded, or in the gap
        assert (recorded.get(sequence) == text) != (sequence in lost), (sequence, text)
    assert recorded[max(sent)] == "after"
    report = inspect(directory)
    assert report.ok, report.problems
    assert report.events.lost == len(lost) and report.events.gaps == 1
    assert any(f"{len(lost)} lost in 1 gap(s)" in line for line in render(report))

    pynwb = pytest.importorskip("pynwb")
    from pipeline.recording.nwb import export_nwb

    out = tmp_path / "rec.nwb"
    export_nwb(directory, out)
    with pynwb.NWBHDF5IO(str(out), "r") as io:
        invalid = io.read().invalid_times.to_dataframe()
    mine = [row.lost_frames for row in invalid.itertuples() if row.tags == ["supervisor/events"]]
    assert mine == [len(lost)]
