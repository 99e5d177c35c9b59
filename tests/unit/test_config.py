"""Config loading: every kind of mistake is one ConfigError naming the file, field and fix."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from pipeline import config
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
BAD = sorted((ROOT / "tests" / "configs").glob("*.toml"))


def _expectation(path: Path) -> tuple[str, str]:
    first = path.read_text().splitlines()[0]
    match = re.fullmatch(r"# expect: (.*?) \| (.*)", first)
    assert match, f"{path.name} must start with '# expect: FIELD | MESSAGE'"
    return match[1].strip(), match[2]


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_each_bad_config_raises_its_config_error(path: Path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # relative paths in them are relative to the repository
    field, message = _expectation(path)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    error = caught.value
    assert error.path == str(path)
    assert error.field == field
    problem = error.problem.replace("\\\\", "/").replace("\\", "/")  # Windows' separators
    assert message in problem, f"{error.problem!r} lacks {message!r}"
    assert str(error).startswith(f"{path}: ")


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        config.load(tmp_path / "absent.toml")


def test_the_demo_config_is_valid_and_complete() -> None:
    rig = config.load(ROOT / "configs" / "demo.toml")
    assert rig.session.name == "demo"
    acq, rec, stim = rig.workers
    assert acq.outputs == ["acq/continuous", "acq/spikes"] and acq.inputs == []
    assert acq.settings.line_noise_hz == 60.0
    assert rec.inputs == [*acq.outputs, "stim/output"]
    assert stim.inputs == ["acq/continuous"] and stim.outputs == ["stim/output"]
    assert (acq.level, stim.level, rec.level) == (0, 1, 2)
    assert not rec.settings.recording, "the demo records only when asked"
    assert not stim.settings.armed, "the demo stimulates only when armed"


def test_readers_start_after_the_writers_they_read(tmp_path: Path) -> None:
    path = tmp_path / "order.toml"
    path.write_text(
        '[[workers]]\nname = "reader"\nkind = "tests.workers.lag_reader"\n'
        '[[workers]]\nname = "acq"\nkind = "acquisition"\n'
    )
    rig = config.load(path)
    assert {p.name: p.level for p in rig.workers} == {"reader": 1, "acq": 0}


def test_the_cli_prints_one_line_and_no_traceback_for_a_bad_config() -> None:
    path = ROOT / "tests" / "configs" / "unknown_kind.toml"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "workers[0].kind: unknown worker kind 'acquisitoin'" in result.stderr


def test_the_reference_documents_every_option() -> None:
    """configs/README.md names every field of every config table and worker settings."""
    from workers.acquisition.blackrock import BlackrockSettings
    from workers.acquisition.replay import ReplaySettings
    from workers.acquisition.synthetic_source import SyntheticSettings
    from workers.lsl.inlet import InletSettings
    from workers.lsl.outlet import OutletSettings, StreamOptions
    from workers.recording.worker import RecordingSettings
    from workers.stimulation.safety import ChannelLimits
    from workers.stimulation.simulated import SimulatedSettings
    from workers.stimulation.stg import StgSettings
    from workers.stimulation.trigger import TriggerRule
    from workers.stimulation.worker import StimulationSettings
    from workers.visualization.worker import ScopeSettings

    reference = (ROOT / "configs" / "README.md").read_text()
    tables = [
        config.SessionConfig,
        config.ControlConfig,
        config.WorkerConfig,
        SyntheticSettings,
        BlackrockSettings,
        ReplaySettings,
        RecordingSettings,
        ScopeSettings,
        StimulationSettings,
        ChannelLimits,
        TriggerRule,
        SimulatedSettings,
        StgSettings,
        OutletSettings,
        StreamOptions,
        InletSettings,
    ]
    missing = [
        f"{table.__name__}.{field.name}"
        for table in tables
        for field in msgspec.structs.fields(table)
        if f"`{field.name}`" not in reference
    ]
    assert not missing, f"configs/README.md does not describe: {missing}"


def test_a_binary_file_is_one_config_error(tmp_path: Path) -> None:
    path = tmp_path / "photo.toml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    with pytest.raises(ConfigError, match=r"not a text file \(not UTF-8 at byte 0\)"):
        config.load(path)


def _with_keys_file(path: Path, transport: str = "tcp") -> str:
    return (  # a literal string: a Windows path's backslashes are not escapes
        f"[control]\ntransport = \"{transport}\"\nkeys_file = '{path}'\n"
        '[[workers]]\nname = "acq"\nkind = "acquisition"\n'
    )


def test_a_keys_file_is_checked_before_the_rig_starts(tmp_path: Path) -> None:
    from pipeline.control import bus

    absent = tmp_path / "keys" / "rig.json"
    assert config.loads(_with_keys_file(absent)).control.keys_file == str(absent)
    made = bus.session_keys(tmp_path / "runtime", str(absent))  # first use: made (0600)
    assert made == absent
    assert bus.session_keys(tmp_path / "runtime", str(absent)).read_bytes() == made.read_bytes()
    config.loads(_with_keys_file(absent))  # valid now that it exists

    with pytest.raises(ConfigError, match=r'control\.keys_file: secures TCP control.*"ipc"'):
        config.loads(_with_keys_file(absent, transport="ipc"))
    keys = msgspec.json.decode(absent.read_bytes())
    keys["client_public"] = keys["server_public"]  # a pair that does not belong together
    absent.write_bytes(msgspec.json.encode(keys))
    with pytest.raises(ConfigError, match="a public key does not match"):
        config.loads(_with_keys_file(absent))
    absent.write_text("{not json")
    with pytest.raises(ConfigError, match="is not a rigpipe CURVE key file"):
        config.loads(_with_keys_file(absent))


@pytest.mark.posix
def test_a_keys_file_others_can_read_is_refused(tmp_path: Path) -> None:
    """POSIX modes (Windows keeps a user's files private through their ACL)."""
    from pipeline.control import bus

    path = tmp_path / "keys" / "rig.json"
    bus.session_keys(tmp_path / "runtime", str(path))
    assert path.stat().st_mode & 0o777 == 0o600, "made readable by its owner only"
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=r"can be read by other users \(mode 644\).*chmod 600"):
        config.loads(_with_keys_file(path))
