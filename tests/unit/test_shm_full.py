"""A full ``/dev/shm`` is a clear error when a ring is created, never SIGBUS in a later write.

Each test runs a script in a mount namespace of its own (``unshare --mount``)
with a small private tmpfs on ``/dev/shm``: the machine's own shared memory,
and any rig recording on it, are not touched, and everything the script
creates vanishes with the namespace. Where namespaces are not allowed (no
root and no unprivileged user namespaces, or not Linux) the tests skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHM_MIB = 16


def _unshare_prefix() -> list[str] | None:
    """The command prefix that runs a shell with a private 16 MiB ``/dev/shm``, if allowed."""
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return None
    prefix = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--mount", "-r"]
    probe = subprocess.run(
        [*prefix, "sh", "-c", f"mount -t tmpfs -o size={SHM_MIB}m tmpfs /dev/shm"],
        capture_output=True,
        timeout=30,
    )
    return prefix if probe.returncode == 0 else None


PREFIX = _unshare_prefix()
pytestmark = pytest.mark.posix
needs_namespace = pytest.mark.skipif(
    PREFIX is None, reason="needs Linux mount namespaces (root, or unprivileged user namespaces)"
)


def _run_with_small_shm(script: str) -> subprocess.CompletedProcess[str]:
    assert PREFIX is not None
    shell = f'mount -t tmpfs -o size={SHM_MIB}m tmpfs /dev/shm && exec "$0" -c "$1"'
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [*PREFIX, "sh", "-c", shell, sys.executable, textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@needs_namespace
def test_a_ring_larger_than_free_shared_memory_is_refused_at_creation() -> None:
    # 24 MiB of frames in a 16 MiB /dev/shm. Unreserved, the segment was created sparse
    # and the writer died of SIGBUS (exit -7) in the write that reached the limit.
    result = _run_with_small_shm(
        """
        import json
        import os

        import numpy as np
        import pipeline
        from pipeline.errors import SharedMemoryFull

        try:
            writer = pipeline.RingWriter("full/acq/continuous", np.int16, (256,), 48000, 30000.0)
        except SharedMemoryFull as exc:
            print("REFUSED", exc)
        else:
            block = np.ones((30, 256), np.int16)
            for _ in range(48000 // 30):
                writer.write(block)
            print("WROTE EVERYTHING")
        print("LEFT", json.dumps(sorted(os.listdir("/dev/shm"))))
        """
    )
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    refused = [line for line in result.stdout.splitlines() if line.startswith("REFUSED")]
    assert refused, result.stdout
    message = refused[0]
    assert "full/acq/continuous" in message
    assert "48000 frames" in message
    assert "/dev/shm has" in message and "free" in message
    assert "rigpipe sweep" in message and "buffer_s" in message
    # Nothing of the refused ring is left behind: its names are free, its memory given back.
    left = next(line for line in result.stdout.splitlines() if line.startswith("LEFT"))
    assert json.loads(left.removeprefix("LEFT ")) == []


@needs_namespace
def test_a_ring_that_fits_keeps_every_frame_while_another_is_refused() -> None:
    # A running ring (about 8 MiB) owns its memory: a second writer asking for more than
    # is left gets the error, and the first one's frames all reach its reader.
    result = _run_with_small_shm(
        """
        import numpy as np
        import pipeline
        from pipeline.errors import SharedMemoryFull

        capacity = 15000  # 15000 x 256 int16 = 7.3 MiB
        with pipeline.RingWriter("fits/acq/continuous", np.int16, (256,), capacity, 3e4) as w:
            reader = pipeline.attach("fits/acq/continuous")
            try:
                pipeline.RingWriter("greedy/acq/continuous", np.int16, (256,), 20000, 3e4)
            except SharedMemoryFull:
                print("SECOND REFUSED")
            total = 0
            expected = 0
            for lap in range(3):
                for i in range(capacity // 30):
                    value = (lap * capacity // 30 + i) % 30000
                    w.write(np.full((30, 256), value, np.int16))
                    expected += 30
                    chunk = reader.read(timeout_s=1)
                    assert (chunk.data == value).all() and chunk.dropped == 0
                    total += len(chunk.data)
            reader.close()
            print("READ", total, "OF", expected)
        """
    )
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    assert "SECOND REFUSED" in result.stdout
    assert "READ 45000 OF 45000" in result.stdout
