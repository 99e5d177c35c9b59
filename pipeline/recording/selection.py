"""Index keys of a recording view: what ``view[channels, frames]`` selects.

Frames are either a regular run (:class:`Rows`: start, count, positive step)
or a sorted array of frame indices; a negative step is read forwards and
reversed. Each axis is indexed on its own (outer indexing, as in h5py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Rows:
    """Frames ``start, start + step, ...`` (``count`` of them); step > 0."""

    start: int
    count: int
    step: int = 1


def frame_selection(key: Any, frames: int) -> tuple[Rows | np.ndarray, bool, bool]:
    """A frame key as (Rows or sorted index array, reversed, squeeze)."""
    if isinstance(key, slice):
        start, stop, step = key.indices(frames)
        count = len(range(start, stop, step))
        if step > 0:
            return Rows(start, count, step), False, False
        return Rows(start + (count - 1) * step if count else 0, count, -step), True, False
    if isinstance(key, int | np.integer):
        index = int(key) + (frames if key < 0 else 0)
        if not 0 <= index < frames:
            raise IndexError(f"frame {int(key)} is out of range for {frames} frames")
        return Rows(index, 1), False, True
    array = np.asarray(key)
    if array.dtype == bool:
        if array.shape != (frames,):
            raise IndexError(f"a boolean frame mask must have {frames} elements, not {array.shape}")
        return np.flatnonzero(array), False, False
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise IndexError(f"frames must be an int, a slice, or a 1-d int or bool array, not {key!r}")
    array = np.where(array < 0, array + frames, array)
    if len(array) and (array.min() < 0 or array.max() >= frames):
        raise IndexError(f"frame index out of range for {frames} frames")
    return array.astype(np.int64), False, False


def split_key(key: Any) -> tuple[Any, Any]:
    if not isinstance(key, tuple):
        return key, slice(None)
    if len(key) == 2 and key[0] is Ellipsis:
        return slice(None), key[1]
    if len(key) == 2 and key[1] is Ellipsis:
        return key[0], slice(None)
    if len(key) == 1:
        return key[0], slice(None)
    if len(key) != 2:
        raise IndexError(f"a recording has 2 axes (channels, frames); got {len(key)} indices")
    return key


def count(selection: Rows | np.ndarray) -> int:
    return selection.count if isinstance(selection, Rows) else len(selection)


def shape(out: np.ndarray, reverse: bool, squeeze: bool) -> np.ndarray:
    if reverse:
        out = out[..., ::-1]
    if squeeze:
        return out[..., 0]
    return out


class Indexer:
    """``obj[key]`` calls a function: ``view.timestamps_ns[0:100]``."""

    def __init__(self, read: Any) -> None:
        self._read = read

    def __getitem__(self, key: Any) -> np.ndarray:
        return self._read(key)


def key_text(key: Any) -> str:
    """An index as written between brackets (``2:10``, ``[1, 3]``), for messages."""
    if isinstance(key, slice):
        parts = ["" if v is None else str(v) for v in (key.start, key.stop)]
        return ":".join(parts) + (f":{key.step}" if key.step is not None else "")
    if isinstance(key, int | np.integer | str):
        return str(key)
    return f"<{type(key).__name__}>"
