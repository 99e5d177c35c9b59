"""Acquisition worker: puts a source's data into rings, paced by the source.

The worker kind ``acquisition``; its class is in ``worker.py``.
"""

from workers.acquisition.worker import WORKER

__all__ = ["WORKER"]
