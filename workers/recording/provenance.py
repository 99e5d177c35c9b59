"""What a recording stores about where and how it was made."""

from __future__ import annotations

import json
import platform
import socket
import sys
from importlib import metadata
from typing import Any

import psutil

_PACKAGES = ("rigpipe", "numpy", "h5py", "pyzmq", "msgspec", "psutil", "pycbsdk", "pythonnet")


def host() -> dict[str, Any]:
    """Hostname, OS, CPU and memory of this machine."""
    return {
        "hostname": socket.gethostname(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count_logical": psutil.cpu_count(logical=True),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "memory_bytes": psutil.virtual_memory().total,
    }


def versions() -> dict[str, str]:
    """Python and the versions of the packages that shape the data (installed ones only)."""
    found = {"python": sys.version.split()[0]}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    import h5py

    found["hdf5"] = h5py.version.hdf5_version
    return found


def attributes(session: str, session_id: str, config: str) -> dict[str, Any]:
    """The provenance group's attributes (the recording adds its id and start time)."""
    return {
        "schema_version": 1,
        "session": session,
        "session_id": session_id,
        "host_json": json.dumps(host()),
        "versions_json": json.dumps(versions()),
        "config_toml": config,
    }
