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
request per ``COMMAND_FRAME``), and tells the worker about it once
(``CommandRing``); the worker sleeps on it beside its own rings, so a request
wakes it as fast as a frame does. Replies still come over the socket. A
request too large for a frame (a long waveform), or a client on another
machine, uses the socket.

The fastest command is one prepared in advance: the worker checks and renders
it once, and firing it sends only its handle (a ``FIRE`` frame: nothing to
encode, decode, check or render when it counts)::

    burst = stim.prepare_pulse_train(channel=0, phases=[(-50, 200), (50, 200)])
    for chunk in reader:
        if crossed(chunk):
            stim.fire(burst)    # Accepted, or StimulationRefused (e.g. disarmed)

A worker that restarted has forgotten its prepared stimuli; ``fire`` then
prepares the stimulus again and fires it, once.
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
from pipeline.errors import BusTimeout, RequestFailed, RigpipeError, StimulationRefused
from pipeline.ring import RingWriter

#: Bytes of one encoded request in a command ring frame (a pulse train takes ~100).
COMMAND_PAYLOAD = 2024
#: One frame of a command ring: a header (``COMMAND_HEADER``), then for a ``REQUEST``
#: frame the msgpack bytes of the request (``length`` of them).
COMMAND_FRAME = np.dtype(
    [
        ("kind", "<u4"),  # REQUEST or FIRE
        ("length", "<u4"),  # of the payload (REQUEST)
        ("request_id", "<u8"),  # the reply's
        ("handle", "<u8"),  # the prepared stimulus's (FIRE)
        ("payload", "u1", (COMMAND_PAYLOAD,)),
    ]
)
#: kind, length, request_id, handle: the first bytes of a COMMAND_FRAME.
COMMAND_HEADER = struct.Struct("<IIQQ")
#: A frame's kind: an encoded request in ``payload``.
REQUEST = 1
#: A frame's kind: ``FireStimulus(handle)``, the stimulus the worker prepared as ``handle``.
FIRE = 2
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
        self._frame_bytes = memoryview(self._frame.view(np.uint8))
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
                if self._fill_frame(request, request_id):
                    self._ring.write_bytes(self._frame_bytes)
                    return self._client.reply_to(request_id)
            return self._client.request(request)
        except BusTimeout:
            self._reconnect()
            raise BusTimeout(
                f"worker {self.worker!r} did not answer within {self.timeout_s:g} s at "
                f"{self.endpoint}; is it running? (`rigpipe status`)"
            ) from None

    def _fill_frame(self, request: messages.WorkerRequest, request_id: int) -> bool:
        """Put ``request`` into the command frame; False if it does not fit one."""
        frame = self._frame_bytes  # filled without numpy calls
        if isinstance(request, messages.FireStimulus):
            COMMAND_HEADER.pack_into(frame, 0, FIRE, 0, request_id, request.handle)
            return True
        raw = messages.encode(msgspec.structs.replace(request, request_id=request_id))
        if len(raw) > COMMAND_PAYLOAD:
            return False
        COMMAND_HEADER.pack_into(frame, 0, REQUEST, len(raw), request_id, 0)
        frame[COMMAND_HEADER.size : COMMAND_HEADER.size + len(raw)] = raw
        return True

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


class PreparedStimulus:
    """A stimulus its worker has checked and rendered, to be queued by ``Stimulator.fire``
    (made by ``Stimulator.prepare_pulse_train`` / ``prepare_waveform``)."""

    __slots__ = ("request", "stimulus", "worker")

    def __init__(
        self, worker: str, stimulus: messages.PulseTrain | messages.Waveform, handle: int
    ) -> None:
        self.worker = worker
        self.stimulus = stimulus
        self.request = messages.FireStimulus(worker=worker, handle=handle)

    @property
    def handle(self) -> int:
        """The worker's name for it (a new one once the worker prepared it again)."""
        return self.request.handle

    @handle.setter
    def handle(self, handle: int) -> None:
        self.request = messages.FireStimulus(worker=self.worker, handle=handle)

    def __repr__(self) -> str:
        return f"PreparedStimulus({self.worker!r}, {self.stimulus!r})"


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
        return self._stimulate(
            self._pulse_train(channel, phases, frequency_hz, count, interphase_us)
        )

    def waveform(
        self,
        channel: int,
        samples_ua: Sequence[float],
        sample_rate_hz: float,
        frequency_hz: float = 1.0,
        count: int = 1,
    ) -> messages.Accepted:
        """Queue an arbitrary waveform at the stimulator's output rate (see ``pulse_train``)."""
        return self._stimulate(
            self._waveform(channel, samples_ua, sample_rate_hz, frequency_hz, count)
        )

    def prepare_pulse_train(
        self,
        channel: int,
        phases: Sequence[messages.Phase | tuple[float, float]],
        frequency_hz: float = 1.0,
        count: int = 1,
        interphase_us: float = 0.0,
    ) -> PreparedStimulus:
        """A pulse train the worker checks and renders now, to be queued by :meth:`fire`.

        Raises StimulationRefused (``.reply`` says which limit) if it breaks one; the
        stimulator need not be armed yet. Arguments as for :meth:`pulse_train`."""
        stimulus = self._pulse_train(channel, phases, frequency_hz, count, interphase_us)
        return PreparedStimulus(self.worker, stimulus, self._prepare(stimulus))

    def prepare_waveform(
        self,
        channel: int,
        samples_ua: Sequence[float],
        sample_rate_hz: float,
        frequency_hz: float = 1.0,
        count: int = 1,
    ) -> PreparedStimulus:
        """A waveform prepared for :meth:`fire` (see ``prepare_pulse_train``)."""
        stimulus = self._waveform(channel, samples_ua, sample_rate_hz, frequency_hz, count)
        return PreparedStimulus(self.worker, stimulus, self._prepare(stimulus))

    def fire(self, prepared: PreparedStimulus) -> messages.Accepted:
        """Queue ``prepared``: the fastest command (see the module docstring).

        Returns the ``Accepted`` reply; raises StimulationRefused if the stimulator is
        disarmed. A worker that restarted since ``prepared`` was made has forgotten it:
        it is prepared again (and checked again) and fired, once.
        """
        if prepared.worker != self.worker:
            raise ValueError(
                f"{prepared!r} was prepared by worker {prepared.worker!r}; fire it with that "
                f"worker's Stimulator, not {self.worker!r}'s"
            )
        try:
            return self._stimulate(prepared.request)
        except StimulationRefused as refused:
            if getattr(refused.reply, "limit", "") != "prepared":
                raise
        prepared.handle = self._prepare(prepared.stimulus)
        return self._stimulate(prepared.request)

    def _pulse_train(
        self,
        channel: int,
        phases: Sequence[messages.Phase | tuple[float, float]],
        frequency_hz: float,
        count: int,
        interphase_us: float,
    ) -> messages.PulseTrain:
        return messages.PulseTrain(
            worker=self.worker,
            channel=channel,
            phases=[p if isinstance(p, messages.Phase) else messages.Phase(*p) for p in phases],
            frequency_hz=frequency_hz,
            count=count,
            interphase_us=interphase_us,
        )

    def _waveform(
        self,
        channel: int,
        samples_ua: Sequence[float],
        sample_rate_hz: float,
        frequency_hz: float,
        count: int,
    ) -> messages.Waveform:
        return messages.Waveform(
            worker=self.worker,
            channel=channel,
            samples_ua=[float(x) for x in samples_ua],
            sample_rate_hz=sample_rate_hz,
            frequency_hz=frequency_hz,
            count=count,
        )

    def _prepare(self, stimulus: messages.PulseTrain | messages.Waveform) -> int:
        """The handle of ``stimulus`` prepared by the worker."""
        reply = self.request(messages.PrepareStimulus(worker=self.worker, stimulus=stimulus))
        if isinstance(reply, messages.Prepared):
            return reply.handle
        raise RequestFailed(f"unexpected reply from {self.worker!r}: {reply!r}")

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
