"""LSL outlet worker: rigpipe streams on the lab network as Lab Streaming Layer outlets.

The worker kind ``lsl_outlet`` (extra ``lsl``); its class is in ``worker.py``.
"""

from workers.lsl_outlet.worker import WORKER

__all__ = ["WORKER"]
