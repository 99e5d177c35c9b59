"""A scope worker in the test process, offscreen, with no supervisor (its bus endpoint
leads nowhere): for tests that drive its panel, keys and status line directly."""

from __future__ import annotations

import os
from typing import Any

from pipeline.control.bus import Endpoints
from pipeline.worker import WorkerSpec


def scope_worker(session: str, parameters: dict[str, Any]) -> Any:
    """A set-up-ready :class:`~workers.visualization.worker.ScopeWorker` of ``session``
    (import Qt first: the caller skips where it cannot load)."""
    from workers.visualization.worker import ScopeWorker

    spec = WorkerSpec(
        session=session,
        name="scope",
        kind="workers.visualization",
        endpoints=Endpoints("tcp://127.0.0.1:9", "tcp://127.0.0.1:9"),
        supervisor_pid=os.getpid(),
    )
    return ScopeWorker(spec, ScopeWorker.parse_settings({"offscreen": True, **parameters}))
