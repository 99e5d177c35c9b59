"""Shared-memory ring buffers: one writer, any number of readers, no locks.

Vocabulary (after the LMAX Disruptor): a *sequence* numbers every frame a
stream has ever published and never wraps; the writer's ``write_cursor`` is
the sequence after its last published frame; frame ``s`` lives in slot
``s % capacity``; each reader keeps its own ``cursor``; a *generation* is one
incarnation of the stream's buffer (a new format, or a restarted writer).
Sequences continue across generations, so a reader's cursor always means the
same frame. The byte layout is drawn in :mod:`pipeline.ring.layout`.

The data plane imports nothing from ``pipeline`` but ``errors``, ``identity`` and ``clock``
(a test checks it): attaching to a ring never loads ZeroMQ. Modules: ``naming``
(stream and shared-memory names), ``shm`` (segments no resource tracker
touches), ``wait`` (futex or polling wake-ups), ``layout`` (the bytes),
``segments`` (listing and sweeping), ``writer``, ``reader`` and ``watch`` (a reader
asking the writer to wake it only for chunks that may cross a threshold).
"""

from pipeline.ring.reader import Chunk, ChunkView, RingReader, attach, wait_any
from pipeline.ring.watch import ThresholdWatch
from pipeline.ring.writer import RingWriter

__all__ = ["Chunk", "ChunkView", "RingReader", "RingWriter", "ThresholdWatch", "attach", "wait_any"]
