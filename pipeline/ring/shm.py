"""Named shared-memory segments that no resource tracker touches.

``multiprocessing.shared_memory.SharedMemory`` on Python < 3.13 registers
every segment it opens, even one it merely attached to, with the resource
tracker, which unlinks it when that process exits (bpo-38119) and warns about
"leaked" segments. For a ring that is wrong twice: a reader exiting must not
delete the writer's stream, and a writer that crashes must leave its segments
for the restarted writer and for ``sweep`` to decide about. So on POSIX we
open segments with ``shm_open`` + ``mmap`` directly; cleanup is ours
(``RingWriter.close`` and ``ring.sweep``). On Windows there is no tracker and
a segment lives only while some process holds a handle on it, so
``SharedMemory`` is used as is, and the supervisor holds its streams'
segments (``segments.Holds``) so that a writer killed there leaves its frames
and sequence to the writer that restarts.
"""

from __future__ import annotations

import errno
import mmap
import os
import sys
import time
from multiprocessing.shared_memory import SharedMemory  # Windows (tests: a refcounting fake)
from pathlib import Path

from pipeline.errors import SegmentForeign, SharedMemoryFull
from pipeline.ring.naming import shm_prefix

_POSIX = os.name == "posix"  # a seam: tests switch it off to run the Windows branches
if _POSIX:
    import _posixshmem

#: Where Linux exposes POSIX shared memory as files; other systems cannot list segments.
SHM_DIR = Path("/dev/shm")


class Segment:
    """One mapped shared-memory segment; ``buf`` is a writable memoryview of it.

    The segment has one owner that calls ``close()``; the process that created
    the name (or the sweeper) calls ``unlink()``. Closing while numpy views of
    ``buf`` are still alive leaves the mapping to the garbage collector
    instead of raising.
    """

    def __init__(
        self, name: str, mapping: mmap.mmap | SharedMemory, identity: tuple[int, int] | None = None
    ) -> None:
        self.name = name
        self._mapping = mapping
        buf = memoryview(mapping) if isinstance(mapping, mmap.mmap) else mapping.buf
        assert buf is not None  # a SharedMemory's buf is None only once closed
        self.buf: memoryview = buf
        self.size = len(self.buf)
        #: (device, inode) of the object mapped (POSIX), to tell whether the name still refers to it
        self.identity = identity

    @classmethod
    def create(cls, name: str, size: int) -> Segment:
        """Create segment ``name`` of ``size`` bytes; FileExistsError if the name is taken."""
        if size <= 0:
            raise ValueError(f"segment size must be positive, got {size}")
        if not _POSIX:
            return cls(name, SharedMemory(name, create=True, size=size))
        fd = _posixshmem.shm_open("/" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
        try:
            os.ftruncate(fd, size)
            _reserve(fd, name, size)
            return cls(name, mmap.mmap(fd, size), _identity(fd))
        except BaseException:
            _posixshmem.shm_unlink("/" + name)
            raise
        finally:
            os.close(fd)

    @classmethod
    def attach(cls, name: str) -> Segment:
        """Map existing segment ``name``; FileNotFoundError if there is none."""
        if not _POSIX:
            return cls(name, SharedMemory(name, create=False))
        try:
            fd = _posixshmem.shm_open("/" + name, os.O_RDWR, mode=0o600)
        except PermissionError:
            raise _foreign(name, None) from None
        try:
            info = os.fstat(fd)
            if info.st_uid != os.getuid():  # a squatter's segment, even one anybody may write
                raise _foreign(name, info.st_uid)
            size = info.st_size
            if size == 0:
                # Created but not yet sized by its writer: treat as absent for now.
                raise FileNotFoundError(f"shared-memory segment {name!r} is still being created")
            return cls(name, mmap.mmap(fd, size), _identity(fd))
        finally:
            os.close(fd)

    def linked(self) -> bool:
        """True while this segment's name still refers to this very segment.

        Another process may unlink the name (or unlink it and create another
        segment under it) while we hold the mapping: the mapping stays valid,
        but nobody new can reach it. Windows cannot unlink a segment that is
        open, so there it is always True.
        """
        if not _POSIX or self.identity is None:
            return True
        try:
            fd = _posixshmem.shm_open("/" + self.name, os.O_RDONLY, mode=0o600)
        except (FileNotFoundError, PermissionError):
            return False
        try:
            return _identity(fd) == self.identity
        finally:
            os.close(fd)

    def close(self) -> None:
        """Unmap the segment from this process (the name stays until ``unlink``)."""
        buf, self.buf = self.buf, memoryview(b"")
        try:
            buf.release()
            self._mapping.close()
        except BufferError:
            # numpy views handed out earlier still reference the mapping; the
            # mapping is released when the last of them is garbage collected.
            pass

    def unlink(self) -> None:
        """Remove the segment's name so no new process can attach to it."""
        unlink(self.name)


def _foreign(name: str, uid: int | None) -> SegmentForeign:
    """The one-line refusal of a segment that another user owns."""
    if uid is None:
        try:
            uid = os.stat(f"/dev/shm/{name}").st_uid
        except OSError:
            uid = -1
    try:
        import pwd

        owner = pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        owner = "another user"
    return SegmentForeign(
        f"shared-memory segment {name!r} belongs to {owner} (uid {uid}), not to this user "
        f"(uid {os.getuid()}): someone else created it under this rig's name. It is left "
        f"alone; remove it as its owner or root (/dev/shm/{name}), or run this rig under "
        "other names (RIGPIPE_SHM_PREFIX, another session name)"
    )


def _reserve(fd: int, name: str, size: int) -> None:
    """Allocate the segment's memory now, where the OS can (Linux tmpfs).

    ``ftruncate`` alone leaves the segment sparse: its pages are allocated as
    they are first written, and a write that finds ``/dev/shm`` full kills the
    writer with SIGBUS in the middle of a run. Reserved, a full ``/dev/shm``
    is :class:`SharedMemoryFull` here. The first lap of a ring is also cheaper:
    its writes find the pages already allocated. macOS has no
    ``posix_fallocate`` and no size limit on shared memory; Windows commits a
    segment's memory when it is created.
    """
    if not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return  # a file system that cannot reserve: pages come as they are written
        if exc.errno != errno.ENOSPC:
            raise
        raise SharedMemoryFull(_full_message(name, size)) from None


def _full_message(name: str, size: int) -> str:
    mib = 1 << 20
    try:
        fs = os.statvfs(SHM_DIR)
        free, total = fs.f_bavail * fs.f_frsize / mib, fs.f_blocks * fs.f_frsize / mib
        room = f"{free:.0f} MiB of {total:.0f} MiB"
    except OSError:
        room = "too little"
    return (
        f"shared memory is full: segment {name!r} needs {size / mib:.1f} MiB and {SHM_DIR} has "
        f"{room} free. Remove a dead rig's leftovers (rigpipe sweep), make the ring smaller "
        f"(a shorter buffer_s, fewer channels), or give {SHM_DIR} more room "
        f"(sudo mount -o remount,size=<bytes> {SHM_DIR})"
    )


def _identity(fd: int) -> tuple[int, int]:
    stat = os.fstat(fd)
    return stat.st_dev, stat.st_ino


def unlink(name: str) -> bool:
    """Remove segment ``name``; return False if it did not exist."""
    if not _POSIX:  # Windows frees a segment when its last handle closes
        return False
    try:
        _posixshmem.shm_unlink("/" + name)
    except FileNotFoundError:
        return False
    return True


def age_s(name: str) -> float | None:
    """Seconds since segment ``name`` was last modified, where the OS shows it (Linux)."""
    try:
        return time.time() - (SHM_DIR / name).stat().st_mtime
    except OSError:
        return None


def list_names() -> list[str] | None:
    """Names of every rigpipe segment on this machine under the prefix in force
    (``RIGPIPE_SHM_PREFIX``), or None where the OS cannot list them.

    Linux lists ``/dev/shm``; macOS and Windows have no way to enumerate
    shared memory, so callers must know the stream names there.
    """
    if not sys.platform.startswith("linux") or not SHM_DIR.is_dir():
        return None
    prefix = shm_prefix()
    return sorted(p.name for p in SHM_DIR.iterdir() if p.name.startswith(prefix))
