"""What every acquisition source provides to the acquisition worker."""

from __future__ import annotations

from typing import Any, ClassVar

from pipeline.errors import RigpipeError
from pipeline.worker import Worker

SPIKE_CAPACITY = 1 << 16  # spike records a ring keeps


class SourceError(RigpipeError):
    """The source cannot deliver: the device is absent, lost, or refused its setup.

    The acquisition worker reports the message as an error event and exits
    non-zero, so the restart policy decides what happens next.
    """


class Source:
    """A source of streams, driven by the acquisition worker's loop."""

    #: Settings the source lets ``rigpipe set`` change while it runs.
    settable: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def outputs(cls, settings: Any) -> list[str]:
        """The ports it writes (``continuous``, ``30kHz``, ``spikes``...)."""
        raise NotImplementedError

    @classmethod
    def check(cls, settings: Any) -> None:
        """Raise ValueError for settings that cannot work together (before anything starts)."""

    def __init__(self, worker: Worker, settings: Any) -> None:
        self.worker = worker
        self.settings = settings

    def open(self) -> None:
        """Create the rings and start delivering (raise SourceError if it cannot)."""
        raise NotImplementedError

    def step(self) -> None:
        """One turn of the worker's loop; keep it short, and wait with worker.wait_until."""
        raise NotImplementedError

    def on_parameter(self, name: str, value: Any) -> None:
        """A settable parameter changed (``self.worker.settings`` has the new value)."""

    def close(self) -> None:
        """Stop delivering and close the rings; runs even after a failed open."""
