"""Recording worker: every frame of the configured streams, and the session's events, to HDF5.

The worker kind ``recording``; its class is in ``worker.py``.
"""

from workers.recording.worker import WORKER

__all__ = ["WORKER"]
