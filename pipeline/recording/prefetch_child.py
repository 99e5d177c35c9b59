"""The prefetch process: ``python -m pipeline.recording.prefetch_child`` (see ``prefetch``).

It rebuilds the caller's view from its spec, maps the caller's shared memory
and reads the blocks it is asked for into their slots. A module of its own so
that ``views`` can use ``prefetch`` without ``prefetch`` importing ``views``.
"""

from __future__ import annotations

import os
import pickle
import sys
from typing import IO, Any

import numpy as np

from pipeline.recording.opened import Files
from pipeline.recording.prefetch import Slots
from pipeline.recording.views import StreamView
from pipeline.ring import shm


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """The prefetch process: read the blocks the parent asks for into its slots."""

    def reply(*message: Any) -> None:
        pickle.dump(message, replies)
        replies.flush()

    setup = pickle.load(requests)
    try:
        segment = shm.Segment.attach(setup["segment"])
    except OSError as exc:
        reply("error", None, f"cannot map the shared memory {setup['segment']}: {exc}")
        return
    files = Files()
    dtype = np.dtype(setup["dtype"])
    slots = Slots(segment, setup["channels"], setup["frames"], dtype)
    try:
        view = StreamView.from_spec(setup["view"], files)
        reply("ready")
        while True:
            try:
                request = pickle.load(requests)
            except EOFError:
                return  # the parent is gone
            if request is None:
                return
            slot, start, count = request
            try:
                data, stamps = slots.arrays(slot, count)
                view.fill_block(start, count, data, stamps, setup["scaled"])
            except Exception as exc:  # sent to the parent, which raises it there
                reply("error", slot, f"frames {start}..{start + count}: {exc!r}")
                return
            reply("done", slot)
    finally:
        files.close()
        segment.close()


def main() -> None:
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout = sys.stderr  # nothing else may write into the reply pipe
    serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
