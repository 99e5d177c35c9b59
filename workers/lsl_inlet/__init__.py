"""LSL inlet worker: a Lab Streaming Layer stream from the network into a rigpipe ring.

The worker kind ``lsl_inlet`` (extra ``lsl``); its class is in ``worker.py``.
"""

from workers.lsl_inlet.worker import WORKER

__all__ = ["WORKER"]
