"""Talk to one worker directly: a closed loop run by another process.

A request normally travels client -> supervisor -> worker and back, two hops.
A worker kind with ``Worker.direct`` also takes its requests on its own socket
(listed under ``direct`` in the discovery file), so a decoder that reads
``acq/continuous`` and decides to stimulate reaches the stimulator in one hop::

    import pipeline
    from pipeline.control.messages import Phase

    stim = pipeline.stimulator("stim")              # the running rig's worker "stim"
    stim.arm()
    reader = pipeline.attach("acq/continuous")
    for chunk in reader:
        if crossed(chunk):
            stim.pulse_train(channel=0, phases=[Phase(-50, 200), Phase(50, 200)])

Nothing is skipped but the supervisor's forwarding: the worker runs every
safety check, answers ``Accepted`` or raises :class:`~pipeline.errors.StimulationRefused`
here, and publishes the command through the supervisor as before, so the
recorder keeps it. Same security as the control plane: ``ipc://`` in the
session's 0700 runtime directory, or CURVE over TCP with the session's keys.

On the rig's machine a request does not even cross a socket: the client makes
a *command ring* (a shared-memory ring it writes, 0600 like every ring, one
encoded request per ``COMMAND_FRAME``), and tells the worker about it once
(``CommandRing``); the worker sleeps on it beside its own rings, so a request
wakes it as fast as a frame does. Replies still come over the socket. A
request too large for a frame (a long waveform), or a client on another
machine, uses the socket.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Sequence

import msgspec
import numpy as np

from pipeline.control import messages, session
from pipeline.control.bus import Client, Endpoints
from pipeline.errors import BusTimeout, RequestFailed, RigpipeError
from pipeline.ring import RingWriter

#: Bytes of one encoded request in a command ring frame (a pulse train takes ~100).
COMMAND_PAYLOAD = 2044
#: One frame of a command ring: the request's length, then its msgpack bytes.
COMMAND_FRAME = np.dtype([("length", "<u4"), ("payload", "u1", (COMMAND_PAYLOAD,))])
#: Frames a command ring holds: requests sent and not yet read by the worker.
COMMAND_RING_FRAMES = 64

_ring_numbers = itertools.count()


class WorkerClient:
    """Requests to one worker's own socket (``Worker.direct``) of a running rig."""

    def __init__(
        self,
        worker: str,
        session_name: str | None = None,
        timeout_s: float = 2.0,
        shared_memory: bool = True,
    ):
        self.worker = worker
        self.timeout_s = timeout_s
        self._session = session_name
        self._shared_memory = shared_memory
        self._client = self._connect()
        self._ring: RingWriter | None = None
        self._ring_retry = False  # the worker did not answer when told of the ring
        self._frame = np.zeros(1, COMMAND_FRAME)
        self._frame_bytes = memoryview(self._frame.view(np.uint8))  # filled without numpy calls
        if shared_memory:
            self._ring = self._open_ring()

    @property
    def command_ring(self) -> str:
        """The stream of this client's command ring ("" when requests use the socket)."""
        return "" if self._ring is None else self._ring.stream

    def _open_ring(self) -> RingWriter | None:
        """A command ring the worker has agreed to read, or None (then: the socket)."""
        name = f"{self._session}/client-{os.getpid()}-{next(_ring_numbers)}/{self.worker}"
        try:
            ring = RingWriter(name, COMMAND_FRAME, (), COMMAND_RING_FRAMES, 0.0)
        except (OSError, RigpipeError, ValueError):
            return None  # no shared memory here: the socket does it all
        try:
            self._client.request(messages.CommandRing(worker=self.worker, stream=name))
        except RequestFailed:  # e.g. the worker runs on another machine: the socket then
            ring.close()
            return None
        except BusTimeout:  # a worker restarting: try again with the next request
            ring.close()
            self._ring_retry = True
            return None
        return ring

    def _connect(self) -> Client:
        discovery = session.find(self._session)
        endpoint = discovery.direct.get(self.worker)
        if endpoint is None:
            known = ", ".join(sorted(discovery.direct)) or "none"
            raise RequestFailed(
                f"rig {discovery.session!r} has no worker {self.worker!r} taking direct "
                f"requests (workers that do: {known}); check the name with `rigpipe status`"
            )
        self._session = discovery.session
        self.endpoint = endpoint
        keys = discovery.endpoints.keys if endpoint.startswith("tcp://") else ""
        return Client(Endpoints(endpoint, "", keys), self.timeout_s)

    def request(self, request: messages.WorkerRequest) -> messages.Message:
        """Send ``request`` (its ``worker`` set to this one) and return the reply.

        Raises RequestFailed for an Error reply, and BusTimeout if the worker does
        not answer (after looking the worker up again: a restarted worker on TCP
        listens on a new port, and reads no command ring until told again).
        """
        if request.worker != self.worker:
            request = msgspec.structs.replace(request, worker=self.worker)
        try:
            if self._ring is None and self._ring_retry:  # the worker was away: ask again
                self._ring_retry = False
                self._ring = self._open_ring()
            if self._ring is not None:
                request_id = self._client.next_request_id()
                raw = messages.encode(msgspec.structs.replace(request, request_id=request_id))
                if len(raw) <= COMMAND_PAYLOAD:
                    struct.pack_into("<I", self._frame_bytes, 0, len(raw))  # "length"
                    self._frame_bytes[4 : 4 + len(raw)] = raw  # "payload"
                    self._ring.write(self._frame)
                    return self._client.reply_to(request_id)
            return self._client.request(request)
        except BusTimeout:
            self._reconnect()
            raise BusTimeout(
                f"worker {self.worker!r} did not answer within {self.timeout_s:g} s at "
                f"{self.endpoint}; is it running? (`rigpipe status`)"
            ) from None

    def _reconnect(self) -> None:
        self._close()
        self._client = self._connect()
        if self._shared_memory:
            self._ring = self._open_ring()

    def _close(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        self._client.close()

    def close(self) -> None:
        """Close the socket, and end and unlink the command ring."""
        self._close()

    def __enter__(self) -> WorkerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Stimulator(WorkerClient):
    """A stimulation worker of a running rig, reached directly (see the module docstring)."""

    def pulse_train(
        self,
        channel: int,
        phases: Sequence[messages.Phase | tuple[float, float]],
        frequency_hz: float = 1.0,
        count: int = 1,
        interphase_us: float = 0.0,
    ) -> messages.Accepted:
        """Queue a pulse train; the ``Accepted`` reply names its ``command_id``.

        ``phases``: ``(amplitude_ua, duration_us)`` pairs, cathodic first as a rule.
        Raises StimulationRefused (``.reply`` says which limit) if the worker refused it.
        """
        command = messages.PulseTrain(
            worker=self.worker,
            channel=channel,
            phases=[p if isinstance(p, messages.Phase) else messages.Phase(*p) for p in phases],
            frequency_hz=frequency_hz,
            count=count,
            interphase_us=interphase_us,
        )
        return self._stimulate(command)

    def waveform(
        self,
        channel: int,
        samples_ua: Sequence[float],
        sample_rate_hz: float,
        frequency_hz: float = 1.0,
        count: int = 1,
    ) -> messages.Accepted:
        """Queue an arbitrary waveform at the stimulator's output rate (see ``pulse_train``)."""
        command = messages.Waveform(
            worker=self.worker,
            channel=channel,
            samples_ua=[float(x) for x in samples_ua],
            sample_rate_hz=sample_rate_hz,
            frequency_hz=frequency_hz,
            count=count,
        )
        return self._stimulate(command)

    def stop(self, channel: int | None = None) -> str:
        """Silence ``channel`` (every channel if None) within one output buffer period."""
        return self._ok(messages.StopStimulation(worker=self.worker, channel=channel))

    def arm(self) -> str:
        return self._ok(messages.Arm(worker=self.worker))

    def disarm(self) -> str:
        """Refuse every stimulus from now on and silence every channel."""
        return self._ok(messages.Disarm(worker=self.worker))

    def _stimulate(self, command: messages.WorkerRequest) -> messages.Accepted:
        reply = self.request(command)  # a Refused reply raises StimulationRefused
        if isinstance(reply, messages.Accepted):
            return reply
        raise RequestFailed(f"unexpected reply from {self.worker!r}: {reply!r}")

    def _ok(self, request: messages.WorkerRequest) -> str:
        reply = self.request(request)
        return getattr(reply, "detail", "")


def stimulator(worker: str = "stim", session_name: str | None = None) -> Stimulator:
    """The stimulation worker ``worker`` of the running rig (or of ``session_name``)."""
    return Stimulator(worker, session_name)
