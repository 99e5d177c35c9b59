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
import logging
import os
import struct
from collections.abc import Callable

import msgspec
import numpy as np

from pipeline.control import messages, session
from pipeline.control.bus import Client, Endpoints, Router
from pipeline.errors import BusTimeout, EndOfStream, ProtocolError, RequestFailed, RigpipeError
from pipeline.ring import RingReader, RingWriter, attach, segments

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
#: A worker takes requests from at most this many clients' command rings (CommandRing).
MAX_COMMAND_RINGS = 16

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
        self._frame_bytes = self._frame.view(np.uint8).data
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


class CommandServer:
    """The worker's side of direct requests: its own socket (``router``) and its clients'
    command rings (at most :data:`MAX_COMMAND_RINGS`), each request answered over the
    socket by ``answer`` (the worker's ``on_request``, exceptions already turned into
    an ``Error``).
    """

    def __init__(
        self,
        session_name: str,
        worker: str,
        router: Router,
        answer: Callable[[messages.WorkerRequest], messages.Message],
        counters: dict[str, float],
        log: logging.Logger,
    ) -> None:
        self.session = session_name
        self.worker = worker
        self._router = router
        self._answer = answer
        self._counters = counters
        self._log = log
        self._rings: dict[str, tuple[RingReader, bytes]] = {}  # stream -> (reader, its peer)

    def serve(self) -> None:
        """Answer every request waiting on the socket and in the command rings."""
        for peer, request in self._router.receive(0):
            if isinstance(request, messages.CommandRing):
                reply = self._not_mine(request) or self.open(peer, request)
                self._router.send(peer, reply)
            else:
                self._router.send(peer, self.answer(request))
        self.take()

    def answer(self, request: messages.Message | ProtocolError) -> messages.Message:
        """The reply to a request that came to the worker's own socket or a command ring."""
        if isinstance(request, ProtocolError):
            self._counters["bad_requests"] = self._counters.get("bad_requests", 0) + 1
            return messages.Error(text=f"malformed request to {self.worker}: {request}")
        if not isinstance(request, messages.WorkerRequest):
            tag = type(request).__struct_config__.tag
            return messages.Error(
                request_id=getattr(request, "request_id", 0),
                text=f"{self.worker}'s own socket takes worker requests only, not {tag!r}; "
                "send the others to the supervisor",
            )
        return self._not_mine(request) or self._answer(request)

    def _not_mine(self, request: messages.WorkerRequest) -> messages.Error | None:
        """The refusal of a request on this worker's own socket meant for another worker."""
        if request.worker == self.worker:
            return None
        return messages.Error(
            request_id=request.request_id,
            text=f"this is worker {self.worker!r}'s socket, but the request is for "
            f"{request.worker!r}; nothing was done",
        )

    @property
    def readers(self) -> list[RingReader]:
        """The rings being read, to sleep on beside the worker's own."""
        return [reader for reader, _ in self._rings.values()]

    def open(self, peer: bytes, request: messages.CommandRing) -> messages.Message:
        """Read the client's ring ``request.stream`` too, answering ``peer``."""

        def refuse(text: str) -> messages.Error:
            return messages.Error(request_id=request.request_id, text=text)

        stream = request.stream
        if not stream.startswith(f"{self.session}/"):
            return refuse(f"a command ring must be a stream of session {self.session!r}")
        if stream not in self._rings and len(self._rings) >= MAX_COMMAND_RINGS:
            return refuse(f"{self.worker} already reads {MAX_COMMAND_RINGS} command rings")
        try:
            reader = attach(stream, from_now=True)
        except RigpipeError as exc:
            return refuse(f"cannot read command ring {stream}: {exc}")
        if reader.dtype != COMMAND_FRAME or reader.frame_shape != ():
            reader.close()
            return refuse(f"{stream} is not a command ring (frames of {COMMAND_FRAME})")
        previous = self._rings.pop(stream, None)
        if previous is not None:
            previous[0].close()
        self._rings[stream] = (reader, peer)
        return messages.Ok(request_id=request.request_id, detail=f"{self.worker} reads {stream}")

    def drop_dead(self) -> None:
        """Forget the rings of clients that died without closing them, and remove their
        segments (a stream of this session whose writer is gone: no one else's)."""
        for stream, (reader, _) in list(self._rings.items()):
            try:
                alive = reader.writer_alive
            except RigpipeError:
                alive = False
            if not alive:
                reader.close()
                del self._rings[stream]
                segments.sweep(streams=[stream])
                self._log.info("the client of command ring %s is gone; removed it", stream)

    def take(self) -> None:
        """Answer every request waiting in the clients' rings."""
        for stream, (reader, peer) in list(self._rings.items()):
            try:
                chunk = reader.read(timeout_s=0)
            except (EndOfStream, RigpipeError):  # the client closed it, or it is gone
                reader.close()
                del self._rings[stream]
                continue
            if chunk.dropped:  # never answered: the client's requests time out
                self._counters["commands_lost"] = self._counters.get("commands_lost", 0) + 1
            frames = chunk.data.tobytes()  # COMMAND_FRAMEs (one numpy call: ~20 µs less cold)
            for at in range(0, len(frames), COMMAND_FRAME.itemsize):
                self._router.send(peer, self.answer(self._decode(frames, at)))

    def _decode(self, frames: bytes, at: int) -> messages.Message | ProtocolError:
        kind, length, request_id, handle = COMMAND_HEADER.unpack_from(frames, at)
        if kind == FIRE:  # built here: nothing to decode
            return messages.FireStimulus(worker=self.worker, handle=handle, request_id=request_id)
        try:
            if kind != REQUEST:
                raise ProtocolError(f"a command frame of unknown kind {kind}")
            if length > COMMAND_PAYLOAD:
                raise ProtocolError(f"a command frame says {length} bytes")
            payload = at + COMMAND_HEADER.size
            return messages.decode(frames[payload : payload + length])
        except ProtocolError as exc:
            return exc

    def close(self) -> None:
        for reader, _ in self._rings.values():
            reader.close()
        self._rings.clear()
