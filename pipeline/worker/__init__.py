"""Workers: the base class a worker kind subclasses, and what runs it.

- :mod:`~pipeline.worker.base`: :class:`Worker`, one block of what a kind overrides and
  one of what it calls;
- :mod:`~pipeline.worker.service`: the bus, heartbeats, requests and waiting behind it;
- :mod:`~pipeline.worker.spec`: :class:`WorkerSpec`, what the supervisor hands a worker;
- :mod:`~pipeline.worker.main`: the process entry, ``python -m pipeline.worker``.
"""

from pipeline.worker.base import Worker
from pipeline.worker.main import SPEC_ON_STDIN, WORKER_PATH_ENV, use_worker_path, worker_path
from pipeline.worker.spec import EXIT_SUPERVISOR_GONE, WorkerSpec

__all__ = [
    "EXIT_SUPERVISOR_GONE",
    "SPEC_ON_STDIN",
    "WORKER_PATH_ENV",
    "Worker",
    "WorkerSpec",
    "use_worker_path",
    "worker_path",
]
