"""The recording format's repair and continuity check, on real HDF5 files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.recording.format import (
    GAP_DTYPE,
    consistency_flags,
)
from pipeline.recording.repair import clear_consistency_flags, lookup3, repair
from pipeline.recording.summary import inspect
from workers.recording.segment_file import SegmentFile, StreamFormat

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
        writer.kill()
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
    segment = SegmentFile.create(path, {}, {}, [fmt], {"acq/continuous": 0}, {"acq/continuous": 0})
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


def _chunk(start: int, n: int, t0_ns: int, dropped: int = 0, generation: int = 1):
    from pipeline.ring import Chunk

    stamps = t0_ns + np.arange(n, dtype=np.int64) * 1_000_000
    return Chunk(np.zeros((n, 2), "i2"), stamps, start, dropped, generation)


def test_the_recorder_writes_true_causes_and_inspect_cross_checks_them(tmp_path: Path) -> None:
    """Ring drops are exact and resume at the ring's sequence; a new stream is the source's;
    a manifest that disagrees with the rows, or a ring gap whose range is wrong, fails."""
    from workers.recording.writer import (
        CAUSE_BEHIND,
        CAUSE_RESTARTED,
        RecordingWriter,
    )

    fmt = StreamFormat("acq/continuous", np.dtype("i2"), (2,), 1000.0, {})
    rec = RecordingWriter.start(
        tmp_path, "t", "sid", [fmt], {"acq/continuous": 0}, {}, stream_ids={"acq/continuous": 7}
    )
    rec.write("acq/continuous", _chunk(0, 100, 1_000_000_000), 7, fmt)
    # the ring overwrote 50 frames the recorder had not read: exact, and the rows go on at 150
    rec.write("acq/continuous", _chunk(150, 100, 1_150_000_000, dropped=50), 7, fmt)
    # the source was restarted cleanly: a new stream (id 9) whose sequence starts at 0
    rec.write("acq/continuous", _chunk(0, 100, 2_000_000_000), 9, fmt)
    rec.finish()
    directory = rec.directory
    with h5py.File(directory / "segment-0000.h5") as f:
        gaps = f["gaps"][:]
        runs = f["streams/acq.continuous/sequence_runs"][:]
    assert [g["cause"].decode() for g in gaps] == [CAUSE_BEHIND, CAUSE_RESTARTED]
    assert (gaps[0]["lost_frames"], gaps[0]["cursor_start"], gaps[0]["cursor_end"]) == (
        50,
        100,
        150,
    )
    assert gaps[1]["lost_frames"] == 750  # a 751 ms step at 1 kHz: 750 frames between
    assert [(int(r["row"]), int(r["stream_id"]), int(r["sequence"])) for r in runs] == [
        (0, 7, 0),
        (100, 7, 150),
        (200, 9, 0),
    ]
    report = inspect(directory)
    assert report.ok, report.problems

    # A manifest that disagrees with the rows: frames were lost after the segment was closed.
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["segments"][0]["frames"]["acq/continuous"] = 9999
    (directory / "manifest.json").write_text(json.dumps(manifest))
    assert inspect(directory).problems == [
        "segment-0000.h5: acq/continuous has 300 rows but the manifest says 9999: "
        "frames were lost after the segment was closed"
    ]
    manifest["segments"][0]["frames"]["acq/continuous"] = 300
    (directory / "manifest.json").write_text(json.dumps(manifest))
    # A gap blamed on the ring whose sequence range does not hold its frames.
    with h5py.File(directory / "segment-0000.h5", "a") as f:
        row = f["gaps"][0]
        row["cursor_end"] = 160
        f["gaps"][0] = row
    problems = inspect(directory).problems
    assert any(
        "says 50 frames were overwritten in the ring, but its sequence range holds 60" in p
        for p in problems
    ), problems
    assert any("do not start at ring sequence 160" in p for p in problems), problems


def _resident_bytes(path: Path) -> int:
    """How much of ``path`` is in the page cache, by util-linux's fincore."""
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


@pytest.mark.skipif(
    not hasattr(os, "posix_fadvise") or shutil.which("fincore") is None,
    reason="needs posix_fadvise and util-linux's fincore",
)
def test_a_segment_lets_go_of_the_page_cache_its_flushed_rows_filled(tmp_path: Path) -> None:
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True)
    if fs.stdout.strip() == "tmpfs":
        pytest.skip("a tmpfs keeps every page in memory by design")
    path = tmp_path / "big.h5"
    fmt = StreamFormat("acq/continuous", np.dtype("i2"), (1024,), 30000.0, {})
    segment = SegmentFile.create(path, {}, {}, [fmt], {"acq/continuous": 0}, {"acq/continuous": 0})
    rows = 3000  # 6 MB a block, 48 MB in all
    blocks = [np.full((rows, 1024), b, "i2") + np.arange(1024, dtype="i2") for b in range(8)]
    for number, block in enumerate(blocks):
        stamps = np.arange(number * rows, (number + 1) * rows, dtype=np.int64)
        segment.append("acq/continuous", block, stamps)
        segment.flush()
    size = path.stat().st_size
    assert size > 48e6
    deadline = time.monotonic() + 10.0
    while _resident_bytes(path) > size / 4 and time.monotonic() < deadline:
        time.sleep(0.1)  # writeback started at each flush; the next flush drops what is done
        segment.flush()
    resident = _resident_bytes(path)
    segment.close({"finished_at": "now"})
    assert resident <= size / 4, f"{resident} of {size} bytes still cached after the flushes"
    with h5py.File(path, "r") as f:  # and nothing was lost on the way
        assert np.array_equal(f["streams/acq.continuous/data"][:], np.concatenate(blocks))


def test_without_posix_fadvise_a_segment_leaves_the_cache_to_the_os(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "posix_fadvise", raising=False)  # as on Windows and macOS
    path = tmp_path / "plain.h5"
    fmt = StreamFormat("acq/continuous", np.dtype("i2"), (4,), 1000.0, {})
    segment = SegmentFile.create(path, {}, {}, [fmt], {"acq/continuous": 0}, {"acq/continuous": 0})
    for number in range(3):
        block = np.full((500, 4), number, "i2")
        segment.append("acq/continuous", block, np.arange(number * 500, (number + 1) * 500))
        segment.flush()
    segment.close({"finished_at": "now"})
    with h5py.File(path, "r") as f:
        assert np.array_equal(f["streams/acq.continuous/data"][:, 0], np.repeat(np.arange(3), 500))
