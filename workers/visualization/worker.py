"""Visualization worker: a live multi-channel scope (pyqtgraph on PySide6, extra ``viz``).

One tab per stream in ``streams``: stacked traces, each channel in its own
band, min/max-decimated to the window's pixel width (so a one-sample spike
stays visible), drawn as a sweep over ``window_s``; ticks for spikes from the
``spikes`` stream; red lines where the ``markers`` stream (stimulation output
or events) is active; and a status line (generation, rate, drops, overruns,
channels shown, the µV a band spans), with channel labels beside the traces, a
time axis under them and, with ``raster = true``, a spike raster below.
``window_s``, ``gain``, ``span_uv``, ``page`` and ``channels_per_page`` can be
changed while it runs, with ``rigpipe set`` or with keys (``ScopeWorker.KEYS``:
+/- gain, PgUp/PgDn page, [/] channels per page, Left/Right time window,
space pauses drawing); the mouse does not move the view. What the keys set
shows in ``rigpipe status``. A trace that the gain pushes past its band is
marked in red at the band's edge. A format change (a new generation) redraws
with the new channel count at once.

Without a display (no ``DISPLAY`` / ``WAYLAND_DISPLAY`` on Linux) the worker
says so once and exits 0, unless ``offscreen = true`` asks it to render
anyway (``snapshot`` then saves the picture as PNG every ``snapshot_s``). It
reads rings without ever holding up a writer, so its crash costs nothing else.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path
from typing import Annotated, Any, ClassVar

import msgspec
import numpy as np

from pipeline import extras
from pipeline.control import messages
from pipeline.errors import EndOfStream, RigpipeError, StreamNotFound
from pipeline.host import clock
from pipeline.ring import RingReader, attach
from pipeline.worker import Worker
from workers.visualization.sweep import Picture, Sweep, raster_image, sweep_channels

Positive = Annotated[float, msgspec.Meta(gt=0)]
#: How often the scope serves the bus: heartbeats, ``rigpipe set`` and Stop take effect
#: within this (a 10 ms timer cost a hundred wake-ups a second for nothing a person sees).
BUS_INTERVAL_S = 0.05


class ScopeSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``[workers.parameters]`` of a visualization worker."""

    streams: Annotated[list[str], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["acq/continuous"]
    )
    spikes: str = ""
    markers: str = ""
    window_s: Annotated[float, msgspec.Meta(gt=0, le=600)] = 5.0
    gain: Positive = 1.0
    span_uv: Positive = 400.0
    channels_per_page: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 64
    page: Annotated[int, msgspec.Meta(ge=0)] = 0
    refresh_hz: Annotated[float, msgspec.Meta(gt=0, le=240)] = 30.0
    width_px: Annotated[int, msgspec.Meta(ge=100, le=8192)] = 1200
    height_px: Annotated[int, msgspec.Meta(ge=100, le=8192)] = 800
    offscreen: bool = False
    snapshot: str = ""
    snapshot_s: Positive = 1.0
    raster: bool = False  # a spike raster under the traces: a row per channel of the page
    raster_px: Annotated[int, msgspec.Meta(ge=20, le=2000)] = 160


def has_display() -> bool:
    """True where a window can be shown (always on macOS and Windows)."""
    if not sys.platform.startswith("linux"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


#: X11 libraries Qt's xcb platform plugin loads -> the Debian package that has each.
#: Qt's own abort names libxcb-cursor0 even when another of these is the one missing.
XCB_LIBRARIES = {
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
}


def missing_xcb(libraries: dict[str, str] = XCB_LIBRARIES) -> list[str]:
    """The Debian packages of the X11 libraries Qt needs and this machine cannot load."""
    missing = []
    for library, package in libraries.items():
        try:
            ctypes.CDLL(library)
        except OSError:
            missing.append(package)
    return missing


def _scale(descriptor: dict[str, Any]) -> float:
    """Microvolts per ring unit, from the descriptor (1 if it has none)."""
    scale = descriptor.get("scale", 1.0)
    if isinstance(scale, list):
        return float(np.median(scale)) if scale else 1.0
    return float(scale) if isinstance(scale, int | float) else 1.0


class Panel:
    """One stream's tab: its reader, its sweep, its image and status line."""

    def __init__(self, worker: ScopeWorker, stream: str, pg: Any) -> None:
        from workers.visualization.pixels import PixelImage  # pyqtgraph: loaded by setup

        self.worker = worker
        self.stream = stream
        s = worker.settings
        self.widget = pg.GraphicsLayoutWidget()
        self.status = self.widget.addLabel("", row=0, col=0, justify="left")
        self.plot = self.widget.addPlot(row=1, col=0)
        self.plot.hideAxis("bottom")
        self.plot.getAxis("left").setWidth(60)  # channel labels beside their traces
        self.plot.setMenuEnabled(False)
        self.plot.setMouseEnabled(x=False, y=False)  # no silent zoom: keys set the view
        self.plot.hideButtons()
        self.plot.invertY(True)
        self.image = PixelImage()
        self.plot.addItem(self.image)
        self.plot.setRange(xRange=(0, s.width_px), yRange=(0, s.height_px), padding=0)
        self.plot.showAxis("bottom")  # where in the sweep: seconds from its left edge
        self.raster = None
        if s.raster:  # rows = the page's channels, a tick per spike over the window
            self.raster_plot = self.widget.addPlot(row=2, col=0)
            self.raster_plot.hideAxis("bottom")
            self.raster_plot.getAxis("left").setWidth(60)
            self.raster_plot.setMenuEnabled(False)
            self.raster_plot.setMouseEnabled(x=False, y=False)
            self.raster_plot.hideButtons()
            self.raster_plot.invertY(True)
            self.raster_plot.setMaximumHeight(s.raster_px + 20)
            self.raster = PixelImage()
            self.raster_plot.addItem(self.raster)
            self.raster_plot.setRange(xRange=(0, s.width_px), yRange=(0, s.raster_px), padding=0)
            self.raster_plot.setXLink(self.plot)
        # The axes and the status line change seldom, yet the image under them is drawn
        # 30 times a second: Qt repaints them from a cached pixmap until they change.
        cached = pg.QtWidgets.QGraphicsItem.CacheMode.DeviceCoordinateCache
        plots = [self.plot, *([self.raster_plot] if self.raster is not None else [])]
        for item in [self.status, *(p.getAxis(a) for p in plots for a in ("left", "bottom"))]:
            item.setCacheMode(cached)
        self.reader: RingReader | None = None
        self.sweep: Sweep | None = None
        self.picture = Picture()
        self.newest_ns: int | None = None
        self.dropped = self.overruns = 0
        self.retry_at = 0.0
        self.rate = 0.0
        self._window = (clock.now_s(), 0)
        self._labelled: tuple[int, int, int] | None = None  # (first, count, generation)

    def full_name(self) -> str:
        return f"{self.worker.spec.session}/{self.stream}"

    def refresh(self) -> None:
        """Fold the frames that arrived into the sweep (drawing is the worker's choice)."""
        if self.reader is None and not self._attach():
            self.status.setText(f"{self.stream}: waiting for its writer")
            return
        assert self.reader is not None
        try:
            self._drain(self.reader)
        except EndOfStream:
            self.reader.close()
            self.reader = None
            self.status.setText(f"{self.stream}: closed by its writer")
            return

    def _attach(self) -> bool:
        if clock.now_s() < self.retry_at:
            return False
        try:
            self.reader = attach(self.full_name(), from_now=True)
        except StreamNotFound:
            self.retry_at = clock.now_s() + 0.5
            return False
        self._new_sweep()
        return True

    def _new_sweep(self) -> None:
        assert self.reader is not None
        channels = int(np.prod(self.reader.frame_shape)) if self.reader.frame_shape else 1
        rate = self.reader.sample_rate or 1000.0
        s = self.worker.settings
        self.sweep = Sweep(channels, rate, s.window_s, s.width_px)
        self.unit_uv = _scale(self.reader.descriptor)

    def _drain(self, reader: RingReader) -> None:
        """Fold what arrived into the sweep, straight from the ring (a view, no copy: a
        refresh of 1024 channels would otherwise copy 2 MB into new pages)."""
        budget = max(1, round(reader.sample_rate * self.worker.settings.window_s)) or 100_000
        while budget > 0:
            with reader.read_view(max_frames=budget, timeout_s=0) as view:
                if not view.frames:
                    break
                if view.format_changed:
                    self._new_sweep()
                assert self.sweep is not None
                self.sweep.add(view.data.reshape(view.frames, -1))
                self.newest_ns = int(view.timestamps_ns[-1])
            dropped = view.dropped
            if not view.intact:  # overwritten while it was folded in: a sweep may show it torn
                dropped += view.frames
            if dropped:
                self.dropped += dropped
                self.overruns += 1
            budget -= view.frames
            self._count(view.frames)

    def _count(self, frames: int) -> None:
        started, counted = self._window
        now = clock.now_s()
        counted += frames
        if now - started >= 1.0:
            self.rate = counted / (now - started)
            started, counted = now, 0
        self._window = (started, counted)

    def frames_before_newest(self, timestamps_ns: np.ndarray) -> np.ndarray | None:
        """How many frames before the newest one each of ``timestamps_ns`` is (negative:
        after it); None before the first frame."""
        if self.newest_ns is None or self.sweep is None:
            return None
        ns_before = (self.newest_ns - timestamps_ns.astype(np.int64)).astype(np.float64)
        return np.rint(ns_before * (self.sweep.sample_rate / 1e9)).astype(np.int64)

    def _draw(self) -> None:
        assert self.sweep is not None and self.reader is not None
        s = self.worker.settings
        per_page = min(s.channels_per_page, self.sweep.channels)
        first = min(s.page * per_page, max(0, self.sweep.channels - per_page))
        span = s.span_uv / self.unit_uv
        image = self.picture.draw(self.sweep, first, per_page, s.height_px, span, s.gain)
        self.image.show(image, self.picture.changed)
        self._label(first, per_page, s.height_px)
        self._time_axis(s.window_s, s.width_px)
        if self.raster is not None:
            self.raster.show(raster_image(self.sweep, first, per_page, s.raster_px))
        text = (
            f"{self.stream}  gen {self.reader.generation}  {self.rate:,.0f} frames/s  "
            f"drops {self.dropped}  overruns {self.overruns}  channels {first + 1}-"
            f"{first + per_page} of {self.sweep.channels}  {s.window_s:g} s  gain {s.gain:g}  "
            f"band {s.span_uv / s.gain:g} uV"
        )
        if text != self.status.text:  # a new text lays the label out again: only on change
            self.status.setText(text)

    def _time_axis(self, window_s: float, width: int) -> None:
        """Ticks in seconds from the sweep's left edge (the cursor sweeps across)."""
        key = (window_s, width)
        if key == getattr(self, "_timed", None):
            return
        self._timed = key
        steps = [t for t in (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)]
        step = next((t for t in steps if window_s / t <= 10), 60.0)
        ticks = [
            (k * step * width / window_s, f"{k * step:g} s")
            for k in range(int(window_s / step + 1e-9) + 1)
        ]
        self.plot.getAxis("bottom").setTicks([ticks, []])

    def show_paused(self) -> None:
        """The status line says the picture is paused (it keeps reading meanwhile)."""
        text = self.status.text or self.stream
        if "PAUSED" not in text:
            self.status.setText(f"{text}  PAUSED (space)")

    def _label(self, first: int, count: int, height: int) -> None:
        """Channel labels beside their bands (at most ~32 on a page: every k-th)."""
        assert self.reader is not None
        key = (first, count, self.reader.generation)
        if key == self._labelled:
            return
        self._labelled = key
        labels = self.reader.descriptor.get("channel_labels") or []
        band = max(2, height // max(1, count))
        every = max(1, -(-count // 32))
        ticks = [
            (k * band + band // 2, str(labels[c]) if c < len(labels) else str(c))
            for k, c in enumerate(range(first, first + count))
            if k % every == 0
        ]
        self.plot.getAxis("left").setTicks([ticks, []])


class ScopeWorker(Worker):
    Settings = ScopeSettings
    settable = frozenset({"window_s", "gain", "span_uv", "page", "channels_per_page"})

    @classmethod
    def inputs(cls, settings: Any) -> list[str]:
        return [*settings.streams, *(s for s in (settings.spikes, settings.markers) if s)]

    def setup(self) -> None:
        s = self.settings
        self.shown = False
        if not s.offscreen and not has_display():
            self.report(
                "no display (DISPLAY / WAYLAND_DISPLAY unset): the scope is not shown; "
                "set offscreen = true to render without one",
                "info",
            )
            return
        if s.offscreen:
            os.environ["QT_QPA_PLATFORM"] = "offscreen"
        elif sys.platform.startswith("linux") and os.environ.get("DISPLAY"):
            missing = missing_xcb()
            if missing:  # otherwise Qt aborts the process (SIGABRT) with a misleading hint
                raise RigpipeError(
                    "Qt cannot open a window here: X11 libraries are missing; install them "
                    f"(Debian/Ubuntu: apt-get install {' '.join(missing)}), "
                    "or set offscreen = true"
                )
        pg = extras.require("viz", "pyqtgraph", "the scope")
        extras.require("viz", "PySide6.QtWidgets", "the scope")
        from PySide6 import QtCore, QtWidgets

        self.pg, self.QtCore = pg, QtCore
        self.app = pg.mkQApp("rigpipe scope")
        self.window = QtWidgets.QTabWidget()
        self.window.setWindowTitle(f"rigpipe scope: {self.spec.session}")
        # the picture at 1:1 (a 1-pixel trace scaled down can vanish): room for the label
        # axis on the left, the status line above, the time axis and the raster below
        raster = s.raster_px + 30 if s.raster else 0
        self.window.resize(s.width_px + 100, s.height_px + 120 + raster)
        self.panels = [Panel(self, stream, pg) for stream in s.streams]
        for panel in self.panels:
            self.window.addTab(panel.widget, panel.stream)
        self.spikes = self._events(s.spikes)
        self.markers = self._events(s.markers)
        self.next_snapshot = clock.now_s() + s.snapshot_s
        self.counters.update(frames_drawn=0, fps=0.0)
        self._fps_window = (clock.now_s(), 0)
        self.paused = False
        self._bind_keys()
        self._update_note()
        self.window.show()
        self.shown = True

    #: The keys the scope answers to, and what each does (README, "The live scope").
    KEYS: ClassVar[dict[str, str]] = {
        "+": "gain x2",
        "-": "gain /2",
        "PgDown": "next page",
        "PgUp": "previous page",
        "]": "channels per page x2",
        "[": "channels per page /2",
        "Right": "time window x2",
        "Left": "time window /2",
        "Space": "pause / resume drawing",
    }

    #: The on-screen controls, left to right: (object name, label, its key in KEYS).
    BUTTONS: ClassVar[list[tuple[str, str, str]]] = [
        ("gain_down", "gain /2", "-"),
        ("gain_up", "gain x2", "+"),
        ("page_up", "< page", "PgUp"),
        ("page_down", "page >", "PgDown"),
        ("fewer_channels", "ch /2", "["),
        ("more_channels", "ch x2", "]"),
        ("shorter_window", "time /2", "Left"),
        ("longer_window", "time x2", "Right"),
        ("pause", "pause", "Space"),
    ]

    def _bind_keys(self) -> None:
        """Keys, and a row of buttons beside the tabs doing the same (each says its key)."""
        from PySide6 import QtGui, QtWidgets

        actions = {
            "+": lambda: self._step("gain", 2.0),
            "=": lambda: self._step("gain", 2.0),  # + without shift
            "-": lambda: self._step("gain", 0.5),
            "PgDown": lambda: self._step_page(1),
            "PgUp": lambda: self._step_page(-1),
            "]": lambda: self._step("channels_per_page", 2.0),
            "[": lambda: self._step("channels_per_page", 0.5),
            "Right": lambda: self._step("window_s", 2.0),
            "Left": lambda: self._step("window_s", 0.5),
            "Space": self._toggle_pause,
        }
        self._shortcuts = []
        for key, action in actions.items():
            shortcut = QtGui.QShortcut(QtGui.QKeySequence(key), self.window)
            shortcut.activated.connect(action)
            self._shortcuts.append(shortcut)
        bar = QtWidgets.QWidget()
        row = QtWidgets.QHBoxLayout(bar)
        row.setContentsMargins(0, 0, 4, 0)
        row.setSpacing(2)
        self.buttons: dict[str, Any] = {}
        for name, label, key in self.BUTTONS:
            button = QtWidgets.QToolButton()
            button.setObjectName(name)
            button.setText(label)
            button.setToolTip(f"{self.KEYS[key]} (key: {key})")
            button.setFocusPolicy(self.QtCore.Qt.FocusPolicy.NoFocus)  # keys stay with the window
            button.clicked.connect(actions[key])
            row.addWidget(button)
            self.buttons[name] = button
        self.buttons["pause"].setCheckable(True)
        self.window.setCornerWidget(bar, self.QtCore.Qt.Corner.TopRightCorner)

    def _step(self, name: str, factor: float) -> None:
        """A key's change, through the same checks as `rigpipe set` (refused: unchanged)."""
        value = getattr(self.settings, name) * factor
        if name == "channels_per_page":
            value = int(min(1024, max(1, round(value))))
        reply = self.set_parameter(name, value)
        if isinstance(reply, messages.Error):
            self.log.info("key refused: %s", reply.text)
        self._update_note()

    def _step_page(self, delta: int) -> None:
        panel = self.panels[max(0, self.window.currentIndex())]
        channels = panel.sweep.channels if panel.sweep is not None else 1
        pages = max(1, -(-channels // self.settings.channels_per_page))
        page = min(max(0, self.settings.page + delta), pages - 1)
        self.set_parameter("page", page)
        self._update_note()

    def _toggle_pause(self) -> None:
        self.paused = not self.paused
        self.buttons["pause"].setChecked(self.paused)  # pressed while paused, by key or click
        self._update_note()

    def _update_note(self) -> None:
        """What `rigpipe status` shows beside the scope: the view as the keys left it."""
        s = self.settings
        self.note = (
            f"gain {s.gain:g}, page {s.page + 1}, {s.channels_per_page} per page, "
            f"{s.window_s:g} s" + (", PAUSED" if self.paused else "")
        )

    def on_parameter(self, name: str, value: Any) -> None:
        if name == "window_s" and getattr(self, "panels", None):
            for panel in self.panels:
                if panel.reader is not None:
                    panel._new_sweep()
        if getattr(self, "shown", False):
            self._update_note()

    def _events(self, stream: str) -> dict[str, Any]:
        return {"stream": stream, "reader": None, "retry": 0.0}

    def run(self) -> None:
        if not self.shown:
            return  # no display: nothing to do, exit 0
        refresh = self.QtCore.QTimer()
        refresh.timeout.connect(self._refresh)
        refresh.start(max(1, round(1000 / self.settings.refresh_hz)))
        bus = self.QtCore.QTimer()
        bus.timeout.connect(self._serve)
        bus.start(round(1000 * BUS_INTERVAL_S))
        self._failure: Exception | None = None
        self.app.exec()
        if self._failure is not None:
            raise self._failure

    def _serve(self) -> None:
        self.service()
        if self.stopping:
            self.app.quit()

    def _refresh(self) -> None:
        try:
            for panel in self.panels:
                panel.refresh()  # every tab keeps reading; only the one shown draws
            shown = self.panels[max(0, self.window.currentIndex())]
            if self.paused:
                shown.show_paused()
            elif shown.sweep is not None and shown.reader is not None:
                self._overlay(shown)
                shown._draw()
            self._count_frame()
            self._snapshot()
        except Exception as exc:  # a drawing error ends the scope (run() re-raises it)
            self._failure = exc
            self.app.exit(1)

    def _overlay(self, panel: Panel) -> None:
        """Spike ticks and stimulation markers on the panel shown."""
        if panel.sweep is None:
            return
        assert panel.reader is not None
        spikes = self._read_events(self.spikes)  # read on every refresh: it keeps up
        if panel.stream.split("/")[0] != self.settings.spikes.split("/")[0]:
            spikes = spikes[:0]  # ticks only on the tabs of the worker that detected them
        offsets = panel.frames_before_newest(spikes["timestamp_ns"])
        if offsets is not None and len(spikes):
            channel_ids = panel.reader.descriptor.get("channel_ids", [])
            panel.sweep.mark_spikes(offsets, sweep_channels(spikes["channel"], channel_ids))
        offsets = panel.frames_before_newest(self._read_marker_times(self.markers))
        if offsets is not None and len(offsets):
            panel.sweep.mark(offsets)

    def _reader(self, events: dict[str, Any]) -> RingReader | None:
        if not events["stream"]:
            return None
        if events["reader"] is None and clock.now_s() >= events["retry"]:
            try:
                events["reader"] = attach(f"{self.spec.session}/{events['stream']}")
            except StreamNotFound:
                events["retry"] = clock.now_s() + 0.5
        return events["reader"]

    def _read_events(self, events: dict[str, Any]) -> np.ndarray:
        reader = self._reader(events)
        if reader is None:
            return np.empty(0, [("timestamp_ns", "<i8"), ("channel", "<i4")])
        try:
            return reader.read(timeout_s=0).data
        except EndOfStream:
            reader.close()
            events["reader"] = None
            return np.empty(0, [("timestamp_ns", "<i8"), ("channel", "<i4")])

    def _read_marker_times(self, events: dict[str, Any]) -> np.ndarray:
        """Timestamps where the markers stream is active (an event, or a nonzero frame)."""
        reader = self._reader(events)
        if reader is None:
            return np.empty(0, np.int64)
        try:
            chunk = reader.read(timeout_s=0)
        except EndOfStream:
            reader.close()
            events["reader"] = None
            return np.empty(0, np.int64)
        if reader.sample_rate == 0 or chunk.data.dtype.names or not chunk.frames:
            return chunk.timestamps_ns  # (a reshape of no frames to (0, -1) raises)
        active = np.any(chunk.data.reshape(chunk.frames, -1) != 0, axis=1)
        return chunk.timestamps_ns[active]

    def _count_frame(self) -> None:
        started, frames = self._fps_window
        frames += 1
        self.counters["frames_drawn"] += 1
        now = clock.now_s()
        if now - started >= 1.0:
            self.counters["fps"] = round(frames / (now - started), 1)
            started, frames = now, 0
        self._fps_window = (started, frames)

    def _snapshot(self) -> None:
        s = self.settings
        if not s.snapshot or clock.now_s() < self.next_snapshot:
            return
        self.next_snapshot = clock.now_s() + s.snapshot_s
        path = Path(s.snapshot)
        temporary = path.with_name(f".{path.stem}.tmp.png")
        if self.window.grab().save(str(temporary)):
            os.replace(temporary, path)

    def teardown(self) -> None:
        for panel in getattr(self, "panels", []):
            if panel.reader is not None:
                panel.reader.close()
        for events in (getattr(self, "spikes", None), getattr(self, "markers", None)):
            if events and events["reader"] is not None:
                events["reader"].close()
        if getattr(self, "shown", False):
            self.window.close()


WORKER = ScopeWorker
