"""Visualization worker: a live multi-channel scope (pyqtgraph on PySide6, extra ``viz``).

One tab per stream in ``streams``: stacked traces, each channel in its own
band, min/max-decimated to the window's pixel width (so a one-sample spike
stays visible), drawn as a envelope over ``window_s``; ticks for spikes from the
``spikes`` stream; red lines where the ``markers`` stream (stimulation output
or events) is active; and a status line (generation, rate, drops, overruns,
channels shown, the µV a band spans, the display filter), with channel labels
beside the traces, a scale bar in the stream's units, a time axis under them
and, with ``raster = true``, a spike raster below. ``filters`` sets display
filters per tab (:mod:`.filters`; key F switches them off and on).
``window_s``, ``gain``, ``span_uv``, ``page`` and ``channels_per_page`` can be
changed while it runs, with ``rigpipe set`` or with keys (``ScopeWorker.KEYS``:
+/- gain, PgUp/PgDn page, [/] channels per page, Left/Right time window,
space pauses drawing) and the mouse (``ScopeWorker.MOUSE``: the wheel zooms in
time, a double-click expands a channel, ``focus``). What they set shows in
``rigpipe status``. ``average`` adds an event-triggered average of one channel
under its tab (:mod:`.average`). A trace that the gain pushes past its band is
marked in red at the band's edge. A format change (a new generation) redraws
with the new channel count at once.

Without a display (no ``DISPLAY`` / ``WAYLAND_DISPLAY`` on Linux) the worker
says so once and exits 0, unless ``offscreen = true`` asks it to render
anyway (``snapshot`` then saves the picture as PNG every ``snapshot_s``). It
reads rings without ever holding up a writer, so its crash costs nothing else.
"""

from __future__ import annotations

import functools
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
from pipeline.settings import Positive, Settings
from pipeline.worker import Worker
from workers.visualization.average import AverageSettings, Onsets
from workers.visualization.display import has_display, missing_xcb
from workers.visualization.envelope import stream_columns
from workers.visualization.filters import DisplayFilter
from workers.visualization.panel import Panel

#: How often the scope serves the bus: heartbeats, ``rigpipe set`` and Stop take effect
#: within this (a 10 ms timer cost a hundred wake-ups a second for nothing a person sees).
BUS_INTERVAL_S = 0.05


class ScopeSettings(Settings, frozen=True, kw_only=True):
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
    #: per stream shown: display filters (workers.visualization.filters), never the data's
    filters: dict[str, DisplayFilter] = msgspec.field(default_factory=dict)
    filtering: bool = True  # the filters on (key F toggles)
    #: one channel (0-based) over the whole height; -1: the page (a double-click toggles)
    focus: Annotated[int, msgspec.Meta(ge=-1)] = -1
    #: an event-triggered average under a tab (workers.visualization.average)
    average: AverageSettings | None = None


class ScopeWorker(Worker):
    Settings = ScopeSettings
    settable = frozenset(
        {"window_s", "gain", "span_uv", "page", "channels_per_page", "filtering", "focus"}
    )

    @classmethod
    def inputs(cls, settings: Any) -> list[str]:
        trigger = settings.average.trigger if settings.average is not None else ""
        return [*settings.streams, *(s for s in (settings.spikes, settings.markers, trigger) if s)]

    @classmethod
    def check(cls, settings: Any) -> None:
        for stream, spec in settings.filters.items():
            if stream not in settings.streams:
                raise ValueError(
                    f"filters names {stream!r}, which is not one of the scope's streams "
                    f"({', '.join(settings.streams)})"
                )
            try:
                spec.check()
            except ValueError as exc:
                raise ValueError(f'filters."{stream}": {exc}') from None
        average = settings.average
        if average is not None:
            if average.stream and average.stream not in settings.streams:
                raise ValueError(
                    f"average.stream {average.stream!r} is not one of the scope's streams "
                    f"({', '.join(settings.streams)})"
                )
            if not average.trigger:
                raise ValueError(
                    "average.trigger is not set; name the stream whose events lock the average "
                    '(e.g. "stim/output")'
                )

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
        raster += s.average.height_px + 70 if s.average is not None else 0
        width, height = s.width_px + 100, s.height_px + 120 + raster
        screen = self.app.primaryScreen()
        if not s.offscreen and screen is not None:  # never taller or wider than the screen
            room = screen.availableGeometry()  # (a 1080p screen cut the raster off)
            width, height = min(width, room.width()), min(height, room.height())
        self.window.resize(width, height)
        from workers.visualization.mouse import TraceMouse

        self.panels = [Panel(self, stream, pg) for stream in s.streams]
        self._mice = []
        for panel in self.panels:
            self.window.addTab(panel.widget, panel.stream)
            self._mice.append(
                TraceMouse(
                    panel.widget, panel.plot, self._zoom, functools.partial(self._expand, panel)
                )
            )
        self.spikes = self._events(s.spikes)
        self.markers = self._events(s.markers)
        self.trigger = self._events(s.average.trigger if s.average is not None else "")
        self.onsets = Onsets()
        self.averaged = next((p for p in self.panels if p.average_settings is not None), None)
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
        "F": "display filters on / off",
        "Esc": "back to the page from an expanded channel",
    }

    #: What the mouse does on the traces (README, "The live scope").
    MOUSE: ClassVar[dict[str, str]] = {
        "wheel": "zoom in time (away: time window /2; toward: x2)",
        "double-click": "expand the channel under it to the whole height; again: back",
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
        ("filters", "filters", "F"),
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
            "F": self._toggle_filters,
            "Esc": lambda: self._focus(-1),
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
        self.buttons["filters"].setCheckable(True)
        self.buttons["filters"].setChecked(self.settings.filtering)
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

    def _zoom(self, steps: int) -> None:
        """The mouse wheel: ``steps`` notches away from the user halve the time window each."""
        self._step("window_s", 0.5**steps)

    def _expand(self, panel: Panel, row: float) -> None:
        """A double-click at ``row`` of ``panel``'s traces: expand the channel there, or go
        back to the page from an expanded one."""
        if panel.envelope is None:
            return
        if self.settings.focus >= 0:
            self._focus(-1)
            return
        first, count = panel.page()
        band = max(2, self.settings.height_px // max(1, count))
        if 0 <= row < band * count:
            self._focus(first + int(row // band))

    def _focus(self, channel: int) -> None:
        reply = self.set_parameter("focus", channel)
        if isinstance(reply, messages.Error):
            self.log.info("focus refused: %s", reply.text)
        self._update_note()

    def _step_page(self, delta: int) -> None:
        panel = self.panels[max(0, self.window.currentIndex())]
        channels = panel.envelope.channels if panel.envelope is not None else 1
        if self.settings.focus >= 0:  # an expanded channel: the next or previous channel
            self._focus(min(max(0, self.settings.focus + delta), channels - 1))
            return
        pages = max(1, -(-channels // self.settings.channels_per_page))
        page = min(max(0, self.settings.page + delta), pages - 1)
        self.set_parameter("page", page)
        self._update_note()

    def _toggle_pause(self) -> None:
        self.paused = not self.paused
        self.buttons["pause"].setChecked(self.paused)  # pressed while paused, by key or click
        self._update_note()

    def _toggle_filters(self) -> None:
        self.set_parameter("filtering", not self.settings.filtering)
        self.buttons["filters"].setChecked(self.settings.filtering)
        self._update_note()

    def _update_note(self) -> None:
        """What `rigpipe status` shows beside the scope: the view as the keys left it."""
        s = self.settings
        self.note = (
            # the page as `rigpipe set scope page N` takes it (from 0)
            f"gain {s.gain:g}, page {s.page}, {s.channels_per_page} per page, "
            f"{s.window_s:g} s"
            + (f", channel {s.focus} expanded" if s.focus >= 0 else "")
            + (", filters off" if s.filters and not s.filtering else "")
            + (", PAUSED" if self.paused else "")
        )

    def on_parameter(self, name: str, value: Any) -> None:
        if name in ("window_s", "filtering") and getattr(self, "panels", None):
            for panel in self.panels:
                if panel.reader is not None:
                    panel._new_envelope()
        averaged = getattr(self, "averaged", None)
        if name == "focus" and averaged is not None:
            averaged.new_average()  # the average follows the expanded channel
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
            self._read_triggers()
            shown = self.panels[max(0, self.window.currentIndex())]
            if self.paused:
                shown.show_paused()
            elif shown.envelope is not None and shown.reader is not None:
                self._overlay(shown)
                shown._draw()
            self._count_frame()
            self._snapshot()
        except Exception as exc:  # a drawing error ends the scope (run() re-raises it)
            self._failure = exc
            self.app.exit(1)

    def _overlay(self, panel: Panel) -> None:
        """Spike ticks and stimulation markers on the panel shown."""
        if panel.envelope is None:
            return
        assert panel.reader is not None
        spikes = self._read_events(self.spikes)  # read on every refresh: it keeps up
        if panel.stream.split("/")[0] != self.settings.spikes.split("/")[0]:
            spikes = spikes[:0]  # ticks only on the tabs of the worker that detected them
        offsets = panel.frames_before_newest(spikes["timestamp_ns"])
        if offsets is not None and len(spikes):
            channel_ids = panel.reader.descriptor.get("channel_ids", [])
            panel.envelope.mark_spikes(offsets, stream_columns(spikes["channel"], channel_ids))
        offsets = panel.frames_before_newest(self._read_marker_times(self.markers))
        if offsets is not None and len(offsets):
            panel.envelope.mark(offsets)

    def _read_triggers(self) -> None:
        """The average's new triggers (read on every refresh, the tab shown or not)."""
        panel = self.averaged
        if panel is None:
            return
        reader = self._reader(self.trigger)
        if reader is None:
            return
        try:
            chunk = reader.read(timeout_s=0)
        except EndOfStream:
            reader.close()
            self.trigger["reader"] = None
            return
        continuous = reader.sample_rate > 0 and not chunk.data.dtype.names
        times = self.onsets.times(chunk.timestamps_ns, chunk.data, continuous)
        if panel.average is not None:
            panel.average.trigger(times)
            self.counters.update(
                averaged=panel.average.events, average_skipped=panel.average.skipped
            )

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
        for events in (getattr(self, name, None) for name in ("spikes", "markers", "trigger")):
            if events and events["reader"] is not None:
                events["reader"].close()
        if getattr(self, "shown", False):
            self.window.close()


WORKER = ScopeWorker
