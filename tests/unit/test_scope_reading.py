"""The scope counts what it reads: its frame rate, and every frame it could not show
whole (dropped before a read, or overwritten while it was being folded in); and its
status line says it in the stream's own units, one field apart from the next."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import numpy as np
import pytest

from tests import wine

wine.import_module("PySide6.QtWidgets", "icuuc.dll")
pytest.importorskip("pyqtgraph")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pipeline.ring import RingWriter  # noqa: E402
from tests.scope import scope_worker  # noqa: E402
from workers.visualization.worker import ScopeWorker  # noqa: E402

CAPACITY = 4000


@pytest.fixture(params=[{}], ids=["uV"])
def rig(request) -> Iterator[tuple[ScopeWorker, RingWriter]]:
    session = f"scoperead{os.getpid()}"
    source = RingWriter(f"{session}/src/out", np.int16, 8, CAPACITY, 1000.0, request.param)
    worker = scope_worker(session, {"streams": ["src/out"]})
    worker.setup()
    try:
        source.write(np.zeros((10, 8), np.int16))
        worker._refresh()  # attaches
        yield worker, source
    finally:
        try:
            worker.teardown()
        finally:
            source.close()


def test_the_frame_rate_counts_the_frames_read(rig) -> None:
    scope, source = rig
    panel = scope.panels[0]
    for _ in range(6):  # 1.2 s of 200-frame writes, read after each
        source.write(np.zeros((200, 8), np.int16))
        panel.refresh()
        time.sleep(0.2)
    source.write(np.zeros((200, 8), np.int16))
    panel.refresh()
    assert 500 < panel.rate < 1500, panel.rate  # 1400 frames in about 1.2-1.4 s
    assert (panel.dropped, panel.overruns) == (0, 0)


def test_frames_overwritten_while_folded_in_count_as_drops(rig) -> None:
    scope, source = rig
    panel = scope.panels[0]
    source.write(np.zeros((300, 8), np.int16))
    envelope = panel.envelope
    assert envelope is not None
    fold = envelope.add

    lapped = []

    def lapped_while_folding(data: np.ndarray) -> None:
        fold(data)
        if not lapped:  # once: the writer laps the view in use
            lapped.append(True)
            source.write(np.zeros((CAPACITY, 8), np.int16))

    envelope.add = lapped_while_folding  # type: ignore[method-assign]
    panel.refresh()
    envelope.add = fold  # type: ignore[method-assign]
    assert panel.dropped >= 300 and panel.overruns >= 1, (panel.dropped, panel.overruns)


@pytest.mark.parametrize("rig", [{"units": "uA"}], indirect=True, ids=["uA"])
def test_the_status_line_is_in_the_streams_units_with_its_fields_apart(rig) -> None:
    """The stimulator's output is in uA: its band is not "uV". Qt's label folds runs of
    spaces into one, so the fields are set apart by a bar."""
    scope, source = rig
    source.write(np.zeros((100, 8), np.int16))
    scope._refresh()
    text = scope.panels[0].status.text
    fields = text.split("  |  ")
    assert fields[-1] == "band 400 uA", text
    assert "channels 1-8 of 8" in fields and "page 0" in fields and "gain 1" in fields


def test_the_raster_rows_are_labelled_with_their_channels() -> None:
    """The spike raster under the traces has a row band per channel of the page: its
    axis names the channels (it said 0/50/100, pixel rows)."""
    session = f"scoperaster{os.getpid()}"
    labels = [f"e{c:02d}" for c in range(32)]
    source = RingWriter(
        f"{session}/src/out", np.int16, 32, CAPACITY, 1000.0, {"channel_labels": labels}
    )
    scope = scope_worker(
        session, {"streams": ["src/out"], "raster": True, "raster_px": 160, "channels_per_page": 16}
    )
    scope.setup()
    try:
        source.write(np.zeros((100, 32), np.int16))
        scope._refresh()
        ticks = scope.panels[0].raster_plot.getAxis("left")._tickLevels[0]
        names = [name for _, name in ticks]
        assert names[0] == "e00" and set(names) <= set(labels[:16]) and len(names) >= 8
        spacing = np.diff([y for y, _ in ticks])
        assert spacing.min() >= 14 and abs(ticks[0][0] - 160 / 16 / 2) < 1e-9
    finally:
        try:
            scope.teardown()
        finally:
            source.close()


def test_a_scale_bar_in_the_streams_units_spans_its_value_of_a_band(rig) -> None:
    """A white bar of a round value at the right of the first band, labelled: at gain 1 a
    band spans 400 uV and the bar 200 uV (half a band); at gain 4, 50 uV of a 100 uV band.
    Checked on the rendered window, as a person sees it."""
    from workers.visualization.panel import nice_below

    scope, source = rig
    panel = scope.panels[0]
    assert [nice_below(v) for v in (400, 200, 99.9, 0.3, 7)] == [200, 200, 50, 0.2, 5]
    for gain, label in ((1.0, "200 uV"), (4.0, "50 uV")):
        scope.set_parameter("gain", gain)
        source.write(np.zeros((100, 8), np.int16))
        scope._refresh()
        assert panel.scale_text.toPlainText() == label
        band_px = scope.settings.height_px // 8
        _, ys = panel.scale_bar.getData()
        assert abs((ys[1] - ys[0]) - band_px / 2) < 1e-6  # half a band, whatever the gain
    scope.window.resize(scope.settings.width_px + 100, scope.settings.height_px + 120)
    grabbed = panel.widget.grab().toImage()
    image = grabbed.convertToFormat(grabbed.Format.Format_RGB32)
    width, height = image.width(), image.height()
    pixels = np.frombuffer(image.constBits(), np.uint32, width * height).reshape(height, -1)
    white = pixels[:, :width] & 0xFFFFFF == 0xFFFFFF
    columns = np.flatnonzero(white.sum(axis=0) >= 0.8 * band_px / 2)  # a vertical white run
    assert len(columns) and columns.min() > width * 0.8, "the bar stands at the right"
