"""Control-plane messages: round trips, and every kind of bad bytes gives one ProtocolError."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import msgspec
import numpy as np
import pytest

from pipeline.control import messages, zap
from pipeline.control.bus import Client, CurveKeys, Endpoints, Server, Subscriber, make_keys
from pipeline.errors import BusTimeout, ProtocolError

EXAMPLES = [
    messages.Hello(worker="acq", pid=12),
    messages.Status(request_id=3),
    messages.SetParameter(request_id=4, worker="acq", name="lfp_hz", value=[1, 2.5, "x"]),
    messages.Heartbeat(
        worker="rec",
        pid=5,
        ready=True,
        counters={"frames": 10.0},
        readers=[messages.ReaderReport(stream="acq/continuous", cursor=99, dropped=1)],
    ),
    messages.StatusReply(
        session="s",
        uptime_s=1.5,
        state="running",
        workers=[messages.WorkerStatus(name="acq", kind="acquisition", state="running")],
        streams=[messages.StreamStatus(stream="s/acq/continuous", writer="acq")],
    ),
    messages.Annotation(text="drug on", time_ns=1, monotonic_ns=2),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: messages.Message) -> None:
    assert messages.decode(messages.encode(message)) == message


def test_the_wire_format_is_a_tagged_msgpack_map() -> None:
    raw = messages.encode(messages.StartWorker(request_id=7, worker="acq"))
    assert msgspec.msgpack.decode(raw) == {"type": "start_worker", "request_id": 7, "worker": "acq"}


def test_fields_added_later_have_defaults_so_old_peers_still_decode() -> None:
    old = msgspec.msgpack.encode({"type": "heartbeat", "worker": "acq", "pid": 1})
    beat = messages.decode(old)
    assert isinstance(beat, messages.Heartbeat) and beat.readers == [] and not beat.ready


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xc1",
        msgspec.msgpack.encode([1, 2, 3]),
        msgspec.msgpack.encode({"type": "explode"}),
        msgspec.msgpack.encode({"type": "status", "request_id": "seven"}),
        msgspec.msgpack.encode({"type": "start_worker"}),  # missing field
        msgspec.msgpack.encode({"request_id": 1}),  # no tag
    ],
)
def test_bad_bytes_raise_protocol_error(raw: bytes) -> None:
    with pytest.raises(ProtocolError, match="not a rigpipe message"):
        messages.decode(raw)


def test_random_bytes_only_ever_raise_protocol_error() -> None:
    rng = np.random.default_rng(1)
    for size in rng.integers(0, 200, 3000):
        try:
            messages.decode(rng.bytes(int(size)))
        except ProtocolError:
            continue


def test_topics_name_the_worker_or_the_session() -> None:
    assert messages.topic(messages.WorkerRestarted(worker="acq", restarts=1, reason="x")) == (
        "worker.acq.worker_restarted"
    )
    assert messages.topic(messages.Annotation(text="x", time_ns=0, monotonic_ns=0)) == (
        "session.annotated"
    )


@pytest.mark.posix
def test_a_request_with_nobody_listening_times_out_with_a_clear_message(tmp_path) -> None:
    endpoints = Endpoints(f"ipc://{tmp_path}/none.sock", f"ipc://{tmp_path}/none-ev.sock")
    with Client(endpoints, timeout_s=0.2) as client:
        started = time.monotonic()
        with pytest.raises(BusTimeout, match=r"no reply from the supervisor at ipc://.*0.2 s"):
            client.request(messages.Status())
    assert time.monotonic() - started < 2


def test_tcp_without_keys_is_refused() -> None:
    with pytest.raises(OSError, match="TCP control needs CURVE keys"):
        Server(Endpoints("tcp://127.0.0.1:0", "tcp://127.0.0.1:0"))


def test_server_answers_and_publishes_over_tcp_on_loopback(tmp_path) -> None:
    keys = str(make_keys(tmp_path))
    server = Server(Endpoints("tcp://127.0.0.1:0", "tcp://127.0.0.1:0", keys))
    try:
        assert server.endpoints.control.startswith("tcp://127.0.0.1:")
        with Client(server.endpoints, timeout_s=2) as client, Subscriber(server.endpoints) as sub:
            client.send(messages.Status(request_id=1))
            ((identity, request),) = wait_receive(server)
            assert isinstance(request, messages.Status)
            assert server.send(identity, messages.Ok(request_id=1, detail="hi"))
            assert client.receive(2) == messages.Ok(request_id=1, detail="hi")
            time.sleep(0.2)  # subscription propagation
            server.publish(messages.Reported(worker="acq", level="info", text="x"))
            assert sub.receive(2) == (
                "worker.acq.reported",
                messages.Reported(worker="acq", level="info", text="x"),
            )
        assert not server.send(b"nobody", messages.Ok())  # a gone peer is reported, not raised
    finally:
        server.close()


def test_the_zap_handler_admits_the_sessions_client_and_refuses_a_stranger(tmp_path) -> None:
    """No asyncio in the way: Windows' default Proactor loop broke pyzmq's authenticator."""
    keys = str(make_keys(tmp_path))
    # knows the server's public key, but its own client key was never admitted
    ours = msgspec.json.decode(Path(keys).read_bytes(), type=CurveKeys)
    other = msgspec.json.decode(make_keys(tmp_path, "other.json").read_bytes(), type=CurveKeys)
    stranger = tmp_path / "stranger.json"
    stranger.write_bytes(
        msgspec.json.encode(
            msgspec.structs.replace(
                ours, client_public=other.client_public, client_secret=other.client_secret
            )
        )
    )
    server = Server(Endpoints("tcp://127.0.0.1:0", "tcp://127.0.0.1:0", keys))
    handler = zap.handler()
    admitted, refused = handler.admitted, handler.refused
    try:
        impostor = Endpoints(server.endpoints.control, server.endpoints.events, str(stranger))
        with Client(impostor, timeout_s=0.5) as client:
            client.send(messages.Status(request_id=1))
            assert client.receive(1.0) is None, "a client with another session's keys got in"
        assert handler.refused > refused
        with Client(server.endpoints, timeout_s=2) as client:
            client.send(messages.Status(request_id=2))
            ((_, request),) = wait_receive(server)
            assert request == messages.Status(request_id=2)
        assert handler.admitted > admitted
        assert not [t for t in threading.enumerate() if "asyncio" in t.name.lower()]
    finally:
        server.close()


def wait_receive(server: Server) -> list:
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        received = server.receive(0.1)
        if received:
            return received
    raise AssertionError("nothing arrived")
