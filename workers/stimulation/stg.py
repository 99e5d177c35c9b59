"""The ``stg`` stimulator: a Multi Channel Systems STG4000 in streaming mode.

Through the vendor's .NET assembly McsUsbNet.dll, loaded with pythonnet (extra
``stg``; on Linux and macOS on Mono). Streaming mode as MCS describes it: the
DLL holds one ring buffer per channel that the host fills (``EnqueueData``)
and the device drains at its output rate (``SetOutputRate``, 50 kHz). Setup:
find the device (``CMcsUsbListNet``), connect, current mode, output rate,
capacity per trigger (``SetCapacity``), trigger map (trigger ``i`` drives
channel ``i``; ``SetupTrigger``), then ``StartLoop`` and ``SendStart``. The
worker's refill thread (:class:`~workers.stimulation.output.Output`) keeps the
queues filled with the current waveform or silence. ``close()`` stops and
disconnects.

Samples go to the DLL as int16 steps of the channel's current resolution
(``GetCurrentResolutionInNanoAmp``). They are copied from numpy into a .NET
``short[]`` through the buffer protocol into an array reused per length; building
the array from a Python list costs many times more (``bench/closed_loop.py``
measures both).

:data:`STG_API` lists every member this module uses; the stand-in assembly in
``tests/peers/`` implements exactly these, and a test checks both directions.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from workers.stimulation.safety import StimulatorError

#: (class, member, .NET parameter types) for every McsUsbNet member this backend calls.
STG_API: list[tuple[str, str, tuple[str, ...]]] = [
    ("CMcsUsbListNet", ".ctor", ("DeviceEnumNet",)),
    ("CMcsUsbListNet", "get_Count", ()),
    ("CMcsUsbListNet", "GetUsbListEntry", ("UInt32",)),
    ("CMcsUsbListEntryNet", "get_SerialNumber", ()),
    ("CMcsUsbListEntryNet", "get_DeviceName", ()),
    ("CStg200xStreamingNet", ".ctor", ("UInt32",)),
    ("CStg200xStreamingNet", "Connect", ("CMcsUsbListEntryNet",)),
    ("CStg200xStreamingNet", "Disconnect", ()),
    ("CStg200xStreamingNet", "SetCurrentMode", ()),
    ("CStg200xStreamingNet", "SetOutputRate", ("UInt32",)),
    ("CStg200xStreamingNet", "GetNumberOfAnalogChannels", ()),
    ("CStg200xStreamingNet", "GetNumberOfTriggerInputs", ()),
    ("CStg200xStreamingNet", "GetCurrentRangeInNanoAmp", ("UInt32",)),
    ("CStg200xStreamingNet", "GetCurrentResolutionInNanoAmp", ("UInt32",)),
    ("CStg200xStreamingNet", "SetCapacity", ("UInt32[]",)),
    ("CStg200xStreamingNet", "SetupTrigger", ("UInt32[]",) * 5),
    ("CStg200xStreamingNet", "StartLoop", ()),
    ("CStg200xStreamingNet", "StopLoop", ()),
    ("CStg200xStreamingNet", "SendStart", ("UInt32",)),
    ("CStg200xStreamingNet", "SendStop", ("UInt32",)),
    ("CStg200xStreamingNet", "GetDataQueueSpace", ("UInt32",)),
    ("CStg200xStreamingNet", "EnqueueData", ("UInt32", "Int16[]")),
]


class StgSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``[workers.parameters.stg]``."""

    dll_path: str  # McsUsbNet.dll (x64 on 64-bit Python)
    serial: str = ""  # which STG; empty: the only one connected
    queue_samples: int = 50_000  # the DLL's ring buffer per channel (and capacity per trigger)


def load_assembly(dll_path: str) -> Any:
    """Load McsUsbNet.dll (or a stand-in) through pythonnet; return the ``Mcs.Usb`` namespace."""
    path = Path(dll_path).expanduser()
    if not path.is_file():
        raise StimulatorError(
            f"McsUsbNet.dll not found at {str(path)!r}; download it from Multi Channel "
            "Systems (McsUsbNet on GitHub) and set [workers.parameters.stg] dll_path"
        )
    try:
        import pythonnet
    except ImportError:
        raise StimulatorError(
            "the stg backend needs pythonnet: pip install 'rigpipe[stg]'"
        ) from None
    try:
        if pythonnet.get_runtime_info() is None:
            # .NET Framework on Windows; Mono elsewhere (PYTHONNET_RUNTIME overrides both)
            default = "netfx" if sys.platform == "win32" else "mono"
            pythonnet.load(os.environ.get("PYTHONNET_RUNTIME", default))
        import clr

        clr.AddReference(str(path.resolve()))
        import Mcs.Usb as mcs  # type: ignore[import-not-found]
    except Exception as exc:
        raise StimulatorError(
            f"cannot load {str(path)!r} through pythonnet: {exc}. On Linux/macOS install Mono "
            "(Debian: apt-get install mono-runtime libmono-2.0-1 mono-devel)"
        ) from None
    return mcs


class StgStimulator:
    """One STG in streaming mode, as a :class:`~workers.stimulation.output.Backend`."""

    def __init__(self, settings: StgSettings, channels: int, output_rate_hz: float) -> None:
        mcs = load_assembly(settings.dll_path)
        import System  # type: ignore[import-not-found]

        self._system = System
        self._arrays: dict[int, Any] = {}  # length -> reusable short[]
        self.channels = channels
        self.output_rate_hz = output_rate_hz
        self.capacity = settings.queue_samples
        entry = self._find(mcs, settings.serial)
        device = mcs.CStg200xStreamingNet(System.UInt32(settings.queue_samples))
        error = device.Connect(entry)
        if error:
            raise StimulatorError(
                f"cannot connect to STG {entry.SerialNumber} (error {error}); is another "
                "program (MC_Stimulus) connected to it?"
            )
        self.device = device
        self.serial = str(entry.SerialNumber)
        try:
            self._configure(channels, output_rate_hz)
        except BaseException:
            device.Disconnect()
            raise

    def _find(self, mcs: Any, serial: str) -> Any:
        devices = mcs.CMcsUsbListNet(mcs.DeviceEnumNet.MCS_STG_DEVICE)
        entries = [devices.GetUsbListEntry(self._system.UInt32(i)) for i in range(devices.Count)]
        if not entries:
            raise StimulatorError(
                "no STG stimulator found: is it connected by USB, switched on, and its "
                "MCS USB driver installed?"
            )
        found = [str(e.SerialNumber) for e in entries]
        if serial:
            chosen = [e for e in entries if str(e.SerialNumber) == serial]
            if not chosen:
                raise StimulatorError(f"no STG with serial {serial!r}; connected: {found}")
            return chosen[0]
        if len(entries) > 1:
            raise StimulatorError(
                f"{len(entries)} STGs are connected ({found}); choose one with "
                "[workers.parameters.stg] serial"
            )
        return entries[0]

    def _configure(self, channels: int, output_rate_hz: float) -> None:
        System, device = self._system, self.device
        available = int(device.GetNumberOfAnalogChannels())
        if channels > available:
            raise StimulatorError(
                f"the config asks for {channels} channels; STG {self.serial} has {available}"
            )
        device.SetCurrentMode()
        device.SetOutputRate(System.UInt32(int(output_rate_hz)))
        triggers = int(device.GetNumberOfTriggerInputs())
        if triggers < channels:
            raise StimulatorError(
                f"STG {self.serial} has {triggers} triggers for {channels} channels"
            )

        def uints(values: list[int]) -> Any:
            return System.Array[System.UInt32]([System.UInt32(v) for v in values])

        device.SetCapacity(uints([self.capacity] * triggers))
        # trigger i drives channel i; no sync or digital outputs; no autostart
        channel_map = [1 << i if i < channels else 0 for i in range(triggers)]
        zeros = [0] * triggers
        device.SetupTrigger(
            uints(channel_map), uints(zeros), uints(zeros), uints(zeros), uints(zeros)
        )
        resolution_na = int(device.GetCurrentResolutionInNanoAmp(System.UInt32(0)))
        range_na = int(device.GetCurrentRangeInNanoAmp(System.UInt32(0)))
        if resolution_na <= 0:
            raise StimulatorError(f"STG {self.serial} reports a current resolution of 0 nA")
        self.resolution_ua = resolution_na / 1000.0
        self.range_ua = min(range_na / 1000.0, 32767 * self.resolution_ua)
        self._trigger_mask = (1 << channels) - 1

    # -- Backend --------------------------------------------------------------------------------
    def space(self, channel: int) -> int:
        return int(self.device.GetDataQueueSpace(self._system.UInt32(channel)))

    def enqueue(self, channel: int, samples_ua: np.ndarray) -> None:
        steps = np.ascontiguousarray(np.rint(samples_ua / self.resolution_ua), np.int16)
        self.device.EnqueueData(self._system.UInt32(channel), self.net_array(steps))

    def net_array(self, steps: np.ndarray) -> Any:
        """A .NET ``short[]`` holding ``steps`` (int16).

        One array per length is made once and reused (EnqueueData copies it into
        the DLL's queue); it is filled through the buffer protocol pythonnet gives
        .NET arrays, one memcpy.
        """
        array = self._arrays.get(len(steps))
        if array is None:
            array = self._arrays[len(steps)] = self._system.Array[self._system.Int16](len(steps))
        np.frombuffer(array, np.int16)[:] = steps
        return array

    # -- device ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.device.StartLoop()
        self.device.SendStart(self._system.UInt32(self._trigger_mask))

    def close(self) -> None:
        device, self.device = getattr(self, "device", None), None
        if device is None:
            return
        try:
            device.SendStop(self._system.UInt32(self._trigger_mask))
            device.StopLoop()
        finally:
            device.Disconnect()
