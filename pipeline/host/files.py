"""Small files replaced whole, safely on every OS: the manifest, the discovery file, pointers.

Each is written to a temporary file and renamed over the old one, so a reader
sees the old contents or the new, never half. On Windows a rename fails with
PermissionError while any process has the target open (``rigpipe status``
reading the discovery file at the wrong moment), and a read fails the same way
during the rename: both retry for about a second before giving up.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pipeline.host import clock

#: How long a replace or a read keeps retrying a sharing violation.
RETRY_S = 1.0
_PAUSE_S = 0.01


def atomic_replace(source: Path, target: Path) -> None:
    """Rename ``source`` over ``target``, retrying while another process holds ``target``."""
    deadline = clock.now_s() + RETRY_S
    while True:
        try:
            os.replace(source, target)
            return
        except PermissionError:
            if clock.now_s() >= deadline:
                raise
            time.sleep(_PAUSE_S)


def read_bytes(path: Path) -> bytes:
    """The contents of ``path``, retrying while a replace holds it (FileNotFoundError as is)."""
    deadline = clock.now_s() + RETRY_S
    while True:
        try:
            return Path(path).read_bytes()
        except PermissionError:
            if clock.now_s() >= deadline:
                raise
            time.sleep(_PAUSE_S)
