"""What a recording's views share: its open files, each opened once, and its memory limit.

:class:`Files` keeps every segment file of a :class:`~pipeline.recording.readback.Recording`
open once (with SWMR for one still being written) and caches dataset lookups;
:class:`Guard` refuses a slice above the memory limit before anything is read;
:func:`reading` turns what h5py raises on a damaged file into one ``RecordingError``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py

from pipeline.errors import RecordingError, SliceTooLarge
from pipeline.recording.format import open_segment

#: Slices larger than this raise SliceTooLarge unless allowed (open_recording(memory_limit_bytes=)).
DEFAULT_MEMORY_LIMIT_BYTES = 2 << 30


class Guard:
    """The memory limit shared by a recording and its views (raised by ``allow_large``)."""

    def __init__(self, limit_bytes: int | None) -> None:
        self.limit_bytes = limit_bytes

    def check(self, nbytes: int, what: Callable[[], str]) -> None:
        """Raise SliceTooLarge if ``nbytes`` is over the limit; ``what()`` names the slice."""
        if self.limit_bytes is None or nbytes <= self.limit_bytes:
            return
        raise SliceTooLarge(
            f"{what()} would be {_size(nbytes)}, above the memory limit of "
            f"{_size(self.limit_bytes)}; nothing was read. Read it in blocks "
            "(`for block in view.blocks(seconds=10): ...`), allow it once "
            "(`with rec.allow_large(): ...`), or open the recording with a higher "
            "limit (`open_recording(path, memory_limit_bytes=...)`)"
        )


def _size(nbytes: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if nbytes < 1000 or unit == "TB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.2f} {unit}"
        nbytes /= 1000
    raise AssertionError("unreachable")


#: What h5py raises reading a damaged file (a flipped byte in its metadata, a cut-off chunk).
DAMAGED = (OSError, KeyError, RuntimeError)


def reading(method: Callable[..., Any]) -> Callable[..., Any]:
    """What h5py raises on a damaged file, as one RecordingError naming the stream."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except DAMAGED as exc:
            raise RecordingError(
                f"{self.stream}: a segment cannot be read, the file is damaged "
                f"({type(exc).__name__}: {exc}); `rigpipe inspect` says which"
            ) from None

    return wrapper


class Files:
    """Open h5py files by path, each opened once (with SWMR for a file still being written)."""

    def __init__(self) -> None:
        self._open: dict[str, h5py.File] = {}
        self._datasets: dict[tuple[str, str], h5py.Dataset] = {}

    def get(self, path: str) -> h5py.File:
        file = self._open.get(path)
        if file is None:
            try:
                file = open_segment(Path(path))
            except (OSError, ValueError) as exc:
                raise RecordingError(f"{path} cannot be opened as a segment: {exc}") from None
            self._open[path] = file
        return file

    def dataset(self, path: str, name: str) -> h5py.Dataset:
        """Dataset ``name`` of file ``path`` (looked up once: h5py lookups cost ~0.1 ms)."""
        found = self._datasets.get((path, name))
        if found is None:
            found = self._datasets[(path, name)] = self.get(path)[name]
        return found

    def close(self) -> None:
        self._datasets.clear()
        for file in self._open.values():
            file.close()
        self._open.clear()
