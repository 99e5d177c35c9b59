"""The stimulation worker's commands: stimulate, prepare and fire, silence, arm and disarm.

:class:`StimulatorCommands` answers the requests of :mod:`pipeline.control.messages`
(``PulseTrain``, ``Waveform``, ``PrepareStimulus``, ``FireStimulus``, ``StopStimulation``,
``Arm``, ``Disarm``): each is checked against the config's limits (:mod:`.safety`),
rendered once (cached), queued on the output (:mod:`.output`), answered ``Accepted`` or
``Refused`` and published, so the recorder keeps it. The worker's life (setup, the run
loop, trigger rules) is :class:`~workers.stimulation.worker.StimulationWorker`'s, which
sets up everything declared here.
"""

from __future__ import annotations

import itertools
import math
import secrets
from typing import Any

import msgspec

from pipeline.control import messages
from pipeline.host import clock
from pipeline.worker import Worker
from workers.stimulation.output import Output, Train
from workers.stimulation.safety import ChannelLimits, Rendered, SafetyViolation, render
from workers.stimulation.trigger import Triggers

#: Rendered commands kept for reuse (only ones that passed the safety check are kept).
RENDER_CACHE = 64
#: Stimuli kept prepared (PrepareStimulus); past this many, the oldest is forgotten, and
#: firing it is refused (limit "prepared") until it is prepared again.
MAX_PREPARED = 256


class StimulatorCommands(Worker):
    """The command API of the stimulation worker (its subclass sets all of this up)."""

    armed: bool
    rules_live: bool  # armed with the config's trigger rules firing
    limits: dict[int, ChannelLimits]
    backend: Any  # a SimulatedStimulator or an StgStimulator
    output: Output
    triggers: Triggers
    _ids: itertools.count[int]
    _awake_until: float
    _rendered: dict[bytes, Rendered]
    _prepared: dict[int, tuple[messages.PulseTrain | messages.Waveform, Rendered]]

    def on_request(self, request: messages.WorkerRequest) -> messages.Message:
        match request:
            case messages.FireStimulus(handle=handle):  # first: a closed loop's fastest path
                return self.fire(handle)
            case messages.PulseTrain() | messages.Waveform():
                return self.stimulate(request, "command")
            case messages.PrepareStimulus(stimulus=stimulus):
                return self.prepare(stimulus)
            case messages.StopStimulation(channel=channel):
                if channel is not None and not 0 <= channel < self.settings.channels:
                    return messages.Error(
                        text=f"no channel {channel}; channels are 0..{self.settings.channels - 1}"
                    )
                return self.silence(channel, "stop requested")
            case messages.Arm(rules=rules):
                self._set_armed(True, "Arm request", rules)
                return messages.Ok(detail=f"{self.name} armed; {self._rules_text()}")
            case messages.Disarm():
                self._set_armed(False, "Disarm request")
                self.silence(None, "disarmed")
                return messages.Ok(detail=f"{self.name} disarmed, every channel silenced")
        return super().on_request(request)

    def _set_armed(self, armed: bool, reason: str, rules: bool = True) -> None:
        """Arm (with the config's trigger rules live, or ``rules=False``: commands only)
        or disarm, and say so."""
        self.armed = armed
        self.rules_live = armed and rules
        self.triggers.watching(self.rules_live)  # off, crossings need not be seen at once
        s = self.settings
        state = "ARMED" if self.rules_live or not s.triggers else "ARMED, commands only"
        self.note = f"{s.backend}, {s.channels} channels, {state if armed else 'disarmed'}"
        live = [rule.name for rule in s.triggers] if self.rules_live else []
        self.publish(
            messages.StimulatorArmed(worker=self.name, armed=armed, reason=reason, rules=live)
        )

    def _rules_text(self) -> str:
        """Which of the config's trigger rules fire from now on."""
        names = ", ".join(rule.name for rule in self.settings.triggers)
        if not names:
            return "no trigger rules configured: commands only"
        if self.rules_live:
            return f"trigger rules now live: {names}"
        return f"commands only; trigger rules off: {names}"

    def silence(self, channel: int | None, reason: str) -> messages.Ok:
        dropped = self.output.silence(channel)
        self.publish(
            messages.StimulationStopped(
                worker=self.name, channel=channel, dropped_commands=dropped, reason=reason
            )
        )
        where = "every channel" if channel is None else f"channel {channel}"
        return messages.Ok(
            detail=f"{where} silenced within {self.settings.buffer_ms:g} ms; "
            f"{dropped} pending stimuli dropped"
        )

    def stimulate(
        self,
        command: messages.PulseTrain | messages.Waveform,
        source: str,
        frame_timestamp_ns: int = 0,
        rendered: Rendered | None = None,
    ) -> messages.Accepted | messages.Refused:
        """Check, render and queue ``command``; the reply, also published as an event.

        ``rendered`` is the command already rendered and checked with these limits
        (a trigger rule's pulse, done at setup; a prepared stimulus)."""
        if not self.armed:
            return self._refuse(
                f"{self.name} is disarmed; send Arm (`rigpipe stim arm`) first",
                source,
                command.channel,
                "armed",
            )
        if rendered is None:
            checked = self._check(command, source)
            if isinstance(checked, messages.Refused):
                return checked
            rendered = checked
        command_id = next(self._ids)
        queued_ns = self.output.submit(command.channel, Train(command_id, rendered))
        self._awake_until = clock.now_s() + self.settings.stay_awake_s
        self.counters["accepted"] += 1
        train = command if isinstance(command, messages.PulseTrain) else None
        samples = 0 if isinstance(command, messages.PulseTrain) else len(command.samples_ua)
        self.publish(
            messages.StimulationQueued(
                worker=self.name,
                command_id=command_id,
                channel=command.channel,
                source=source,
                phases=train.phases if train else [],
                interphase_us=train.interphase_us if train else 0.0,
                waveform_samples=samples,
                peak_ua=float(abs(rendered.pulse_ua).max()) if len(rendered.pulse_ua) else 0.0,
                frequency_hz=command.frequency_hz,
                count=command.count,
                duration_s=rendered.total_samples / self.settings.output_rate_hz,
                queued_ns=queued_ns,
                frame_timestamp_ns=frame_timestamp_ns,
            )
        )
        return messages.Accepted(
            command_id=command_id,
            detail=f"queued on channel {command.channel}: {rendered.total_samples} samples",
        )

    def prepare(
        self, stimulus: messages.PulseTrain | messages.Waveform
    ) -> messages.Prepared | messages.Refused:
        """Check and render ``stimulus`` now, and keep it to be fired by its handle."""
        checked = self._check(stimulus, "prepare")
        if isinstance(checked, messages.Refused):
            return checked
        if len(self._prepared) >= MAX_PREPARED:
            self._prepared.pop(next(iter(self._prepared)))  # the oldest
        handle = secrets.randbits(63)
        self._prepared[handle] = (stimulus, checked)
        return messages.Prepared(
            handle=handle,
            detail=f"prepared for channel {stimulus.channel}: {checked.total_samples} samples",
        )

    def fire(self, handle: int) -> messages.Accepted | messages.Refused:
        """Queue the stimulus prepared as ``handle``. Only "armed" is checked again: its
        channel and limits were checked when it was prepared, and do not change while the
        worker runs."""
        prepared = self._prepared.get(handle)
        if prepared is None:
            return self._refuse(
                f"{self.name} holds no prepared stimulus {handle}: it restarted since, or "
                f"forgot it (it keeps the last {MAX_PREPARED}); prepare it again",
                "command",
                None,
                "prepared",
            )
        stimulus, rendered = prepared
        return self.stimulate(stimulus, "command", rendered=rendered)

    def _check(
        self, command: messages.PulseTrain | messages.Waveform, source: str
    ) -> Rendered | messages.Refused:
        """``command`` rendered, if its channel exists and it passes every limit."""
        channels = self.settings.channels
        if not 0 <= command.channel < channels:
            return self._refuse(
                f"no channel {command.channel}; channels are 0..{channels - 1}",
                source,
                command.channel,
                "channel",
            )
        try:
            return self._render(command)
        except SafetyViolation as violation:
            return self._refuse(
                str(violation),
                source,
                violation.channel,
                violation.limit,
                violation.value,
                violation.allowed,
            )

    def _render(self, command: messages.PulseTrain | messages.Waveform) -> Rendered:
        """``command`` checked and rendered; a command seen before comes from a cache (a
        decoder sends the same pulse again and again; rendering takes 80-300 µs, and the
        limits, output rate and resolution never change while the worker runs)."""
        key = messages.encode(msgspec.structs.replace(command, request_id=0))
        rendered = self._rendered.get(key)
        if rendered is None:
            s = self.settings
            rendered = render(command, self.limits, s.output_rate_hz, self.backend.resolution_ua)
            if len(self._rendered) >= RENDER_CACHE:
                self._rendered.pop(next(iter(self._rendered)))  # the oldest
            self._rendered[key] = rendered
        return rendered

    def _refuse(
        self,
        text: str,
        source: str,
        channel: int | None,
        limit: str,
        value: float = math.nan,
        allowed: float = math.nan,
    ) -> messages.Refused:
        self.counters["refused"] += 1
        number = None if math.isnan(value) else float(value)
        most = None if math.isnan(allowed) else float(allowed)
        self.publish(
            messages.StimulationRefused(
                worker=self.name,
                source=source,
                text=text,
                channel=channel,
                limit=limit,
                value=number,
                allowed=most,
            )
        )
        return messages.Refused(text=text, channel=channel, limit=limit, value=number, allowed=most)
