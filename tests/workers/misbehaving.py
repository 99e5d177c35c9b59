"""Test worker kind that misbehaves on purpose: crashes, hangs, or ignores Stop.

``mode = "crash"`` exits with code 3 after ``after_s``; ``"hang"`` stops
serving the bus (no heartbeats) after ``after_s``; ``"deaf"`` keeps
heartbeating but ignores Stop and SIGTERM, so only SIGKILL ends it.
``setup_s`` makes setup() block that long first (a device that is slow to open).
"""

from __future__ import annotations

import signal
import time
from typing import Literal

import msgspec

from pipeline.worker import Worker


class MisbehavingSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    mode: Literal["crash", "hang", "deaf"] = "crash"
    after_s: float = 0.2
    setup_s: float = 0.0


class Misbehaving(Worker):
    Settings = MisbehavingSettings

    def setup(self) -> None:
        time.sleep(self.settings.setup_s)  # blocks this thread, as a slow device open does
        self.started = time.monotonic()
        if self.settings.mode == "deaf":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def step(self) -> None:
        elapsed = time.monotonic() - self.started
        if elapsed >= self.settings.after_s:
            if self.settings.mode == "crash":
                raise SystemExit(3)
            if self.settings.mode == "hang":
                time.sleep(3600)
        self.wait_until(time.monotonic() + 0.02)

    def run(self) -> None:
        while True:
            self.step()
            self.service()
            if self.stopping and self.settings.mode != "deaf":
                return


WORKER = Misbehaving
