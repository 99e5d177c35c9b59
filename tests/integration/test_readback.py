"""Reading recordings back: a recording made by the real recorder (rotated into several
segments, with a source restart, spikes, stimulation and an annotation), opened with
``pipeline.open_recording`` and checked against the rows the recorder wrote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import psutil
import pytest

import pipeline
from pipeline.control import messages
from pipeline.errors import RecordingError, SliceTooLarge
from pipeline.recording.format import consistency_flags, read_manifest
from tests.rig import Rig, toml_string, wait_for

RATE = 10000.0
CHANNELS = 8
WORKERS = f"""
[[workers]]
name = "acq"
kind = "acquisition"
backoff_s = 0.3
[workers.parameters]
channels = {CHANNELS}
sample_rate_hz = {RATE}
chunk_s = 0.002
unit_fraction = 1.0
buffer_s = 10.0  # the recorder, from launch, starts at the first frame (Wine starts it late)

[[workers]]
name = "stim"
kind = "stimulation"
[workers.parameters]
channels = 2
output_rate_hz = 10000.0
armed = true
[workers.parameters.limits.default]
max_amplitude_ua = 100.0
max_charge_per_phase_nc = 30.0
max_rate_hz = 200.0

[[workers]]
name = "rec"
kind = "recording"
[workers.parameters]
streams = ["acq/continuous", "acq/spikes", "stim/output"]
flush_s = 0.3
rotate_minutes = 0.01
"""


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A rotated recording with a source restart (one gap), stimulation and an annotation."""
    runtime = Path(tempfile.mkdtemp(prefix="rp", dir="/tmp" if os.name == "posix" else None))
    recordings = tmp_path_factory.mktemp("recordings")
    rig = Rig(runtime, f"t{uuid.uuid4().hex[:8]}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RIGPIPE_RUNTIME_DIR", str(runtime / "run"))
        patch.delenv("RIGPIPE_SESSION", raising=False)
        try:
            rig.write(WORKERS, session_extra=f"recordings_dir = {toml_string(recordings)}")
            rig.start()
            client = rig.client()
            client.request(messages.Annotate(text="electrode lowered"))
            phases = [messages.Phase(-30.0, 200.0), messages.Phase(30.0, 200.0)]
            client.request(messages.PulseTrain(channel=1, phases=phases, frequency_hz=50, count=5))
            time.sleep(1.2)
            pid = rig.worker("acq").pid
            psutil.Process(pid).kill()
            rig.restarted("acq", pid, 10)
            time.sleep(1.2)
            assert rig.interrupt() == 0, rig.log()
        finally:
            forced = rig.cleanup()
            shutil.rmtree(runtime, ignore_errors=True)
    assert not forced, forced
    (directory,) = [p for p in recordings.iterdir() if p.is_dir()]
    yield directory


def prefetchers() -> list[psutil.Process]:
    """This test process's prefetch children (other tests may leave a resource tracker)."""
    return [
        p for p in psutil.Process().children() if "pipeline.recording.prefetch_child" in p.cmdline()
    ]


def written(directory: Path, stream: str = "acq/continuous", name: str = "data") -> np.ndarray:
    """A stream's rows as the recorder wrote them, segment after segment, with plain h5py."""
    parts = []
    for entry in read_manifest(directory).segments:
        with h5py.File(directory / entry.file) as f:
            parts.append(f[f"streams/{stream.replace('/', '.')}/{name}"][:])
    return np.concatenate(parts)


def test_a_multi_segment_recording_reads_as_one_array(recorded: Path) -> None:
    data = written(recorded)  # (frames, channels)
    segments = read_manifest(recorded).segments
    assert len(segments) >= 3
    with pipeline.open_recording(recorded) as rec:
        assert rec.shape == (CHANNELS, len(data))
        assert rec.dtype == data.dtype
        np.testing.assert_array_equal(rec[:, :], data.T)
        np.testing.assert_array_equal(rec[5:15, 0:3000], data[0:3000, 5:15].T)
        np.testing.assert_array_equal(
            rec[[6, 1, 3], 100:20000:7], data[100:20000:7][:, [6, 1, 3]].T
        )
        np.testing.assert_array_equal(rec[2], data[:, 2])
        np.testing.assert_array_equal(rec[-1, -5:], data[-5:, -1])
        np.testing.assert_array_equal(rec[:, ::-3], data[::-3].T)
        assert rec[3, 17] == data[17, 3]
        frames = np.array([len(data) - 1, 0, 5000, 5000, 12345])
        np.testing.assert_array_equal(rec[:, frames], data[frames].T)
        stamps = written(recorded, name="timestamps_ns")
        np.testing.assert_array_equal(rec.timestamps_ns[:], stamps)
        np.testing.assert_array_equal(rec.timestamps_ns[100:200:3], stamps[100:200:3])
        assert rec.timestamps_ns[7] == stamps[7]
        np.testing.assert_allclose(rec.times_s[0:10], (stamps[0:10] - rec.start_ns) / 1e9)
        assert rec.start_ns <= stamps[0]  # t = 0 is the first frame of any stream


def test_channel_masks_and_labels_give_views_whose_descriptor_follows(recorded: Path) -> None:
    data = written(recorded)
    with pipeline.open_recording(recorded) as rec:
        labels = rec.channel_labels
        assert labels == [f"ch{i + 1:03d}" for i in range(CHANNELS)]
        mask = np.array([True, False, True, True, False, False, False, True])
        masked = rec.select(mask)
        assert masked.shape == (4, len(data)) and masked.files is rec.files
        assert masked.channel_labels == ["ch001", "ch003", "ch004", "ch008"]
        assert masked.descriptor["channel_labels"] == masked.channel_labels
        np.testing.assert_array_equal(masked[:, 1000:4000], data[1000:4000, mask].T)
        np.testing.assert_array_equal(masked[1], data[:, 2])
        by_label = rec.select(["ch007", "ch002"])
        assert by_label.channel_labels == ["ch007", "ch002"]
        np.testing.assert_array_equal(by_label[:, :50], data[:50, [6, 1]].T)
        nested = masked.select(["ch008"])
        np.testing.assert_array_equal(nested[0, 10:20], data[10:20, 7])
        scale = rec.scale
        assert scale.shape == (CHANNELS,) and masked.scale.shape == (4,)
        np.testing.assert_allclose(
            by_label.scaled[:, :50], (data[:50, [6, 1]] * scale[[6, 1]]).T.astype(np.float32)
        )
        with pytest.raises(RecordingError, match="no channel labelled \\['ch999'\\]"):
            rec.select(["ch001", "ch999"])
        with pytest.raises(RecordingError, match="must have 8 elements"):
            rec.select(np.ones(3, bool))


def test_time_slices_and_gaps(recorded: Path) -> None:
    data = written(recorded)
    stamps = written(recorded, name="timestamps_ns")
    with pipeline.open_recording(recorded) as rec:
        start = rec.start_ns
        inside = (stamps >= start + 300_000_000) & (stamps < start + 450_000_000)
        np.testing.assert_array_equal(rec.time_slice(0.3, 0.45), data[inside].T)
        frames = np.flatnonzero(inside)
        assert rec.frame_range(0.3, 0.45) == slice(frames[0], frames[-1] + 1)

        (gap,) = rec.default.gaps  # the source was killed and restarted once
        assert gap.cause.startswith("source restarted")
        jump = np.flatnonzero(np.diff(stamps) > 1.5e9 / RATE)
        assert list(jump + 1) == [gap.frame]
        lost = round((stamps[gap.frame] - stamps[gap.frame - 1]) * RATE / 1e9) - 1
        assert abs(lost - gap.lost_frames) <= 1

        # across the gap: the lost frames come back as NaN / masked columns
        t0 = (stamps[gap.frame - 100] - start) / 1e9
        t1 = (stamps[gap.frame + 100] - start) / 1e9
        filled = rec.time_slice(t0, t1, fill="nan")
        assert filled.dtype == np.float32 and filled.shape == (CHANNELS, 200 + lost)
        np.testing.assert_array_equal(filled[:, :100], data[gap.frame - 100 : gap.frame].T)
        assert np.isnan(filled[:, 100 : 100 + lost]).all()
        np.testing.assert_array_equal(filled[:, 100 + lost :], data[gap.frame : gap.frame + 100].T)
        masked = rec.time_slice(t0, t1, fill="mask")
        assert masked.dtype == data.dtype
        assert masked.mask[:, 100 : 100 + lost].all() and not masked.mask[:, :100].any()
        np.testing.assert_array_equal(masked[:, 100 + lost :], data[gap.frame : gap.frame + 100].T)

        # starting inside the gap: only the lost frames after t0 are filled
        t_in = (stamps[gap.frame - 1] - start) / 1e9 + (lost - 10 + 0.5) / RATE
        partial = rec.time_slice(t_in, t1, fill="nan")
        assert partial.shape == (CHANNELS, 10 + 100) and np.isnan(partial[:, :10]).all()
        with pytest.raises(ValueError, match="fill must be"):
            rec.time_slice(t0, t1, fill="zeros")


def test_the_memory_guard_refuses_big_slices_with_a_way_forward(recorded: Path) -> None:
    with pipeline.open_recording(recorded, memory_limit_bytes=50_000) as rec:
        small = rec[:, :1000]  # 16 kB
        with pytest.raises(SliceTooLarge) as refused:
            rec[:, :]
        text = str(refused.value)
        assert f"8 channels x {rec.frames} frames of int16" in text
        assert "50.00 KB" in text and "blocks(" in text and "allow_large()" in text
        with rec.allow_large():
            everything = rec[:, :]
        np.testing.assert_array_equal(everything[:, :1000], small)
        with pytest.raises(SliceTooLarge):
            rec.time_slice(0, 10)
        with pytest.raises(SliceTooLarge, match="one block"):
            rec.blocks(seconds=10)
        with pytest.raises(SliceTooLarge):
            rec["acq/continuous"].select([0, 1])[:, :]  # views share the limit


def test_prefetching_blocks_equal_plain_slicing(recorded: Path) -> None:
    with pipeline.open_recording(recorded) as rec:
        whole = rec[:, :]
        stamps = rec.timestamps_ns[:]
        plain = list(rec.blocks(frames=3000, prefetch=False))
        fetched = list(rec.blocks(frames=3000))
        assert [b.start for b in fetched] == list(range(0, rec.frames, 3000))
        assert [b.stop for b in fetched] == [b.stop for b in plain]
        assert fetched[-1].stop == rec.frames
        for a, b in zip(plain, fetched, strict=True):
            np.testing.assert_array_equal(a.data, b.data)
            np.testing.assert_array_equal(a.timestamps_ns, b.timestamps_ns)
            np.testing.assert_array_equal(b.data, whole[:, b.start : b.stop])
            np.testing.assert_array_equal(b.timestamps_ns, stamps[b.start : b.stop])
        # zero-copy views, a channel selection, scaled values, a sub-range
        view = rec.select([5, 0])
        expected = view.scaled[:, 1234:15000]
        got = []
        for block in view.blocks(frames=2500, start=1234, stop=15000, scaled=True, copy=False):
            assert not block.data.flags.writeable
            got.append(block.data.copy())
        np.testing.assert_array_equal(np.concatenate(got, axis=1), expected)
        # leaving early stops the prefetch process
        blocks = rec.blocks(frames=1000)
        assert next(blocks).data.shape == (CHANNELS, 1000)
        assert len(prefetchers()) == 1
        del blocks  # as a for loop left with break drops it
        assert prefetchers() == []


def test_event_streams_read_as_records(recorded: Path) -> None:
    spikes = written(recorded, "acq/spikes")
    assert len(spikes) > 10
    with pipeline.open_recording(recorded) as rec:
        view = rec["acq/spikes"]
        assert len(view) == len(spikes) and view.dtype == spikes.dtype
        np.testing.assert_array_equal(view[:], spikes)
        np.testing.assert_array_equal(view[3:9], spikes[3:9])
        np.testing.assert_array_equal(np.concatenate(list(view.chunks(7))), spikes)
        times = (spikes["timestamp_ns"] - rec.start_ns) / 1e9
        inside = spikes[(times >= 0.5) & (times < 1.5)]
        np.testing.assert_array_equal(view.time_slice(0.5, 1.5), inside)
        output = rec["stim/output"]
        assert output.units == "uA" and output.channel_labels == ["stim0", "stim1"]
        assert output[1].min() == -30.0 and output[1].max() == 30.0
        topics = [e.topic for e in rec.events]
        assert "session.annotated" in topics and "worker.stim.stimulation_queued" in topics
        (note,) = [e for e in rec.events if e.topic == "session.annotated"]
        # recorded from launch, the recording starts at the source's first frame
        assert note.payload["text"] == "electrode lowered"
        continuous = rec["acq/continuous"]
        assert 0 < note.t_s < continuous.frames / continuous.sample_rate
        assert rec.provenance["session"] == read_manifest(recorded).session
        assert any(r["worker"] == "acq" for r in rec.restarts)


def _rewrite(directory: Path, segment: str, change) -> None:
    with h5py.File(directory / segment, "a") as f:
        group = f["streams/acq.continuous"]
        data = group["data"][:]
        del group["data"]
        change(group, data)


def test_a_transposed_on_disk_layout_reads_the_same(recorded: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(recorded, tmp_path / "transposed"))
    for entry in read_manifest(copy).segments:

        def transpose(group: h5py.Group, data: np.ndarray) -> None:
            group.create_dataset("data", data=data.T, chunks=True, maxshape=(CHANNELS, None))
            group.attrs["layout"] = "channels x frames"

        _rewrite(copy, entry.file, transpose)
    with pipeline.open_recording(recorded) as original, pipeline.open_recording(copy) as rec:
        assert rec.shape == original.shape
        np.testing.assert_array_equal(rec[:, :], original[:, :])
        np.testing.assert_array_equal(rec[[7, 2], 5:9000:4], original[[7, 2], 5:9000:4])
        np.testing.assert_array_equal(rec[3, [9, 2, 9]], original[3, [9, 2, 9]])
        blocks = [b.data for b in rec.select([1, 6]).blocks(frames=4096)]
        np.testing.assert_array_equal(np.concatenate(blocks, axis=1), original[[1, 6]])


def test_segments_of_another_layout_are_named_and_can_be_opened_apart(
    recorded: Path, tmp_path: Path
) -> None:
    copy = Path(shutil.copytree(recorded, tmp_path / "changed"))
    files = [copy / e.file for e in read_manifest(copy).segments]
    _rewrite(copy, files[2].name, lambda g, data: g.create_dataset("data", data=data[:, :4]))
    with pipeline.open_recording(copy) as rec:
        np.testing.assert_array_equal(rec["acq/spikes"][:], written(recorded, "acq/spikes"))
        with pytest.raises(RecordingError, match=f"{files[2].name} has another layout"):
            rec[:, :10]
    with pipeline.open_recording(files[:2]) as first, pipeline.open_recording(files[2]) as third:
        assert first.shape[0] == CHANNELS and third.shape[0] == 4
        assert third.first_frame == first.frames
    with (
        pipeline.open_recording(copy) as rec,
        pytest.raises(RecordingError, match=r"not in the recording .* it has"),
    ):
        rec["acq/lfp"]
    with pytest.raises(RecordingError, match="no recording at"):
        pipeline.open_recording(tmp_path / "nothing-here")


def test_a_prefetch_process_that_dies_is_an_error_not_a_short_read(recorded: Path) -> None:
    with pipeline.open_recording(recorded) as rec:
        blocks = rec.blocks(frames=500)
        first = next(blocks)
        assert first.start == 0
        (child,) = prefetchers()
        child.kill()
        killed = -9 if os.name == "posix" else "-?[0-9]+"  # Windows: TerminateProcess gave it one
        with pytest.raises(RecordingError, match=f"prefetch process exited with code {killed}"):
            for _ in blocks:
                pass
        assert prefetchers() == []


def test_an_nwb_export_reads_back_with_pynwb_as_the_recording(
    recorded: Path, tmp_path: Path
) -> None:
    from pynwb import NWBHDF5IO

    out = tmp_path / "session.nwb"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "export", str(recorded), "--nwb", str(out),
         "--block-s", "0.3"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "100.0 %" in result.stderr and "acq_continuous (" in result.stdout
    assert not list(tmp_path.glob("*.partial.nwb"))
    again = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "export", str(recorded), "--nwb", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 1 and "exists" in again.stderr and "--force" in again.stderr

    with pipeline.open_recording(recorded) as rec, NWBHDF5IO(out, "r") as io:
        nwb = io.read()
        assert nwb.identifier == rec.provenance["recording_id"]
        series = nwb.acquisition["acq_continuous"]
        np.testing.assert_array_equal(series.data[:], rec[:, :].T)
        assert series.data.dtype == rec.dtype
        # the gap: explicit timestamps, in seconds since the first frame
        np.testing.assert_allclose(series.timestamps[:], rec.times_s[:])
        assert series.conversion == pytest.approx(rec.scale[0] * 1e-6) and series.unit == "volts"
        electrodes = nwb.electrodes.to_dataframe()
        assert list(electrodes["label"]) == rec.channel_labels
        assert list(series.electrodes.data[:]) == list(range(CHANNELS))
        stim = nwb.stimulus["stim_output"]
        np.testing.assert_array_equal(stim.data[:], rec["stim/output"][:, :].T)
        assert stim.rate == 10000.0 and stim.unit == "amperes" and stim.conversion == 1e-6

        spikes = rec["acq/spikes"][:]
        units = nwb.units.to_dataframe()
        assert units["spike_times"].map(len).sum() == len(spikes)
        for _, unit in units.iterrows():
            mine = spikes[
                (spikes["channel"] == unit["channel"]) & (spikes["unit"] == unit["sorted_unit"])
            ]
            np.testing.assert_allclose(
                np.sort(unit["spike_times"]), np.sort((mine["timestamp_ns"] - rec.start_ns) / 1e9)
            )
            assert unit["channel_label"] == rec.channel_labels[unit["channel"]]
            assert list(unit["electrodes"]["label"]) == [unit["channel_label"]]

        annotations = nwb.events["annotations"].to_dataframe()
        assert list(annotations["annotation"]) == ["electrode lowered"]
        stimulation = nwb.events["stimulation"].to_dataframe()
        assert "worker.stim.stimulation_queued" in set(stimulation["topic"])
        (gap,) = rec.default.gaps
        invalid = nwb.invalid_times.to_dataframe()
        assert list(invalid["tags"]) == [["acq/continuous"]]
        assert invalid["lost_frames"].iloc[0] == gap.lost_frames
        assert (
            invalid["start_time"].iloc[0]
            < rec.times_s[gap.frame]
            == pytest.approx(invalid["stop_time"].iloc[0])
        )
        notes = json.loads(nwb.notes)
        assert notes["recording_id"] == rec.provenance["recording_id"]
        assert "[[workers]]" in notes["config_toml"] and "python" in notes["versions"]
        assert any(r["worker"] == "acq" for r in notes["restarts"])


def test_a_recording_still_being_written_opens_as_far_as_it_was_flushed(rigs) -> None:
    rig = rigs.new()
    recordings = rig.directory / "recordings"
    rig.write(
        WORKERS.split('[[workers]]\nname = "stim"')[0]
        + '[[workers]]\nname = "rec"\nkind = "recording"\n[workers.parameters]\n'
        + "flush_s = 0.3\nrotate_minutes = 0.01\n",
        session_extra=f"recordings_dir = {toml_string(recordings)}",
    )
    rig.start()
    directory = wait_for(lambda: list(recordings.glob("*/segment-0001.h5")), 20, "a rotation")[
        0
    ].parent
    time.sleep(1.0)
    with pipeline.open_recording(directory) as live:
        pieces = live.default.pieces  # closed segments and the one being written (SWMR)
        assert consistency_flags(Path(pieces[-1].path)) != 0, "the last segment is still open"
        assert len(pieces) >= 2 and pieces[0].rows > 0 and sum(p.rows for p in pieces[1:]) > 0
        early = live[:, :]
        stamps = live.timestamps_ns[:]
        assert (np.diff(stamps) > 0).all()
    assert rig.interrupt() == 0
    with pipeline.open_recording(directory) as rec:
        assert rec.frames > len(stamps)
        np.testing.assert_array_equal(rec[:, : early.shape[1]], early)
