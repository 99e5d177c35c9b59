"""The scope driven by keys, through Qt's own test API, offscreen: every key in
ScopeWorker.KEYS changes what it says, through the same checks as `rigpipe set`, and
the mouse wheel zooms in time and a double-click expands a channel."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pytest

from tests import wine

wine.import_module("PySide6.QtWidgets", "icuuc.dll")
pytest.importorskip("pyqtgraph")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QToolButton

from pipeline.ring import RingWriter
from tests.scope import scope_worker
from workers.visualization.envelope import TRACE
from workers.visualization.worker import ScopeWorker


@pytest.fixture
def scope(tmp_path) -> Iterator[ScopeWorker]:
    session = f"keys{os.getpid()}"
    labels = [f"ch{c:03d}" for c in range(64)]
    source = RingWriter(
        f"{session}/src/out", np.int16, 64, 10_000, 1000.0, {"channel_labels": labels}
    )
    worker = scope_worker(session, {"streams": ["src/out"], "channels_per_page": 16})
    worker.setup()
    try:
        worker._refresh()  # attaches (from now)
        source.write(np.zeros((500, 64), np.int16))  # half a second of flat traces
        worker._refresh()  # draws the first picture
        worker.window.activateWindow()
        QTest.qWaitForWindowActive(worker.window, 2000)
        yield worker
    finally:
        worker.teardown()
        source.close()


def press(worker: ScopeWorker, key: Qt.Key) -> None:
    QTest.keyClick(worker.window, key, Qt.KeyboardModifier.NoModifier)
    QApplication.processEvents()
    worker._refresh()


def test_keys_change_gain_page_channels_window_and_pause(scope) -> None:
    s = scope.settings
    assert (s.gain, s.page, s.channels_per_page, s.window_s) == (1.0, 0, 16, 5.0)
    press(scope, Qt.Key.Key_Plus)
    press(scope, Qt.Key.Key_Plus)
    assert scope.settings.gain == 4.0
    press(scope, Qt.Key.Key_Minus)
    assert scope.settings.gain == 2.0
    press(scope, Qt.Key.Key_PageDown)
    press(scope, Qt.Key.Key_PageDown)
    assert scope.settings.page == 2
    for _ in range(5):  # 64 channels, 16 a page: page 4 does not exist
        press(scope, Qt.Key.Key_PageDown)
    assert scope.settings.page == 3
    press(scope, Qt.Key.Key_PageUp)
    assert scope.settings.page == 2
    press(scope, Qt.Key.Key_BracketRight)
    assert scope.settings.channels_per_page == 32
    press(scope, Qt.Key.Key_BracketLeft)
    press(scope, Qt.Key.Key_BracketLeft)
    assert scope.settings.channels_per_page == 8
    press(scope, Qt.Key.Key_Right)
    assert scope.settings.window_s == 10.0
    press(scope, Qt.Key.Key_Left)
    press(scope, Qt.Key.Key_Left)
    assert scope.settings.window_s == 2.5
    # what rigpipe status shows; the page as `rigpipe set scope page N` takes it (from 0)
    assert scope.note == f"gain 2, page {scope.settings.page}, 8 per page, 2.5 s"
    assert scope.settings.page == 2
    press(scope, Qt.Key.Key_Space)
    assert scope.paused and scope.note.endswith("PAUSED")
    assert "PAUSED" in scope.panels[0].status.text
    press(scope, Qt.Key.Key_Space)
    assert not scope.paused and "PAUSED" not in scope.panels[0].status.text


def click(worker: ScopeWorker, name: str) -> None:
    button = worker.window.findChild(QToolButton, name)  # as a user finds it: on screen
    assert button is not None and button.isVisible(), name
    QTest.mouseClick(button, Qt.MouseButton.LeftButton)
    QApplication.processEvents()
    worker._refresh()


def test_the_buttons_beside_the_tabs_do_what_the_keys_do(scope) -> None:
    assert [n for n, _, _ in ScopeWorker.BUTTONS] == list(scope.buttons)
    assert all(key in ScopeWorker.KEYS for _, _, key in ScopeWorker.BUTTONS)
    assert "(key: +)" in scope.buttons["gain_up"].toolTip()
    for clicks, setting, expected in [
        (["gain_up", "gain_up", "gain_down"], "gain", 2.0),
        (["page_down", "page_down", "page_up"], "page", 1),
        (["more_channels", "fewer_channels", "fewer_channels"], "channels_per_page", 8),
        (["longer_window", "shorter_window", "shorter_window"], "window_s", 2.5),
    ]:
        for name in clicks:
            click(scope, name)
        assert getattr(scope.settings, setting) == expected, clicks
    assert scope.note == f"gain 2, page {scope.settings.page}, 8 per page, 2.5 s"
    assert scope.settings.page == 1
    click(scope, "pause")
    assert scope.paused and scope.buttons["pause"].isChecked()
    press(scope, Qt.Key.Key_Space)  # the key resumes; the button shows it
    assert not scope.paused and not scope.buttons["pause"].isChecked()
    press(scope, Qt.Key.Key_Plus)  # keys still reach the window after a click
    assert scope.settings.gain == 4.0


def test_a_key_past_a_limit_changes_nothing(scope) -> None:
    for _ in range(12):  # window_s is at most 600 s: 5 * 2**7 = 640 is refused
        press(scope, Qt.Key.Key_Right)
    assert scope.settings.window_s == 320.0


def test_channel_labels_stand_beside_their_traces(scope) -> None:
    ticks = scope.panels[0].plot.getAxis("left")._tickLevels[0]
    assert [label for _, label in ticks] == [f"ch{c:03d}" for c in range(16)]
    band = scope.settings.height_px // 16
    assert [round(y) for y, _ in ticks][:2] == [band // 2, band + band // 2]
    press(scope, Qt.Key.Key_PageDown)
    ticks = scope.panels[0].plot.getAxis("left")._tickLevels[0]
    assert ticks[0][1] == "ch016"


def wheel(worker: ScopeWorker, notches: float) -> None:
    """Turn the mouse wheel over the middle of the traces (positive: away from the user)."""
    viewport = worker.panels[0].widget.viewport()
    middle = QPointF(viewport.width() / 2, viewport.height() / 2)
    event = QWheelEvent(
        middle,
        viewport.mapToGlobal(middle),
        QPoint(0, 0),
        QPoint(0, round(notches * 120)),
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(viewport, event)
    worker._refresh()


def test_the_wheel_zooms_in_time_and_moves_nothing_else(scope) -> None:
    view = scope.panels[0].plot.getViewBox()
    before = view.viewRange()
    wheel(scope, 1)  # away: zoom in
    assert scope.settings.window_s == 2.5
    wheel(scope, -2)  # toward, two notches
    assert scope.settings.window_s == 10.0
    wheel(scope, 0.5)  # half a notch (a touchpad) waits for the other half
    assert scope.settings.window_s == 10.0
    wheel(scope, 0.5)
    assert scope.settings.window_s == 5.0
    assert view.viewRange() == before  # the axes the scope draws still match the picture
    assert "  |  5 s  |  " in scope.panels[0].status.text
    assert scope.note.endswith("5 s")


def double_click(worker: ScopeWorker, row: float) -> None:
    """Double-click the traces at pixel ``row`` (from the top), a third of the way across."""
    panel = worker.panels[0]
    scene = panel.plot.getViewBox().mapViewToScene(QPointF(worker.settings.width_px / 3, row))
    QTest.mouseDClick(
        panel.widget.viewport(),
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
        panel.widget.mapFromScene(scene),
    )
    QApplication.processEvents()
    worker._refresh()


def _trace_rows(worker: ScopeWorker) -> list[int]:
    """The rows a flat (all-zero) page draws its traces on."""
    pixels = worker.panels[0].picture.pixels
    assert pixels is not None
    return [int(r) for r in np.flatnonzero((pixels == TRACE).any(axis=1))]


def test_a_double_click_expands_the_channel_under_it_and_esc_goes_back(scope) -> None:
    band = scope.settings.height_px // 16
    press(scope, Qt.Key.Key_PageDown)  # channels 16-31
    assert len(_trace_rows(scope)) == 16
    double_click(scope, 3 * band + band / 2)  # the fourth band: channel 19
    assert scope.settings.focus == 19
    status = scope.panels[0].status.text
    assert "  |  channel 20 of 64 expanded (Esc)  |  " in status, status
    assert "page" not in status
    assert scope.note == "gain 1, page 1, 16 per page, 5 s, channel 19 expanded"
    assert _trace_rows(scope) == [scope.settings.height_px // 2]  # one band, the whole height
    ticks = scope.panels[0].plot.getAxis("left")._tickLevels[0]
    assert [label for _, label in ticks] == ["ch019"]
    press(scope, Qt.Key.Key_PageDown)  # expanded: the next channel
    assert scope.settings.focus == 20
    press(scope, Qt.Key.Key_Escape)
    assert scope.settings.focus == -1 and scope.settings.page == 1
    assert "channels 17-32 of 64" in scope.panels[0].status.text
    assert len(_trace_rows(scope)) == 16
    double_click(scope, band / 2)
    assert scope.settings.focus == 16
    double_click(scope, 100)  # a second double-click: back to the page
    assert scope.settings.focus == -1
    assert scope.set_parameter("focus", 64).detail == "scope.focus = 64"  # past the last:
    scope._refresh()  # the page is shown, and says so
    assert "channels 17-32 of 64" in scope.panels[0].status.text
