"""The emulated Cerebus device with no-op callbacks: bench/blackrock.py's baseline."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from pipeline.worker import Worker
from tests.peers.cbsdk import Session


class Settings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    channels: int = 256


class EmulatorOnly(Worker):
    Settings = Settings

    def setup(self) -> None:
        from pycbsdk import ChannelType, SampleRate

        self.session = Session()
        self.session.set_sample_group(
            self.settings.channels, ChannelType.FRONTEND, SampleRate.SR_30kHz, True
        )
        self.session.on_group_batch(SampleRate.SR_30kHz)(self._ignore)
        self.session.on_event(ChannelType.FRONTEND)(self._ignore)

    @staticmethod
    def _ignore(*args: Any) -> None:
        return None

    def step(self) -> None:
        self.wait_until(time.monotonic() + 0.1)

    def teardown(self) -> None:
        self.session.close()


WORKER = EmulatorOnly
