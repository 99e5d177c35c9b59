"""Recording with a real supervisor, a real synthetic source and real HDF5 files."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import psutil
import pytest

import pipeline
from pipeline import StimulationRefused, attach
from pipeline.control import messages
from pipeline.errors import RequestFailed, StreamNotFound
from pipeline.recording.format import consistency_flags, read_manifest
from pipeline.recording.nwb import export_nwb
from pipeline.recording.summary import inspect
from pipeline.ring import naming, shm
from tests.rig import SIMULATED_STIMULATOR, exited, toml_string, wait_for

RATE = 10000.0
PERIOD_NS = 1e9 / RATE


def _workers(recorder: str = "", buffer_s: float = 10.0, restart: str = "on-failure") -> str:
    return f"""
[[workers]]
name = "acq"
kind = "acquisition"
backoff_s = 0.3
[workers.parameters]
channels = 8
sample_rate_hz = {RATE}
chunk_s = 0.002
buffer_s = {buffer_s}

[[workers]]
name = "rec"
kind = "recording"
backoff_s = 0.3
restart = "{restart}"
[workers.parameters]
flush_s = 0.5
{recorder}
"""


def _rig(rigs, recorder: str = "", **workers):
    rig = rigs.new()
    recordings = rig.directory / "recordings"
    rig.write(
        _workers(recorder, **workers), session_extra=f"recordings_dir = {toml_string(recordings)}"
    )
    return rig, recordings


def _recording(recordings: Path) -> Path:
    (found,) = [p for p in recordings.iterdir() if p.is_dir()]
    return found


def _timestamps(directory: Path, stream: str = "acq/continuous") -> np.ndarray:
    parts = []
    for entry in read_manifest(directory).segments:
        with h5py.File(directory / entry.file) as f:  # plain h5py: every file must open
            parts.append(f[f"streams/{stream.replace('/', '.')}/timestamps_ns"][:])
    return np.concatenate(parts)


def _gaps(directory: Path, stream: str = "acq/continuous") -> list:
    rows = []
    for entry in read_manifest(directory).segments:
        with h5py.File(directory / entry.file) as f:
            gaps = f["gaps"][:]
            rows += list(gaps[gaps["stream"] == stream.encode()])
    return rows


def _assert_contiguous(stamps: np.ndarray) -> None:
    steps = np.diff(stamps)
    assert len(stamps) > 1000
    assert steps.min() >= np.floor(PERIOD_NS) and steps.max() <= np.ceil(PERIOD_NS), (
        f"timestamps are not contiguous at 1/sample_rate: steps {np.unique(steps)[:10]}"
    )


def _kill(rig, worker: str) -> int:
    pid = rig.worker(worker).pid
    psutil.Process(pid).kill()
    rig.restarted(worker, pid, 10)
    return pid


def test_a_recorder_killed_mid_recording_loses_no_frame(rigs) -> None:
    rig, recordings = _rig(rigs)
    rig.start()
    time.sleep(1.5)
    _kill(rig, "rec")
    time.sleep(1.5)
    assert rig.interrupt() == 0
    directory = _recording(recordings)
    _assert_contiguous(_timestamps(directory))
    assert _gaps(directory) == []
    report = inspect(directory)
    assert report.ok, report.problems
    assert report.streams["acq/continuous"].duration_s > 2.5
    assert any(r["worker"] == "rec" for r in report.restarts)
    assert len(read_manifest(directory).segments) == 1, "resumed in the same segment"


def test_a_recorder_from_launch_starts_at_the_streams_first_frame(rigs) -> None:
    """``recording = true``: the recorder attaches after the source is ready, and still
    records from the stream's first frame, which the ring holds."""
    rig, recordings = _rig(rigs)
    rig.start()
    with attach(f"{rig.name}/acq/continuous", cursor=0) as reader:
        first = reader.read(max_frames=1, timeout_s=2)
    assert (first.start_sequence, first.dropped) == (0, 0)
    time.sleep(0.5)
    assert rig.interrupt() == 0
    directory = _recording(recordings)
    stamps = _timestamps(directory)
    assert stamps[0] == first.timestamps_ns[0], "the recording starts at the first frame"
    _assert_contiguous(stamps)
    assert _gaps(directory) == []


def test_a_recorder_from_launch_says_what_the_ring_no_longer_held(rigs) -> None:
    """With a ring shorter than the recorder's start-up, the frames before it attached
    are one exact gap row that says why, from the stream's first frame."""
    rig, recordings = _rig(rigs, buffer_s=0.02)
    rig.start()
    time.sleep(0.5)
    assert rig.interrupt() == 0
    first = _gaps(_recording(recordings))[0]
    cause = b"recorder started after the source: the ring no longer held these frames"
    assert first["cause"] == cause
    assert first["cursor_start"] == 0 and first["at_frame"] == 0
    assert first["lost_frames"] == first["cursor_end"] - first["cursor_start"] > 0


def test_a_killed_source_gives_exactly_one_recorded_gap(rigs) -> None:
    rig, recordings = _rig(rigs)
    rig.start()
    time.sleep(1.0)
    _kill(rig, "acq")
    time.sleep(1.0)
    assert rig.interrupt() == 0
    directory = _recording(recordings)
    (gap,) = _gaps(directory)
    assert gap["cause"] == b"source restarted (generation 1 -> 2)"
    stamps = _timestamps(directory)
    steps = np.diff(stamps)
    (jump,) = np.flatnonzero(steps > 1.5 * PERIOD_NS)
    assert gap["at_frame"] == jump + 1
    assert gap["lost_frames"] == round(steps[jump] / PERIOD_NS) - 1 > 0
    assert inspect(directory).ok
    assert len(read_manifest(directory).segments) == 1, "the recording stays in its segment"
    with h5py.File(directory / "segment-0000.h5") as f:
        restarts = f["provenance/restarts"][:]
    assert [r["worker"] for r in restarts] == [b"acq"]


def test_a_killed_supervisor_leaves_closed_files(rigs) -> None:
    rig, recordings = _rig(rigs)
    rig.start()
    time.sleep(1.0)
    workers = rig.worker_processes()
    rig.proc.kill()
    rig.proc.wait(5)
    assert not exited(workers, 5)
    directory = _recording(recordings)
    segment = directory / "segment-0000.h5"
    assert consistency_flags(segment) == 0
    with h5py.File(segment) as f:
        assert f.attrs["finished"], (rig.log_dir() / "rec.log").read_text()
        assert f["provenance"].attrs["finished_at"]
    assert read_manifest(directory).finished_at
    _assert_contiguous(_timestamps(directory))


def test_rotation_splits_and_the_manifest_stitches_the_segments(rigs) -> None:
    rig, recordings = _rig(rigs, "rotate_minutes = 0.01")  # a new segment every 0.6 s
    rig.start()
    time.sleep(2.5)
    assert rig.interrupt() == 0
    directory = _recording(recordings)
    manifest = read_manifest(directory)
    assert len(manifest.segments) >= 3
    assert all(e.state == "closed" for e in manifest.segments)
    expected = 0
    for entry in manifest.segments:
        assert entry.first_frames["acq/continuous"] == expected
        expected += entry.frames["acq/continuous"]
    stamps = _timestamps(directory)
    assert len(stamps) == expected
    _assert_contiguous(stamps)
    report = inspect(directory)
    assert report.ok and report.streams["acq/continuous"].frames == expected


def test_a_live_swmr_reader_in_another_process_sees_the_file_grow(rigs) -> None:
    rig, recordings = _rig(rigs)
    rig.start()
    segment = wait_for(lambda: list(recordings.glob("*/segment-0000.h5")), 10, "the first segment")[
        0
    ]
    code = f"""
import time, h5py
f = h5py.File({str(segment)!r}, "r", swmr=True)
d = f["streams/acq.continuous/timestamps_ns"]
sizes = []
for _ in range(8):
    d.refresh()
    sizes.append(d.shape[0])
    time.sleep(0.3)
print(sizes)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    sizes = eval(result.stdout)  # a list of ints printed by the reader
    assert sizes == sorted(sizes) and len(set(sizes)) >= 3, f"no growth seen: {sizes}"


def test_record_stop_and_start_while_the_rig_runs(rigs) -> None:
    rig, recordings = _rig(rigs)
    rig.start()
    time.sleep(0.5)

    def cli(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "rec: recording stopped" in cli("record", "stop")
    wait_for(lambda: rig.worker("rec").note.startswith("not recording"), 5, "recording to stop")
    assert cli("record", "stop").strip() == "rec: already stopped"
    first = _recording(recordings)
    assert read_manifest(first).finished_at
    lag_streams = [s for s in rig.status().streams if s.readers]
    assert lag_streams == [], "a stopped recorder is no reader"
    started = cli("record", "start")
    assert started.startswith("rec: recording started, recording to "), started
    second = Path(started.strip().removeprefix("rec: recording started, recording to "))
    assert second.parent == recordings and second != first
    wait_for(lambda: rig.worker("rec").note.startswith("recording to"), 5, "recording to start")
    assert cli("record", "start").strip() == f"rec: already recording to {second}"
    time.sleep(0.8)

    def first_line(path: str) -> str:
        command = [sys.executable, "-m", "pipeline.cli", "inspect", path]
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        return result.stdout.splitlines()[0] if result.stdout else result.stderr

    # latest: the running rig's newest recording (its id is on the first line)
    assert first_line("latest") == first_line(str(second))
    assert first_line("latest").startswith("recording ")
    stream = next(s for s in rig.status().streams if s.stream.endswith("acq/continuous"))
    assert [r.worker for r in stream.readers] == ["rec"]
    assert rig.interrupt() == 0
    assert len([p for p in recordings.iterdir() if p.is_dir()]) == 2
    for directory in recordings.iterdir():
        if directory.is_dir():
            assert inspect(directory).ok


def test_an_unwritable_recordings_directory_is_refused_by_check(rigs) -> None:
    rig = rigs.new()
    blocker = rig.directory / "a-file"
    blocker.write_text("not a directory")
    rig.write(_workers(), session_extra=f"recordings_dir = {toml_string(blocker / 'recordings')}")
    checked = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", str(rig.config), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 2 and "session.recordings_dir" in checked.stderr
    assert "cannot be written by this user" in checked.stderr


def test_a_recordings_directory_that_goes_away_is_reported_and_the_rig_stays_up(rigs) -> None:
    rig = rigs.new()
    place = rig.directory / "place"
    place.mkdir()
    extra = f"recordings_dir = {toml_string(place / 'rec')}"
    rig.write(_workers("recording = false"), session_extra=extra)
    rig.start()
    shutil.rmtree(place / "rec", ignore_errors=True)
    (place / "rec").write_text("now a file")  # the disk was swapped, a mount went away...
    client = rig.client()
    with pytest.raises(RequestFailed, match=r"recording not started: .*(Not a directory|exists)"):
        client.request(messages.SetParameter(worker="rec", name="recording", value=True))
    rec = wait_for(lambda: (w := rig.worker("rec")).note.startswith("ERROR") and w, 10, "error")
    assert "Not a directory" in rec.note or "exists" in rec.note, rec.note
    assert rec.state == "running" and rig.worker("acq").state == "running"
    assert "worker rec error: recording stopped" in rig.log()


@pytest.mark.posix  # POSIX modes; on Windows a recording has its directory's ACL
@pytest.mark.parametrize(
    ("access", "files", "directories"), [("group", 0o640, 0o750), ("user", 0o600, 0o700)]
)
def test_recordings_are_never_readable_by_every_user(rigs, access, files, directories) -> None:
    rig = rigs.new()
    recordings = rig.directory / "recordings"
    rig.write(
        _workers(),
        session_extra=f'recordings_dir = {toml_string(recordings)}\nrecordings_access = "{access}"',
    )
    rig.start()
    time.sleep(1.0)
    assert rig.interrupt() == 0
    directory = _recording(recordings)
    made = [directory, *directory.rglob("*")]
    assert any(p.suffix == ".h5" for p in made) and any(p.name == "manifest.json" for p in made)
    for path in made:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (directories if path.is_dir() else files), f"{path}: {oct(mode)}"
    previous = os.umask(0o022)  # a umask that lets every user read what it creates
    try:
        out = rig.directory / "export.nwb"
        export_nwb(directory, out)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == files  # no more readable than the recording


def test_a_nearly_full_disk_stops_recording_cleanly(rigs) -> None:
    rig, recordings = _rig(rigs)
    rig.start()
    time.sleep(1.0)
    free_mb = __import__("shutil").disk_usage(recordings).free / 1e6
    rig.client().request(
        messages.SetParameter(worker="rec", name="min_free_mb", value=free_mb + 1e6)
    )
    rec = wait_for(lambda: (w := rig.worker("rec")).note.startswith("ERROR") and w, 10, "error")
    assert "disk nearly full" in rec.note and rec.state == "running"
    directory = _recording(recordings)
    with h5py.File(directory / "segment-0000.h5") as f:  # closed cleanly, opens plainly
        assert f.attrs["finished"]
    _assert_contiguous(_timestamps(directory))
    report = inspect(directory)
    assert report.ok and "disk nearly full" in report.stopped_early
    assert psutil.pid_exists(rig.worker("rec").pid)
    # asked to record again on that disk: refused, and the command says so
    again = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "record", "start", "--session", rig.name],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert again.returncode == 1, again.stdout + again.stderr
    assert "recording not started: disk nearly full" in again.stderr, again.stderr
    assert "started" not in again.stdout


def test_a_recorder_down_longer_than_the_ring_holds_records_the_gap(rigs) -> None:
    rig, recordings = _rig(rigs, buffer_s=0.6)
    rig.start()
    time.sleep(1.0)
    pid = rig.worker("rec").pid
    psutil.Process(pid).suspend()  # hung: the supervisor kills it after 1 s without heartbeats
    rig.restarted("rec", pid, 10)
    time.sleep(1.0)
    assert rig.interrupt() == 0
    directory = _recording(recordings)
    # (a recorder slower to start than the 0.6 s ring, as under Wine, also has the row
    # "recorder started after the source" at frame 0: not this test's)
    gaps = [g for g in _gaps(directory) if not g["cause"].startswith(b"recorder started")]
    assert [g["cause"] for g in gaps] == [b"recorder was down longer than the ring holds"]
    # Down for the 1 s heartbeat timeout plus the restart, with 0.6 s in the ring: exact loss.
    assert gaps[0]["lost_frames"] == gaps[0]["cursor_end"] - gaps[0]["cursor_start"] > 0.2 * RATE
    assert inspect(directory).ok
    assert "keeps 0.6 s in its ring" in rig.log()
    assert "no heartbeat for" in rig.log()


def test_the_session_end_repairs_a_recording_whose_recorder_died_for_good(rigs) -> None:
    rig, recordings = _rig(rigs, restart="never")
    rig.start()
    time.sleep(1.0)
    psutil.Process(rig.worker("rec").pid).kill()
    wait_for(lambda: rig.worker("rec").state == "failed", 10, "the recorder to stay down")
    directory = _recording(recordings)
    assert consistency_flags(directory / "segment-0000.h5") != 0
    assert rig.interrupt() == 1, "the session ended with a failed worker"
    assert "worker rec: repaired and closed" in rig.log()
    assert consistency_flags(directory / "segment-0000.h5") == 0
    (entry,) = read_manifest(directory).segments
    assert entry.state == "repaired" and entry.frames["acq/continuous"] > 0
    with h5py.File(directory / "segment-0000.h5") as f:
        assert f["provenance"].attrs["crashed"]
    assert inspect(directory).ok


def test_replay_plays_a_recording_back_exactly_and_faster(rigs) -> None:
    rig, recordings = _rig(rigs)
    rig.start()
    time.sleep(1.5)
    assert rig.interrupt() == 0
    directory = _recording(recordings)
    with h5py.File(directory / "segment-0000.h5") as f:
        group = f["streams/acq.continuous"]
        recorded = group["data"][:], group["timestamps_ns"][:]
        labels = list(group.attrs["channel_labels"])
        spikes = f["streams/acq.spikes/data"][:]

    replay = rigs.new()
    replay.write(
        '[[workers]]\nname = "play"\nkind = "acquisition"\nrestart = "never"\n'
        f'[workers.parameters]\nsource = "replay"\npath = {toml_string(directory)}\nspeed = 4.0\n'
    )
    replay.start(wait=False)
    reader = wait_for(lambda: _attach_or_none(f"{replay.name}/play/continuous"), 20, "replay")
    events = wait_for(lambda: _attach_or_none(f"{replay.name}/play/spikes"), 20, "spikes")
    started = time.monotonic()
    with reader, events:
        assert list(reader.descriptor["channel_labels"]) == labels
        chunks = list(reader)  # until the replay closes the stream
        took = time.monotonic() - started
        replayed_spikes = np.concatenate([c.data for c in events])
    data = np.concatenate([c.data for c in chunks])
    stamps = np.concatenate([c.timestamps_ns for c in chunks])
    assert np.array_equal(data, recorded[0]) and np.array_equal(stamps, recorded[1])
    assert np.array_equal(replayed_spikes, spikes)
    duration = (recorded[1][-1] - recorded[1][0]) / 1e9
    assert took < duration / 2, f"4x replay of {duration:.1f} s took {took:.1f} s"
    wait_for(lambda: replay.worker("play").state == "exited", 10, "the replay worker to finish")


def _attach_or_none(stream: str):
    try:
        return attach(stream, from_now=False)
    except StreamNotFound:
        return None


def test_a_flood_of_refusals_is_recorded_once_a_second_with_its_count(rigs) -> None:
    """A decoder sending 20 commands a second to a disarmed stimulator for 3 s: every one
    is refused, and the recording holds a few rows that account for all of them."""
    rig = rigs.new()
    recordings = rig.directory / "recordings"
    rig.write(
        _workers() + SIMULATED_STIMULATOR,
        session_extra=f"recordings_dir = {toml_string(recordings)}",
    )
    rig.start()
    wait_for(lambda: rig.worker("rec").note.startswith("recording to"), 5, "recording to start")
    sent = 0
    began = time.monotonic()
    with pipeline.stimulator("stim", rig.name) as stim:
        for _ in range(60):
            with pytest.raises(StimulationRefused, match="disarmed"):
                stim.pulse_train(channel=0, phases=[(-30.0, 100.0), (30.0, 100.0)])
            sent += 1
            time.sleep(0.05)
        flood_s = time.monotonic() - began
        rig.client().request(messages.Annotate(text="after the flood"))
        time.sleep(0.5)
    assert rig.interrupt() == 0
    with pipeline.open_recording(_recording(recordings)) as rec:
        events = [e for e in rec.events if isinstance(e.payload, dict)]
    refused = [e for e in events if e.payload.get("type") == "stimulation_refused"]
    assert sum(e.payload.get("repeats", 1) for e in refused) == sent  # every one accounted
    # Once a second, or at each flush (flush_s = 0.5 here): the file then holds every event
    # read so far, which is what lets a restarted recorder resume the event log exactly.
    # So: the first refusal, a row at each flush while repeats are held (flushes are not
    # aligned with the flood, and the recorder reads the log a little behind it: up to
    # flood_s / 0.5 + 2 of them), and the last ones at close. 60 refusals are not 60 rows.
    most = 4 + flood_s / 0.5
    assert 2 <= len(refused) <= most, [e.payload.get("repeats") for e in refused]
    assert any(e.payload.get("text") == "after the flood" for e in events)
    held = [e for e in refused if "repeats" in e.payload]
    assert all(e.payload["first_repeat_ns"] <= e.monotonic_ns for e in held)


def test_a_recorder_starting_while_a_stream_is_absent_records_the_rest_and_waits(rigs) -> None:
    streams = 'streams = ["acq/continuous", "stim/output"]\nrecording = false'
    rig = rigs.new()
    recordings = rig.directory / "recordings"
    rig.write(
        _workers(streams) + SIMULATED_STIMULATOR,
        session_extra=f"recordings_dir = {toml_string(recordings)}",
    )
    rig.start()
    rig.client().request(messages.StopWorker(worker="stim"))
    wait_for(lambda: rig.worker("stim").state == "stopped", 10, "the stimulator to stop")
    rig.client().request(messages.SetParameter(worker="rec", name="recording", value=True))
    wait_for(lambda: rig.worker("rec").note.startswith("recording to"), 5, "recording to start")
    time.sleep(1.0)
    # The restarted recorder must come up too while the stream is still absent.
    _kill(rig, "rec")
    time.sleep(1.0)
    rig.client().request(messages.StartWorker(worker="stim"))
    wait_for(lambda: rig.worker("stim").state == "running", 10, "the stimulator to run")
    time.sleep(1.5)
    assert rig.worker("rec").restarts == 1, "the recorder crash-looped"
    assert rig.interrupt() == 0
    directory = _recording(recordings)
    _assert_contiguous(_timestamps(directory))
    assert _gaps(directory) == []
    report = inspect(directory)
    assert report.ok, report.problems
    assert report.streams["acq/continuous"].duration_s > 3.0
    assert report.streams["stim/output"].frames > 50_000  # 50 kHz, for about 1.5 s
    (absent,) = _gaps(directory, "stim/output")
    cause = absent["cause"].decode()
    assert cause.startswith("stream absent when recording started") and absent["lost_frames"] == 0
    assert 1.5 < float(cause.split("appeared ")[1].split(" s")[0]) < 10


@pytest.mark.posix  # Windows has no unlink: a named mapping lives while a handle is open
def test_a_stream_segment_unlinked_under_its_writer_is_recreated_and_nothing_is_lost(rigs) -> None:
    rig, recordings = _rig(rigs)
    rig.start()
    events = rig.subscriber()
    try:
        time.sleep(0.8)
        (stream,) = [s.stream for s in rig.status().streams if s.stream.endswith("continuous")]
        shm.unlink(naming.shm_name(stream))  # as another program (or a careless cleanup) would
        t0 = time.monotonic()

        def relinked():
            got = events.receive(0.1)
            return got is not None and "unlinked by another process" in str(got[1])

        wait_for(relinked, 5, "the source to report the re-created stream")
        assert time.monotonic() - t0 < 2.0
        assert rig.worker("acq").restarts == 0
        wait_for(lambda: rig.worker("acq").counters.get("relinks") == 1, 2, "relinks in status")
        with attach(stream, from_now=True) as reader:  # a new reader finds it by name again
            assert reader.read(timeout_s=2).frames > 0
        time.sleep(0.5)
    finally:
        events.close()
    assert rig.interrupt() == 0
    directory = _recording(recordings)
    _assert_contiguous(_timestamps(directory))
    assert _gaps(directory) == []
    assert inspect(directory).ok


_HOLDER = """
import sys, h5py, pipeline
if sys.argv[1] == "h5py":  # an outside reader, with HDF5's default file lock
    held = h5py.File(sys.argv[2], "r", swmr=True)
    assert len(held["streams/acq.continuous/data"]) > 0
else:  # rigpipe's own live reader
    held = pipeline.open_recording(sys.argv[2])
    assert held.default.frames > 0
print("holding", flush=True)
sys.stdin.readline()  # until the test says so
"""


def test_live_readers_holding_a_segment_through_rotation_and_stop_do_not_break_recording(
    rigs,
) -> None:
    """A reader's file lock must not fail the recorder's rotation, finishing or repair."""
    rig, recordings = _rig(rigs, recorder="rotate_minutes = 0.03")  # a new segment every 1.8 s
    rig.start()
    first = wait_for(lambda: list(recordings.glob("*/segment-0000.h5")), 10, "the first segment")
    time.sleep(0.8)  # flushed at least once
    holders = [
        subprocess.Popen(
            [sys.executable, "-c", _HOLDER, how, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for how, path in (("h5py", first[0]), ("rigpipe", first[0].parent))
    ]
    try:
        assert [h.stdout.readline().strip() for h in holders] == ["holding", "holding"]
        wait_for(lambda: len(list(first[0].parent.glob("segment-*.h5"))) >= 3, 15, "rotations")
        assert rig.interrupt() == 0
    finally:
        for holder in holders:
            holder.communicate("done\n", timeout=30)
    assert rig.worker_processes() == []
    log = rig.log()
    assert "error" not in log.lower(), log
    directory = first[0].parent
    manifest = read_manifest(directory)
    assert manifest.finished_at and all(e.state == "closed" for e in manifest.segments)
    _assert_contiguous(_timestamps(directory))
    assert inspect(directory).ok
