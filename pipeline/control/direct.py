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
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from pipeline.control import messages, session
from pipeline.control.bus import Client, Endpoints
from pipeline.errors import BusTimeout, RequestFailed


class WorkerClient:
    """Requests to one worker's own socket (``Worker.direct``) of a running rig."""

    def __init__(self, worker: str, session_name: str | None = None, timeout_s: float = 2.0):
        self.worker = worker
        self.timeout_s = timeout_s
        self._session = session_name
        self._client = self._connect()

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
        not answer (after looking the socket up again: a restarted worker on TCP
        listens on a new port).
        """
        request = msgspec.structs.replace(request, worker=self.worker)
        try:
            return self._client.request(request)
        except BusTimeout:
            self._client.close()
            self._client = self._connect()
            raise BusTimeout(
                f"worker {self.worker!r} did not answer within {self.timeout_s:g} s at "
                f"{self.endpoint}; is it running? (`rigpipe status`)"
            ) from None

    def close(self) -> None:
        self._client.close()

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
