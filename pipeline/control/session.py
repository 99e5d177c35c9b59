"""A session's runtime directory and the discovery file that lets others find a running rig.

Every session has a discovery file ``<base>/<session>.json``, where ``<base>``
is ``$RIGPIPE_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/rigpipe``, else
``<tempdir>/rigpipe-<uid>``; the base and each runtime directory are private
to the user (mode 0700). The file names the supervisor (pid and start time),
its endpoints, its workers and the streams it writes. ``rigpipe status`` and
outside programs read it; a file whose supervisor is gone marks a session left
behind by a killed supervisor, and :func:`clean_stale` removes what it left.
"""

from __future__ import annotations

import contextlib
import datetime
import getpass
import os
import stat
import tempfile
from pathlib import Path

import msgspec
import psutil

from pipeline.control.bus import Endpoints
from pipeline.errors import SessionNotFound
from pipeline.host import identity
from pipeline.host.files import atomic_replace, read_bytes
from pipeline.ring import segments

START_HINT = "start one with `rigpipe run configs/demo.toml`"


class Discovery(msgspec.Struct, kw_only=True):
    """The contents of a discovery file."""

    session: str
    pid: int
    start_ms: int
    endpoints: Endpoints
    runtime_dir: str
    config_path: str
    recordings_dir: str
    started_at: str  # ISO 8601, UTC
    streams: list[str] = []  # full stream names
    workers: dict[str, tuple[int, int]] = {}  # name -> (pid, start_ms) of live processes
    direct: dict[str, str] = {}  # name -> the worker's own request socket (Worker.direct)

    @property
    def alive(self) -> bool:
        return identity.process_alive(self.pid, self.start_ms)


def base_dir() -> Path:
    """Where discovery files live (created private to this user)."""
    if env := os.environ.get("RIGPIPE_RUNTIME_DIR"):
        base = Path(env)
    elif xdg := os.environ.get("XDG_RUNTIME_DIR"):
        base = Path(xdg) / "rigpipe"
    else:
        # getpass, not os.getlogin: without a console (a service, pythonw) getlogin raises
        uid = os.getuid() if hasattr(os, "getuid") else getpass.getuser()
        base = Path(tempfile.gettempdir()) / f"rigpipe-{uid}"
    return private_dir(base)


def private_dir(path: Path) -> Path:
    """Create ``path`` with mode 0700, or check that an existing one is ours and private."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.name == "posix":
        info = path.stat()
        if info.st_uid != os.getuid():
            raise PermissionError(
                f"runtime directory {path} belongs to another user; set RIGPIPE_RUNTIME_DIR"
            )
        if stat.S_IMODE(info.st_mode) & 0o077:
            path.chmod(0o700)
    return path


def runtime_dir(session: str, configured: str = "") -> Path:
    """The session's runtime directory: the configured one, or ``<base>/<session>``."""
    return private_dir(Path(configured) if configured else base_dir() / session)


def discovery_path(session: str) -> Path:
    return base_dir() / f"{session}.json"


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def write(discovery: Discovery) -> None:
    """Replace the discovery file atomically, so a reader never sees half of one."""
    path = discovery_path(discovery.session)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_bytes(msgspec.json.encode(discovery))
    atomic_replace(temporary, path)


def read(session: str) -> Discovery | None:
    """The discovery file of ``session`` (alive or not), or None."""
    try:
        return msgspec.json.decode(read_bytes(discovery_path(session)), type=Discovery)
    except (FileNotFoundError, msgspec.DecodeError):
        return None


def remove(session: str) -> None:
    discovery_path(session).unlink(missing_ok=True)


def running() -> list[Discovery]:
    """Sessions whose supervisor is alive."""
    found = []
    for path in sorted(base_dir().glob("*.json")):
        discovery = read(path.stem)
        if discovery is not None and discovery.alive:
            found.append(discovery)
    return found


def known_streams() -> list[str]:
    """Every stream named by a discovery file here, of a running session or a dead one."""
    streams: set[str] = set()
    for path in sorted(base_dir().glob("*.json")):
        discovery = read(path.stem)
        if discovery is not None:
            streams.update(discovery.streams)
    return sorted(streams)


def find(session: str | None = None) -> Discovery:
    """The running session named ``session``, or the only one running; SessionNotFound."""
    session = session or os.environ.get("RIGPIPE_SESSION") or None
    if session is not None:
        discovery = read(session)
        if discovery is None or not discovery.alive:
            raise SessionNotFound(f"no rig named {session!r} is running; {START_HINT}")
        return discovery
    live = running()
    if not live:
        raise SessionNotFound(f"no rig is running; {START_HINT}")
    if len(live) > 1:
        names = ", ".join(d.session for d in live)
        raise SessionNotFound(f"several rigs are running ({names}); choose one with --session")
    return live[0]


def resolve_stream(stream: str, session: str | None = None) -> str:
    """Full stream name: ``worker/port`` is taken inside the running (or named) session."""
    if stream.count("/") != 1:
        return stream
    return f"{find(session).session}/{stream}"


def clean_stale(session: str) -> list[str]:
    """Remove what a killed supervisor of ``session`` left behind; say what was removed.

    Workers still running (a pid and start time from the discovery file) are
    killed, the session's segments swept, its sockets and discovery file removed.
    Raises nothing if there is nothing to clean.
    """
    discovery = read(session)
    if discovery is None or discovery.alive:
        return []
    cleaned = []
    for name, (pid, start_ms) in discovery.workers.items():
        if identity.process_alive(pid, start_ms):
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
                psutil.Process(pid).wait(5)
            cleaned.append(f"killed worker {name} (pid {pid})")
    removed = segments.sweep(streams=discovery.streams)
    if removed:
        cleaned.append(f"removed {len(removed)} shared-memory segment(s)")
    for endpoint in (discovery.endpoints.control, discovery.endpoints.events):
        if endpoint.startswith("ipc://"):
            Path(endpoint.removeprefix("ipc://")).unlink(missing_ok=True)
    remove(session)
    return cleaned
