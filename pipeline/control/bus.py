"""ZeroMQ sockets of the control plane.

The supervisor owns a :class:`Server`: a ROUTER for requests and replies and
a PUB for events. Workers and outside programs use a :class:`Client` (a
DEALER) and a :class:`Subscriber` (a SUB). Endpoints are ``ipc://`` sockets in
the session's runtime directory, or TCP on loopback where the config asks for
it (or where ``ipc://`` is unavailable, or ``RIGPIPE_TRANSPORT=tcp`` forces it).

Who may talk to a rig: over ``ipc://``, whoever can open the sockets in the
0700 runtime directory (its user). Over TCP, ZeroMQ's CURVE: the supervisor
makes a server and a client key pair per session and writes them, 0600, to
``curve-keys.json`` in that directory (``Endpoints.keys`` names the file).
Both sockets are CURVE servers, and a ZAP handler (:mod:`pipeline.control.zap`,
no asyncio) admits only the session's client key; a client proves it can read
the file. A peer without the keys gets nothing: its handshake is refused, and
its requests time out. On another machine, copy the file and set ``RIGPIPE_CURVE_KEYS`` to it.

Nothing that arrives on the ROUTER can raise out of :meth:`Server.receive`:
a malformed frame comes back as a :class:`~pipeline.errors.ProtocolError`
next to the sender's identity, so the supervisor can answer and count it.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import msgspec
import zmq

from pipeline.control import messages, zap
from pipeline.control.messages import Message
from pipeline.errors import BusTimeout, ProtocolError, RequestFailed, StimulationRefused
from pipeline.host import clock
from pipeline.host.files import atomic_replace

#: Longest ``ipc://`` path libzmq accepts on Linux (sun_path is 108 bytes with the NUL).
MAX_IPC_PATH = 107
_TRANSPORTS = ("auto", "ipc", "tcp")
_POLLIN = int(zmq.POLLIN)  # a plain int: `&` on the enum costs more than the syscall


class Endpoints(msgspec.Struct, frozen=True):
    """Where a session's supervisor listens: ``control`` (ROUTER) and ``events`` (PUB);
    ``keys``: the CURVE key file, when the endpoints are TCP."""

    control: str
    events: str
    keys: str = ""


KEYS_FILE = "curve-keys.json"
KEYS_ENV = "RIGPIPE_CURVE_KEYS"


class CurveKeys(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A session's CURVE key pairs (Z85 text)."""

    server_public: str
    server_secret: str
    client_public: str
    client_secret: str


def require_curve() -> None:
    if not zmq.has("curve"):
        raise OSError(
            "this pyzmq has no CURVE security (libzmq built without libsodium), which TCP "
            "control needs: pip install --force-reinstall pyzmq (PyPI's wheels include it), "
            'or use transport = "ipc"'
        )


def make_keys(directory: Path, name: str = KEYS_FILE) -> Path:
    """New key pairs for a session, written 0600 to ``directory/name``; the file's path."""
    require_curve()
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    keys = CurveKeys(
        server_public.decode(),
        server_secret.decode(),
        client_public.decode(),
        client_secret.decode(),
    )
    path = directory / name
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(msgspec.json.encode(keys))
    atomic_replace(temporary, path)
    return path


def session_keys(runtime_dir: Path, keys_file: str = "") -> Path:
    """The CURVE key file of a TCP session: new keys in its runtime directory at each
    start, or, when the config names a ``keys_file``, that file: made on first use and
    kept across starts, so a copy on another machine stays valid."""
    if not keys_file:
        return make_keys(runtime_dir)
    path = Path(keys_file).expanduser().resolve()
    if path.exists():
        check_key_file(path)
        return path
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return make_keys(path.parent, path.name)


def check_key_file(path: Path) -> CurveKeys:
    """The keys in ``path``; OSError (one line) unless it is a rigpipe CURVE key file that
    only its owner, this user, can read."""
    info = path.stat()
    getuid = getattr(os, "getuid", None)
    if getuid is not None and info.st_uid != getuid():
        raise OSError(f"{path} belongs to uid {info.st_uid}, not to this user (uid {getuid()})")
    if os.name == "posix" and info.st_mode & 0o077:
        raise OSError(
            f"{path} can be read by other users (mode {info.st_mode & 0o777:o}): anyone who "
            f"reads it can control the rig; chmod 600 {path}"
        )
    try:
        keys = msgspec.json.decode(path.read_bytes(), type=CurveKeys)
        pairs = ((keys.server_public, keys.server_secret), (keys.client_public, keys.client_secret))
        matched = all(zmq.curve_public(sec.encode()).decode() == pub for pub, sec in pairs)
    except (msgspec.DecodeError, ValueError, zmq.ZMQError) as exc:
        raise OSError(f"{path} is not a rigpipe CURVE key file: {exc}") from None
    if not matched:
        raise OSError(f"{path} is not a rigpipe CURVE key file: a public key does not match")
    return keys


def load_keys(endpoints: Endpoints) -> CurveKeys | None:
    """The CURVE keys for ``endpoints`` (``RIGPIPE_CURVE_KEYS`` overrides), None for ipc."""
    path = os.environ.get(KEYS_ENV) or endpoints.keys
    if not path or not endpoints.control.startswith("tcp://"):
        return None
    require_curve()
    try:
        return msgspec.json.decode(Path(path).read_bytes(), type=CurveKeys)
    except FileNotFoundError:
        raise OSError(
            f"the rig's CURVE key file {path} is missing; on another machine copy "
            f"{KEYS_FILE} from the rig's runtime directory and set {KEYS_ENV} to it"
        ) from None
    except PermissionError:
        raise OSError(
            f"cannot read the rig's CURVE key file {path}: only the user running the rig can"
        ) from None
    except (OSError, msgspec.DecodeError) as exc:
        raise OSError(f"{path} is not a rigpipe CURVE key file: {exc}") from None


def _admit_client(public: str) -> None:
    """Start this process's ZAP handler (once) and admit ``public``."""
    zap.handler().admit(public)


def _secure_server(sock: zmq.Socket, keys: CurveKeys) -> None:
    sock.curve_secretkey = keys.server_secret.encode()
    sock.curve_publickey = keys.server_public.encode()
    sock.curve_server = True


def _secure_client(sock: zmq.Socket, keys: CurveKeys | None) -> None:
    if keys is not None:
        sock.curve_serverkey = keys.server_public.encode()
        sock.curve_publickey = keys.client_public.encode()
        sock.curve_secretkey = keys.client_secret.encode()


def transport_from_env(configured: str) -> str:
    """The transport to use: ``RIGPIPE_TRANSPORT`` overrides the config; ``auto`` picks one."""
    chosen = os.environ.get("RIGPIPE_TRANSPORT", configured) or "auto"
    if chosen not in _TRANSPORTS:
        raise ValueError(f"RIGPIPE_TRANSPORT={chosen!r}; use one of {', '.join(_TRANSPORTS)}")
    if chosen == "auto":
        return "ipc" if zmq.has("ipc") and os.name == "posix" else "tcp"
    return chosen


def ipc_endpoints(runtime_dir: Path) -> Endpoints:
    """``ipc://`` endpoints inside ``runtime_dir``; ValueError if the path is too long."""
    control = runtime_dir / "control.sock"
    if len(str(control)) > MAX_IPC_PATH - 2:
        raise ValueError(
            f"runtime directory {str(runtime_dir)!r} is too long for an ipc:// socket "
            f"(at most {MAX_IPC_PATH - 14} characters); choose a shorter session.runtime_dir"
        )
    return Endpoints(f"ipc://{control}", f"ipc://{runtime_dir / 'events.sock'}")


def _socket(kind: int) -> zmq.Socket:
    sock: zmq.Socket = zmq.Context.instance().socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    return sock


def _bind(sock: zmq.Socket, endpoint: str) -> str:
    """Bind; a TCP port 0 means any free port. Returns the endpoint actually bound."""
    if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
        port = sock.bind_to_random_port(endpoint.rsplit(":", 1)[0])
        return f"{endpoint.rsplit(':', 1)[0]}:{port}"
    sock.bind(endpoint)
    return endpoint


class Router:
    """A bound ROUTER: requests in with their sender, replies out.

    The supervisor's control socket, and a worker's own socket for requests
    that skip the supervisor (:func:`direct_endpoint`). With ``keys`` it is a
    CURVE server that admits only the session's client key.
    """

    def __init__(self, endpoint: str, keys: CurveKeys | None) -> None:
        self.socket = _socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a reply to a gone peer raises
        if endpoint.startswith("tcp://") and keys is None:
            self.close()
            raise OSError("TCP control needs CURVE keys (bus.make_keys); refusing to listen open")
        if keys is not None:
            _admit_client(keys.client_public)
            _secure_server(self.socket, keys)
        try:
            self.endpoint = _bind(self.socket, endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise OSError(f"cannot bind {endpoint}: {exc}") from None

    def pending(self) -> bool:
        """True if a message waits (cheap; also re-arms the socket's ``zmq.FD``)."""
        return bool(int(self.socket.getsockopt(zmq.EVENTS)) & _POLLIN)

    def receive(self, timeout_s: float) -> list[tuple[bytes, Message | ProtocolError]]:
        """Every message waiting (after up to ``timeout_s`` for the first), with its sender."""
        received: list[tuple[bytes, Message | ProtocolError]] = []
        if not self.socket.poll(max(0, int(timeout_s * 1000))):
            return received
        while len(received) < 1000:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            identity, payload = frames[0], frames[1:]
            if len(payload) != 1:
                error = ProtocolError(
                    f"expected one message frame after the identity, got {len(payload)}"
                )
                received.append((identity, error))
                continue
            try:
                received.append((identity, messages.decode(payload[0])))
            except ProtocolError as exc:
                received.append((identity, exc))
        return received

    def send(self, identity: bytes, message: Message) -> bool:
        """Send to one peer; False if that peer is gone or not keeping up."""
        try:
            self.socket.send_multipart([identity, messages.encode(message)], zmq.NOBLOCK)
        except zmq.ZMQError:  # EHOSTUNREACH (peer gone) or EAGAIN (its queue is full)
            return False
        return True

    def close(self) -> None:
        self.socket.close(linger=0)  # libzmq removes an ipc:// socket file it bound


def direct_endpoint(endpoints: Endpoints, worker: str) -> str:
    """Where worker ``worker`` of the session at ``endpoints`` takes requests directly.

    ``ipc://`` beside the supervisor's socket (the 0700 runtime directory), or a
    free TCP port on the supervisor's host (CURVE, the session's keys).
    """
    if endpoints.control.startswith("ipc://"):
        directory = Path(endpoints.control.removeprefix("ipc://")).parent
        digest = hashlib.blake2s(worker.encode(), digest_size=4).hexdigest()
        path = directory / f"direct-{digest}.sock"
        if len(str(path)) > MAX_IPC_PATH:
            raise ValueError(
                f"runtime directory {str(directory)!r} is too long for worker sockets "
                f"(at most {MAX_IPC_PATH - 20} characters); choose a shorter session.runtime_dir"
            )
        return f"ipc://{path}"
    host = endpoints.control.removeprefix("tcp://").rsplit(":", 1)[0]
    return f"tcp://{host}:0"


class Server:
    """The supervisor's ROUTER (requests, replies) and PUB (events)."""

    def __init__(self, endpoints: Endpoints) -> None:
        keys = load_keys(endpoints)
        try:
            self.router = Router(endpoints.control, keys)
        except OSError as exc:
            raise OSError(f"cannot bind the control plane ({endpoints}): {exc}") from None
        self._pub = _socket(zmq.PUB)
        if keys is not None:
            _secure_server(self._pub, keys)
        try:
            events = _bind(self._pub, endpoints.events)
        except zmq.ZMQError as exc:
            self.close()
            raise OSError(f"cannot bind the control plane ({endpoints}): {exc}") from exc
        self.endpoints = Endpoints(self.router.endpoint, events, endpoints.keys)

    def receive(self, timeout_s: float) -> list[tuple[bytes, Message | ProtocolError]]:
        """Every message waiting (after up to ``timeout_s`` for the first), with its sender."""
        return self.router.receive(timeout_s)

    def send(self, identity: bytes, message: Message) -> bool:
        """Send to one peer; False if that peer is gone or not keeping up."""
        return self.router.send(identity, message)

    def publish(self, event: Message) -> None:
        """Broadcast an event under its topic (see :func:`pipeline.messages.topic`)."""
        frames = [messages.topic(event).encode(), messages.encode(event)]
        # PUB drops for slow subscribers by design; nothing waits on an event
        with contextlib.suppress(zmq.Again):
            self._pub.send_multipart(frames, zmq.NOBLOCK)

    def close(self) -> None:
        self.router.close()
        self._pub.close(linger=0)


class Client:
    """A DEALER connected to a supervisor: requests with timeouts, or raw sends for workers."""

    def __init__(self, endpoints: Endpoints, timeout_s: float = 5.0, identity: str = "") -> None:
        self.endpoints = endpoints
        self.timeout_s = timeout_s
        self._sock = _socket(zmq.DEALER)
        if identity:
            self._sock.setsockopt(zmq.ROUTING_ID, identity.encode())
        _secure_client(self._sock, load_keys(endpoints))
        self._sock.connect(endpoints.control)
        self._ids = itertools.count(1)

    def request(self, message: Message, timeout_s: float | None = None) -> Message:
        """Send ``message`` and return its reply; raise on ``Error`` replies and timeouts."""
        request_id = next(self._ids)
        self.send(msgspec.structs.replace(message, request_id=request_id))
        return self.reply_to(request_id, timeout_s)

    def next_request_id(self) -> int:
        """A request id for a request sent another way (``reply_to`` then awaits it)."""
        return next(self._ids)

    def reply_to(self, request_id: int, timeout_s: float | None = None) -> Message:
        """The reply to request ``request_id``; raises like :meth:`request`."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = clock.now_s() + timeout_s
        while (remaining := deadline - clock.now_s()) > 0:
            reply = self.receive(remaining)
            if reply is None or getattr(reply, "request_id", None) != request_id:
                continue  # a late reply to an earlier request that timed out
            if isinstance(reply, messages.Refused):
                raise StimulationRefused(reply.text, reply)
            if isinstance(reply, messages.Error):
                raise RequestFailed(reply.text)
            return reply
        raise BusTimeout(
            f"no reply from the supervisor at {self.endpoints.control} within {timeout_s:g} s; "
            "is the rig running? (`rigpipe status` checks)"
        )

    def send(self, message: Message) -> None:
        """Send without waiting for anything (workers' heartbeats and replies)."""
        # Again: not connected yet, or the supervisor is not reading; heartbeats retry
        with contextlib.suppress(zmq.Again):
            self._sock.send(messages.encode(message), zmq.NOBLOCK)

    @property
    def socket(self) -> zmq.Socket:
        return self._sock

    def pending(self) -> bool:
        """True if a message waits (cheap; also re-arms the socket's ``zmq.FD``)."""
        return bool(int(self._sock.getsockopt(zmq.EVENTS)) & _POLLIN)

    def receive(self, timeout_s: float = 0.0) -> Message | None:
        """The next message from the supervisor, or None after ``timeout_s``."""
        if not self._sock.poll(max(0, int(timeout_s * 1000))):
            return None
        raw = self._sock.recv()
        return messages.decode(raw)

    def close(self) -> None:
        self._sock.close(linger=0)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Subscriber:
    """A SUB socket on a session's events, filtered by topic prefix (``""`` = everything)."""

    endpoints: Endpoints
    prefix: str = ""

    def __post_init__(self) -> None:
        self._sock = _socket(zmq.SUB)
        self._sock.setsockopt(zmq.SUBSCRIBE, self.prefix.encode())
        _secure_client(self._sock, load_keys(self.endpoints))
        self._sock.connect(self.endpoints.events)

    def receive(self, timeout_s: float) -> tuple[str, Message] | None:
        """The next event as ``(topic, message)``, or None after ``timeout_s``."""
        if not self._sock.poll(max(0, int(timeout_s * 1000))):
            return None
        topic, payload = self._sock.recv_multipart()
        return topic.decode(), messages.decode(payload)

    def close(self) -> None:
        self._sock.close(linger=0)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
