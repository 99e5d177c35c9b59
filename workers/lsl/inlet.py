"""``lsl_inlet``: an LSL stream (an eye tracker, a task's markers...) into a ring.

The stream is found by any of ``name``, ``type``, ``source_id``, ``hostname``;
all that are given must match. The worker resolves continuously until it
appears (``rigpipe status`` says what it waits for), then fills
``<session>/<worker>/<output>``:

- numeric streams: frames ``(channels,)`` in the stream's own type, at its
  nominal rate (0 for an irregular stream), channel labels and units from its
  ``desc/channels``;
- string streams (markers): records ``(timestamp_ns, text)``, text UTF-8 up
  to 255 bytes.

Timestamps: liblsl applies its own clock synchronisation (``proc_clocksync``:
the outlet's clock mapped onto this machine's ``local_clock()``), then
:class:`~workers.lsl.common.ClockMap` maps that onto the host monotonic clock
the rings use. The correction liblsl measured is in the stream's descriptor
(``lsl.time_correction_s``) and, when it moves by more than 0.5 ms, in a
session event. When the outlet restarts, liblsl reconnects by itself (same
``source_id``); what was missed shows as a timestamp jump, which the recorder
writes as a gap.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.host import clock
from pipeline.settings import Settings
from pipeline.worker import Worker
from workers.lsl.common import DTYPES, STRING_FORMAT, ClockMap, pylsl

MARKER_DTYPE = np.dtype([("timestamp_ns", "<i8"), ("text", "S255")])
#: A pull sleeps in liblsl for this long, taking samples as they arrive (liblsl's
#: ``pull_chunk`` with a timeout fills the buffer until the timeout passes), then the
#: worker writes them to the ring in one go and serves its bus: about 100 wake-ups a
#: second, as a bare pylsl puller does. So frames reach the ring in batches of up to
#: 10 ms. The inlet used to poll without waiting and sleep 1 ms when nothing had come:
#: a thousand wake-ups a second, 2.5x the CPU of a bare pylsl puller at 256 channels
#: (1.1x now; ``bench/lsl.py``, docs/performance.md).
PULL_WAIT_S = 0.01
#: Match keys of the config -> the XPath field of LSL's stream info.
MATCH = {"name": "name", "type": "type", "source_id": "source_id", "hostname": "hostname"}


class InletSettings(Settings, frozen=True, kw_only=True):
    """``[workers.parameters]`` of ``kind = "lsl_inlet"``."""

    name: str = ""
    type: str = ""
    source_id: str = ""
    hostname: str = ""
    output: str = "data"
    buffer_s: float = 30.0  # what the ring keeps


def _quote(value: str) -> str:
    """An XPath string literal for ``value`` (LSL's resolver takes XPath 1.0)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    parts = value.split("'")
    return "concat(" + ', "\'", '.join(f"'{p}'" for p in parts) + ")"


class LslInlet(Worker):
    Settings = InletSettings

    @classmethod
    def outputs(cls, settings: Any) -> list[str]:
        return [settings.output]

    @classmethod
    def check(cls, settings: Any) -> None:
        if not any(getattr(settings, key) for key in MATCH):
            raise ValueError("say which LSL stream: give name, type, source_id or hostname")

    def setup(self) -> None:
        self.lsl = pylsl()
        self.clock = ClockMap(self.lsl.local_clock)
        given = {key: getattr(self.settings, key) for key in MATCH if getattr(self.settings, key)}
        self.wanted = ", ".join(f"{k}={v!r}" for k, v in given.items())
        predicate = " and ".join(f"{MATCH[k]}={_quote(v)}" for k, v in given.items())
        self.resolver = self.lsl.ContinuousResolver(pred=predicate)
        self.inlet: Any = None
        self.ring: Any = None
        self.strings = False
        self.correction_s = 0.0
        self._next_correction = 0.0
        self.counters.update(frames=0, connected=0, time_correction_us=0)
        self.note = f"waiting for the LSL stream {self.wanted}"

    def step(self) -> None:
        if self.inlet is None:
            found = self.resolver.results()
            if not found:
                self.wait_until(clock.now_s() + 0.25)
                return
            self._connect(found[0])
        now = clock.now_s()
        if now >= self._next_correction:
            self._next_correction = now + 5.0
            self._correct()
        self._pull(wait_s=PULL_WAIT_S)

    def teardown(self) -> None:
        if getattr(self, "inlet", None) is not None:
            self.inlet.close_stream()
        if getattr(self, "ring", None) is not None:
            self.ring.close()

    # -- connecting -----------------------------------------------------------------------------
    def _connect(self, found: Any) -> None:
        lsl = self.lsl
        self.inlet = lsl.StreamInlet(
            found,
            max_buflen=max(1, int(self.settings.buffer_s)),
            recover=True,
            processing_flags=lsl.proc_clocksync,
        )
        info = self.inlet.info(timeout=5.0)
        channels, rate = info.channel_count(), info.nominal_srate()
        self.strings = info.channel_format() == STRING_FORMAT
        labels, units = _channels(info, channels)
        source = {
            "kind": "lsl",
            "name": info.name(),
            "type": info.type(),
            "source_id": info.source_id(),
            "hostname": info.hostname(),
            "nominal_srate": rate,
        }
        self._correct()
        descriptor = {
            "channel_labels": labels,
            "units": units,
            "source": source,
            "lsl": {"time_correction_s": self.correction_s, "created_at": info.created_at()},
        }
        capacity = max(1024, int(self.settings.buffer_s * max(rate, 100.0)))
        if self.strings:
            self.ring = self.writer(
                self.settings.output, MARKER_DTYPE, (), capacity, 0.0, descriptor
            )
        else:
            dtype = DTYPES.get(info.channel_format(), np.float64)
            self.ring = self.writer(
                self.settings.output, dtype, (channels,), capacity, rate, descriptor
            )
            self._buffer = np.zeros((1024, channels), dtype)
        self.inlet.open_stream(timeout=5.0)
        self.counters["connected"] = 1
        self.note = f"from LSL {info.name()} ({info.type()}) on {info.hostname()}"
        self.report(
            f"LSL stream {info.name()!r} ({channels} channels, {rate:g} Hz) from "
            f"{info.hostname()} into {self.spec.session}/{self.name}/{self.settings.output}",
            "info",
        )

    def _correct(self) -> None:
        """Read liblsl's clock offset to the outlet; say so when it moves by > 0.5 ms."""
        try:
            correction = float(self.inlet.time_correction(timeout=1.0))
        except Exception as exc:  # pylsl raises TimeoutError, or LostError for a gone outlet
            self.log.info("no LSL time correction yet: %s", exc)
            return
        if abs(correction - self.correction_s) > 0.0005:
            self.report(
                f"LSL time correction for {self.wanted}: {correction * 1e3:+.3f} ms "
                f"(was {self.correction_s * 1e3:+.3f} ms)",
                "info",
            )
        self.correction_s = correction
        self.counters["time_correction_us"] = round(correction * 1e6, 1)

    # -- data -----------------------------------------------------------------------------------
    def _pull(self, wait_s: float) -> bool:
        if self.strings:
            samples, stamps = self.inlet.pull_chunk(timeout=wait_s, max_samples=1024)
            if not stamps:
                return False
            records = np.zeros(len(stamps), MARKER_DTYPE)
            records["timestamp_ns"] = self.clock.to_host_ns(stamps)
            records["text"] = [str(s[0]).encode()[:255] for s in samples]
            self.ring.write(records, records["timestamp_ns"])
        else:
            _, stamps = self.inlet.pull_chunk(
                timeout=wait_s, max_samples=len(self._buffer), dest_obj=self._buffer
            )
            if not stamps:
                return False
            n = len(stamps)
            self.ring.write(self._buffer[:n], self.clock.to_host_ns(stamps))
        self.counters["frames"] += len(stamps)
        return True


def _channels(info: Any, count: int) -> tuple[list[str], str]:
    """Channel labels and units from ``desc/channels/channel`` (XDF conventions)."""
    labels: list[str] = []
    units: set[str] = set()
    channel = info.desc().child("channels").child("channel")
    while not channel.empty() and len(labels) < count:
        labels.append(channel.child_value("label") or f"ch{len(labels)}")
        if unit := channel.child_value("unit"):
            units.add(unit)
        channel = channel.next_sibling()
    labels += [f"ch{i}" for i in range(len(labels), count)]
    return labels, "/".join(sorted(units))


WORKER = LslInlet
