"""The blackrock source in a real rig, against the emulated device of tests/peers/cbsdk.py."""

from __future__ import annotations

import json
import time

import numpy as np

from pipeline import attach
from pipeline.recording.summary import inspect
from tests.rig import toml_string, wait_for

SEAM = {"RIGPIPE_CBSDK_SESSION": "tests.peers.cbsdk:Session"}


#: A CMP the real SDK accepts: the first line that is not a comment is the description.
CMP = "// rigpipe test map\nUtah array 4x4\n//col row bank elec label\n" + "".join(
    f"{e % 4} {e // 4} A {e + 1} elec{e + 1}\n" for e in range(16)
)


def _env(**knobs) -> dict[str, str]:
    return {**SEAM, "RIGPIPE_CBSDK_EMULATOR": json.dumps(knobs)}


def _acq(parameters: str, restart: str = "on-failure", extra: str = "") -> str:
    return f"""
[[workers]]
name = "acq"
kind = "acquisition"
restart = "{restart}"
backoff_s = 0.3
{extra}
[workers.parameters]
source = "blackrock"
device = "NPLAY"
{parameters}
"""


def _read(reader, seconds: float) -> list:
    chunks, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        chunk = reader.read(timeout_s=0.5)
        if chunk.frames:
            chunks.append(chunk)
    return chunks


def test_programmatic_setup_streams_one_group_spikes_and_both_clocks(rigs) -> None:
    rig = rigs.new()
    rig.write(_acq('channels = 63\nsample_rate = "30kHz"'))
    rig.start(env=_env())
    with attach("acq/30kHz") as reader:
        assert reader.frame_shape == (63,), "the SDK's even padding is cut off"
        assert reader.dtype == np.int16 and reader.sample_rate == 30000.0
        d = reader.descriptor
        assert d["channel_ids"] == list(range(1, 64)) and d["channel_labels"][0] == "chan1"
        assert d["units"] == "uV" and d["scale"] == [0.25] * 63
        start = time.monotonic()
        chunks = _read(reader, 1.0)
        elapsed = time.monotonic() - start
    frames = sum(c.frames for c in chunks)
    assert 0.8 * 30000 * elapsed < frames < 1.2 * 30000 * elapsed + 3000
    stamps = np.concatenate([c.timestamps_ns for c in chunks])
    assert abs(np.median(np.diff(stamps)) - 33333) <= 1
    assert abs(int(stamps[-1]) - time.monotonic_ns()) < 0.5e9, "host monotonic timestamps"
    with attach(f"{rig.name}/acq/30kHz", from_now=False) as reader:
        everything = reader.read(timeout_s=2)  # from the first frame, across the SDK's offset steps
    steps = np.diff(everything.timestamps_ns.astype(np.int64))
    assert steps.min() > 33333 * 0.99 and steps.max() < 33334 * 1.01, (steps.min(), steps.max())
    assert "AttributeError" not in rig.log(), "no batch lost to a callback that ran too early"
    with attach(f"{rig.name}/acq/spikes", from_now=False) as spikes:
        records = spikes.read(timeout_s=2).data
    assert len(records) and set(records["unit"]) <= {1, 2, 3}
    with attach(f"{rig.name}/acq/clock", from_now=False) as clock:
        sync = clock.read(timeout_s=2).data
    assert np.all(sync["host_ns"] - sync["device_ns"] < 0), "device clock kept beside host clock"
    applied = sync["host_ns"] - sync["device_ns"]
    estimated = sync["sdk_host_ns"] - sync["device_ns"]
    assert np.ptp(estimated) >= 700_000, "the SDK's estimate stepped (the emulator's +0.72 ms)"
    assert np.abs(np.diff(applied)).max() < 10_000, "the applied offset only slews"


def test_ccf_setup_with_a_channel_map_gives_one_ring_per_group_in_microvolts(
    rigs, tmp_path
) -> None:
    ccf, cmp = tmp_path / "rig.ccf", tmp_path / "array.cmp"
    ccf.write_text("<ccf/>")
    cmp.write_text(CMP)
    rig = rigs.new()
    rig.write(
        _acq(
            f"ccf = {toml_string(ccf)}\n"
            'groups = ["30kHz", "1kHz"]\n'
            f"cmp = {toml_string(cmp)}\npublish_uv = true"
        )
    )
    rig.start(env=_env(ccf_groups={"30kHz": 256, "1kHz": 16}))
    with attach("acq/30kHz") as fast, attach("acq/1kHz") as slow:
        assert fast.frame_shape == (256,) and slow.frame_shape == (16,)
        assert fast.dtype == np.float32 and fast.descriptor["scale"] == 1.0
        assert fast.descriptor["positions"][5] == [400, 400, 0, 6]
        assert fast.descriptor["positions"][17] == [0, 0, 0, 18], "not in the map"
        data = _read(fast, 1.0)[-1].data
        assert np.abs(data).max() <= 400 * 0.25 + 1, "published in microvolts"
        assert sum(c.frames for c in _read(slow, 1.0)) > 700


def test_dropped_packets_are_reported_and_recorded_as_gaps(rigs) -> None:
    rig = rigs.new()
    recordings = rig.directory / "recordings"
    rig.write(
        _acq('channels = 16\nsample_rate = "10kHz"')
        + '[[workers]]\nname = "rec"\nkind = "recording"\n'
        '[workers.parameters]\nstreams = ["acq/10kHz"]\nflush_s = 0.5\n',
        session_extra=f"recordings_dir = {toml_string(recordings)}",
    )
    rig.start(env=_env(loss=0.02))
    wait_for(lambda: rig.worker("acq").counters.get("packets_dropped", 0) > 0, 10, "drops")
    time.sleep(1.0)
    assert rig.interrupt() == 0
    assert "packet(s) dropped by the SDK's callback queue" in rig.log()
    (directory,) = [p for p in recordings.iterdir() if p.is_dir()]
    report = inspect(directory)
    assert report.ok, report.problems
    assert report.streams["acq/10kHz"].gaps > 0
    assert {g["cause"] for g in report.gaps} == {"timestamps jump: the source skipped frames"}


def test_an_absent_device_is_a_clear_error_and_the_worker_exits(rigs) -> None:
    rig = rigs.new()
    rig.write(_acq("channels = 8", restart="never"))
    rig.start(env=_env(absent=True), wait=False)
    wait_for(lambda: rig.discovery() and rig.worker("acq").state == "failed", 20, "failure")
    assert rig.worker("acq").exit_code == 1
    assert "no NPLAY device: Failed to create session" in rig.log()
    assert rig.status().state == "running", "the supervisor is not blocked by the device"


def test_a_cmp_without_entries_is_one_line_naming_the_file(rigs, tmp_path) -> None:
    cmp = tmp_path / "bad.cmp"
    cmp.write_text("//col row bank elec label\n0 0 A 1 elec1\n")  # that row is the description
    rig = rigs.new()
    rig.write(_acq(f"channels = 8\ncmp = {toml_string(cmp)}", restart="never"))
    rig.start(env=_env(), wait=False)
    wait_for(lambda: rig.discovery() and rig.worker("acq").state == "failed", 20, "failure")
    log = rig.log()
    assert f"cmp file {str(cmp)!r} was refused by the SDK: " in log and "No valid entries" in log
    assert "Traceback" not in log


def test_a_slow_device_start_is_not_taken_for_a_dead_supervisor(rigs) -> None:
    rig = rigs.new()  # heartbeat timeout 1 s; Session() blocks 2.5 s
    rig.write(_acq("channels = 8", extra="start_timeout_s = 15.0"))
    rig.start(env=_env(start_s=2.5))
    first = rig.worker("acq")
    time.sleep(1.5)
    acq = rig.worker("acq")
    assert (acq.state, acq.pid, acq.restarts) == ("running", first.pid, 0)
    assert "it is gone" not in rig.log()


def test_a_lost_device_is_noticed_within_lost_after_s_and_restarted(rigs) -> None:
    rig = rigs.new()
    rig.write(_acq("channels = 8\nlost_after_s = 0.5"))
    rig.start(env=_env(lost_after_s=0.5))
    wait_for(lambda: rig.worker("acq").restarts >= 1, 10, "a restart after the device was lost")
    assert "the device was lost" in rig.log()
