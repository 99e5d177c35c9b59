"""The ``stg`` stimulator: a Multi Channel Systems STG4000 in streaming mode.

Through the vendor's .NET assembly McsUsbNet.dll, loaded with pythonnet (extra
``stg``; on Linux and macOS on Mono). Streaming mode as MCS describes it: the
DLL holds one ring buffer per channel that the host fills (``EnqueueData``)
and the device drains at its output rate (``SetOutputRate``, 50 kHz).

Setup, in pystg's order: find the device (``CMcsUsbListNet``); construct it
with a data handler and an error handler; connect; current mode; output rate;
continuous mode (``EnableContinousMode``: "If continuous mode is switched off,
the triggers are stopped automatically when a buffer runs empty", so without it
one late refill would silence a channel for good); capacity per trigger in
bytes (``SetCapacity``; the sum is checked against ``GetTotalMemory()``
first); the trigger map (trigger ``i`` drives channel ``i``; ``SetupTrigger``).
The worker then primes every queue with silence, and ``start()`` runs
``StartLoop``, waits ``LOOP_SETTLE_S`` and sends ``SendStart``. McsUsbNet.xml
documents no wait between ``StartLoop`` and ``SendStart`` ("The startup delay
is in the range of a few ms" is said of ``SendStart`` itself); pystg sleeps
there ("suggested by documentation for initialization of the loop"), so this
backend does too, while the refill thread keeps the primed queues full.

The worker's refill thread (:class:`~workers.stimulation.output.Output`) keeps
the queues filled with the current waveform or silence; it polls (see
``CALLBACK_THRESHOLD_PERCENT``). The error handler counts streaming errors
(``device_errors``); the worker then silences and disarms the stimulator and
says so. ``close()`` stops and disconnects.

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
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import extras
from pipeline.settings import Settings
from workers.stimulation.safety import StimulatorError

#: (class, member, .NET parameter types, .NET return type; "" for a constructor) for every
#: McsUsbNet member this backend calls. tests/peers/test_stg.py checks each against the
#: vendor's real McsUsbNet.dll (by reflection) and against the stand-in.
STG_API: list[tuple[str, str, tuple[str, ...], str]] = [
    ("CMcsUsbListNet", ".ctor", ("DeviceEnumNet",), ""),
    ("CMcsUsbListNet", "get_Count", (), "UInt32"),
    ("CMcsUsbListNet", "GetUsbListEntry", ("UInt32",), "CMcsUsbListEntryNet"),
    ("CMcsUsbListEntryNet", "get_SerialNumber", (), "String"),
    ("CMcsUsbListEntryNet", "get_DeviceName", (), "String"),
    (
        "CStg200xStreamingNet",
        ".ctor",
        ("UInt32", "OnStg200xDataHandler", "OnStg200xErrorHandler"),
        "",
    ),
    ("CStg200xStreamingNet", "Connect", ("CMcsUsbListEntryNet",), "UInt32"),
    ("CStg200xStreamingNet", "Disconnect", (), "Void"),
    ("CStg200xStreamingNet", "SetCurrentMode", (), "Void"),
    ("CStg200xStreamingNet", "SetOutputRate", ("UInt32",), "Void"),
    ("CStg200xStreamingNet", "GetNumberOfAnalogChannels", (), "UInt32"),
    ("CStg200xStreamingNet", "GetNumberOfTriggerInputs", (), "UInt32"),
    ("CStg200xStreamingNet", "GetCurrentRangeInNanoAmp", ("UInt32",), "Int32"),
    ("CStg200xStreamingNet", "GetCurrentResolutionInNanoAmp", ("UInt32",), "Int32"),
    ("CStg200xStreamingNet", "GetTotalMemory", (), "UInt32"),
    ("CStg200xStreamingNet", "EnableContinousMode", (), "Void"),
    ("CStg200xStreamingNet", "SetCapacity", ("UInt32[]",), "Void"),
    ("CStg200xStreamingNet", "SetupTrigger", ("UInt32[]",) * 5, "Void"),
    ("CStg200xStreamingNet", "StartLoop", (), "Void"),
    ("CStg200xStreamingNet", "StopLoop", (), "Void"),
    ("CStg200xStreamingNet", "SendStart", ("UInt32",), "Void"),
    ("CStg200xStreamingNet", "SendStop", ("UInt32",), "Void"),
    ("CStg200xStreamingNet", "GetDataQueueSpace", ("UInt32",), "UInt32"),
    ("CStg200xStreamingNet", "EnqueueData", ("UInt32", "Int16[]"), "UInt32"),
    ("OnStg200xDataHandler", "Invoke", ("UInt32",), "Void"),  # the handlers we hand it
    ("OnStg200xErrorHandler", "Invoke", (), "Void"),
]
#: Bytes one sample takes in the STG's memory: ``EnqueueData(UInt32, Int16[])`` "Returns
#: the number of enqueued bytes" for int16 samples, and ``SetCapacity`` takes "memory sizes
#: in bytes, one entry for each trigger" (McsUsbNet.xml, release 5.3.15).
BYTES_PER_SAMPLE = 2
#: ``SetupTrigger``'s fifth array: "when the data handler should be called in percent of
#: the buffer level" (pystg passes 10). 0: never. The refill polls every 2 ms and keeps each
#: queue at half the output buffer (10 ms by default), far below 10 % of the DLL's ring
#: (50000 samples: 100 ms), so a percent-of-ring handler would fire on every transfer and
#: say nothing; bench/stg_refill.py measured a handler-driven refill against polling
#: (docs/performance.md) and polling won.
CALLBACK_THRESHOLD_PERCENT = 0
#: Between ``StartLoop`` and ``SendStart``, as pystg waits (the XML gives no figure).
LOOP_SETTLE_S = 0.1


class StgSettings(Settings, frozen=True, kw_only=True):
    """``[workers.parameters.stg]``."""

    dll_path: str  # McsUsbNet.dll (x64 on 64-bit Python)
    serial: str = ""  # which STG; empty: the only one connected
    queue_samples: int = 50_000  # the DLL's ring buffer per channel (and capacity per trigger)


def load_hint(platform: str = sys.platform) -> str:
    """What usually stops the DLL from loading, on this OS."""
    if platform == "win32":
        return (
            "On Windows: pythonnet needs .NET Framework 4.7.2 or later (part of Windows 10 "
            "1803+ and 11); unblock the downloaded DLL (its Properties > Unblock, or PowerShell "
            "Unblock-File), use the x64 McsUsbNet.dll with 64-bit Python, and install the MCS "
            "USB driver"
        )
    if platform == "darwin":
        return "On macOS install Mono (brew install mono); the STG itself needs Windows"
    return (
        "On Linux install Mono (Debian: apt-get install mono-runtime libmono-2.0-1 "
        "mono-devel); the STG itself needs Windows"
    )


def load_assembly(dll_path: str) -> Any:
    """Load McsUsbNet.dll (or a stand-in) through pythonnet; return the ``Mcs.Usb`` namespace."""
    path = Path(dll_path).expanduser()
    if not path.is_file():
        raise StimulatorError(
            f"McsUsbNet.dll not found at {str(path)!r}; download it from Multi Channel "
            "Systems (McsUsbNet on GitHub) and set [workers.parameters.stg] dll_path"
        )
    pythonnet = extras.require("stg", "pythonnet", "the stg backend")
    try:
        if pythonnet.get_runtime_info() is None:
            # .NET Framework on Windows; Mono elsewhere (PYTHONNET_RUNTIME overrides both)
            default = "netfx" if sys.platform == "win32" else "mono"
            pythonnet.load(os.environ.get("PYTHONNET_RUNTIME", default))
        import clr

        clr.AddReference(str(path.resolve()))
    except Exception as exc:
        raise StimulatorError(
            f"cannot load {str(path)!r} through pythonnet: {exc}. {load_hint()}"
        ) from None
    try:
        import Mcs.Usb as mcs
    except ImportError:
        raise StimulatorError(
            f"{str(path)!r} is a .NET assembly but not McsUsbNet.dll (it has no Mcs.Usb "
            "namespace); set [workers.parameters.stg] dll_path to the vendor's McsUsbNet.dll"
        ) from None
    return mcs


class StgStimulator:
    """One STG in streaming mode, as a :class:`~workers.stimulation.output.Backend`."""

    def __init__(self, settings: StgSettings, channels: int, output_rate_hz: float) -> None:
        mcs = load_assembly(settings.dll_path)
        import System

        self._system = System
        self._arrays: dict[int, Any] = {}  # length -> reusable short[]
        self.channels = channels
        self.output_rate_hz = output_rate_hz
        self.capacity = settings.queue_samples
        entry = self._find(mcs, settings.serial)
        # The handlers must live as long as the device: the DLL calls them from its thread.
        self._handlers = self._make_handlers(mcs)
        device = mcs.CStg200xStreamingNet(System.UInt32(settings.queue_samples), *self._handlers)
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

        per_trigger = self.capacity * BYTES_PER_SAMPLE
        total = int(device.GetTotalMemory())
        if per_trigger * channels > total:
            raise StimulatorError(
                f"queue_samples = {self.capacity} needs {per_trigger * channels} bytes of STG "
                f"memory for {channels} channel(s) ({BYTES_PER_SAMPLE} bytes a sample); STG "
                f"{self.serial} has {total}: set [workers.parameters.stg] queue_samples <= "
                f"{total // (BYTES_PER_SAMPLE * channels)}"
            )
        device.EnableContinousMode()  # an underrun outputs zeros instead of stopping the trigger
        used = [i < channels for i in range(triggers)]
        device.SetCapacity(uints([per_trigger if u else 0 for u in used]))
        # trigger i drives channel i; no sync or digital outputs; no autostart
        channel_map = [1 << i if u else 0 for i, u in enumerate(used)]
        zeros = [0] * triggers
        thresholds = [CALLBACK_THRESHOLD_PERCENT if u else 0 for u in used]
        device.SetupTrigger(
            uints(channel_map), uints(zeros), uints(zeros), uints(zeros), uints(thresholds)
        )
        resolution_na = int(device.GetCurrentResolutionInNanoAmp(System.UInt32(0)))
        range_na = int(device.GetCurrentRangeInNanoAmp(System.UInt32(0)))
        if resolution_na <= 0:
            raise StimulatorError(f"STG {self.serial} reports a current resolution of 0 nA")
        self.resolution_ua = resolution_na / 1000.0
        self.range_ua = min(range_na / 1000.0, 32767 * self.resolution_ua)
        self._trigger_mask = (1 << channels) - 1

    # -- the DLL's handlers --------------------------------------------------------------------
    def _make_handlers(self, mcs: Any) -> tuple[Any, Any]:
        """(data handler, error handler) that run no Python on the DLL's thread.

        A Python function as a handler is called on the DLL's own thread and must take the
        GIL there: with the stand-in on Mono that deadlocked (a Python thread inside a DLL
        call held the GIL while the runtime waited for the handler's thread), and an
        exception escaping it ends the process. So both are delegates bound to .NET
        methods: the error handler to ``CountdownEvent.AddCount`` (``device_errors`` reads
        the count), the data handler to ``ConcurrentQueue<UInt32>.Enqueue`` (with a
        callback threshold of 0 the DLL does not call it; were it called, the triggers it
        names are counted in ``low_buffer_reports``).
        """
        import clr

        System = self._system
        self._low = System.Collections.Concurrent.ConcurrentQueue[System.UInt32]()
        self._errors = System.Threading.CountdownEvent(1)
        add_count = self._errors.GetType().GetMethod("AddCount", System.Type.EmptyTypes)
        enqueue = self._low.GetType().GetMethod("Enqueue")
        return (
            System.Delegate.CreateDelegate(
                clr.GetClrType(mcs.OnStg200xDataHandler), self._low, enqueue
            ),
            System.Delegate.CreateDelegate(
                clr.GetClrType(mcs.OnStg200xErrorHandler), self._errors, add_count
            ),
        )

    @property
    def device_errors(self) -> int:
        """Streaming errors the DLL reported through the error handler."""
        return int(self._errors.CurrentCount) - 1

    @property
    def low_buffer_reports(self) -> int:
        return int(self._low.Count)

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
        time.sleep(LOOP_SETTLE_S)
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
