"""NWB export of a Blackrock-like recording (per-channel scales, positions, channel ids,
a clock record stream), written by the recorder's segment writer and read back with pynwb."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import msgspec
import numpy as np
import psutil
import pytest
from pynwb import NWBHDF5IO

import pipeline
from pipeline.control import messages
from pipeline.errors import RecordingError
from pipeline.recording.nwb import export_nwb
from tests import recordings, wine
from workers.recording.segment_file import StreamFormat

RATE = 30000.0
IDS = [3, 4, 9, 10]  # Blackrock channel ids, not indices
SPIKE = np.dtype([("timestamp_ns", "<i8"), ("channel", "<i4"), ("unit", "<i2")])
CLOCK = np.dtype([("device_ns", "<i8"), ("group", "<i4"), ("host_ns", "<i8")])


@pytest.fixture(scope="module")
def blackrock_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("blackrock")
    rng = np.random.default_rng(3)
    frames = 9000
    stamps = 5 * 10**12 + np.round(np.arange(frames) * 1e9 / RATE).astype(np.int64)
    raw = StreamFormat(
        "acq/raw",
        np.dtype(np.int16),
        (len(IDS),),
        RATE,
        {
            "channel_ids": IDS,
            "channel_labels": [f"elec{i}" for i in IDS],
            "positions": [[i * 400.0, 800.0, 0, i] for i in IDS],
            "position_fields": ["x", "y", "bank", "electrode"],
            "scale": [0.25, 0.25, 0.5, 0.25],
            "units": "uV",
            "source": {"kind": "blackrock", "serial": "emulated"},
        },
    )
    spikes = np.zeros(40, SPIKE)
    spikes["timestamp_ns"] = np.sort(rng.choice(stamps, 40, replace=False))
    spikes["channel"] = rng.choice(IDS, 40)
    spikes["unit"] = rng.integers(0, 2, 40)
    spike_format = StreamFormat(
        "acq/spikes",
        SPIKE,
        (),
        0.0,
        {"channel_ids": IDS, "channel_labels": [f"elec{i}" for i in IDS], "units": "uV"},
    )
    clock = np.zeros(9, CLOCK)
    clock["host_ns"] = stamps[::1000]
    clock["device_ns"] = np.arange(9) * 10**6
    clock_format = StreamFormat("acq/clock", CLOCK, (), 0.0, {"source": {"kind": "blackrock"}})
    recordings.write(
        directory,
        [
            recordings.Stream(raw, rng.integers(-900, 900, (frames, 4), dtype=np.int16), stamps),
            recordings.Stream(spike_format, spikes, spikes["timestamp_ns"]),
            recordings.Stream(clock_format, clock, clock["host_ns"]),
        ],
        [[4000, 15, 4], [0, 0, 0], [5000, 25, 5]],
        _events(int(stamps[0])),
    )
    return directory


def _events(t0: int) -> list[tuple[int, str, dict]]:
    """Control-plane events as the recorder stores them: the messages' own JSON."""
    ms = 1_000_000
    made = [
        (
            "session.annotated",
            messages.Annotation(text="drug applied", time_ns=1, monotonic_ns=t0 + ms),
        ),
        (
            "worker.stim.stimulation_queued",
            messages.StimulationQueued(
                worker="stim",
                command_id=7,
                channel=2,
                phases=[messages.Phase(-50.0, 200.0), messages.Phase(50.0, 200.0)],
                queued_ns=t0 + 2 * ms,
            ),
        ),
        (
            "worker.stim.triggered",
            messages.Triggered(
                worker="stim",
                rule="r1",
                stream="acq/raw",
                channel=3,
                sequence=40,
                value=-80.5,
                frame_timestamp_ns=t0 + 3 * ms,
                fired=False,
                reason="disarmed",
                repeats=3,
            ),
        ),
        (
            "worker.stim.stimulation_refused",
            messages.StimulationRefused(
                worker="stim",
                text="500 uA is over the limit",
                channel=2,
                limit="max_amplitude_ua",
                value=500.0,
                allowed=100.0,
            ),
        ),
        (
            "session.worker_state_changed",
            messages.WorkerStateChanged(worker="acq", state="running"),
        ),
        (
            "session.worker_state_changed",
            messages.WorkerStateChanged(
                worker="rec", state="backoff", exit_code=1, detail="exit code 1"
            ),
        ),
        ("session.reported", messages.Reported(worker="rec", level="warning", text="disk slow")),
        (
            "session.parameter_changed",
            messages.ParameterChanged(worker="acq", name="gain", value=2.0),
        ),
    ]
    return [
        (t0 + (k + 1) * ms, topic, json.loads(msgspec.json.encode(message)))
        for k, (topic, message) in enumerate(made)
    ]


def test_per_channel_scales_positions_and_channel_ids_survive_export(
    blackrock_like: Path, tmp_path: Path
) -> None:
    out = tmp_path / "br.nwb"
    seen = []
    summary = export_nwb(blackrock_like, out, block_s=0.07, progress=lambda *a: seen.append(a))
    assert summary.series == {"acq_raw": 9000} and summary.units > 0
    assert seen[-1][0] == seen[-1][1] == 9000 * 4 * 2 and len(seen) == 5  # 0.07 s blocks
    with pipeline.open_recording(blackrock_like) as rec, NWBHDF5IO(out, "r") as io:
        nwb = io.read()
        series = nwb.acquisition["acq_raw"]
        np.testing.assert_array_equal(series.data[:], rec[:, :].T)
        # no gap, no drift: starting time and rate describe every frame
        assert series.timestamps is None and series.rate == RATE and series.starting_time == 0.0
        assert series.conversion == 1e-6
        np.testing.assert_allclose(series.channel_conversion[:], [0.25, 0.25, 0.5, 0.25])
        electrodes = nwb.electrodes.to_dataframe()
        assert list(electrodes["label"]) == ["elec3", "elec4", "elec9", "elec10"]
        assert list(electrodes["channel_name"]) == list(electrodes["label"])  # NeuroConv's
        assert list(electrodes["rel_x"]) == [1200.0, 1600.0, 3600.0, 4000.0]
        assert nwb.devices["acq"].description == json.dumps(rec.default.descriptor["source"])

        spikes = rec["acq/spikes"][:]
        for _, unit in nwb.units.to_dataframe().iterrows():
            mine = spikes[
                (spikes["channel"] == unit["channel"]) & (spikes["unit"] == unit["sorted_unit"])
            ]
            assert len(mine) == len(unit["spike_times"])
            # channel ids map to labels (elec9 is id 9, the third channel)
            assert unit["channel_label"] == f"elec{unit['channel']}"
            assert list(unit["electrodes"]["label"]) == [unit["channel_label"]]

        # control-plane events: typed columns, one per payload field, no JSON payload
        stimulation = nwb.events["stimulation"].to_dataframe()
        assert "payload" not in stimulation.columns
        assert list(stimulation["event"]) == [
            "stimulation_queued", "triggered", "stimulation_refused"
        ]  # fmt: skip
        assert stimulation["channel"].dtype == np.int64 and list(stimulation["channel"]) == [
            2,
            3,
            2,
        ]
        assert stimulation["command_id"].iloc[0] == 7 and np.isnan(stimulation["allowed"].iloc[0])
        assert (
            stimulation["allowed"].iloc[2] == 100.0 and stimulation["reason"].iloc[1] == "disarmed"
        )
        assert json.loads(stimulation["phases"].iloc[0]) == [[-50.0, 200.0], [50.0, 200.0]]
        control = nwb.events["control_events"].to_dataframe()
        assert list(control["worker"]) == ["acq", "rec", "rec", "acq"]
        assert list(control["event"]) == [
            "worker_state_changed", "worker_state_changed", "reported", "parameter_changed"
        ]  # fmt: skip
        assert control["event_name"].iloc[3] == "gain"  # "name" is the table's own attribute
        assert np.isnan(control["exit_code"].iloc[0]) and control["exit_code"].iloc[1] == 1.0
        annotations = nwb.events["annotations"].to_dataframe()
        assert list(annotations["annotation"]) == ["drug applied"]
        assert annotations["timestamp"].iloc[0] == pytest.approx(0.001)

        clock = nwb.events["acq_clock"].to_dataframe()
        np.testing.assert_array_equal(clock["device_ns"], rec["acq/clock"][:]["device_ns"])
        np.testing.assert_allclose(clock["timestamp"], rec["acq/clock"].times_s[:])
        assert nwb.invalid_times is None


def test_an_existing_file_is_kept_and_a_failed_export_leaves_nothing(
    blackrock_like: Path, tmp_path: Path
) -> None:
    out = tmp_path / "kept.nwb"
    out.write_bytes(b"precious")
    with pytest.raises(RecordingError, match="exists; choose another name, or replace it"):
        export_nwb(blackrock_like, out)
    assert out.read_bytes() == b"precious"

    def fail(done: int, total: int, what: str) -> None:
        raise KeyboardInterrupt  # Ctrl-C half way

    with pytest.raises(KeyboardInterrupt):
        export_nwb(blackrock_like, tmp_path / "new.nwb", block_s=0.05, progress=fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.nwb"]
    children = [
        p for p in psutil.Process().children() if "pipeline.recording.prefetch_child" in p.cmdline()
    ]
    assert children == [], "the interrupted export left its prefetch process running"


EXPORT = [sys.executable, "-m", "pipeline.cli", "export"]
METADATA = """
experimenter = ["Doe, Jane"]
institution = "Example University"
experiment_description = "rigpipe export test"
keywords = ["rigpipe", "test"]
electrode_location = "VISp"

[subject]
subject_id = "m001"
species = "Mus musculus"
sex = "M"
age = "P90D"
description = "wild type"
"""


def test_the_export_passes_nwbinspector_given_the_metadata_dandi_needs(
    blackrock_like: Path, tmp_path: Path
) -> None:
    nwbinspector = wine.import_module("nwbinspector", "bcryptprimitives.dll")
    Importance, inspect_nwbfile = nwbinspector.Importance, nwbinspector.inspect_nwbfile

    meta = tmp_path / "meta.toml"
    meta.write_text(METADATA)
    out = tmp_path / "dandi.nwb"
    done = subprocess.run(
        [*EXPORT, str(blackrock_like), "--nwb", str(out), "--metadata", str(meta), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "no [subject]" not in done.stderr
    found = list(inspect_nwbfile(nwbfile_path=str(out)))
    serious = [m for m in found if m.importance.value >= Importance.BEST_PRACTICE_VIOLATION.value]
    assert serious == [], [f"{m.check_function_name}: {m.message}" for m in serious]
    # suggestions only: a yes/no column stored as text; a table of one row (one annotation)
    assert {m.check_function_name for m in found} <= {
        "check_column_binary_capability",
        "check_single_row",
    }
    # and the schema validator pynwb ships (the pynwb 4 entry point) finds nothing either
    validate = shutil.which("pynwb-validate")
    assert validate is not None, "pynwb-validate comes with pynwb (the test extra)"
    checked = subprocess.run([validate, str(out)], capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "no errors found" in checked.stdout, checked.stdout


def test_export_without_a_subject_says_what_dandi_needs(blackrock_like: Path, tmp_path) -> None:
    done = subprocess.run(
        [*EXPORT, str(blackrock_like), "--nwb", str(tmp_path / "x.nwb"), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "no [subject]" in done.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[subject]\nsubject_id = "m1"\nsex = "male"\n')
    refused = subprocess.run(
        [*EXPORT, str(blackrock_like), "--nwb", str(tmp_path / "y.nwb"), "--metadata", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"metadata file {bad}" in refused.stderr and "subject.sex" in refused.stderr
