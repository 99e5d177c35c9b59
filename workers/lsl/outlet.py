"""``lsl_outlet``: each listed stream of the rig becomes one LSL outlet.

An outlet is named ``<session>/<stream>`` (``demo/acq/continuous``) with
``source_id`` ``rigpipe:<session>/<stream>``, stable across restarts, so LSL
inlets (LabRecorder, MNE-LSL...) reconnect by themselves. Its meta-data follow
the XDF conventions LabRecorder writes: ``desc/channels/channel`` with
``label``, ``unit``, ``type``, ``scale`` and, from the ring's positions,
``location/X,Y``; ``desc/acquisition`` names rigpipe and the session.

Continuous streams keep their rate and sample type (int16 stays int16); event
streams (numeric records such as spikes) become irregular-rate outlets with
one double channel per record field. With ``markers = true`` the session's
annotations and stimulation events (queued, refused, stopped, armed) go out
as JSON text on a string marker outlet ``<session>/events``, stamped with the
time they happened (an annotation's, a pulse's first sample). Timestamps are
the ring's per-frame host timestamps converted to ``local_clock()``
(:class:`~workers.lsl.common.ClockMap`). A new generation with another format
makes a new outlet under the same source_id. Pushing never blocks: liblsl
buffers for each consumer and drops a consumer that falls ``max_buffered_s``
behind, so a slow or vanished consumer never slows the rig. A stream that is
absent is waited for (status says so).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from pipeline.control import messages
from pipeline.control.bus import Subscriber
from pipeline.errors import EndOfStream, StreamNotFound
from pipeline.host import clock
from pipeline.settings import Settings
from pipeline.worker import Worker
from workers.lsl.common import FORMATS, ClockMap, pylsl

#: Session events forwarded as markers (besides annotations and queued stimuli), stamped
#: when they reach the outlet.
MARKED = (messages.StimulationRefused, messages.StimulationStopped, messages.StimulatorArmed)


class StreamOptions(Settings, frozen=True, kw_only=True):
    """``[workers.parameters.options."<stream>"]``."""

    type: str = ""  # LSL content type; default "EEG" (continuous) or "Markers" (events)
    chunk_frames: int = 0  # LSL's transmission chunk size; 0: as the ring delivers


class OutletSettings(Settings, frozen=True, kw_only=True):
    """``[workers.parameters]`` of ``kind = "lsl_outlet"``."""

    streams: list[str]
    options: dict[str, StreamOptions] = msgspec.field(default_factory=dict)
    max_buffered_s: int = 60  # per consumer, before liblsl drops it
    #: also publish the session's annotations and stimulation events as string markers
    markers: bool = False


@dataclass
class _Out:
    stream: str
    reader: Any = None
    outlet: Any = None
    fields: list[str] = field(default_factory=list)  # record fields, for an event stream
    frames: int = 0


class LslOutlet(Worker):
    Settings = OutletSettings

    @classmethod
    def inputs(cls, settings: Any) -> list[str]:
        return list(settings.streams)

    @classmethod
    def check(cls, settings: Any) -> None:
        if not settings.streams:
            raise ValueError("list the streams to publish: streams = ['acq/continuous']")
        unknown = sorted(set(settings.options) - set(settings.streams))
        if unknown:
            raise ValueError(f"options for streams not in streams: {unknown}")

    def setup(self) -> None:
        self.lsl = pylsl()
        self.clock = ClockMap(self.lsl.local_clock)
        self.outs = [_Out(stream) for stream in self.settings.streams]
        self.counters.update(frames=0, outlets=0, consumers=0)
        self._next_note = 0.0
        self.events: Subscriber | None = None
        self.markers: Any = None
        if self.settings.markers:
            self.events = Subscriber(self.spec.endpoints)
            name = f"{self.spec.session}/events"
            info = self.lsl.StreamInfo(
                name, "Markers", 1, self.lsl.IRREGULAR_RATE, self.lsl.cf_string, f"rigpipe:{name}"
            )
            self.markers = self.lsl.StreamOutlet(info, 0, self.settings.max_buffered_s)
            self.counters["markers"] = 0

    def step(self) -> None:
        # Poll the rings; when none had frames, sleep 1 ms. Sleeping on the rings instead
        # (Worker.wait: woken by each write) cut the latency by 0.3-0.5 ms but cost 38-40 %
        # of a core against 27-29 % at 256 channels; polling every 2 ms, 22-25 % and
        # 0.5 ms more (bench/lsl.py, the three alternated in one run).
        moved = self._forward_events()
        for out in self.outs:
            moved |= self._pump(out, 0.0)
        now = clock.now_s()
        if now >= self._next_note:
            self._next_note = now + 1.0
            self._update_status()
        if not moved:
            self.wait_until(clock.now_s() + (0.05 if self.outs[0].reader is None else 0.001))

    def teardown(self) -> None:
        for out in getattr(self, "outs", []):
            out.outlet = None  # liblsl closes the outlet when it is collected
        events = getattr(self, "events", None)
        if events is not None:
            events.close()

    # -- session events as markers --------------------------------------------------------------
    def _forward_events(self) -> bool:
        if self.events is None:
            return False
        moved = False
        while (got := self.events.receive(0)) is not None:
            _, event = got
            if isinstance(event, messages.Annotation):
                at_ns = event.monotonic_ns
            elif isinstance(event, messages.StimulationQueued):
                at_ns = event.queued_ns
            elif isinstance(event, MARKED):
                at_ns = clock.now_ns()
            else:
                continue
            text = msgspec.json.encode(event).decode()
            self.markers.push_sample([text], float(self.clock.to_lsl(np.array(at_ns, np.int64))))
            self.counters["markers"] += 1
            moved = True
        return moved

    # -- one stream -----------------------------------------------------------------------------
    def _pump(self, out: _Out, wait_s: float) -> bool:
        if out.reader is None:
            try:
                out.reader = self.reader(out.stream, from_now=True)
            except StreamNotFound:
                return False
        try:
            chunk = out.reader.read(timeout_s=wait_s)
        except EndOfStream:
            self.close_reader(out.stream)
            out.reader, out.outlet = None, None
            self.report(f"{out.stream} ended; its LSL outlet is closed until it comes back", "info")
            return False
        if not chunk.frames:
            return False
        reader = out.reader
        if out.outlet is None or chunk.format_changed:
            out.outlet = self._make_outlet(out)
        stamps = self.clock.to_lsl(chunk.timestamps_ns)
        data = chunk.data
        if out.fields:
            data = np.column_stack([data[name].astype(np.float64) for name in out.fields])
        else:
            data = data.reshape(chunk.frames, -1)
        out.outlet.push_chunk(data, _stamps(stamps, reader.sample_rate))
        out.frames += chunk.frames
        self.counters["frames"] += chunk.frames
        return True

    def _make_outlet(self, out: _Out) -> Any:
        lsl, reader = self.lsl, out.reader
        options = self.settings.options.get(out.stream, StreamOptions())
        descriptor = reader.descriptor
        dtype = np.dtype(reader.dtype)
        if dtype.names:  # an event stream: numeric record fields as double channels
            out.fields = [n for n in dtype.names if dtype[n].kind in "iufb"]
            channels, fmt = len(out.fields), "cf_double64"
            labels, kind, rate = out.fields, options.type or "Markers", lsl.IRREGULAR_RATE
        else:
            out.fields = []
            channels = int(np.prod(reader.frame_shape)) if reader.frame_shape else 1
            fmt = FORMATS.get(dtype, "cf_double64")
            labels = descriptor.get("channel_labels") or [f"ch{i}" for i in range(channels)]
            kind, rate = options.type or "EEG", reader.sample_rate
        name = f"{self.spec.session}/{out.stream}"
        info = lsl.StreamInfo(
            name,
            kind,
            channels,
            rate,
            getattr(lsl, fmt),
            f"rigpipe:{self.spec.session}/{out.stream}",
        )
        self._describe(info.desc(), descriptor, labels, kind)
        outlet = lsl.StreamOutlet(info, options.chunk_frames, self.settings.max_buffered_s)
        self.counters["outlets"] += 1
        self.log.info("LSL outlet %s: %d channels, %s, %g Hz", name, channels, fmt, rate)
        return outlet

    def _describe(self, desc: Any, descriptor: dict[str, Any], labels: list, kind: str) -> None:
        """XDF meta-data: channels (label, unit, type, scale, location) and acquisition."""
        unit = str(descriptor.get("units", ""))
        scale = descriptor.get("scale")
        positions = descriptor.get("positions") or []
        fields = descriptor.get("position_fields") or ["x", "y"]
        channels = desc.append_child("channels")
        for index, label in enumerate(labels):
            channel = channels.append_child("channel")
            channel.append_child_value("label", str(label))
            channel.append_child_value("unit", unit)
            channel.append_child_value("type", kind)
            if isinstance(scale, list) and index < len(scale):
                channel.append_child_value("scale", repr(float(scale[index])))
            elif isinstance(scale, int | float):
                channel.append_child_value("scale", repr(float(scale)))
            if index < len(positions):
                location = channel.append_child("location")
                for axis, name in (("X", "x"), ("Y", "y"), ("Z", "z")):
                    if name in fields:
                        location.append_child_value(
                            axis, repr(float(positions[index][fields.index(name)]))
                        )
        acquisition = desc.append_child("acquisition")
        acquisition.append_child_value("manufacturer", "rigpipe")
        acquisition.append_child_value("session", self.spec.session)

    def _update_status(self) -> None:
        live = [o for o in self.outs if o.outlet is not None]
        self.counters["consumers"] = sum(1 for o in live if o.outlet.have_consumers())
        waiting = [o.stream for o in self.outs if o.reader is None]
        self.note = f"{len(live)} LSL outlet(s)" + (f"; waiting for {waiting}" if waiting else "")


WORKER = LslOutlet


def _stamps(stamps: np.ndarray, sample_rate: float) -> float | list[float]:
    """What ``push_chunk`` is given: the last stamp alone when the chunk's frames are one
    sample period apart (within 1 µs; liblsl then stamps the others from the nominal
    rate, the cheaper call), else every stamp."""
    if sample_rate > 0 and len(stamps) > 1:
        expected = stamps[-1] - np.arange(len(stamps) - 1, -1, -1) / sample_rate
        if np.abs(stamps - expected).max() < 1e-6:
            return float(stamps[-1])
    return stamps.tolist()
