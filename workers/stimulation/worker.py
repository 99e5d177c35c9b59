"""Stimulation worker: safety-checked pulse trains and waveforms, closed-loop triggers.

Commands arrive over the control plane (``PulseTrain``, ``Waveform``,
``StopStimulation``, ``Arm``, ``Disarm`` in :mod:`pipeline.messages`) from the
CLI (``rigpipe stim ...``), a script or another worker. Each is answered
``Accepted`` (with a command id) or ``Refused`` (with the reason), and
published as an event so the recorder keeps it. A closed loop can prepare a
stimulus once (``PrepareStimulus``: checked and rendered then) and fire it by
its handle (``FireStimulus``), which leaves nothing to decode, check or render
when it counts. Trigger rules from the config
are evaluated here, on the rings themselves. Every stimulus passes
:mod:`.safety` with the limits from the config, before and after rendering
(:func:`.safety.render`), and only then reaches the backend:

- ``simulated`` (default, :mod:`.simulated`): output into the ring ``<worker>/output``;
- ``stg`` (:mod:`.stg`): a Multi Channel Systems STG4000 through McsUsbNet.dll and
  pythonnet (extra ``stg``).

The stimulator starts disarmed unless the config says ``armed = true``.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

from pipeline.control import messages
from pipeline.host import clock
from pipeline.host.timer import wake_period_s
from pipeline.settings import Positive, Settings
from workers.stimulation.commands import StimulatorCommands
from workers.stimulation.output import Output
from workers.stimulation.safety import (
    ChannelLimits,
    Rendered,
    SafetyViolation,
    StimulatorError,
    check,
    render,
)
from workers.stimulation.simulated import SimulatedSettings, SimulatedStimulator
from workers.stimulation.stg import StgSettings
from workers.stimulation.trigger import LiveRule, TriggerRule, Triggers

#: The Python thread switch interval in a stimulation worker, s.
SWITCH_INTERVAL_S = 0.0005
#: How often an awake worker wakes when nothing else wakes it (see stay_awake_s).
AWAKE_TICK_S = 0.001


#: A rule that keeps not firing for the same reason is published at most this often.
QUIET_S = 1.0


@dataclass
class _Held:
    """Crossings of one rule not published yet: all did not fire, for ``reason``."""

    reason: str
    published_at: float  # monotonic s of the last event published for the rule
    count: int = 0
    latest: messages.Triggered | None = None


class StimulationSettings(Settings, frozen=True, kw_only=True):
    """``[workers.parameters]`` of a ``stimulation`` worker."""

    channels: Annotated[int, msgspec.Meta(ge=1, le=256)] = 4
    backend: Literal["simulated", "stg"] = "simulated"
    armed: bool = False  # armed at start; otherwise an Arm request is needed first
    output_rate_hz: Annotated[float, msgspec.Meta(gt=0)] = 50_000.0
    buffer_ms: Annotated[float, msgspec.Meta(gt=0)] = 20.0  # output buffer period
    # "default" and/or channel numbers ("0", "1"...)
    limits: dict[str, ChannelLimits] = msgspec.field(default_factory=dict)
    #: No channel's max_amplitude_ua may exceed this: a typo (100000 for 100) is refused
    #: before anything starts. A lab that needs more (a macro-electrode) raises it here,
    #: deliberately; what the device can physically output is checked too (at --check for
    #: the simulated device, at setup for an STG, which reports its range).
    amplitude_ceiling_ua: Positive = 1000.0
    triggers: list[TriggerRule] = msgspec.field(default_factory=list)
    #: After a pulse is queued (by a rule or a command), the armed worker stays awake this
    #: long: it looks at every chunk of its rules' streams and wakes every ms, so the next
    #: crossing or command finds it running (a process that slept for 100 ms answers
    #: 150-300 us later on a VM). Quiet longer than this, it sleeps until a rule's threshold
    #: watch or a command wakes it, costing no more than a stimulator without rules.
    #: 0: always sleep (least CPU); a large value: always awake (least latency).
    stay_awake_s: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    simulated: SimulatedSettings = SimulatedSettings()
    stg: StgSettings | None = None


def channel_limits(settings: StimulationSettings) -> dict[int, ChannelLimits]:
    """The limits of every channel that has any (a channel without limits cannot stimulate)."""
    limits: dict[int, ChannelLimits] = {}
    default = settings.limits.get("default")
    for key in settings.limits:
        if key == "default":
            continue
        if not key.isdigit() or int(key) >= settings.channels:
            raise ValueError(
                f"limits.{key}: not a channel; use 'default' or a channel number "
                f"0..{settings.channels - 1}"
            )
    for channel in range(settings.channels):
        chosen = settings.limits.get(str(channel), default)
        if chosen is not None:
            limits[channel] = chosen
    return limits


class StimulationWorker(StimulatorCommands):
    Settings = StimulationSettings
    needs_fine_timer = True  # the refill wakes every 2 ms
    #: A decoder in another process commands pulses on the worker's own socket, one hop
    #: (``pipeline.stimulator``); the loop sleeps on the trigger streams and the sockets
    #: at once (``Worker.wait``), so a command is taken the moment it arrives.
    direct = True

    @classmethod
    def outputs(cls, settings: Any) -> list[str]:
        return ["output"] if settings.backend == "simulated" else []

    @classmethod
    def inputs(cls, settings: Any) -> list[str]:
        return sorted({rule.stream for rule in settings.triggers})

    @classmethod
    def check(cls, settings: Any) -> None:
        limits = channel_limits(settings)
        if not limits:
            raise ValueError(
                "no stimulation limits are configured; add [workers.parameters.limits.default] "
                "with max_amplitude_ua and max_charge_per_phase_nc"
            )
        ceiling = settings.amplitude_ceiling_ua
        if settings.backend == "simulated":
            ceiling = min(ceiling, settings.simulated.range_ua)
        over = {
            c: lim.max_amplitude_ua for c, lim in limits.items() if lim.max_amplitude_ua > ceiling
        }
        if over:
            channels = ", ".join(f"channel {c}: {ua:g} uA" for c, ua in sorted(over.items()))
            if ceiling < settings.amplitude_ceiling_ua:
                why = f"the simulated device outputs at most {ceiling:g} uA (simulated.range_ua)"
            else:
                why = (
                    f"amplitude_ceiling_ua is {ceiling:g}; if the electrode and protocol "
                    "really need more, raise amplitude_ceiling_ua in this config"
                )
            raise ValueError(f"max_amplitude_ua above the ceiling ({channels}): {why}")
        buffer_samples = settings.buffer_ms * settings.output_rate_hz / 1000
        if buffer_samples < 4:
            raise ValueError(f"buffer_ms {settings.buffer_ms:g} holds fewer than 4 samples")
        if settings.backend == "stg" and settings.stg is None:
            raise ValueError(
                "backend 'stg' needs [workers.parameters.stg] with dll_path = <McsUsbNet.dll>"
            )
        names = set()
        for rule in settings.triggers:
            if rule.name in names:
                raise ValueError(f"two triggers are named {rule.name!r}")
            names.add(rule.name)
            if rule.stim_channel >= settings.channels:
                raise ValueError(
                    f"trigger {rule.name!r}: stim_channel {rule.stim_channel} does not exist; "
                    f"channels are 0..{settings.channels - 1}"
                )
            try:
                check(rule.command("config"), limits)
            except SafetyViolation as exc:
                raise ValueError(f"trigger {rule.name!r}: {exc}") from None

    # -- lifecycle ------------------------------------------------------------------------------
    def setup(self) -> None:
        s = self.settings
        # The refill thread must get the GIL within a fraction of the output buffer
        # (the default switch interval lets another thread hold it for 5 ms).
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        wake_s = wake_period_s()
        self.counters["wake_ms"] = round(wake_s * 1e3, 2)
        check_buffer(s.buffer_ms, wake_s)
        self.limits = channel_limits(s)
        self._rendered: dict[bytes, Rendered] = {}
        # handle -> a prepared stimulus, checked and rendered (PrepareStimulus). Handles are
        # random 63-bit numbers, so a handle of a previous run of this worker (or of another
        # worker) is never taken for one of this run's.
        self._prepared: dict[int, tuple[messages.PulseTrain | messages.Waveform, Rendered]] = {}
        self._held: dict[str, _Held] = {}  # rule -> crossings held back (_publish_triggered)
        self.armed = self.rules_live = s.armed
        self._awake_until = 0.0  # monotonic s: see StimulationSettings.stay_awake_s
        self._ids = itertools.count(time.time_ns() // 1000)  # unique across restarts
        self.backend = self._open_backend()
        buffer_samples = math.ceil(s.buffer_ms * s.output_rate_hz / 1000)
        self.output = Output(self.backend, buffer_samples, min(0.002, s.buffer_ms / 8000))
        self.output.start()
        self.backend.start()
        # a rule's pulse is rendered (and checked) once, not at every crossing
        watches = [
            LiveRule(
                rule,
                render(
                    rule.command(self.name),
                    self.limits,
                    s.output_rate_hz,
                    self.backend.resolution_ua,
                ),
            )
            for rule in s.triggers
        ]
        self.triggers = Triggers(
            watches,
            attach=lambda stream: self.reader(stream, from_now=True),
            detach=self.close_reader,
            report=lambda text: self.report(text, "info"),
        )
        for name in ("accepted", "refused", "triggers", "fired"):
            self.counters[name] = 0
        self._set_armed(s.armed, "config")

    def _open_backend(self) -> Any:
        s = self.settings
        if s.backend == "stg":
            from workers.stimulation.stg import StgStimulator  # imports pythonnet

            backend: StgStimulator | SimulatedStimulator
            backend = StgStimulator(s.stg, s.channels, s.output_rate_hz)
        else:

            def make_writer(capacity: int) -> Any:
                descriptor = {
                    "channel_labels": [f"stim{c}" for c in range(s.channels)],
                    "units": "uA",
                    "source": {"kind": "stimulation", "backend": "simulated"},
                }
                return self.writer(
                    "output", "float32", s.channels, capacity, s.output_rate_hz, descriptor
                )

            # A block is an eighth of the output buffer (at most 2.5 ms): the refill after
            # each keeps half a buffer queued, so the device's clock thread may be three
            # blocks late before its next block finds the queue short (an underrun).
            block_s = min(0.0025, s.buffer_ms / 8000)
            backend = SimulatedStimulator(
                s.simulated, s.channels, s.output_rate_hz, make_writer, block_s
            )
        over = {c: lim for c, lim in self.limits.items() if lim.max_amplitude_ua > backend.range_ua}
        if over:
            backend.close()
            raise StimulatorError(
                f"limits allow more current than the stimulator can output "
                f"({backend.range_ua:g} uA) on channels {sorted(over)}; lower max_amplitude_ua"
            )
        return backend

    def run(self) -> None:
        while not self.stopping:
            for failure in (self.output.refill_error, getattr(self.backend, "clock_error", None)):
                if failure is not None:
                    raise StimulatorError(f"stimulator output failed: {failure!r}") from failure
            self.triggers.poll(self._fire)
            if hasattr(self.backend, "underruns"):
                self.counters["underruns"] = self.backend.underruns
            self._check_device_errors()
            self._release_quiet()
            # Failures of the refill are looked at least every 0.1 s. The rules' streams:
            # awake (armed, stay_awake_s after a pulse), at every chunk; asleep, when a
            # rule's threshold watch (armed only) wakes us, or every CATCH_UP_S (0.1 s).
            now = clock.now_s()
            awake = self.armed and now < self._awake_until
            waitables = self.triggers.waitables(each_chunk=awake)
            interval = AWAKE_TICK_S if awake else self.triggers.catch_up_s()
            self.wait(waitables, min(now + interval, self.triggers.next_retry()))

    def _check_device_errors(self) -> None:
        """A streaming error the device reported: silence, disarm, and say so."""
        errors = getattr(self.backend, "device_errors", 0)
        if errors <= self.counters.get("device_errors", 0):
            return
        self.counters["device_errors"] = errors
        self.silence(None, "the stimulator reported a streaming error")
        if self.armed:
            self._set_armed(False, "the stimulator reported a streaming error")
        self.report(
            f"the stimulator reported a streaming error ({errors} so far): every channel "
            "silenced and the stimulator disarmed; check the device, then rigpipe stim arm",
            "error",
        )

    def teardown(self) -> None:
        triggers = getattr(self, "triggers", None)
        if triggers is not None:
            triggers.close()  # the watch slots go back to the streams at once
        for rule in list(getattr(self, "_held", {})):
            self._release(rule)
        output = getattr(self, "output", None)
        if output is not None:
            output.close()
        backend = getattr(self, "backend", None)
        if backend is not None:
            backend.close()

    # -- closed loop ----------------------------------------------------------------------------
    def _fire(self, watch: LiveRule, sequence: int, value: float, timestamp_ns: int) -> None:
        """A rule's stream crossed its threshold: stimulate, or say why not."""
        self.counters["triggers"] += 1
        rule = watch.rule
        source = f"trigger:{rule.name}"
        reason, command_id = "", 0
        if not self.armed:
            reason = "disarmed"
        elif not self.rules_live:
            reason = "armed for commands only"
        elif self.output.busy(rule.stim_channel):
            reason = f"channel {rule.stim_channel} is still stimulating"
        else:
            reply = self.stimulate(rule.command(self.name), source, timestamp_ns, watch.rendered)
            if isinstance(reply, messages.Accepted):
                command_id = reply.command_id
                self.counters["fired"] += 1
            else:
                reason = reply.text
        event = messages.Triggered(
            worker=self.name,
            rule=rule.name,
            stream=rule.stream,
            channel=rule.channel,
            sequence=sequence,
            value=value,
            frame_timestamp_ns=timestamp_ns,
            fired=bool(command_id),
            command_id=command_id,
            reason=reason,
        )
        self._publish_triggered(event)

    def _publish_triggered(self, event: messages.Triggered) -> None:
        """Publish a crossing; one that keeps not firing for the same reason (a disarmed
        rig crossing three times a second) at most every QUIET_S, with its count."""
        held = self._held.get(event.rule)
        if event.fired or held is None or held.reason != event.reason:
            self._release(event.rule)
            self.publish(event)
            if not event.fired:
                self._held[event.rule] = _Held(event.reason, clock.now_s())
            return
        held.count += 1
        held.latest = event
        if clock.now_s() - held.published_at >= QUIET_S:
            self._release(event.rule)
            self._held[event.rule] = _Held(event.reason, clock.now_s())

    def _release(self, rule: str) -> None:
        """Publish what was held back for ``rule`` (the last crossing, with the count)."""
        held = self._held.pop(rule, None)
        if held is not None and held.latest is not None:
            self.publish(msgspec.structs.replace(held.latest, repeats=held.count))

    def _release_quiet(self) -> None:
        """Publish held-back crossings once QUIET_S has passed, even if none follows."""
        now = clock.now_s()
        for rule, held in list(self._held.items()):
            if held.latest is not None and now - held.published_at >= QUIET_S:
                self._release(rule)
                self._held[rule] = _Held(held.reason, now)


def check_buffer(buffer_ms: float, wake_s: float) -> None:
    """Refuse an output buffer the refill cannot keep: it keeps half of it queued, so a
    refill that wakes ``wake_s`` late must still find half a buffer left."""
    if buffer_ms / 1000 < 2 * wake_s:
        raise StimulatorError(
            f"buffer_ms = {buffer_ms:g} is too short for this machine: a 1 ms wait takes "
            f"{wake_s * 1e3:.1f} ms here, so the refill could fall that far behind; "
            f"set buffer_ms >= {math.ceil(2 * wake_s * 1e3)}"
        )


WORKER = StimulationWorker

__all__ = ["WORKER", "StimulationSettings", "StimulationWorker", "channel_limits"]
