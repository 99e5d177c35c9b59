"""A Cerebus device on loopback that the real pycbsdk 10.x native library talks to.

It plays nPlayServer (``DeviceType.NPLAY``): it listens on 127.0.0.1:51001 and
sends to 127.0.0.1:51002, where the SDK binds. Packet layouts are those of
CereLink's ``cbproto/types.h`` (protocol 4.2: a 16-byte header ``<QHHHBB``
time, chid, type, dlen in 32-bit words, instrument, reserved); the sizes below
were read with ``offsetof()`` from that header.

What it answers (what the SDK needs to come up, learned by running it):

* ``SYSSETRUNLEV`` -> ``SYSREPRUNLEV`` at runlevel 50 (RUNNING), so the SDK
  skips its hard reset;
* ``REQCONFIGALL`` -> ``REPCONFIGALL``, ``PROCREP`` (version 4.2), ``GROUPREP``
  1-6, one ``CHANREP`` per front-end channel, then ``SYSREP``;
* every ``CHANSET*`` is stored and echoed as its report type (type - 0x80), so
  ``set_sample_group``, CCF and CMP take effect and ``sync()`` sees them;
* ``NPLAYSET`` (the SDK's clock probe) -> ``NPLAYREP`` whose ``etime`` is the
  device time at which the kernel received the probe (``SO_TIMESTAMPNS``):
  stamping the time Python got round to it biases the SDK's offset estimate.

What it sends: each millisecond one datagram with a group packet per sample
of every enabled group (``time`` = 30 kHz tick, ``type`` = group), and every
``spike_every`` ticks a spike packet. Values are known from the tick alone:
channel index ``i`` of a group holds ``int16(uint16(tick + 7919 * i))``, so a
reader can check every value and that no tick is missing or repeated. Spike
``k`` is at tick ``k * spike_every + 17`` on the ``k % n``-th front-end channel
(1-based id), unit ``k % 3 + 1``.

Run it as ``python -m tests.peers.cerebus_device KNOBS_JSON READY_FILE``. Once
bound, it writes READY_FILE (JSON: ``t0_ns``, the host ``CLOCK_MONOTONIC`` ns
of tick 0). Knobs: ``channels`` (front-end channels, default 32),
``groups`` (what is enabled at start, e.g. ``{"30kHz": 16}``), ``spike_every``
(ticks, default 3000), ``first_answer_delay_s`` (a slow device: the first
runlevel answer, which the SDK's protocol detection waits 2 s for, comes that
much later), ``silent_after_s`` (device lost: stop sending and answering).
SIGUSR1 also makes it go silent. It exits on SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

DEVICE = ("127.0.0.1", 51001)
HOST = ("127.0.0.1", 51002)
HZ = 30000
HEADER = struct.Struct("<QHHHBB")
CONFIG = 0x8000  # cbPKTCHAN_CONFIGURATION
RUNNING = 50
# packet types
SYSREP, SYSREPRUNLEV, REPCONFIGALL, PROCREP, GROUPREP = 0x10, 0x12, 0x08, 0x21, 0x30
REQCONFIGALL, SYSSETRUNLEV, NPLAYSET, NPLAYREP = 0x88, 0x92, 0xDC, 0x5C
CHANSET_FIRST, CHANSET_LAST, CHANREP = 0xC0, 0xCF, 0x40
# sizes and offsets (cbproto/types.h, measured with offsetof)
CHANINFO_SIZE, GROUPINFO_SIZE, PROCINFO_SIZE, SYSINFO_SIZE, SPK_SIZE = 680, 592, 128, 40, 288
NPLAY_ETIME = 32
CHAN_FE_CAPS = 0x107  # cbCHAN_EXISTS | CONNECTED | ISOLATED | AINP: a front-end channel
AINP_RAWSTREAM = 0x40  # cbAINP_RAWSTREAM
GROUP_PERIODS = {1: 60, 2: 30, 3: 15, 4: 3, 5: 1, 6: 1}  # ticks per sample
GROUP_IDS = {"500": 1, "1kHz": 2, "2kHz": 3, "10kHz": 4, "30kHz": 5, "raw": 6}
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
PRIME = 7919


def value(tick: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The sample the device sends for channel index ``index`` of a group at ``tick``."""
    return ((tick + PRIME * index) & 0xFFFF).astype(np.uint16).view(np.int16)


def packet(ptype: int, body: bytes = b"", chid: int = CONFIG, time_: int = 0) -> bytes:
    body = body + bytes(-len(body) % 4)
    return HEADER.pack(time_, chid, ptype, len(body) // 4, 0, 0) + body


def chaninfo(chan: int) -> bytearray:
    """A front-end channel as an NSP reports it: 0.25 uV per count, disabled."""
    info = bytearray(CHANINFO_SIZE - HEADER.size)
    struct.pack_into("<IIIII", info, 0, chan, 1, (chan - 1) // 32 + 1, (chan - 1) % 32 + 1, 0x107)
    # physcalin at 56 (cbSCALING: digmin, digmax, anamin, anamax, anagain, anaunit[8])
    struct.pack_into("<hhiii8s", info, 56 - 16, -32764, 32764, -8191, 8191, 1, b"uV")
    struct.pack_into("<hhiii8s", info, 220 - 16, -32764, 32764, -8191, 8191, 1, b"uV")  # scalin
    struct.pack_into("<16s", info, 184 - 16, f"chan{chan}".encode())
    return info


class Device:
    """The emulated device: one receive thread answering, one thread streaming."""

    def __init__(self, knobs: dict[str, Any]) -> None:
        self.knobs = knobs
        self.channels = int(knobs.get("channels", 32))
        self.spike_every = int(knobs.get("spike_every", 3000))
        self.info = {c: chaninfo(c) for c in range(1, self.channels + 1)}
        first = 1
        for name, count in knobs.get("groups", {}).items():
            for chan in range(first, first + count):
                self._set_group(chan, GROUP_IDS[name])
            first += count
        self.lock = threading.Lock()
        self.silent = threading.Event()
        self.stop = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        self.sock.bind(DEVICE)
        self.sock.settimeout(0.2)
        self.t0_ns = time.monotonic_ns()
        # CLOCK_REALTIME (the kernel's receive stamps) minus CLOCK_MONOTONIC
        self.realtime_offset_ns = time.time_ns() - time.monotonic_ns()
        self.first_delay_s = float(knobs.get("first_answer_delay_s", 0.0))
        silent_after = knobs.get("silent_after_s")
        self.silent_at = None if silent_after is None else time.monotonic() + float(silent_after)

    def _set_group(self, chan: int, group: int) -> None:
        info = self.info[chan]
        if group == 6:
            opts = struct.unpack_from("<I", info, 300 - 16)[0]
            struct.pack_into("<I", info, 300 - 16, opts | AINP_RAWSTREAM)
        else:
            struct.pack_into("<I", info, 312 - 16, group)

    def tick(self, monotonic_ns: int | None = None) -> int:
        now = time.monotonic_ns() if monotonic_ns is None else monotonic_ns
        return (now - self.t0_ns) * HZ // 1_000_000_000

    # -- answering ------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):  # nobody listening yet: a device does not care
            self.sock.sendto(data, HOST)

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(65536, 64)
            except TimeoutError:
                continue
            except OSError:
                return
            received_ns = time.monotonic_ns()
            for level, kind, raw in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= 16:
                    seconds, nanos = struct.unpack("<qq", raw[:16])
                    received_ns = seconds * 1_000_000_000 + nanos - self.realtime_offset_ns
            if self.silent.is_set():
                continue
            if self.silent_at is not None and time.monotonic() >= self.silent_at:
                self.silent.set()
                continue
            offset = 0
            while offset + HEADER.size <= len(data):
                _time, chid, ptype, dlen, _inst, _res = HEADER.unpack_from(data, offset)
                end = offset + HEADER.size + dlen * 4
                if end > len(data):
                    break
                if chid == CONFIG:
                    self.answer(ptype, data[offset + HEADER.size : end], received_ns)
                offset = end

    def answer(self, ptype: int, body: bytes, received_ns: int) -> None:
        now = self.tick()
        if ptype == SYSSETRUNLEV and self.first_delay_s:
            delay, self.first_delay_s = self.first_delay_s, 0.0
            reply = packet(SYSREPRUNLEV, self.sysinfo(), time_=now)
            threading.Timer(delay, self.send, (reply,)).start()
        elif ptype == SYSSETRUNLEV:
            self.send(packet(SYSREPRUNLEV, self.sysinfo(), time_=now))
        elif ptype == REQCONFIGALL:
            self.send(packet(REPCONFIGALL, time_=now))
            self.send(packet(PROCREP, self.procinfo(), time_=now))
            with self.lock:
                for group in range(1, 7):
                    self.send(packet(GROUPREP, self.groupinfo(group), time_=now))
                for info in self.info.values():
                    self.send(packet(CHANREP, bytes(info), time_=now))
            self.send(packet(SYSREP, self.sysinfo(), time_=now))
        elif CHANSET_FIRST <= ptype <= CHANSET_LAST and len(body) >= 4:
            (chan,) = struct.unpack_from("<I", body, 0)
            with self.lock:
                info = self.info.get(chan)
                if info is None:
                    return
                info[: len(body)] = body[: len(info)]
                struct.pack_into("<I", info, 32 - 16, CHAN_FE_CAPS)  # capabilities are the device's
                reply = packet(ptype - 0x80, bytes(info), time_=now)
            self.send(reply)
        elif ptype == NPLAYSET:
            reply = bytearray(packet(NPLAYREP, body, time_=now))
            device_ns = (received_ns - self.t0_ns) if received_ns else 0
            struct.pack_into("<Q", reply, NPLAY_ETIME, device_ns)
            self.send(bytes(reply))

    def sysinfo(self) -> bytes:
        return struct.pack("<6I", HZ, 48, 10, 0, RUNNING, 0)

    def procinfo(self) -> bytes:
        body = bytearray(PROCINFO_SIZE - HEADER.size)
        struct.pack_into("<II64s", body, 0, 1, 0, b"rigpipe nPlayServer emulator")
        struct.pack_into("<IIII", body, 88 - 16, 1, self.channels, 8, 6)
        struct.pack_into("<I", body, 124 - 16, (4 << 16) | 2)
        return bytes(body)

    def groupinfo(self, group: int) -> bytes:
        members = self.members(group)
        body = bytearray(GROUPINFO_SIZE - HEADER.size)
        label = {1: "500", 2: "1000", 3: "2000", 4: "10000", 5: "30000", 6: "Raw"}[group]
        struct.pack_into(
            "<II16sII", body, 0, 1, group, label.encode(), GROUP_PERIODS[group], len(members)
        )
        struct.pack_into(f"<{len(members)}H", body, 48 - 16, *members)
        return bytes(body)

    def members(self, group: int) -> list[int]:
        if group == 6:
            return [c for c, i in self.info.items() if struct.unpack_from("<I", i, 284)[0] & 0x40]
        return [c for c, i in self.info.items() if struct.unpack_from("<I", i, 296)[0] == group]

    # -- streaming ------------------------------------------------------------------------------
    def stream(self) -> None:
        sent = self.tick()
        while not self.stop.wait(0.001):
            if self.silent_at is not None and time.monotonic() >= self.silent_at:
                self.silent.set()
            if self.silent.is_set():
                continue
            due = self.tick()
            ticks = np.arange(sent + 1, due + 1, dtype=np.int64)
            sent = due
            if not len(ticks):
                continue
            with self.lock:
                groups = {g: self.members(g) for g in range(1, 7)}
            parts: list[bytes] = []
            for group, members in groups.items():
                if members:
                    mine = ticks[ticks % GROUP_PERIODS[group] == 0]
                    parts.extend(self.group_packets(group, len(members), mine))
            parts.extend(self.spike_packets(ticks))
            self.send_bundled(parts)

    def group_packets(self, group: int, n: int, ticks: np.ndarray) -> list[bytes]:
        if not len(ticks):
            return []
        width = n + n % 2
        record = np.dtype(
            [
                ("h", "<u8"),
                ("chid", "<u2"),
                ("type", "<u2"),
                ("dlen", "<u2"),
                ("inst", "u1"),
                ("res", "u1"),
                ("data", "<i2", (width,)),
            ]
        )
        packets = np.zeros(len(ticks), record)
        packets["h"], packets["type"], packets["dlen"] = ticks, group, width // 2
        packets["data"][:, :n] = value(ticks[:, None], np.arange(n)[None, :])
        return [packets.tobytes()]

    def spike_packets(self, ticks: np.ndarray) -> list[bytes]:
        fe = list(self.info)
        hits = ticks[(ticks - 17) % self.spike_every == 0]
        out = []
        for tick in hits:
            k = (int(tick) - 17) // self.spike_every
            if k < 0:
                continue
            out.append(packet(k % 3 + 1, bytes(SPK_SIZE - HEADER.size), fe[k % len(fe)], int(tick)))
        return out

    def send_bundled(self, parts: list[bytes], limit: int = 60000) -> None:
        datagram = b""
        for part in parts:
            if len(datagram) + len(part) > limit and datagram:
                self.send(datagram)
                datagram = b""
            if len(part) > limit:  # many ticks at once (a late wake-up): split by packet
                size = HEADER.size + struct.unpack_from("<H", part, 12)[0] * 4
                for start in range(0, len(part), size * (limit // size)):
                    self.send(part[start : start + size * (limit // size)])
                continue
            datagram += part
        if datagram:
            self.send(datagram)


class Running:
    """A device process started by a test; ``stop()`` ends it (tests call it in ``finally``)."""

    def __init__(self, knobs: dict[str, Any], directory: Path) -> None:
        ready = directory / f"cerebus-{time.monotonic_ns()}.json"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.peers.cerebus_device", json.dumps(knobs), str(ready)],
            cwd=Path(__file__).resolve().parents[2],
        )
        deadline = time.monotonic() + 10
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the Cerebus emulator did not start (exit {self.proc.poll()})")
            time.sleep(0.02)
        self.t0_ns = int(json.loads(ready.read_text())["t0_ns"])

    def tick_time_ns(self, tick: np.ndarray) -> np.ndarray:
        """Host monotonic ns at which the device sampled ``tick``."""
        return self.t0_ns + tick * 1_000_000_000 // HZ

    def go_silent(self) -> None:
        self.proc.send_signal(signal.SIGUSR1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def main(argv: list[str]) -> int:
    knobs, ready = json.loads(argv[0]), Path(argv[1])
    device = Device(knobs)
    signal.signal(signal.SIGUSR1, lambda *_: device.silent.set())
    signal.signal(signal.SIGTERM, lambda *_: device.stop.set())
    threads = [threading.Thread(target=f, daemon=True) for f in (device.serve, device.stream)]
    for thread in threads:
        thread.start()
    partial = ready.with_suffix(".partial")
    partial.write_text(json.dumps({"t0_ns": device.t0_ns, "pid": os.getpid()}))
    partial.replace(ready)
    while not device.stop.wait(0.5):
        pass
    device.sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
