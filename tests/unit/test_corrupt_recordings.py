"""Damaged recordings: every entry point says what is wrong in one line, never a traceback.

One valid recording (three segments) is damaged in each way seen in the field;
``open_recording`` must raise :class:`RecordingError`, and ``rigpipe inspect``
and ``rigpipe export --nwb`` must exit non-zero with one line on stderr.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline import open_recording
from pipeline.errors import RecordingError
from tests import recordings
from workers.recording.segment_file import StreamFormat

ROOT = Path(__file__).resolve().parents[2]
RATE = 1000.0


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("valid") / "rec"
    directory.mkdir()
    frames = 3000
    stamps = 10**12 + np.arange(frames, dtype=np.int64) * 1_000_000
    fmt = StreamFormat("acq/continuous", np.dtype(np.int16), (2,), RATE, {"units": "uV"})
    data = np.arange(frames * 2, dtype=np.int16).reshape(frames, 2)
    recordings.write(directory, [recordings.Stream(fmt, data, stamps)], [[1000], [1000], [1000]])
    return directory


def _manifest(text: bytes) -> Callable[[Path], None]:
    return lambda d: (d / "manifest.json").write_bytes(text)


def _half_manifest(d: Path) -> None:
    raw = (d / "manifest.json").read_bytes()
    (d / "manifest.json").write_bytes(raw[: len(raw) // 2])


def _drop_timestamps(d: Path) -> None:
    with h5py.File(d / "segment-0001.h5", "a") as f:
        del f["streams/acq.continuous/timestamps_ns"]


def _flip_metadata(d: Path) -> None:
    path = d / "segment-0001.h5"
    raw = bytearray(path.read_bytes())
    rng = np.random.default_rng(7)
    for offset in range(64, min(len(raw), 4096), 7):  # the superblock and the first headers
        raw[offset] = int(rng.integers(0, 256))
    path.write_bytes(bytes(raw))


def _missing_middle_without_manifest(d: Path) -> None:
    (d / "manifest.json").unlink()
    (d / "segment-0001.h5").unlink()


DAMAGE = {
    "manifest of random bytes": _manifest(os.urandom(300)),
    "manifest of the wrong JSON types": _manifest(b'{"segments": 5, "streams": "x"}'),
    "empty manifest": _manifest(b""),
    "manifest cut in half": _half_manifest,
    "segment without timestamps_ns": _drop_timestamps,
    "segment metadata overwritten": _flip_metadata,
    "no manifest and a missing middle segment": _missing_middle_without_manifest,
}


@pytest.fixture(params=list(DAMAGE), ids=list(DAMAGE))
def damaged(request, valid: Path, tmp_path: Path) -> Path:
    directory = tmp_path / "rec"
    shutil.copytree(valid, directory)
    DAMAGE[request.param](directory)
    return directory


def test_open_recording_raises_recording_error(damaged: Path) -> None:
    with pytest.raises(RecordingError) as caught, open_recording(damaged) as rec:
        rec.stream("acq/continuous")[:, :]
        rec.stream("acq/continuous").timestamps_ns[:]
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("command", ["inspect", "export"])
def test_the_cli_says_it_in_one_line(damaged: Path, tmp_path: Path, command: str) -> None:
    args = [str(damaged)] + (["--nwb", str(tmp_path / "out.nwb")] if command == "export" else [])
    found = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", command, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert found.returncode != 0, found.stdout
    assert "Traceback" not in found.stderr, found.stderr
    if command == "inspect" and not found.stderr.strip():  # inspect reports a damaged segment
        assert "cannot be read, the file is damaged" in found.stdout, found.stdout
    else:
        assert found.stderr.strip(), "it says why"


def test_the_valid_recording_opens(valid: Path) -> None:
    with open_recording(valid) as rec:
        assert rec.stream("acq/continuous").shape == (2, 3000)


def test_inspect_counts_nothing_of_a_segment_it_cannot_read(valid: Path, tmp_path: Path) -> None:
    from pipeline.recording.summary import inspect

    directory = tmp_path / "rec"
    shutil.copytree(valid, directory)
    _drop_timestamps(directory)  # the middle one of three segments of 1000 frames
    report = inspect(directory)
    assert not report.ok and "segment-0001.h5 cannot be read" in report.problems[0]
    assert report.streams["acq/continuous"].frames == 2000  # not 3000: half-read counts nothing
    assert [s["file"] for s in report.segments] == ["segment-0000.h5", "segment-0002.h5"]
