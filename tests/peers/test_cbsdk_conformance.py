"""The emulated device must not drift from the real pycbsdk API the blackrock source uses."""

from __future__ import annotations

import dataclasses
import inspect
import re

import pycbsdk
import pytest

from tests.peers import cbsdk as emulator
from workers.acquisition import blackrock


def _shape(function) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


@pytest.mark.parametrize("name", blackrock.SESSION_API)
def test_each_session_member_the_source_uses_exists_with_the_emulators_parameters(name) -> None:
    real = inspect.getattr_static(pycbsdk.Session, name)
    emulated = inspect.getattr_static(emulator.Session, name)
    if isinstance(real, property):
        assert isinstance(emulated, property), f"{name} is a property in pycbsdk"
        return
    assert _shape(real) == _shape(emulated), f"Session.{name} differs from pycbsdk's"


def test_the_source_calls_nothing_the_conformance_list_leaves_out() -> None:
    used = set(re.findall(r"self\.session\.(\w+)", inspect.getsource(blackrock)))
    assert used and used <= set(blackrock.SESSION_API), used - set(blackrock.SESSION_API)


def test_the_enums_and_stats_the_source_uses_exist() -> None:
    settings = blackrock.BlackrockSettings
    fields = {f.name: f.type for f in __import__("msgspec").structs.fields(settings)}
    for device in fields["device"].__args__:
        pycbsdk.DeviceType[device]
    for member, _hz in blackrock.RATES.values():
        pycbsdk.SampleRate[member]
    for channel_type in fields["channel_type"].__args__:
        pycbsdk.ChannelType[channel_type]
    assert "packets_dropped" in {f.name for f in dataclasses.fields(pycbsdk.Stats)}
