"""What the supervisor gives a worker process: its :class:`WorkerSpec`, and the exit codes."""

from __future__ import annotations

from typing import Any

import msgspec

from pipeline.control.bus import Endpoints

#: The exit code of a worker that stopped because its supervisor is gone (sysexits'
#: EX_UNAVAILABLE): not 0, which says "asked to stop, done", so that whoever reads it
#: (a restart policy, a script) never takes the lost rig for a clean stop.
EXIT_SUPERVISOR_GONE = 69


class WorkerSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a worker process needs, given on its stdin by the supervisor."""

    session: str
    name: str
    kind: str  # module defining WORKER
    parameters: dict[str, Any] = {}
    endpoints: Endpoints
    supervisor_pid: int
    heartbeat_interval_s: float = 0.25
    heartbeat_timeout_s: float = 2.0
    log_level: str = "info"
    recordings_dir: str = "recordings"
    recordings_access: str = "group"  # "group": 0640/0750; "user": 0600/0700
    session_id: str = ""  # a uuid per supervisor run
    supervisor_start_ms: int = 0  # with supervisor_pid: tells a restarted supervisor from ours
    config_text: str = ""  # the config file as given, for provenance
    realtime_priority: int = 0  # real-time scheduling once set up (0: none)
