"""Stimulation worker: safety-checked pulse trains and waveforms, closed-loop triggers.

The worker kind ``stimulation``; its class is in ``worker.py``.
"""

from workers.stimulation.worker import WORKER

__all__ = ["WORKER"]
