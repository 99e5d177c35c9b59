"""A stimulation worker of a running rig, reached directly: the closed loop's client.

Built on :class:`~pipeline.control.direct.WorkerClient` (one hop, a command ring on the
rig's machine)::

    import pipeline

    stim = pipeline.stimulator("stim")              # the running rig's worker "stim"
    stim.arm()
    burst = stim.prepare_pulse_train(channel=0, phases=[(-50, 200), (50, 200)])
    for chunk in pipeline.attach("acq/continuous"):
        if crossed(chunk):
            stim.fire(burst)    # Accepted, or StimulationRefused (e.g. disarmed)

The worker runs every safety check and answers ``Accepted`` or raises
:class:`~pipeline.errors.StimulationRefused` here.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.control import messages
from pipeline.control.direct import WorkerClient
from pipeline.errors import RequestFailed, StimulationRefused


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

    def silence(self, channel: int | None = None) -> str:
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
