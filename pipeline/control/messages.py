"""Every control-plane message, as msgspec Structs in one tagged union.

On the wire a message is msgpack: a map whose ``type`` field names the
message (``{"type": "status", "request_id": 7}``). :func:`decode` returns a
typed object or raises :class:`~pipeline.errors.ProtocolError`; it never
raises anything else, whatever bytes it is given.

Requests are imperative (``StartWorker``), events past tense
(``WorkerRestarted``). A request carries a ``request_id`` that its reply
echoes. Events travel on the PUB socket under topics ``worker.<name>.<event>``
or ``session.<event>``. New fields get defaults, so an older client can still
talk to a newer supervisor; a change that breaks that bumps
:data:`PROTOCOL_VERSION`.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from pipeline.errors import ProtocolError

#: Sent in ``Hello``; the supervisor refuses a peer with another version.
PROTOCOL_VERSION = 2  # 2: Logged (the annotation's event number)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class Message(msgspec.Struct, tag_field="type", tag=_snake, frozen=True, kw_only=True):
    """Base of every control-plane message."""


# -- requests (client or worker -> supervisor) ----------------------------------------------------
class Hello(Message, frozen=True, kw_only=True):
    """First message of a worker: who it is. The supervisor answers ``Ok`` or ``Error``."""

    request_id: int = 0
    protocol_version: int = PROTOCOL_VERSION
    worker: str = ""
    pid: int = 0
    direct: str = ""  # the worker's own request socket, if it has one (Worker.direct)


class Status(Message, frozen=True, kw_only=True):
    """Ask for a ``StatusReply``: workers, streams, lags, counters."""

    request_id: int = 0


class ListStreams(Message, frozen=True, kw_only=True):
    """Ask for a ``StreamsReply``: the session's streams by full name."""

    request_id: int = 0


class _WorkerCommand(Message, frozen=True, kw_only=True):
    request_id: int = 0
    worker: str


class StartWorker(_WorkerCommand, frozen=True):
    """Start a worker that is stopped, failed or waiting in backoff."""


class StopWorker(_WorkerCommand, frozen=True):
    """Stop a worker and keep it stopped (its restart policy is suspended)."""


class RestartWorker(_WorkerCommand, frozen=True):
    """Stop a worker and start it again at once (counted as a restart)."""


class WorkerRequest(Message, frozen=True, kw_only=True):
    """Base of requests meant for one worker: the supervisor forwards them to ``worker``
    and relays its reply (``Ok``/``Accepted`` or ``Error``/``Refused``)."""

    request_id: int = 0
    worker: str


class SetParameter(WorkerRequest, frozen=True, kw_only=True):
    """Change one of a worker's settable parameters while it runs."""

    name: str
    value: Any


# -- stimulation (forwarded to a stimulation worker, "stim" unless named) --------------------------
class Phase(msgspec.Struct, frozen=True, array_like=True):
    """One constant-current phase of a pulse: ``amplitude_ua`` (signed) for ``duration_us``.

    On the wire and in TOML a pair ``[amplitude_ua, duration_us]``.
    """

    amplitude_ua: float
    duration_us: float


class PulseTrain(WorkerRequest, frozen=True, kw_only=True):
    """Stimulate ``channel`` with ``phases`` (``interphase_us`` of zero current between
    them), repeated ``count`` times at ``frequency_hz``. Answered ``Accepted`` with the
    command's id, or ``Refused`` naming the limit it breaks."""

    worker: str = "stim"
    channel: int
    phases: list[Phase]
    frequency_hz: float = 1.0
    count: int = 1
    interphase_us: float = 0.0


class Waveform(WorkerRequest, frozen=True, kw_only=True):
    """Stimulate ``channel`` with arbitrary ``samples_ua`` at ``sample_rate_hz`` (the
    stimulator's output rate), repeated ``count`` times at ``frequency_hz``."""

    worker: str = "stim"
    channel: int
    samples_ua: list[float]
    sample_rate_hz: float
    frequency_hz: float = 1.0
    count: int = 1


class PrepareStimulus(WorkerRequest, frozen=True, kw_only=True):
    """Check and render ``stimulus`` now, and keep it ready for ``FireStimulus``: a closed
    loop's fastest command, with nothing left to decode, check or render when it counts.
    Answered ``Prepared`` (its ``handle``), or ``Refused`` naming the limit it breaks.
    The stimulator need not be armed; ``FireStimulus`` checks that."""

    worker: str = "stim"
    stimulus: PulseTrain | Waveform


class FireStimulus(WorkerRequest, frozen=True, kw_only=True):
    """Queue the stimulus prepared as ``handle`` (``PrepareStimulus``). Answered
    ``Accepted``, or ``Refused``: disarmed (``limit`` "armed"), or a handle the worker
    does not hold (``limit`` "prepared": it restarted since, or forgot the oldest of
    more than it keeps); prepare the stimulus again then."""

    worker: str = "stim"
    handle: int


class StopStimulation(WorkerRequest, frozen=True, kw_only=True):
    """Silence ``channel`` (every channel if None) within one output buffer period;
    pending pulses are dropped."""

    worker: str = "stim"
    channel: int | None = None


class Arm(WorkerRequest, frozen=True, kw_only=True):
    """Allow stimulation: commands, and the config's trigger rules unless ``rules`` is
    False (commands only). Stimulators start disarmed unless their config says
    ``armed = true``. The reply names the rules that went live."""

    worker: str = "stim"
    rules: bool = True


class Disarm(WorkerRequest, frozen=True, kw_only=True):
    """Refuse all stimulation from now on and silence every channel."""

    worker: str = "stim"


class CommandRing(WorkerRequest, frozen=True, kw_only=True):
    """Sent to a worker's own socket (``Worker.direct``) by a client on the same machine:
    also take requests from shared-memory ring ``stream`` (the client writes it; each
    frame one encoded request, see ``pipeline.control.direct``), answering them on this
    socket. Only frames written after this request count. Answered ``Ok``."""

    stream: str


class Annotate(Message, frozen=True, kw_only=True):
    """A free-text comment, time-stamped by the supervisor and broadcast as ``Annotation``."""

    request_id: int = 0
    text: str


class Shutdown(Message, frozen=True, kw_only=True):
    """Stop the whole session in order, as Ctrl-C does."""

    request_id: int = 0


# -- worker -> supervisor -------------------------------------------------------------------------
class ReaderReport(Message, frozen=True, kw_only=True):
    """A lossless reader inside a worker: where its cursor is on a stream."""

    stream: str
    cursor: int
    dropped: int = 0


class Heartbeat(Message, frozen=True, kw_only=True):
    """Sent by every worker each heartbeat interval; answered with ``HeartbeatAck``."""

    worker: str
    pid: int
    ready: bool = False
    counters: dict[str, float] = {}
    readers: list[ReaderReport] = []
    note: str = ""  # one line for status: what it is doing, or what went wrong


class Report(Message, frozen=True, kw_only=True):
    """Something a worker wants the session to know (a warning, a drop); published as an event."""

    worker: str
    level: str = "info"
    text: str


# -- supervisor -> worker -------------------------------------------------------------------------
class HeartbeatAck(Message, frozen=True, kw_only=True):
    """The supervisor is alive; a worker that stops getting these exits."""


class Stop(Message, frozen=True, kw_only=True):
    """Ask a worker to finish its work (drain, close files) and exit 0."""

    request_id: int = 0


# -- replies --------------------------------------------------------------------------------------
class Ok(Message, frozen=True, kw_only=True):
    """A request succeeded; ``detail`` says what happened."""

    request_id: int = 0
    detail: str = ""


class Logged(Ok, frozen=True, kw_only=True):
    """An event the request made was published as number ``sequence`` of the session's event
    log (``<session>/supervisor/events``); a recorder records it under that number."""

    sequence: int


class Accepted(Ok, frozen=True, kw_only=True):
    """A stimulation command passed its safety check and is queued as ``command_id``."""

    command_id: int


class Prepared(Ok, frozen=True, kw_only=True):
    """A ``PrepareStimulus`` passed its safety check; fire it with ``FireStimulus(handle)``."""

    handle: int


class Error(Message, frozen=True, kw_only=True):
    """A request failed or could not be decoded; ``text`` says why and what to do."""

    request_id: int = 0
    text: str


class Refused(Error, frozen=True, kw_only=True):
    """A stimulation command broke a configured limit (or the stimulator is disarmed);
    nothing reached the stimulator. ``limit``, ``value``, ``allowed`` and ``channel``
    say which limit; ``text`` says it in words."""

    channel: int | None = None
    limit: str = ""
    value: float | None = None
    allowed: float | None = None


class WorkerStatus(Message, frozen=True, kw_only=True):
    name: str
    kind: str
    state: str
    pid: int = 0
    restarts: int = 0
    uptime_s: float = 0.0
    cpu_percent: float = 0.0
    rss_bytes: int = 0
    heartbeat_age_s: float | None = None
    exit_code: int | None = None
    counters: dict[str, float] = {}
    note: str = ""


class ReaderLag(Message, frozen=True, kw_only=True):
    worker: str
    cursor: int
    lag: int
    dropped: int = 0


class StreamStatus(Message, frozen=True, kw_only=True):
    stream: str
    writer: str
    generation: int = 0
    sample_rate: float = 0.0
    write_cursor: int = 0
    rate_hz: float = 0.0
    writer_alive: bool = False
    readers: list[ReaderLag] = []


class StatusReply(Message, frozen=True, kw_only=True):
    request_id: int = 0
    session: str
    uptime_s: float
    state: str
    workers: list[WorkerStatus] = []
    streams: list[StreamStatus] = []
    bad_messages: int = 0


class StreamsReply(Message, frozen=True, kw_only=True):
    request_id: int = 0
    streams: list[StreamStatus] = []


# -- events (PUB) ---------------------------------------------------------------------------------
class WorkerStateChanged(Message, frozen=True, kw_only=True):
    worker: str
    state: str
    pid: int = 0
    exit_code: int | None = None
    detail: str = ""


class WorkerRestarted(Message, frozen=True, kw_only=True):
    worker: str
    restarts: int
    reason: str
    pid: int = 0


class ParameterChanged(Message, frozen=True, kw_only=True):
    worker: str
    name: str
    value: Any


class Annotation(Message, frozen=True, kw_only=True, tag="annotated"):
    """A comment made (``Annotate``), as published; its tag keeps the name recordings use."""

    text: str
    time_ns: int  # wall clock, ns since the epoch
    monotonic_ns: int  # the supervisor's monotonic clock, the clock ring timestamps use


class Reported(Message, frozen=True, kw_only=True):
    worker: str
    level: str
    text: str


class SessionStateChanged(Message, frozen=True, kw_only=True):
    session: str
    state: str


class WorkerEvent(Message, frozen=True, kw_only=True):
    """Base of events a worker sends itself; the supervisor publishes them unchanged."""

    worker: str


class StimulationQueued(WorkerEvent, frozen=True, kw_only=True):
    """A safety-checked stimulus went into the output queue of ``channel``.

    ``source`` is ``command`` or ``trigger:<rule>``; ``queued_ns`` (host monotonic)
    is when its first sample reached the backend's queue; ``frame_timestamp_ns`` the
    triggering frame's timestamp (0 for commands). A pulse train carries its
    ``phases``; a waveform only its length and peak (its samples are in ``stim/output``).
    """

    command_id: int
    channel: int
    source: str = "command"
    phases: list[Phase] = []
    interphase_us: float = 0.0
    waveform_samples: int = 0
    peak_ua: float = 0.0
    frequency_hz: float = 0.0
    count: int = 1
    duration_s: float = 0.0
    queued_ns: int = 0
    frame_timestamp_ns: int = 0


class StimulationRefused(WorkerEvent, frozen=True, kw_only=True):
    """A stimulus was refused (a limit, a disarmed stimulator, a malformed command)."""

    source: str = "command"
    text: str
    channel: int | None = None
    limit: str = ""
    value: float | None = None
    allowed: float | None = None


class StimulationStopped(WorkerEvent, frozen=True, kw_only=True):
    """Output was silenced on ``channel`` (None: every channel)."""

    channel: int | None = None
    dropped_commands: int = 0
    reason: str = ""


class StimulatorArmed(WorkerEvent, frozen=True, kw_only=True):
    """The stimulator was armed (``armed``) or disarmed, and why; ``rules``: the trigger
    rules that are live (empty when disarmed, or armed for commands only)."""

    armed: bool
    reason: str = ""
    rules: list[str] = []


class Triggered(WorkerEvent, frozen=True, kw_only=True):
    """A closed-loop rule saw its condition at frame ``sequence`` of ``stream``.

    ``fired`` says whether a stimulus was queued (``command_id``); if not, ``reason``
    says why (disarmed, refused, busy).
    """

    rule: str
    stream: str
    channel: int
    sequence: int
    value: float
    frame_timestamp_ns: int
    fired: bool
    command_id: int = 0
    reason: str = ""
    #: Crossings this event stands for: a rule that keeps not firing for the same reason
    #: is published at most once a second, the last crossing carrying the count.
    repeats: int = 1


Request = Hello | Status | ListStreams | StartWorker | StopWorker | RestartWorker
StimulationRequest = (
    PulseTrain | Waveform | PrepareStimulus | FireStimulus | StopStimulation | Arm | Disarm
)
StimulationEvent = (
    StimulationQueued | StimulationRefused | StimulationStopped | StimulatorArmed | Triggered
)
AnyMessage = (
    Request
    | SetParameter
    | CommandRing
    | StimulationRequest
    | StimulationEvent
    | Accepted
    | Logged
    | Prepared
    | Refused
    | Annotate
    | Shutdown
    | Heartbeat
    | Report
    | HeartbeatAck
    | Stop
    | Ok
    | Error
    | StatusReply
    | StreamsReply
    | WorkerStateChanged
    | WorkerRestarted
    | ParameterChanged
    | Annotation
    | Reported
    | SessionStateChanged
)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AnyMessage)


def encode(message: Message) -> bytes:
    """msgpack bytes of ``message``."""
    return _encoder.encode(message)


def decode(raw: bytes) -> Message:
    """The message in ``raw``, or :class:`ProtocolError` saying what is wrong with it."""
    try:
        return _decoder.decode(raw)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise ProtocolError(f"not a rigpipe message ({len(raw)} bytes): {exc}") from None


def topic(message: Message) -> str:
    """The PUB topic of an event: ``worker.<name>.<event>`` or ``session.<event>``."""
    tag = type(message).__struct_config__.tag
    worker = getattr(message, "worker", None)
    return f"worker.{worker}.{tag}" if worker else f"session.{tag}"
