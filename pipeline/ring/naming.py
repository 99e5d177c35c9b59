"""Stream names and the shared-memory names derived from them.

A stream is named ``<session>/<worker>/<port>`` (``default/acq/continuous``).
Shared-memory names are a hash of that, so they are deterministic (any
process that knows the stream name finds the segment), free of characters
the OS forbids, and short enough for macOS, which limits POSIX shared-memory
names to 31 characters including the leading slash.
"""

from __future__ import annotations

import hashlib
import os
import re

#: Every segment rigpipe creates starts with this, so ``sweep`` and
#: ``rigpipe streams`` can tell ours from other programs' segments.
SHM_PREFIX = "rp_"
#: ``RIGPIPE_SHM_PREFIX`` gives a process tree a namespace of its own: its segments are named
#: with that prefix, and listing and sweeping see only those. The test suite uses it so that it
#: never touches the segments of a rig running on the same machine.
PREFIX_ENV = "RIGPIPE_SHM_PREFIX"
_PREFIX = re.compile(r"rp[a-z0-9]{0,3}_")  # at most 6 characters: "/" + 6 + 24 = 31
_HASH_BYTES = 12  # 24 hex characters: "rp_" + 24 = 27 characters, "/" + 27 = 28 <= 31
MAX_STREAM_BYTES = 200
#: The one stream no worker writes: the supervisor's log of every event the session publishes
#: (``<session>/supervisor/events``, see :mod:`pipeline.control.eventlog`). A worker may not be
#: named ``supervisor``.
SUPERVISOR = "supervisor"
EVENTS_STREAM = f"{SUPERVISOR}/events"
_PART = re.compile(r"[A-Za-z0-9_.\-]+")


def validate_stream(stream: str) -> str:
    """Return ``stream`` unchanged if it is a valid stream name, else raise ValueError.

    A stream name is one or more parts separated by ``/``; each part uses
    letters, digits, ``_``, ``.`` or ``-``.
    """
    if not isinstance(stream, str):
        raise TypeError(f"stream name must be a str, got {type(stream).__name__}")
    if len(stream.encode()) > MAX_STREAM_BYTES:
        raise ValueError(
            f"stream name {stream[:40]!r}... is {len(stream.encode())} bytes; "
            f"the limit is {MAX_STREAM_BYTES}"
        )
    parts = stream.split("/")
    bad = [p for p in parts if not _PART.fullmatch(p)]
    if bad:
        raise ValueError(
            f"invalid stream name {stream!r}: part {bad[0]!r} is empty or has a character "
            "outside letters, digits, '_', '.', '-'; use a name like 'default/acq/continuous'"
        )
    return stream


def shm_prefix() -> str:
    """The shared-memory name prefix in force: ``RIGPIPE_SHM_PREFIX``, else ``rp_``."""
    prefix = os.environ.get(PREFIX_ENV, SHM_PREFIX)
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(
            f"{PREFIX_ENV}={prefix!r} is not a shared-memory prefix: use 'rp', up to three "
            "lowercase letters or digits, and '_' (e.g. 'rpt1_')"
        )
    return prefix


def owner() -> str:
    """Who this process runs as, as segment names include it: the uid (POSIX) or the
    user name (Windows)."""
    getuid = getattr(os, "getuid", None)
    if getuid is not None:
        return str(getuid())
    import getpass

    return getpass.getuser()


def shm_name(stream: str) -> str:
    """Deterministic shared-memory name for ``stream`` (a stream or a derived key).

    The hash covers the user too, so two users' rigs with the same session and
    stream names never meet in shared memory (each user's processes find their
    own); ``rp_`` + 24 hex digits, e.g. ``rp_1e1ef5d1bd5327cc8e9f3cb9``.
    """
    key = f"{owner()}:{stream}".encode()
    return shm_prefix() + hashlib.blake2b(key, digest_size=_HASH_BYTES).hexdigest()


def data_key(stream: str, generation: int) -> str:
    """The key whose hash names generation ``generation``'s data segment."""
    return f"{stream}/buffer{generation}"
