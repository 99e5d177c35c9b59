"""Fuzzed configs and manifests: only the project's own errors, never a traceback or a hang."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import config
from pipeline.errors import ConfigError, RecordingError
from pipeline.recording.format import read_manifest

ROOT = Path(__file__).resolve().parents[2]
DEMO = (ROOT / "configs" / "demo.toml").read_text()
#: Fresh examples every local run; the same ones in CI (CI set), so a red CI is reproducible.
FUZZ = settings(
    max_examples=300,
    deadline=2000,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
toml_values = st.recursive(
    st.one_of(
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=30),
    ),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=10,
)


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # inf, -inf and nan are TOML too
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ", ".join(_toml(v) for v in value) + "]"


def _lines() -> list[tuple[int, str]]:
    """(index, key) of every ``key = value`` line of the demo config."""
    return [
        (i, line.split("=", 1)[0].strip())
        for i, line in enumerate(DEMO.splitlines())
        if "=" in line and not line.lstrip().startswith("#")
    ]


@FUZZ
@given(st.text(max_size=400))
def test_any_text_is_a_config_or_one_config_error(text: str) -> None:
    try:
        config.loads(text)
    except ConfigError as exc:
        assert "\n" not in exc.problem.strip() or "TOML" in exc.problem


@FUZZ
@given(st.sampled_from(_lines()), toml_values)
def test_any_value_for_any_field_of_the_demo_is_accepted_or_one_config_error(place, value):
    index, key = place
    lines = DEMO.splitlines()
    lines[index] = f"{key} = {_toml(value)}"
    with contextlib.suppress(ConfigError):  # the one error a config may raise
        config.loads("\n".join(lines))


@FUZZ
@given(st.binary(max_size=600))
def test_any_bytes_are_a_manifest_or_one_recording_error(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "manifest.json").write_bytes(raw)
        try:
            read_manifest(Path(directory))
        except RecordingError as exc:
            assert "manifest" in str(exc)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["recording_id", "session", "streams", "segments", "started_at", "x"]),
        st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=6),
    )
)
def test_any_json_shaped_manifest_is_read_or_one_recording_error(fields: dict) -> None:
    with tempfile.TemporaryDirectory() as directory:
        try:
            text = json.dumps(fields)
        except ValueError:
            return
        (Path(directory) / "manifest.json").write_text(text)
        with contextlib.suppress(RecordingError):  # the one error a manifest may raise
            read_manifest(Path(directory))
