"""An emulated Cerebus device behind pycbsdk 10.x's ``Session`` API.

It implements the part of ``pycbsdk.Session`` the blackrock source uses, with
the same method names and parameters (tests/peers/test_cbsdk_conformance.py
checks that against the installed pycbsdk), and the behaviour measured with
the real SDK (shared/ENVIRONMENT.md, tests/integration/test_blackrock_real.py):
the constructor blocks through the handshake and raises RuntimeError after
about 2.4 s when no device answers; the device streams, and the clock is
synchronised, from the moment the constructor returns; group batches arrive as
int16 ``(n, channels padded to an even count)`` with uint64 device-ns
timestamps, at most 32 samples per call, every data callback on one thread,
and an exception in a callback is printed and swallowed; spike events carry a
header with ``time``, ``chid``, ``type``, ``dlen``; the clock offset estimate
steps by about +0.7 ms shortly after its first use (0.25 s of conversions: a worker
slow to start still sees both sides of the step), then by tens of µs at each 2 s
probe; a CMP file's first line that is not a comment is its description; a
lost device just goes quiet.

Its own knobs come from ``RIGPIPE_CBSDK_EMULATOR`` (JSON): ``absent`` (no
device), ``start_s`` (the constructor blocks that long: a slow device),
``loss`` (probability that a 1 ms packet burst is dropped, counted in
``stats.packets_dropped``), ``lost_after_s`` (stop delivering, as a device that
was unplugged), ``ccf_groups`` (what a loaded CCF enables, e.g.
``{"30kHz": 256, "1kHz": 16}``), ``spike_rate_hz`` (per channel).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from pycbsdk import ChannelType, DeviceType, SampleRate, Stats

_HZ = {
    SampleRate.SR_500: 500,
    SampleRate.SR_1kHz: 1000,
    SampleRate.SR_2kHz: 2000,
    SampleRate.SR_10kHz: 10000,
    SampleRate.SR_30kHz: 30000,
    SampleRate.SR_RAW: 30000,
}
_BY_NAME = {
    "500": SampleRate.SR_500,
    "1kHz": SampleRate.SR_1kHz,
    "2kHz": SampleRate.SR_2kHz,
    "10kHz": SampleRate.SR_10kHz,
    "30kHz": SampleRate.SR_30kHz,
    "raw": SampleRate.SR_RAW,
}
_TICK_S = 0.001
_DEVICE_EPOCH_NS = 1_000_000_000_000  # the device clock does not share the host's origin
_ABSENT_S = 2.4  # how long the real SDK waits for a device before giving up
_FIRST_STEP = (0.25, 720_000)  # (s after start, ns): data-packet floor -> probe offsets
_PROBE_S = 2.0  # the SDK probes the clock every 2 s; each probe moves the estimate a little


def _knobs() -> dict[str, Any]:
    return json.loads(os.environ.get("RIGPIPE_CBSDK_EMULATOR", "{}"))


@dataclass
class _Group:
    rate: SampleRate
    channels: list[int]
    delivered: int = 0  # samples so far
    table: np.ndarray | None = None


class Session:
    """Emulated ``pycbsdk.Session``: a device that streams from a thread of its own."""

    def __init__(
        self, device_type: DeviceType = DeviceType.LEGACY_NSP, callback_queue_depth: int = 16384
    ) -> None:
        self.knobs = _knobs()
        if self.knobs.get("absent"):
            time.sleep(_ABSENT_S)
            raise RuntimeError(
                "Failed to create session: Failed to detect protocol: Timed out waiting for device"
            )
        time.sleep(float(self.knobs.get("start_s", 0.0)))
        self.device_type = DeviceType(device_type)
        self._groups: dict[int, _Group] = {}
        self._batch_callbacks: dict[int, list] = {}
        self._event_callbacks: list = []
        self._positions: dict[int, tuple[int, int, int, int]] = {}
        self._stats = {"packets_dropped": 0, "packets_received": 0, "packets_delivered": 0}
        self._rng = np.random.default_rng(self.knobs.get("seed", 0))
        self._reported: set[str] = set()
        self._start = time.monotonic()
        self._first_conversion: float | None = None  # the clock estimate's steps count from it
        self._device_start_ns = _DEVICE_EPOCH_NS + time.monotonic_ns()
        self._running = True
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._deliver, name="cbsdk-emulator", daemon=True)
        self._thread.start()

    # -- configuration --------------------------------------------------------------------------
    def load_ccf_sync(self, filename: str, timeout: float = 5.0):
        if not os.path.isfile(filename):
            raise RuntimeError(f"Failed to load CCF {filename}")
        groups = self.knobs.get("ccf_groups", {"30kHz": 256, "1kHz": 16})
        first = 1
        for name, count in groups.items():
            rate = _BY_NAME[name]
            self._groups[int(rate)] = _Group(rate, list(range(first, first + count)))
            first += count

    def set_sample_group(
        self,
        chans: int | list[int] | None,
        channel_type: ChannelType,
        rate: SampleRate,
        disable_others: bool = False,
    ) -> None:
        ids = list(range(1, chans + 1)) if isinstance(chans, int) else list(chans or range(1, 257))
        if disable_others:
            self._groups.clear()
        self._groups[int(rate)] = _Group(SampleRate(rate), ids)

    def set_ac_input_coupling(
        self, chans: int | list[int] | None, channel_type: ChannelType, enabled: bool
    ) -> None:
        self.ac_coupling = enabled

    def load_channel_map(self, filepath: str, start_chan: int = 1, hs_id: int = 0):
        """Legacy column order (col row bank elec label) after the description line."""
        if not os.path.isfile(filepath):
            raise RuntimeError(f"Failed to load channel map: Failed to open CMP file: {filepath}")
        rows, described = [], False
        for line in Path(filepath).read_text().splitlines():
            if not line.strip() or line.startswith("//"):
                continue
            if not described:
                described = True  # the first line that is not a comment describes the map
                continue
            fields = line.split()
            try:
                col, row, bank, elec = int(fields[0]), int(fields[1]), fields[2], int(fields[3])
            except (IndexError, ValueError):
                continue
            rows.append((col, row, ord(bank[0].upper()) - ord("A") + start_chan // 32, elec))
        if not rows:
            raise RuntimeError(
                f"Failed to load channel map: No valid entries found in CMP file: {filepath}"
            )
        for col, row, bank, elec in rows:
            # pycbsdk's slots for a CMP-mapped channel: (x, y, size, headstage id), in µm
            self._positions[bank * 32 + elec] = (col * 400, row * 400, 400, hs_id)

    def sync(self, timeout: float = 5.0):
        time.sleep(0.001)

    def get_group_channels(self, group_id: int) -> list[int]:
        group = self._groups.get(group_id)
        return list(group.channels) if group else []

    def get_channel_label(self, chan_id: int) -> str | None:
        return f"chan{chan_id}"

    def get_channel_conversion(self, chan_id: int, source: str = "physical") -> dict | None:
        return {"scale": 0.25, "offset": 0.0, "unit": "uV"}

    def get_matching_channel_ids(self, channel_type: ChannelType, n_chans: int = 0) -> list[int]:
        ids = sorted({c for g in self._groups.values() for c in g.channels})
        return ids[:n_chans] if n_chans else ids

    def get_channels_positions(
        self, channel_type: ChannelType, n_chans: int = 0
    ) -> list[tuple[int, int, int, int]]:
        ids = self.get_matching_channel_ids(channel_type, n_chans)
        return [self._positions.get(c, (0, 0, 0, 0)) for c in ids]

    # -- callbacks ------------------------------------------------------------------------------
    def on_group_batch(self, rate: SampleRate = SampleRate.SR_30kHz):
        def decorator(fn):
            self._batch_callbacks.setdefault(int(rate), []).append(fn)
            return fn

        return decorator

    def on_event(self, channel_type: ChannelType | None = ChannelType.FRONTEND):
        def decorator(fn):
            self._event_callbacks.append(fn)
            return fn

        return decorator

    # -- clock and state ------------------------------------------------------------------------
    def device_to_monotonic_batch(self, device_ns, stream_id: int = -1) -> list[float]:
        if self._first_conversion is None:
            self._first_conversion = time.monotonic()
        offset = self._offset_ns(time.monotonic() - self._first_conversion)
        return [(int(t) - _DEVICE_EPOCH_NS + offset) / 1e9 for t in device_ns]

    def _offset_ns(self, elapsed_s: float) -> int:
        """The SDK's estimate of (host - device) minus the truth: it moves, as the real one does."""
        after, step = _FIRST_STEP
        if elapsed_s < after:
            return -step  # the data-packet floor: late by the network and queueing delay
        probe = int(elapsed_s // _PROBE_S)
        return int(np.random.default_rng(probe).integers(-91_000, 49_000)) if probe else 0

    @property
    def stats(self) -> Stats:
        return Stats(**self._stats)

    @property
    def running(self) -> bool:
        return self._running

    def close(self):
        self._running = False
        self._closed.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the device -----------------------------------------------------------------------------
    def _deliver(self) -> None:
        """One burst of packets per millisecond, as a Cerebus sends them."""
        loss = float(self.knobs.get("loss", 0.0))
        lost_after = self.knobs.get("lost_after_s")
        spike_rate = float(self.knobs.get("spike_rate_hz", 5.0))
        tick = 0
        while not self._closed.wait(
            max(0.0, self._start + (tick + 1) * _TICK_S - time.monotonic())
        ):
            tick += 1
            if lost_after is not None and time.monotonic() - self._start > lost_after:
                continue  # unplugged: nothing arrives, and nothing says so
            now_ns = time.monotonic_ns()
            dropped = self._rng.random() < loss
            for group_id, group in list(self._groups.items()):
                hz = _HZ[group.rate]
                due = tick * hz // 1000
                n = due - group.delivered
                if n <= 0:
                    continue
                first = group.delivered
                group.delivered = due
                if dropped:
                    self._stats["packets_dropped"] += n
                    continue
                self._batch(group_id, group, first, n, hz)
            if not dropped:
                self._spikes(spike_rate, now_ns)

    def _batch(self, group_id: int, group: _Group, first: int, n: int, hz: int) -> None:
        width = len(group.channels) + len(group.channels) % 2  # padded to an even count
        if group.table is None:
            t = np.arange(hz)[:, None] / hz
            phase = np.arange(width)[None, :] / max(1, width)
            group.table = (400 * np.sin(2 * np.pi * (10 * t + phase))).astype(np.int16)
        start = first % hz
        samples = np.take(group.table, range(start, start + n), axis=0, mode="wrap")
        # The device stamps sample k from its own sample clock: no arrival jitter.
        index = first + np.arange(n)
        stamps = (self._device_start_ns + np.round(index * (1e9 / hz))).astype(np.uint64)
        for offset in range(0, n, 32):  # at most 32 samples per call, like the SDK
            for fn in list(self._batch_callbacks.get(group_id, [])):
                self._call(
                    fn, samples[offset : offset + 32].copy(), stamps[offset : offset + 32].copy()
                )
        self._stats["packets_received"] += n
        self._stats["packets_delivered"] += n

    def _spikes(self, rate_hz: float, now_ns: int) -> None:
        channels = [c for g in self._groups.values() for c in g.channels]
        if not channels or not self._event_callbacks:
            return
        for _ in range(self._rng.poisson(rate_hz * len(channels) * _TICK_S)):
            header = SimpleNamespace(
                time=_DEVICE_EPOCH_NS + now_ns,
                chid=int(self._rng.choice(channels)),
                type=int(self._rng.integers(1, 4)),
                dlen=24,
            )
            for fn in list(self._event_callbacks):
                self._call(fn, header, bytes(96))

    def _call(self, fn, *args) -> None:
        """As the SDK does: an exception in a callback is printed once and swallowed."""
        try:
            fn(*args)
        except Exception as exc:
            if type(exc).__name__ not in self._reported:
                self._reported.add(type(exc).__name__)
                print("From cffi callback:", file=sys.stderr)
                traceback.print_exc()
