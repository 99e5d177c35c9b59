"""The blackrock source through the real pycbsdk 10.x native library.

The SDK talks UDP to tests/peers/cerebus_device.py, a Cerebus (nPlayServer)
emulator on loopback, exactly as it talks to a device. The library needs glibc
2.38; ``bash tests/peers/real_cbsdk/setup.sh`` makes a venv whose Python runs it
(docs/hardware.md: "Blackrock tests against the real SDK"), and the rig runs in that
Python. Locally these tests skip with that hint when the venv is missing; in
CI (``CI`` set) they fail instead, so they cannot be skipped silently.

One standalone SDK session per host and fixed ports: these tests run serially.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipeline import attach, open_recording
from pipeline.recording.summary import inspect
from tests.integration.test_blackrock import _acq as emulated_acq
from tests.peers.cerebus_device import GROUP_PERIODS, HZ, PRIME, Running
from tests.rig import toml_string, wait_for
from workers.acquisition.blackrock import REQUIRED_RMEM_MAX, receive_buffer_max

REPO = Path(__file__).resolve().parents[2]
LOADS = "import pycbsdk, pycbsdk._lib as l; l.load_library(); print(pycbsdk.__version__)"
DEFAULT_VENV = Path.home() / ".cache" / "rigpipe" / "real_cbsdk" / "venv" / "bin" / "python"


def _unavailable(reason: str) -> None:
    hint = "run: bash tests/peers/real_cbsdk/setup.sh (docs/hardware.md: real-SDK tests)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the real-SDK tests ({hint})")
    pytest.skip(f"{reason}; {hint}")


@pytest.fixture(scope="module")
def real_python() -> str:
    python = os.environ.get("RIGPIPE_REAL_CBSDK_PYTHON", str(DEFAULT_VENV))
    if not Path(python).exists():
        _unavailable(f"no Python with the real pycbsdk at {python}")
    probe = subprocess.run(
        [python, "-c", LOADS],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if probe.returncode != 0 or not probe.stdout.startswith("10."):
        _unavailable(f"{python} cannot load pycbsdk 10.x's library: {probe.stderr.strip()[-300:]}")
    found = receive_buffer_max()
    if found is not None and found < REQUIRED_RMEM_MAX:
        _unavailable(f"net.core.rmem_max is {found}; sysctl -w net.core.rmem_max=8388608")
    return python


@pytest.fixture
def device(tmp_path) -> Iterator:
    """``device(**knobs)`` starts the emulator; every one started is stopped after the test."""
    started: list[Running] = []

    def start(**knobs) -> Running:
        running = Running(knobs, tmp_path)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def _acq(parameters: str, restart: str = "on-failure", extra: str = "") -> str:
    """The emulated-peer tests' config, with time for a real SDK's handshake."""
    return emulated_acq(parameters, restart, f"start_timeout_s = 15.0\n{extra}")


def _start(rig, python: str, wait: bool = True):
    return rig.start(env={"PYTHONPATH": str(REPO)}, wait=wait, python=python)


def _ticks(data: np.ndarray, stamps: np.ndarray, device: Running, period: int) -> np.ndarray:
    """Each frame's device tick: channel 0 holds it modulo 2**16; the timestamp picks the turn."""
    low = data[:, 0].view(np.uint16).astype(np.int64)
    estimate = (stamps.astype(np.int64) - device.t0_ns) * HZ // 1_000_000_000
    turns = np.round((estimate - low) / 65536).astype(np.int64)
    ticks = low + turns * 65536
    assert np.all(ticks % period == 0), "frames on the group's own sample grid"
    return ticks


def _check_frames(data: np.ndarray, stamps: np.ndarray, device: Running, period: int) -> None:
    """Every value exact, one frame per sample, timestamps strictly increasing near the device's."""
    ticks = _ticks(data, stamps, device, period)
    assert np.all(np.diff(ticks) == period), "one frame per sample, none lost or repeated"
    n = data.shape[1]
    expected = ((ticks[:, None] + PRIME * np.arange(n)[None, :]) & 0xFFFF).astype(np.uint16)
    np.testing.assert_array_equal(data.view(np.uint16), expected)
    assert np.all(np.diff(stamps.astype(np.int64)) > 0), "timestamps strictly increasing"
    error_ns = stamps.astype(np.int64) - device.tick_time_ns(ticks)
    assert np.abs(error_ns).max() < 1_000_000, f"within 1 ms of the device clock: {error_ns}"


def test_values_ticks_timestamps_spikes_and_the_recording_are_exact(
    rigs, device, real_python
) -> None:
    dev = device(channels=32, spike_every=1500)
    rig = rigs.new()
    recordings = rig.directory / "recordings"
    rig.write(
        _acq('channels = 13\nsample_rate = "30kHz"')
        + '[[workers]]\nname = "rec"\nkind = "recording"\n'
        '[workers.parameters]\nstreams = ["acq/30kHz", "acq/spikes", "acq/clock"]\nflush_s = 0.5\n',
        session_extra=f"recordings_dir = {toml_string(recordings)}",
    )
    _start(rig, real_python)
    time.sleep(3.0)
    with attach(f"{rig.name}/acq/30kHz", from_now=False) as reader:
        assert reader.frame_shape == (13,) and reader.dtype == np.int16
        assert reader.descriptor["channel_labels"][:2] == ["chan1", "chan2"]
        assert reader.descriptor["scale"] == [0.25] * 13 and reader.descriptor["units"] == "uV"
        chunk = reader.read(timeout_s=2)
    assert chunk.frames > 2 * HZ
    _check_frames(chunk.data, chunk.timestamps_ns, dev, 1)
    with attach(f"{rig.name}/acq/spikes", from_now=False) as spikes:
        records = spikes.read(timeout_s=2).data
    assert len(records) >= 10
    ticks = np.round((records["timestamp_ns"] - dev.t0_ns) * HZ / 1e9).astype(np.int64)
    k = np.round((ticks - 17) / 1500).astype(np.int64)  # the spike nearest each record
    assert np.all(np.abs(records["timestamp_ns"] - dev.tick_time_ns(k * 1500 + 17)) < 1_000_000)
    np.testing.assert_array_equal(records["channel"], k % 32 + 1)
    np.testing.assert_array_equal(records["unit"], k % 3 + 1)
    assert "AttributeError" not in rig.log(), "no batch lost to a callback that raised"
    assert rig.worker("acq").restarts == 0
    assert rig.interrupt() == 0
    (directory,) = [p for p in recordings.iterdir() if p.is_dir()]
    report = inspect(directory)
    assert report.ok, report.problems
    assert report.streams["acq/30kHz"].gaps == 0, report.gaps
    with open_recording(directory) as rec:
        stream = rec.stream("acq/30kHz")
        assert rec.manifest is not None
        manifest_rows = sum(s.frames.get("acq/30kHz", 0) for s in rec.manifest.segments)
        assert stream.frames == manifest_rows == report.streams["acq/30kHz"].frames
        _check_frames(stream[:, :].T, stream.timestamps_ns[:], dev, 1)


def test_a_ccf_saved_by_the_sdk_and_a_cmp_set_up_two_groups_with_positions(
    rigs, device, real_python, tmp_path
) -> None:
    ccf, cmp = tmp_path / "rig.ccf", tmp_path / "array.cmp"
    dev = device(channels=32)
    save = (
        "import sys, pycbsdk as c\n"
        "s = c.Session(device_type=c.DeviceType.NPLAY)\n"
        "fe, rate = c.ChannelType.FRONTEND, c.SampleRate\n"
        "s.set_sample_group(8, fe, rate.SR_30kHz, disable_others=True)\n"
        "s.set_sample_group([9, 10, 11, 12], fe, rate.SR_1kHz)\n"
        "s.sync()\n"
        "s.save_ccf(sys.argv[1])\n"
        "s.close()\n"
    )
    subprocess.run([real_python, "-c", save, str(ccf)], check=True, timeout=30)
    dev.stop()
    cmp.write_text(
        "// Blackrock channel map\nrigpipe test array\n//col row bank elec label\n"
        + "".join(f"{e % 4} {e // 4} A {e + 1} elec{e + 1}\n" for e in range(16))
    )
    dev = device(channels=32)  # a fresh device: nothing enabled until the CCF says so
    rig = rigs.new()
    rig.write(
        _acq(f'ccf = {toml_string(ccf)}\ngroups = ["30kHz", "1kHz"]\ncmp = {toml_string(cmp)}')
    )
    _start(rig, real_python)
    time.sleep(2.0)
    with attach(f"{rig.name}/acq/30kHz", from_now=False) as fast:
        assert fast.frame_shape == (8,)
        assert fast.descriptor["channel_ids"] == list(range(1, 9))
        assert fast.descriptor["channel_labels"][:3] == ["elec1", "elec2", "elec3"]
        assert fast.descriptor["positions"][5] == [400, 400, 0, 6]
        chunk = fast.read(timeout_s=2)
        _check_frames(chunk.data, chunk.timestamps_ns, dev, GROUP_PERIODS[5])
    with attach(f"{rig.name}/acq/1kHz", from_now=False) as slow:
        assert slow.frame_shape == (4,) and slow.sample_rate == 1000.0
        assert slow.descriptor["channel_ids"] == [9, 10, 11, 12]
        chunk = slow.read(timeout_s=2)
        assert chunk.frames > 1000
        _check_frames(chunk.data, chunk.timestamps_ns, dev, GROUP_PERIODS[2])


def test_a_cmp_the_sdk_rejects_is_one_line_naming_the_file(rigs, device, real_python, tmp_path):
    device(channels=32)
    cmp = tmp_path / "bad.cmp"
    # The SDK takes the first line that is not a comment for the description: no entries here.
    cmp.write_text("//col row bank elec label\n0 0 A 1 elec1\n")
    rig = rigs.new()
    rig.write(_acq(f"channels = 8\ncmp = {toml_string(cmp)}", restart="never"))
    _start(rig, real_python, wait=False)
    wait_for(lambda: rig.discovery() and rig.worker("acq").state == "failed", 30, "failure")
    log = rig.log()
    assert f"cmp file {str(cmp)!r} was refused by the SDK" in log, log
    assert "Traceback" not in log


def test_a_slow_device_start_longer_than_the_heartbeat_timeout_still_runs(
    rigs, device, real_python
) -> None:
    dev = device(channels=32, first_answer_delay_s=1.7)  # the rig's heartbeat timeout is 1 s
    rig = rigs.new()
    rig.write(_acq('channels = 4\nsample_rate = "10kHz"\nlost_after_s = 1.0'))
    _start(rig, real_python)
    first = rig.worker("acq")
    time.sleep(2.0)
    acq = rig.worker("acq")
    assert (acq.state, acq.pid, acq.restarts) == ("running", first.pid, 0), rig.log()
    assert "it is gone" not in rig.log()
    with attach(f"{rig.name}/acq/10kHz") as reader:
        chunk = reader.read(timeout_s=2)
    _check_frames(chunk.data, chunk.timestamps_ns, dev, GROUP_PERIODS[4])


def test_a_lost_device_is_noticed_and_an_absent_one_is_one_line(rigs, device, real_python) -> None:
    dev = device(channels=32)
    rig = rigs.new()
    rig.write(_acq("channels = 4\nlost_after_s = 0.5", restart="never"))
    _start(rig, real_python)
    dev.go_silent()
    wait_for(lambda: rig.worker("acq").state == "failed", 15, "the lost device to be noticed")
    assert "NPLAY: no data for" in rig.log() and "the device was lost" in rig.log()
    assert rig.interrupt() == 1, "the session ended with a failed worker"
    dev.stop()
    absent = rigs.new()
    absent.write(_acq("channels = 4", restart="never"))
    started = time.monotonic()
    _start(absent, real_python, wait=False)
    wait_for(lambda: absent.discovery() and absent.worker("acq").state == "failed", 30, "failure")
    assert time.monotonic() - started > 2.0, "the SDK waits for the handshake"
    assert absent.worker("acq").exit_code == 1
    assert "no NPLAY device: " in absent.log() and "Traceback" not in absent.log()
    assert absent.status().state == "running", "the supervisor is not blocked by the device"


if sys.platform != "linux":  # the emulator binds fixed loopback ports; the venv is Linux-only
    pytestmark = pytest.mark.skip(reason="the real-SDK venv is built for Linux")
