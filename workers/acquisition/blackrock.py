"""The ``blackrock`` source: a Cerebus NSP, Gemini Hub or nPlayServer through pycbsdk 10.x.

Setup is either a CCF file (``ccf``) or programmatic (``channels`` of
``channel_type`` at ``sample_rate``, with ``ac_coupling``), never both; a CMP
channel map (``cmp``) adds electrode positions. Each sample group in ``groups``
becomes a ring ``<worker>/<group>`` (``acq/30kHz``), filled from pycbsdk's
``on_group_batch`` callback: one numpy slice and one ring write per batch, no
per-sample Python. Spikes from ``on_event(FRONTEND)`` go to ``<worker>/spikes``;
``<worker>/clock`` records, per batch, a device timestamp and the host monotonic
time the session's clock synchronisation maps it to, so both clocks are kept.
Ring timestamps are host monotonic nanoseconds (the clock every reader has).

The device is watched: no batch for ``lost_after_s`` (pycbsdk does not report a
lost device) or an absent device at start is a :class:`SourceError` (an error
event, then a non-zero exit, so the restart policy applies). Packets the
session's callback queue dropped are reported as warning events and counted in
``rigpipe status``; the recorder sees them as timestamp jumps and writes gaps.

Timestamps: pycbsdk maps device time to host time with an offset it keeps
re-estimating (a step of about +0.7 ms shortly after start, then tens of µs).
Applying each estimate to its batch would make the ring's timestamps jump and
go backwards, so :class:`DeviceClock` keeps one offset and slews it towards
the SDK's estimate by at most 0.5 % of the elapsed time: timestamps stay
strictly increasing, each sample period within 0.5 % of nominal. ``acq/clock``
keeps, per batch, the device time, the host time given to it and the SDK's own
estimate.

On Linux the SDK needs ``net.core.rmem_max`` >= 8388608; the source checks it
first and says how to set it.

pycbsdk is imported here only. ``RIGPIPE_CBSDK_SESSION=module:Class`` replaces
its ``Session`` class: the tests use it to run against an emulated device.
"""

from __future__ import annotations

import importlib
import os
import threading
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import numpy as np

from pipeline import extras
from pipeline.host import clock
from pipeline.settings import Settings
from workers.acquisition.source import SPIKE_CAPACITY, Source, SourceError
from workers.acquisition.synthetic import SPIKE_DTYPE

#: Config name -> (pycbsdk SampleRate member, Hz).
RATES = {
    "500": ("SR_500", 500.0),
    "1kHz": ("SR_1kHz", 1000.0),
    "2kHz": ("SR_2kHz", 2000.0),
    "10kHz": ("SR_10kHz", 10000.0),
    "30kHz": ("SR_30kHz", 30000.0),
    "raw": ("SR_RAW", 30000.0),
}
RateName = Literal["500", "1kHz", "2kHz", "10kHz", "30kHz", "raw"]
#: Every ``Session`` member this source touches; tests/peers/test_cbsdk_conformance.py
#: checks each against the installed pycbsdk and the emulator.
SESSION_API = (
    "__init__",
    "load_ccf_sync",
    "set_sample_group",
    "set_ac_input_coupling",
    "load_channel_map",
    "sync",
    "get_group_channels",
    "get_channel_label",
    "get_channel_conversion",
    "get_matching_channel_ids",
    "get_channels_positions",
    "on_group_batch",
    "on_event",
    "device_to_monotonic_batch",
    "stats",
    "close",
)
CLOCK_DTYPE = np.dtype(
    [("device_ns", "<i8"), ("host_ns", "<i8"), ("sdk_host_ns", "<i8"), ("group", "<i2")]
)
SESSION_SEAM = "RIGPIPE_CBSDK_SESSION"
#: The SDK's own minimum socket receive buffer on Linux ("Receive buffer size too small").
REQUIRED_RMEM_MAX = 8388608
RMEM_MAX = Path("/proc/sys/net/core/rmem_max")


def receive_buffer_max(path: Path = RMEM_MAX) -> int | None:
    """``net.core.rmem_max`` in bytes, or None where there is no such setting (not Linux)."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def check_receive_buffer(found: int | None) -> None:
    """Refuse, in one line that says the fix, a receive buffer limit the SDK cannot start with."""
    if found is not None and found < REQUIRED_RMEM_MAX:
        raise SourceError(
            f"net.core.rmem_max is {found} bytes; the Blackrock SDK needs at least "
            f"{REQUIRED_RMEM_MAX}: sudo sysctl -w net.core.rmem_max={REQUIRED_RMEM_MAX} "
            "(and put it in /etc/sysctl.d/ to keep it after a reboot)"
        )


class DeviceClock:
    """Device ns -> host monotonic ns through an offset that follows the SDK's estimate slowly.

    The offset is a line through knots, one per batch: ``update(device_ns,
    estimate)`` adds a knot at the batch's last sample whose offset moves from
    the previous knot's towards ``estimate`` (host - device ns) by at most
    ``slew`` times the device time between them, and ``host_ns`` interpolates
    between knots. So every sample period stays within ``slew`` of nominal and
    timestamps are strictly increasing, also across batches and groups. A
    difference over ``step_ns`` (a device clock reset, a host clock step) is
    taken at once and counted in ``steps``.
    """

    KNOTS = 16  # enough to cover the batches of every group still being converted

    def __init__(self, slew: float = 0.005, step_ns: int = 50_000_000) -> None:
        self.slew = slew
        self.step_ns = step_ns
        self.steps = 0
        self._device: list[int] = []
        self._offset: list[int] = []

    @property
    def offset(self) -> int | None:
        return self._offset[-1] if self._offset else None

    def update(self, device_ns: int, estimate: int) -> None:
        if not self._device or abs(estimate - self._offset[-1]) > self.step_ns:
            self.steps += bool(self._device)
            self._device, self._offset = [device_ns], [estimate]
            return
        if device_ns <= self._device[-1]:
            return  # another group's batch that the line already covers
        allowed = int((device_ns - self._device[-1]) * self.slew)
        moved = max(-allowed, min(allowed, estimate - self._offset[-1]))
        self._device.append(device_ns)
        self._offset.append(self._offset[-1] + moved)
        del self._device[: -self.KNOTS], self._offset[: -self.KNOTS]

    def host_ns(self, device_ns: np.ndarray) -> np.ndarray:
        """Host ns of each device ns (int64); before the first knot, its offset."""
        last = self._offset[-1]
        if len(self._offset) == 1 or (
            last == self._offset[-2] and device_ns[0] >= self._device[-2]
        ):
            return device_ns + last  # the usual case once the offset has settled
        t0, o0 = self._device[0], self._offset[0]  # interpolate small numbers: exact in float64
        knots = np.asarray(self._device, np.int64) - t0
        offsets = np.asarray(self._offset, np.int64) - o0
        moved = np.interp((device_ns - t0).astype(np.float64), knots, offsets)
        return device_ns + o0 + np.round(moved).astype(np.int64)


class BlackrockSettings(
    Settings,
    frozen=True,
    kw_only=True,
    tag_field="source",
    tag="blackrock",
):
    """``[workers.parameters]`` of an acquisition worker with ``source = "blackrock"``."""

    device: Literal["NSP", "HUB1", "HUB2", "HUB3", "NPLAY", "LEGACY_NSP"] = "NSP"
    ccf: str = ""
    channels: Annotated[int, msgspec.Meta(ge=0)] = 0
    channel_type: Literal["FRONTEND", "ANALOG_IN"] = "FRONTEND"
    sample_rate: RateName = "30kHz"
    ac_coupling: bool = True
    groups: list[RateName] = msgspec.field(default_factory=list)
    cmp: str = ""
    publish_uv: bool = False
    buffer_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    lost_after_s: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    queue_depth: Annotated[int, msgspec.Meta(ge=1024)] = 16384


def _groups(settings: BlackrockSettings) -> list[str]:
    return list(settings.groups) or [settings.sample_rate]


def session_class() -> Any:
    """pycbsdk's Session, or the class ``RIGPIPE_CBSDK_SESSION`` names (tests only)."""
    seam = os.environ.get(SESSION_SEAM)
    if seam:
        module, _, name = seam.partition(":")
        return getattr(importlib.import_module(module), name)
    return extras.require("blackrock", "pycbsdk", "the blackrock source").Session


def _enums() -> Any:
    """pycbsdk's enums (the module itself imports without its native library)."""
    import pycbsdk

    return pycbsdk


class BlackrockSource(Source):
    @classmethod
    def outputs(cls, settings: Any) -> list[str]:
        return [*_groups(settings), "spikes", "clock"]

    @classmethod
    def check(cls, settings: Any) -> None:
        if settings.ccf and settings.channels:
            raise ValueError(
                "ccf and channels are two setup styles; use one: a CCF file, "
                "or channels + channel_type + sample_rate"
            )
        if not settings.ccf and not settings.channels:
            raise ValueError("set ccf = 'file.ccf', or channels = N (at least one channel)")
        for name in ("ccf", "cmp"):
            path = getattr(settings, name)
            if path and not Path(path).is_file():
                raise ValueError(f"{name} file {path!r} does not exist")
        if settings.channels and settings.groups and settings.groups != [settings.sample_rate]:
            raise ValueError(
                f"programmatic setup samples one group ({settings.sample_rate}); "
                "leave groups empty or list only that one"
            )
        if settings.ccf and not settings.groups:
            raise ValueError("with a ccf, list the sample groups it enables: groups = ['30kHz']")

    # -- opening ----------------------------------------------------------------------------------
    def open(self) -> None:
        s = self.settings
        cb = _enums()
        self.lock = threading.Lock()  # callbacks run on the SDK's thread; counters are shared
        self.rings: dict[int, Any] = {}
        self.last_batch = clock.now_s()
        self.device_clock = DeviceClock()
        self.counters = self.worker.counters
        self.counters.update(batches=0, frames=0, spikes=0, packets_dropped=0, clock_synced=0)
        Session = session_class()
        if not os.environ.get(SESSION_SEAM):
            check_receive_buffer(receive_buffer_max())
        try:
            self.session = Session(
                device_type=cb.DeviceType[s.device], callback_queue_depth=s.queue_depth
            )
        except (RuntimeError, OSError) as exc:
            raise SourceError(f"no {s.device} device: {exc}") from None
        ctype = cb.ChannelType[s.channel_type]
        if s.ccf:
            self._sdk(f"ccf file {str(s.ccf)!r}", self.session.load_ccf_sync, str(s.ccf))
        else:
            rate = cb.SampleRate[RATES[s.sample_rate][0]]
            what = f"{s.channels} {s.channel_type} channel(s) at {s.sample_rate}"
            self._sdk(what, self.session.set_sample_group, s.channels, ctype, rate, True)
            self._sdk(what, self.session.set_ac_input_coupling, s.channels, ctype, s.ac_coupling)
        if s.cmp:
            self._sdk(f"cmp file {str(s.cmp)!r}", self.session.load_channel_map, str(s.cmp))
        self._sdk("the configuration", self.session.sync)
        positions = self._positions(ctype) if s.cmp else {}
        # Every ring exists before the first callback is registered: the SDK's clock is
        # synchronised when Session() returns, so a batch can arrive at once.
        batches = [self._open_group(cb, group, positions) for group in _groups(s)]
        self.spikes = self.worker.writer(
            "spikes", SPIKE_DTYPE, (), SPIKE_CAPACITY, 0.0, {"source": self._device_info()}
        )
        self.clock = self.worker.writer("clock", CLOCK_DTYPE, (), 1 << 16, 0.0, {})
        with self.lock:  # the lost-device watch starts now, not before a slow Session()
            self.last_batch = clock.now_s()
        for rate, on_batch in batches:
            self.session.on_group_batch(rate)(on_batch)
        self.session.on_event(ctype)(self._on_event)

    def _sdk(self, what: str, call: Any, *args: Any) -> None:
        """Call the SDK; its refusal becomes one line naming what was refused."""
        try:
            call(*args)
        except (RuntimeError, OSError, ValueError) as exc:
            raise SourceError(f"{what} was refused by the SDK: {exc}") from None

    def _device_info(self) -> dict[str, Any]:
        return {"kind": "blackrock", "device": self.settings.device}

    def _positions(self, ctype: Any) -> dict[int, list[int]]:
        """Channel id -> [x, y, bank, electrode].

        pycbsdk gives (x, y, size, headstage) per channel from the CMP; a front-end
        channel's bank (0 = A) and electrode (1-32) follow from its id.
        """
        ids = self.session.get_matching_channel_ids(ctype)
        found = self.session.get_channels_positions(ctype)
        return {
            chan: [int(x), int(y), (chan - 1) // 32, (chan - 1) % 32 + 1]
            for chan, (x, y, _size, _headstage) in zip(ids, found, strict=False)
        }

    def _open_group(self, cb: Any, group: str, positions: dict[int, list[int]]) -> tuple[Any, Any]:
        """Create the group's ring; return its SDK rate and the batch callback to register."""
        member, hz = RATES[group]
        group_id = int(cb.SampleRate[member])
        channels = self.session.get_group_channels(group_id)
        if not channels:
            raise SourceError(f"sample group {group} has no channels; check the CCF or channels")
        scales, units = [], set()
        for chan in channels:
            conversion = self.session.get_channel_conversion(chan)
            if conversion is None:
                raise SourceError(f"channel {chan} has no scaling to physical units")
            scales.append(conversion["scale"])
            units.add(conversion["unit"])
        descriptor = {
            "channel_ids": list(channels),
            "channel_labels": [self.session.get_channel_label(c) or f"ch{c}" for c in channels],
            "positions": [positions.get(c, [0, 0, 0, 0]) for c in channels],
            "position_fields": ["x", "y", "bank", "electrode"],
            "scale": scales if not self.settings.publish_uv else 1.0,
            "units": "/".join(sorted(units)),
            "source": {**self._device_info(), "group": group},
        }
        dtype = np.float32 if self.settings.publish_uv else np.int16
        capacity = max(1024, round(self.settings.buffer_s * hz))
        ring = self.worker.writer(group, dtype, (len(channels),), capacity, hz, descriptor)
        scale = np.asarray(scales, np.float32)
        self.rings[group_id] = ring

        def on_batch(samples: np.ndarray, timestamps: np.ndarray) -> None:
            # The SDK pads the channel axis to an even count: keep the group's own channels.
            data = samples[:, : len(channels)]
            if self.settings.publish_uv:
                data = data * scale
            host = self._host_ns(timestamps, group_id)
            if host is None:
                return
            ring.write(data, host)
            with self.lock:
                self.last_batch = clock.now_s()
                self.counters["batches"] += 1
                self.counters["frames"] += len(data)

        return cb.SampleRate[member], on_batch

    # -- callbacks (on the SDK's thread) --------------------------------------------------------
    def _host_ns(self, device_ns: np.ndarray, group_id: int) -> np.ndarray | None:
        """Host monotonic ns per sample: the SDK's estimate for the batch's last sample
        (one conversion per batch), applied through :class:`DeviceClock`.

        None before the session's first clock sync: such batches are not
        published (stamping them from their arrival time would give a stream
        whose timestamps jitter, then jump when the sync arrives); they are counted.
        """
        device = device_ns.astype(np.int64)
        last = int(device[-1])
        try:
            (host_s,) = self.session.device_to_monotonic_batch([last], group_id)
        except RuntimeError:  # "No clock sync data available"
            with self.lock:
                self.counters["before_clock_sync"] = self.counters.get("before_clock_sync", 0) + 1
            return None
        estimate = round(host_s * 1e9) - last
        self.device_clock.update(last, estimate)
        self.counters["clock_synced"] = 1
        host = self.device_clock.host_ns(device)
        record = np.zeros(1, CLOCK_DTYPE)
        record["device_ns"], record["group"] = last, group_id
        record["host_ns"], record["sdk_host_ns"] = host[-1], last + estimate
        self.clock.write(record, record["host_ns"])
        return host

    def _on_event(self, header: Any, data: Any) -> None:
        if self.device_clock.offset is None:
            return  # no batch yet: no clock to put the spike on
        record = np.zeros(1, SPIKE_DTYPE)
        record["timestamp_ns"] = self.device_clock.host_ns(np.array([int(header.time)], np.int64))
        record["channel"] = int(header.chid)
        record["unit"] = int(header.type)
        self.spikes.write(record, record["timestamp_ns"])
        with self.lock:
            self.counters["spikes"] += 1

    # -- the worker's loop ----------------------------------------------------------------------
    def step(self) -> None:
        with self.lock:
            silent_s = clock.now_s() - self.last_batch
        if silent_s > self.settings.lost_after_s:
            raise SourceError(
                f"{self.settings.device}: no data for {silent_s:.1f} s; the device was lost"
            )
        self._count(
            "packets_dropped",
            self.session.stats.packets_dropped,
            "packet(s) dropped by the SDK's callback queue; the recording shows them as gaps",
        )
        self._count(
            "clock_steps",
            self.device_clock.steps,
            f"step(s) of the {self.settings.device}'s clock by more than "
            f"{self.device_clock.step_ns / 1e6:g} ms; timestamps follow them at once",
        )
        self.worker.wait_until(clock.now_s() + 0.1)

    def _count(self, counter: str, value: int, what: str) -> None:
        """Report a counter that grew (``N <what> (M in all)``) and show it in status."""
        reported = int(self.counters.get(counter, 0))
        if value > reported:
            self.worker.report(f"{value - reported} {what} ({value} in all)")
            self.counters[counter] = value

    def close(self) -> None:
        session = getattr(self, "session", None)
        if session is not None:
            session.close()  # releases the device's shared memory and sockets
        for ring in [
            *getattr(self, "rings", {}).values(),
            getattr(self, "spikes", None),
            getattr(self, "clock", None),
        ]:
            if ring is not None:
                ring.close()
