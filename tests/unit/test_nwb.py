"""NWB export of a Blackrock-like recording (per-channel scales, positions, channel ids,
a clock record stream), written by the recorder's segment writer and read back with pynwb."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
from pynwb import NWBHDF5IO

import pipeline
from pipeline.errors import RecordingError
from pipeline.recording.nwb import export_nwb
from tests import recordings
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
    )
    return directory


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
    from nwbinspector import Importance, inspect_nwbfile

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
    assert {m.check_function_name for m in found} <= {"check_column_binary_capability"}
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
