"""The ``Worker`` base class: what a worker kind overrides, and what it calls.

A worker kind is a class with ``setup()``, ``step()`` (or ``run()``) and
``teardown()``; its module names it ``WORKER``. Everything else (the bus,
heartbeats, ``Stop`` and ``SetParameter``, signals, leaving when the supervisor is
gone) is :class:`~pipeline.worker.service.Service`'s, which a kind never sees::

    class Counter(Worker):
        Settings = CounterSettings            # a pipeline.settings.Settings of its parameters

        @classmethod
        def outputs(cls, settings):           # ports it writes: "<worker>/<port>"
            return ["count"]

        def setup(self):
            self.out = self.writer("count", np.int64, (), 1024, 10.0)

        def step(self):
            self.out.write(np.arange(1))
            self.wait_until(clock.now_s() + 0.1)   # sleeps, serving the bus

    WORKER = Counter
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import msgspec
import numpy as np

from pipeline.control import messages
from pipeline.ring import RingReader, RingWriter, ThresholdWatch, attach
from pipeline.settings import NoSettings
from pipeline.worker.service import SERVICE_INTERVAL_S, Service
from pipeline.worker.spec import WorkerSpec


class Worker:
    """Base class of every worker kind. Subclasses write the domain logic only."""

    # == override these =========================================================================
    #: The worker's ``[workers.parameters]`` schema; unknown keys are refused.
    Settings: ClassVar[type[msgspec.Struct]] = NoSettings
    #: Parameters that ``rigpipe set`` / ``SetParameter`` may change while it runs (a kind
    #: may narrow it per instance in ``setup``: acquisition takes its source's).
    settable: frozenset[str] = frozenset()
    #: How often ``service()`` polls the bus at most; a worker that must answer within
    #: a millisecond (the stimulator) lowers it.
    service_interval_s: ClassVar[float] = SERVICE_INTERVAL_S
    #: Waits of about 1 ms while the worker lives (Windows: ``timeBeginPeriod(1)``; see
    #: :mod:`pipeline.host.timer`), for kinds that pace or refill every millisecond.
    needs_fine_timer: ClassVar[bool] = False
    #: Take requests (``on_request``) on the worker's own socket too, not only through
    #: the supervisor: one hop instead of two, for a closed loop run by another process.
    #: Its endpoint is in the discovery file (``direct``); see :mod:`pipeline.control.direct`.
    direct: ClassVar[bool] = False

    @classmethod
    def settings_type(cls, parameters: dict[str, Any]) -> type[msgspec.Struct]:
        """The Struct that ``parameters`` must match (a kind with variants picks one here).

        Raise ValueError naming the allowed choices for a selection that does not exist.
        """
        return cls.Settings

    @classmethod
    def outputs(cls, settings: Any) -> list[str]:
        """Ports this worker writes; stream ``<session>/<worker>/<port>`` each."""
        return []

    @classmethod
    def inputs(cls, settings: Any) -> list[str]:
        """Session-relative streams (``acq/continuous``) this worker reads."""
        return []

    @classmethod
    def check(cls, settings: Any) -> None:
        """Raise ValueError for settings that are valid field by field but not together."""

    @classmethod
    def after_session(cls, spec: WorkerSpec, settings: Any) -> list[str]:
        """Run by the supervisor after every worker has exited; say what was done.

        For what a worker that died could not finish itself (the recorder
        repairs a recording it left open).
        """
        return []

    def setup(self) -> None:
        """Open devices, create rings. The worker counts as ready when this returns."""

    def step(self) -> None:
        """One unit of work; called until the worker is asked to stop."""
        raise NotImplementedError(f"{type(self).__name__} must define step() or run()")

    def run(self) -> None:
        """Call :meth:`step` and serve the bus until asked to stop."""
        while not self.stopping:
            self.step()
            self.service()

    def teardown(self) -> None:
        """Close what ``setup`` opened. Runs even when setup or run raised."""

    def on_parameter(self, name: str, value: Any) -> None:
        """Called after ``self.settings`` took a new value for ``name``. Raise ValueError
        (or a RigpipeError) if it cannot be acted on: the setting is undone and the
        request answered with the reason."""

    def on_request(self, request: messages.WorkerRequest) -> messages.Message:
        """Answer a request forwarded to this worker (stimulation commands...); the reply's
        ``request_id`` is filled in by the caller."""
        tag = type(request).__struct_config__.tag
        return messages.Error(
            text=f"worker {self.name!r} ({type(self).__name__}) does not handle {tag!r} requests"
        )

    # == call these ==============================================================================
    def __init__(self, spec: WorkerSpec, settings: Any) -> None:
        self.spec = spec
        self.settings = settings
        self.name = spec.name
        self.log = logging.getLogger(f"rigpipe.{spec.name}")
        #: Numbers shown by ``rigpipe status`` (chunks, late chunks, drift...).
        self.counters: dict[str, float] = {}
        #: One line shown by ``rigpipe status`` next to the worker ("recording to ...", an error).
        self.note = ""
        self._service = Service(self)

    @classmethod
    def parse_settings(cls, parameters: dict[str, Any]) -> Any:
        """``parameters`` validated into the kind's settings (msgspec errors propagate)."""
        return msgspec.convert(parameters, cls.settings_type(parameters), strict=True)

    def stream(self, port: str) -> str:
        """Full name of this worker's stream ``port``: ``<session>/<worker>/<port>``."""
        return f"{self.spec.session}/{self.name}/{port}"

    def writer(
        self,
        port: str,
        dtype: np.typing.DTypeLike,
        frame_shape: int | Sequence[int],
        capacity: int,
        sample_rate: float,
        descriptor: dict[str, Any] | None = None,
    ) -> RingWriter:
        """A :class:`RingWriter` on this worker's stream ``port`` (taking over a dead one's).

        If another program unlinks its segments, the writer re-creates them and
        the next heartbeat reports it as a warning (``relinks`` in status).
        """
        writer = RingWriter(
            self.stream(port), dtype, frame_shape, capacity, sample_rate, descriptor
        )
        self._service.writers[writer] = 0
        return writer

    def reader(
        self,
        stream: str,
        *,
        from_now: bool = False,
        cursor: int | None = None,
        stream_id: int | None = None,
    ) -> RingReader:
        """Attach to session stream ``stream`` (``acq/continuous``) as a lossless reader.

        Its cursor is reported in every heartbeat, so ``rigpipe status`` shows
        its lag. ``cursor`` resumes at a sequence number of stream ``stream_id``
        (see ``attach``).
        """
        reader = attach(
            f"{self.spec.session}/{stream}", from_now=from_now, cursor=cursor, stream_id=stream_id
        )
        self.close_reader(stream)
        self._service.readers[stream] = reader
        return reader

    @property
    def readers(self) -> dict[str, RingReader]:
        """The readers :meth:`reader` opened, by session stream (read-only use)."""
        return self._service.readers

    def close_reader(self, stream: str) -> None:
        """Detach the reader of ``stream`` (it stops counting in status)."""
        reader = self._service.readers.pop(stream, None)
        if reader is not None:
            reader.close()

    def set_parameter(self, name: str, value: Any) -> messages.Message:
        """Change a settable parameter as ``rigpipe set`` would (checked, then
        :meth:`on_parameter`): ``Ok``, or an ``Error`` saying why nothing changed."""
        return self._service.set_parameter(0, name, value)

    def publish(self, event: messages.WorkerEvent) -> None:
        """Send ``event`` to the supervisor, which publishes it to the session (and so to
        the recorder)."""
        self._service.send(event)

    def report(self, text: str, level: str = "warning") -> None:
        """Publish ``text`` as a session event (and log it)."""
        self._service.report(text, level)

    def wait_until(self, deadline: float) -> None:
        """Serve the bus, then sleep until ``deadline`` (monotonic seconds) or a stop.

        A sleep of up to ``PACING_S`` (a source waiting for its next chunk's time,
        a thousand times a second) is one plain sleep after :meth:`service`, which
        serves the bus every ``service_interval_s`` as in a busy step loop. A
        longer one is :meth:`wait`'s, which wakes for a message at once.
        """
        self._service.wait_until(deadline)

    def wait(
        self, readers: Sequence[RingReader | ThresholdWatch] = (), deadline: float | None = None
    ) -> bool:
        """Serve the bus, then sleep until one of ``readers`` has frames (or its stream
        changed: a new generation, an end; the next read says which), a message for
        this worker arrives, or ``deadline`` (monotonic seconds) passes, whichever is
        first. True if a reader has something to read. A
        :class:`~pipeline.ring.watch.ThresholdWatch` among them wakes the wait only
        for chunks that may cross its threshold.

        It never polls: on a ring it sleeps in the ring's own wait while a
        :class:`~pipeline.control.doorbell.Doorbell` watches the sockets; with no
        ring it sleeps in the sockets' poll (the last 2 ms before ``deadline`` in
        ``time.sleep``, for pacing). On several rings it sleeps on all of them
        at once (:func:`~pipeline.ring.wait_any`).
        """
        return self._service.wait(readers, deadline)

    def service(self) -> None:
        """Heartbeat when due, handle waiting commands, notice a vanished supervisor
        (a worker with its own busy loop calls it every turn; it costs nothing when
        nothing is due)."""
        self._service.service()

    def stop(self) -> None:
        """End the run loop after this step: the work is done (the worker exits 0)."""
        self._service.stopping = True

    @property
    def stopping(self) -> bool:
        """True once the worker was asked to stop (Stop message, signal, supervisor gone)."""
        return self._service.stopping

    def lose_supervisor(self, why: str) -> None:
        """Stop because the supervisor is gone (``why``); the worker exits non-zero."""
        self._service.lose_supervisor(why)

    @property
    def supervisor_lost(self) -> str:
        """Why the worker stopped without being asked: its supervisor is gone ("" if not)."""
        return self._service.supervisor_lost

    def main(self, inherited_scheduling: str = "") -> int:
        """Connect, set up, run, tear down; the process exit code (see ``Service.main``)."""
        return self._service.main(inherited_scheduling)
