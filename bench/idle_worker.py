"""A worker that does nothing but serve the bus: the floor of a worker's CPU (bench/control.py)."""

from __future__ import annotations

import time

from pipeline.worker import Worker


class IdleWorker(Worker):
    def step(self) -> None:
        self.wait_until(time.monotonic() + 1.0)


WORKER = IdleWorker
