"""The recording format's repair and continuity check, on real HDF5 files."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.recording.format import (
    GAP_DTYPE,
    clear_consistency_flags,
    consistency_flags,
    lookup3,
    repair,
)
from pipeline.recording.inspect import inspect
from workers.recording.segment import Segment, StreamFormat

WRITER = """
import sys, time, h5py, numpy as np
f = h5py.File(sys.argv[1], "w", libver="latest")
d = f.create_dataset("x", shape=(0, 4), maxshape=(None, 4), dtype="i2", chunks=(256, 4))
f.swmr_mode = True
n = 0
while True:
    d.resize(n + 100, axis=0)
    d[n:] = np.arange(n, n + 100)[:, None]
    n += 100
    if n % 1000 == 0:
        f.flush()
        print(n, flush=True)
"""


def test_lookup3_matches_the_checksums_hdf5_writes(tmp_path: Path) -> None:
    for i in range(5):
        path = tmp_path / f"f{i}.h5"
        with h5py.File(path, "w", libver="latest") as f:
            f.create_dataset("x", data=np.arange(10 * (i + 1)))
        head = path.read_bytes()[:48]
        assert lookup3(head[:44]) == int.from_bytes(head[44:48], "little")


def test_a_sigkilled_swmr_writers_file_opens_plainly_after_repair(tmp_path: Path) -> None:
    path = tmp_path / "crashed.h5"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE)
    try:
        flushed = 0
        while flushed < 5000:
            flushed = int(writer.stdout.readline())
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
        writer.stdout.close()
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(path)
    assert consistency_flags(path) != 0
    assert clear_consistency_flags(path)
    with h5py.File(path) as f:
        data = f["x"][:]
    assert len(data) >= flushed and np.array_equal(data[:, 0], np.arange(len(data)))
    assert not clear_consistency_flags(path), "a second repair has nothing to do"


def _segment(path: Path, stamps: np.ndarray, gap_at: int | None = None) -> None:
    fmt = StreamFormat(
        "acq/continuous", np.dtype("i2"), (2,), 1000.0, {"channel_labels": ["a", "b"]}
    )
    segment = Segment.create(path, {}, {}, [fmt], {"acq/continuous": 0}, {"acq/continuous": 0})
    segment.append("acq/continuous", np.zeros((len(stamps), 2), "i2"), stamps)
    if gap_at is not None:
        row = np.zeros((), GAP_DTYPE)
        row["stream"], row["at_frame"], row["lost_frames"] = b"acq/continuous", gap_at, 9
        row["end_ns"], row["cause"] = stamps[gap_at], b"test"
        segment.add_row("gaps", row)
    segment.close({"finished_at": "now"})


def test_inspect_finds_missing_frames_that_no_gap_explains(tmp_path: Path) -> None:
    stamps = np.arange(100, dtype=np.int64) * 1_000_000 + 1
    stamps[50:] += 10_000_000  # ten periods missing before frame 50
    _segment(tmp_path / "unexplained.h5", stamps)
    report = inspect(tmp_path / "unexplained.h5")
    assert not report.ok
    assert report.problems == [
        "acq/continuous: about 10 frame(s) missing before frame 50 (11.000 ms step) "
        "and no gap explains it"
    ]
    _segment(tmp_path / "explained.h5", stamps, gap_at=50)
    assert inspect(tmp_path / "explained.h5").ok
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "inspect", str(tmp_path / "unexplained.h5")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "continuity: 1 problem(s)" in result.stdout


def test_repair_cuts_exactly_the_rows_written_after_the_last_flush(tmp_path: Path) -> None:
    path = tmp_path / "short.h5"
    stamps = np.arange(1, 2001, dtype=np.int64) * 1_000_000
    _segment(path, stamps)  # closed cleanly: /flushed counts 2000 rows
    with h5py.File(path, "a") as f:  # rows appended after the last flush, timestamps and all
        group = f["streams/acq.continuous"]
        group["timestamps_ns"].resize(2500, axis=0)
        group["timestamps_ns"][2000:] = np.arange(2001, 2501) * 1_000_000
        group["data"].resize(2500, axis=0)
    assert repair(path) == [
        "cut streams/acq.continuous/data from 2500 to 2000 rows (never flushed)"
    ]
    with h5py.File(path) as f:
        assert np.array_equal(f["streams/acq.continuous/timestamps_ns"][:], stamps)


def test_a_clean_close_keeps_timestamps_that_go_backwards(tmp_path: Path) -> None:
    """A device clock estimate that steps back is data: nothing is cut (it once cut 93 %)."""
    path = tmp_path / "backwards.h5"
    stamps = np.arange(1, 2001, dtype=np.int64) * 1_000_000
    stamps[100:] -= 1_700_000  # the clock estimate moved back by 0.7 ms at frame 100
    _segment(path, stamps)
    assert repair(path) == []
    with h5py.File(path) as f:
        assert np.array_equal(f["streams/acq.continuous/timestamps_ns"][:], stamps)
    report = inspect(path)
    assert report.ok and any("backwards" in w for w in report.warnings), report.warnings


def test_a_schema_1_segment_loses_only_its_trailing_unwritten_rows(tmp_path: Path) -> None:
    path = tmp_path / "v1.h5"
    stamps = np.arange(1, 2001, dtype=np.int64) * 1_000_000
    stamps[500:] -= 2_000_000  # backwards: kept
    _segment(path, stamps)
    with h5py.File(path, "a") as f:  # as version 1 wrote it: no counts, zero rows at the end
        del f["flushed"]
        group = f["streams/acq.continuous"]
        group["timestamps_ns"].resize(2300, axis=0)
        group["data"].resize(2300, axis=0)
    assert repair(path) == [
        "cut streams/acq.continuous/data from 2300 to 2000 rows (never flushed)"
    ]
    with h5py.File(path) as f:
        assert np.array_equal(f["streams/acq.continuous/timestamps_ns"][:], stamps)
