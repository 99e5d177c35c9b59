"""The stg backend against a stand-in McsUsbNet.dll, compiled from C# and loaded through
pythonnet on Mono exactly as the vendor's assembly is (tests/peers/McsUsbNet.cs)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.control import messages
from tests.integration.test_stimulation import STIM, active, pulses
from tests.rig import wait_for
from workers.stimulation import stg

HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def standin_dll(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """McsUsbNet.dll compiled from the stand-in with Mono's C# compiler."""
    compiler = shutil.which("mcs")
    if compiler is None:
        if os.environ.get("CI"):
            pytest.fail("mcs is missing: .ci/run installs mono-devel (see README)")
        pytest.skip("needs Mono: apt-get install mono-runtime libmono-2.0-1 mono-devel")
    out = tmp_path_factory.mktemp("mcs") / "McsUsbNet.dll"
    subprocess.run(
        [compiler, "-target:library", f"-out:{out}", str(HERE / "McsUsbNet.cs")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


REFLECT = """
import json, sys, warnings
warnings.simplefilter("ignore")
from workers.stimulation.stg import load_assembly
load_assembly(sys.argv[1])
import System
members = {}
for t in System.Reflection.Assembly.LoadFrom(sys.argv[1]).GetTypes():
    for m in list(t.GetMethods()) + list(t.GetConstructors()):
        members.setdefault(t.Name, []).append(
            [m.Name, [p.ParameterType.Name for p in m.GetParameters()]]
        )
print(json.dumps(members))
"""


def test_the_standin_has_every_member_the_backend_uses(standin_dll) -> None:
    found = subprocess.run(
        [sys.executable, "-c", REFLECT, str(standin_dll)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert found.returncode == 0, found.stderr
    members = json.loads(found.stdout.splitlines()[-1])
    for cls, name, parameters in stg.STG_API:
        assert [name, list(parameters)] in members.get(cls, []), f"{cls}.{name}{parameters}"


def test_the_backend_calls_nothing_the_api_list_leaves_out() -> None:
    source = Path(stg.__file__).read_text()
    called = set(re.findall(r"\b(?:device|devices)\.([A-Z]\w+)\(", source))
    properties = re.findall(r"\b(?:devices|entry|e)\.([A-Z]\w+)\b(?!\()", source)
    called |= {f"get_{name}" for name in properties}
    listed = {name for _, name, _ in stg.STG_API}
    assert called and called <= listed, called - listed
    classes = set(re.findall(r"mcs\.(C\w+)\(", source))
    assert classes <= {cls for cls, _, _ in stg.STG_API}


def _stg_rig(rigs, dll: Path, extra: str = "armed = true"):
    rig = rigs.new()
    rig.write(
        STIM.format(buffer_ms=20.0, extra=f'backend = "stg"\n{extra}')
        + f'[workers.parameters.stg]\ndll_path = "{dll}"\n'
    )
    return rig


def test_the_device_receives_exactly_the_checked_waveforms_without_underruns(
    rigs, standin_dll, tmp_path
) -> None:
    out = tmp_path / "device"
    rig = _stg_rig(rigs, standin_dll).start(env={"MCS_STANDIN_OUTPUT": str(out)})
    client = rig.client()
    started = time.monotonic()
    biphasic = [messages.Phase(-30.0, 100.0), messages.Phase(30.0, 100.0)]
    train = client.request(
        messages.PulseTrain(channel=0, phases=biphasic, frequency_hz=100, count=5)
    )
    assert isinstance(train, messages.Accepted)
    unsafe = [messages.Phase(-300.0, 100.0), messages.Phase(300.0, 100.0)]
    with pytest.raises(Exception, match="amplitude"):
        client.request(messages.PulseTrain(channel=1, phases=unsafe))
    time.sleep(0.3)
    waveform = [-10.0] * 20 + [10.0] * 20
    reply = client.request(messages.Waveform(channel=1, samples_ua=waveform, sample_rate_hz=50e3))
    assert isinstance(reply, messages.Accepted)
    time.sleep(0.5)
    running_s = time.monotonic() - started  # the device ran at least this long
    assert rig.interrupt() == 0
    elapsed = time.monotonic() - started  # and at most this long
    summary = json.loads((out / "summary.json").read_text())
    assert summary["output_rate_hz"] == 50_000
    channel0 = np.fromfile(out / "channel0.i16", np.int16)
    channel1 = np.fromfile(out / "channel1.i16", np.int16)
    # int16 steps of the stand-in's 100 nA resolution, in order, nothing else
    np.testing.assert_array_equal(
        active(channel0), pulses((-300, 5), (300, 5), period=500, count=5).astype(np.int16)
    )
    np.testing.assert_array_equal(active(channel1), np.repeat([-100, 100], 20).astype(np.int16))
    for channel in summary["channels"][:2]:
        assert channel["underruns"] == 0, summary
        assert 0.9 * running_s * 50_000 < channel["samples"] < 1.1 * elapsed * 50_000
    assert summary["channels"][2]["samples"] == 0  # channels not configured stay off


@pytest.mark.parametrize(
    ("devices", "dll", "message"),
    [
        ("", None, "no STG stimulator found"),
        ("STG4004:1,STG4002:2", None, "2 STGs are connected"),
        ("STG4004:1", "missing.dll", "McsUsbNet.dll not found"),
    ],
)
def test_a_missing_device_or_dll_is_a_clear_error(rigs, standin_dll, devices, dll, message):
    rig = _stg_rig(rigs, standin_dll if dll is None else standin_dll.parent / dll)
    rig.start(env={"MCS_STANDIN_DEVICES": devices}, wait=False)
    wait_for(
        lambda: rig.discovery() and rig.worker("stim").state == "failed",
        60,
        "the stimulator to fail",
    )
    log = (rig.log_dir() / "stim.log").read_text()
    assert message in log, log
    rig.interrupt()
