"""The ZAP handler that admits a session's CURVE clients, on a plain thread.

ZeroMQ asks a process's ZAP handler (a REP socket bound at
``inproc://zeromq.zap.01``, ZeroMQ RFC 27) whether each peer that completes
a CURVE handshake with one of its server sockets may talk to it. rigpipe
admits only the client keys of its own sessions.

pyzmq's ``ThreadAuthenticator`` answers those requests from an asyncio loop
in a thread. On Windows that thread gets the default Proactor loop, which
has no ``add_reader``: without tornado installed the thread dies at once,
every handshake then waits for an answer forever, and the rig is deaf (no
status, no heartbeats). The protocol is six frames in and six out, so this
module answers it with a blocking poll on a thread of its own: no asyncio,
no event loop policy, the same code on every OS.
"""

from __future__ import annotations

import atexit
import threading

import zmq
from zmq.utils import z85

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
#: How often the handler's thread looks whether it should end.
POLL_MS = 200
_VERSION = b"1.0"


class ZapHandler:
    """Admits CURVE clients whose public key (Z85) was :meth:`admit`-ted; refuses the rest.

    One per process and ZeroMQ context (the endpoint is fixed by ZeroMQ):
    use :func:`handler`. Non-CURVE mechanisms are refused: rigpipe's TCP
    sockets are all CURVE servers.
    """

    def __init__(self, context: zmq.Context) -> None:
        self._context = context
        self._allowed: set[bytes] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._error: BaseException | None = None
        #: Handshakes answered (admitted, refused), for tests and diagnostics.
        self.admitted = 0
        self.refused = 0
        self._thread = threading.Thread(target=self._serve, name="rigpipe-zap", daemon=True)
        self._thread.start()
        self._bound.wait(10)
        if self._error is not None:
            raise OSError(f"cannot start the CURVE authenticator: {self._error}")

    def admit(self, public_key_z85: str) -> None:
        """Let the client with this public key (Z85 text) in."""
        with self._lock:
            self._allowed.add(public_key_z85.encode())

    def close(self) -> None:
        """End the handler's thread (its socket closes with it)."""
        self._stop.set()
        self._thread.join(2 * POLL_MS / 1000 + 1)

    def _serve(self) -> None:
        try:
            sock = self._context.socket(zmq.REP)
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            self._error = exc
            self._bound.set()
            return
        self._bound.set()
        try:
            while not self._stop.is_set():
                if sock.poll(POLL_MS):
                    sock.send_multipart(self._answer(sock.recv_multipart()))
        finally:
            sock.close(linger=0)

    def _answer(self, request: list[bytes]) -> list[bytes]:
        """The reply to one ZAP request (RFC 27: version, id, domain, address, identity,
        mechanism, credentials...)."""
        if len(request) < 6 or request[0] != _VERSION:
            request_id = request[1] if len(request) > 1 else b""
            return self._reply(request_id, False, "malformed ZAP request")
        request_id, mechanism, credentials = request[1], request[5], request[6:]
        if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
            return self._reply(request_id, False, f"mechanism {mechanism!r} is not allowed")
        key = z85.encode(credentials[0])
        with self._lock:
            allowed = key in self._allowed
        return self._reply(request_id, allowed, "OK" if allowed else "unknown client key")

    def _reply(self, request_id: bytes, allowed: bool, text: str) -> list[bytes]:
        if allowed:
            self.admitted += 1
        else:
            self.refused += 1
        status = b"200" if allowed else b"400"
        return [_VERSION, request_id, status, text.encode(), b"", b""]


_handler: ZapHandler | None = None
_handler_lock = threading.Lock()


def handler() -> ZapHandler:
    """This process's ZAP handler on ``zmq.Context.instance()`` (started on first use)."""
    global _handler
    with _handler_lock:
        if _handler is None:
            _handler = ZapHandler(zmq.Context.instance())
            atexit.register(_handler.close)
        return _handler
