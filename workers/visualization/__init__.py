"""Visualization worker: a live multi-channel scope (pyqtgraph on PySide6, extra ``viz``).

The worker kind ``visualization``; its class is in ``worker.py``.
"""

from workers.visualization.worker import WORKER

__all__ = ["WORKER"]
