"""One stream's tab of the scope: its reader, its envelope, its image, axes and status line.

A :class:`Panel` is made by the scope worker (:mod:`workers.visualization.worker`) once
pyqtgraph loaded; it needs only the worker's shape (:class:`Scope`): its spec and its
current settings, which ``rigpipe set`` and the keys change.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from pipeline.errors import EndOfStream, StreamNotFound
from pipeline.host import clock
from pipeline.ring import RingReader, attach
from pipeline.worker import WorkerSpec
from workers.visualization.average import AverageSettings, TriggeredAverage, average_image
from workers.visualization.envelope import Envelope, Picture, raster_image
from workers.visualization.filters import ChannelFilter, DisplayFilter

SCALE_BAR_COLOR = (255, 255, 255)
SCALE_BAR_MARGIN_PX = 8  # from the right edge of the traces


def nice_below(value: float) -> float:
    """The largest 1, 2 or 5 x 10^k not above ``value`` (> 0)."""
    power = 10.0 ** np.floor(np.log10(value))
    return float(next(m * power for m in (5, 2, 1) if m * power <= value * (1 + 1e-9)))


class Scope(Protocol):
    """What a panel uses of the scope worker."""

    spec: WorkerSpec
    settings: Any  # ScopeSettings, replaced whole when a parameter changes


def _scale(descriptor: dict[str, Any]) -> float:
    """Microvolts per ring unit, from the descriptor (1 if it has none)."""
    scale = descriptor.get("scale", 1.0)
    if isinstance(scale, list):
        return float(np.median(scale)) if scale else 1.0
    return float(scale) if isinstance(scale, int | float) else 1.0


class Panel:
    """One stream's tab: its reader, its envelope, its image and status line."""

    def __init__(self, worker: Scope, stream: str, pg: Any) -> None:
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
        self.plot.setMouseEnabled(x=False, y=False)  # the wheel zooms in time (TraceMouse)
        self.plot.hideButtons()
        self.plot.invertY(True)
        self.image = PixelImage()
        self.plot.addItem(self.image)
        # A scale bar in the stream's units at the right of the first band (all bands share it).
        self.scale_bar = pg.PlotDataItem(pen=pg.mkPen(SCALE_BAR_COLOR, width=3))
        self.scale_text = pg.TextItem(color=SCALE_BAR_COLOR, anchor=(1.0, 0.5))
        for item in (self.scale_bar, self.scale_text):
            item.setZValue(10)  # over the traces
            self.plot.addItem(item)
        self._scaled: tuple[float, int, int, str] | None = None
        self.plot.setRange(xRange=(0, s.width_px), yRange=(0, s.height_px), padding=0)
        self.plot.showAxis("bottom")  # where in the envelope: seconds from its left edge
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
        self.average: TriggeredAverage | None = None
        self.average_settings: AverageSettings | None = None
        average = s.average
        if average is not None and (average.stream or s.streams[0]) == stream:
            self.average_settings = average
            self._add_average_plot(pg, average, s.width_px)
        # The axes and the status line change seldom, yet the image under them is drawn
        # 30 times a second: Qt repaints them from a cached pixmap until they change.
        cached = pg.QtWidgets.QGraphicsItem.CacheMode.DeviceCoordinateCache
        plots = [self.plot, *([self.raster_plot] if self.raster is not None else [])]
        plots += [self.average_plot] if self.average_settings is not None else []
        for item in [self.status, *(p.getAxis(a) for p in plots for a in ("left", "bottom"))]:
            item.setCacheMode(cached)
        self.reader: RingReader | None = None
        self.envelope: Envelope | None = None
        self.picture = Picture()
        self.newest_ns: int | None = None
        self.dropped = self.overruns = 0
        self.retry_at = 0.0
        self.rate = 0.0
        self._window = (clock.now_s(), 0)
        self._labelled: tuple[int, int, int] | None = None  # (first, count, generation)
        self.filter: ChannelFilter | None = None  # the tab's display filter, while it runs
        self.filter_text = ""  # what the status line says of it
        self._averaged: tuple[int, int, int] | None = None  # (channel, events, skipped) drawn
        self.average_channel = 0
        self.average_text = ""

    def _add_average_plot(self, pg: Any, average: AverageSettings, width: int) -> None:
        """Under the traces: a line saying what is averaged, and the average."""
        from workers.visualization.pixels import PixelImage

        self.average_label = self.widget.addLabel("", row=3, col=0, justify="left")
        plot = self.average_plot = self.widget.addPlot(row=4, col=0)
        plot.getAxis("left").setWidth(60)
        plot.setMenuEnabled(False)
        plot.setMouseEnabled(x=False, y=False)
        plot.hideButtons()
        plot.invertY(True)
        self.average_image = PixelImage()
        plot.addItem(self.average_image)
        plot.setRange(xRange=(0, width), yRange=(0, average.height_px), padding=0)
        # ticks in ms from the trigger, 0 included
        span_ms = average.before_ms + average.after_ms
        step = next(
            (
                t
                for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
                if span_ms / t <= 10
            ),
            2000.0,
        )
        ticks = [
            ((k * step + average.before_ms) * width / span_ms, f"{k * step:g} ms")
            for k in range(
                -int(average.before_ms / step + 1e-9), int(average.after_ms / step + 1e-9) + 1
            )
        ]
        axis = plot.getAxis("bottom")
        axis.setTicks([ticks, []])
        # one row per pixel, as the picture is drawn: the plot is its rows and its time axis
        height = average.height_px + axis.maximumHeight()
        plot.setMinimumHeight(height)
        plot.setMaximumHeight(height)

    def full_name(self) -> str:
        return f"{self.worker.spec.session}/{self.stream}"

    def refresh(self) -> None:
        """Fold the frames that arrived into the envelope (drawing is the worker's choice)."""
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
        self._new_envelope()
        self.new_average()
        return True

    def _new_envelope(self) -> None:
        assert self.reader is not None
        channels = int(np.prod(self.reader.frame_shape)) if self.reader.frame_shape else 1
        rate = self.reader.sample_rate or 1000.0
        s = self.worker.settings
        self.envelope = Envelope(channels, rate, s.window_s, s.width_px)
        self.unit_uv = _scale(self.reader.descriptor)
        self.units = str(self.reader.descriptor.get("units") or "uV")
        self._new_filter(rate)

    def _new_filter(self, rate: float) -> None:
        """The tab's display filter at the stream's rate, if one is set and switched on."""
        s = self.worker.settings
        spec: DisplayFilter | None = s.filters.get(self.stream)
        self.filter, self.filter_text = None, ""
        if spec is None or not spec.active:
            return
        if not s.filtering:
            self.filter_text = f"filters off ({spec.describe()}; F)"
        elif problem := spec.problem(rate):
            self.filter_text = f"filter off: {problem}"
        else:
            self.filter = ChannelFilter(spec, rate)
            self.filter_text = spec.describe()

    def new_average(self) -> None:
        """Begin the average afresh: of the expanded channel, else of the configured one."""
        average = self.average_settings
        if average is None or self.envelope is None:
            return
        s = self.worker.settings
        channels = self.envelope.channels
        self.average_channel = s.focus if 0 <= s.focus < channels else average.channel
        self._averaged = None
        if self.average_channel >= channels:
            self.average = None
            self.average_text = (
                f"average: channel {self.average_channel} is not in {self.stream} "
                f"({channels} channels, from 0)"
            )
            self.average_label.setText(self.average_text)
            return
        rate = self.envelope.sample_rate
        self.average = TriggeredAverage(rate, average.before_ms, average.after_ms)

    def page(self) -> tuple[int, int]:
        """The first channel of the page shown and how many it has (an expanded channel:
        itself alone)."""
        assert self.envelope is not None
        s = self.worker.settings
        if 0 <= s.focus < self.envelope.channels:
            return s.focus, 1
        per_page = min(s.channels_per_page, self.envelope.channels)
        return min(s.page * per_page, max(0, self.envelope.channels - per_page)), per_page

    def _drain(self, reader: RingReader) -> None:
        """Fold what arrived into the envelope, straight from the ring (a view, no copy: a
        refresh of 1024 channels would otherwise copy 2 MB into new pages)."""
        budget = max(1, round(reader.sample_rate * self.worker.settings.window_s)) or 100_000
        while budget > 0:
            with reader.read_view(max_frames=budget, timeout_s=0) as view:
                frames = view.frames  # once released, a view holds no frames
                if not frames:
                    break
                if view.format_changed:
                    self._new_envelope()
                    self.new_average()
                assert self.envelope is not None
                data = view.data.reshape(frames, -1)
                if self.average is not None:  # raw samples: the filter shapes only the traces
                    self.average.add(view.timestamps_ns, data[:, self.average_channel])
                if self.filter is None:
                    self.envelope.add(data)
                else:  # the page's channels only (see workers.visualization.filters)
                    first, count = self.page()
                    shown = self.filter.apply(data[:, first : first + count], (first, count))
                    if self.filter.restarted:
                        self.envelope.clear()
                    self.envelope.add(shown, first)
                self.newest_ns = int(view.timestamps_ns[-1])
            dropped = view.dropped
            if not view.intact:  # overwritten while it was folded in: the envelope may be torn
                dropped += frames
            if dropped:
                self.dropped += dropped
                self.overruns += 1
            budget -= frames
            self._count(frames)

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
        if self.newest_ns is None or self.envelope is None:
            return None
        ns_before = (self.newest_ns - timestamps_ns.astype(np.int64)).astype(np.float64)
        return np.rint(ns_before * (self.envelope.sample_rate / 1e9)).astype(np.int64)

    def _draw(self) -> None:
        assert self.envelope is not None and self.reader is not None
        s = self.worker.settings
        first, per_page = self.page()
        span = s.span_uv / self.unit_uv
        image = self.picture.draw(self.envelope, first, per_page, s.height_px, span, s.gain)
        self.image.show(image, self.picture.changed)
        self._label(first, per_page, s.height_px)
        self._scale_bar(s.span_uv / s.gain, max(2, s.height_px // max(1, per_page)), s.width_px)
        self._time_axis(s.window_s, s.width_px)
        if self.raster is not None:
            self.raster.show(raster_image(self.envelope, first, per_page, s.raster_px))
        if self.average_settings is not None:
            self._draw_average(self.average_settings)
        fields = [  # apart by a bar: Qt's label folds runs of spaces into one
            self.stream,
            f"gen {self.reader.generation}",
            f"{self.rate:,.0f} frames/s",
            f"drops {self.dropped}",
            f"overruns {self.overruns}",
            *(
                [f"channel {first + 1} of {self.envelope.channels} expanded (Esc)"]
                if 0 <= s.focus < self.envelope.channels
                else [
                    f"channels {first + 1}-{first + per_page} of {self.envelope.channels}",
                    f"page {s.page}",
                ]
            ),
            f"{s.window_s:g} s",
            f"gain {s.gain:g}",
            f"band {s.span_uv / s.gain:g} {self.units}",  # the stream's units: uV, uA...
            *([self.filter_text] if self.filter_text else []),
        ]
        text = "  |  ".join(fields)
        if text != self.status.text:  # a new text lays the label out again: only on change
            self.status.setText(text)

    def _draw_average(self, settings: AverageSettings) -> None:
        """The average under the traces, drawn again when it took in a trigger."""
        average = self.average
        if average is None:
            return
        key = (self.average_channel, average.events, average.skipped)
        if key == self._averaged:
            return
        self._averaged = key
        assert self.reader is not None
        labels = self.reader.descriptor.get("channel_labels") or []
        channel = self.average_channel
        name = str(labels[channel]) if channel < len(labels) else f"channel {channel}"
        window = f"-{settings.before_ms:g} to +{settings.after_ms:g} ms"
        skipped = f", {average.skipped} skipped" if average.skipped else ""
        mean = average.mean
        if mean is None:
            self.average_text = f"average of {name}: waiting for a trigger on {settings.trigger}"
            self.average_label.setText(self.average_text + skipped)
            return
        width = self.worker.settings.width_px
        image, top = average_image(mean, average.before, width, settings.height_px)
        self.average_image.show(image)
        top_value = top * self.unit_uv
        self.average_plot.getAxis("left").setTicks(
            [
                [
                    (0, f"{top_value:+.3g}"),
                    (settings.height_px // 2, "0"),
                    (settings.height_px - 1, f"{-top_value:+.3g}"),
                ],
                [],
            ]
        )
        self.average_text = (
            f"average of {name} locked to {settings.trigger}: {average.events} triggers"
            f"{skipped}  |  {window}  |  unfiltered, {self.units}"
        )
        self.average_label.setText(self.average_text)

    def _scale_bar(self, band: float, band_px: int, width: int) -> None:
        """A bar of a round value (1, 2 or 5 x 10^k, at most half a band) at the right of
        the first band, labelled in the stream's units."""
        value = nice_below(band / 2)
        key = (value, band_px, width, self.units)
        if key == self._scaled:
            return
        self._scaled = key
        length = value / band * band_px
        x = width - SCALE_BAR_MARGIN_PX
        middle = band_px / 2
        self.scale_bar.setData([x, x], [middle - length / 2, middle + length / 2])
        self.scale_text.setText(f"{value:g} {self.units}")
        self.scale_text.setPos(x - 4, middle)

    def _time_axis(self, window_s: float, width: int) -> None:
        """Ticks in seconds from the envelope's left edge (the cursor sweeps across)."""
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
        names = [str(labels[c]) if c < len(labels) else str(c) for c in range(first, first + count)]
        ticks = [(k * band + band // 2, name) for k, name in enumerate(names) if k % every == 0]
        self.plot.getAxis("left").setTicks([ticks, []])
        if self.raster is not None:  # its rows are the same channels, squeezed: label them
            rows = self.worker.settings.raster_px
            step = max(1, -(-count // max(1, rows // 14)))  # a label at most every 14 pixels
            spaced = [((k + 0.5) * rows / count, name) for k, name in enumerate(names)]
            self.raster_plot.getAxis("left").setTicks([spaced[::step], []])
