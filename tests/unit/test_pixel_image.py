"""The scope's image item, rendered by Qt itself (offscreen): what Qt paints is the array."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests import wine

wine.import_module("PySide6.QtWidgets", "icuuc.dll")
pytest.importorskip("pyqtgraph")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from workers.visualization.envelope import BACKGROUND, TRACE, Envelope, Picture, rgb, rgb32, runs
from workers.visualization.pixels import PixelImage

WIDTH, HEIGHT = 120, 80


@pytest.fixture
def view():
    """A view showing the scene 1:1 in a real (offscreen) window; yields (item, grab)."""
    app = pg.mkQApp("test")
    scene = QtWidgets.QGraphicsScene(0, 0, WIDTH, HEIGHT)
    window = QtWidgets.QGraphicsView(scene)
    window.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
    window.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    window.setVerticalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    window.setFixedSize(WIDTH, HEIGHT)
    item = PixelImage()
    scene.addItem(item)
    window.show()

    def grab() -> np.ndarray:
        """What the window shows now (after Qt ran its pending repaints), as RGB rows."""
        for _ in range(5):
            app.processEvents()
        image = (
            window.viewport().grab().toImage().convertToFormat(QtGui.QImage.Format.Format_RGB888)
        )
        row_bytes = image.bytesPerLine()
        flat = np.frombuffer(image.constBits(), np.uint8, row_bytes * image.height())
        rows = flat.reshape(image.height(), row_bytes)[:, : 3 * image.width()]
        return rows.reshape(image.height(), image.width(), 3).copy()  # image is freed next

    try:
        yield item, grab
    finally:
        window.close()
        scene.removeItem(item)


def _colour(pixel: np.uint32) -> list[int]:
    return list(rgb(pixel))


def test_qt_reads_each_pixel_as_the_colour_it_was_given(view) -> None:
    item, grab = view
    pixels = np.full((HEIGHT, WIDTH), BACKGROUND, np.uint32)
    pixels[10:20, 30:40] = TRACE
    pixels[50, :] = rgb32(1, 2, 3)
    item.show(pixels)
    shown = grab()
    assert (shown[10:20, 30:40] == _colour(TRACE)).all()
    assert (shown[50] == [1, 2, 3]).all()
    assert (shown[:10] == 0).all() and (shown[60:] == 0).all()


def test_columns_changed_in_place_are_painted_and_the_rest_is_kept(view) -> None:
    item, grab = view
    pixels = np.full((HEIGHT, WIDTH), BACKGROUND, np.uint32)
    item.show(pixels)
    grab()
    pixels[:, 70:75] = TRACE
    item.show(pixels, [(70, 75)])
    shown = grab()
    assert (shown[:, 70:75] == _colour(TRACE)).all(), "the changed columns are painted"
    assert (shown[:, :70] == 0).all() and (shown[:, 75:] == 0).all()


def test_a_new_array_is_painted_whole_even_when_told_of_some_columns(view) -> None:
    item, grab = view
    item.show(np.full((HEIGHT, WIDTH), BACKGROUND, np.uint32))
    grab()
    item.show(np.full((HEIGHT, WIDTH), TRACE, np.uint32), [(0, 1)])
    assert (grab() == _colour(TRACE)).all()


def test_an_array_it_cannot_show_as_it_is_is_refused() -> None:
    pg.mkQApp("test")
    item = PixelImage()
    with pytest.raises(ValueError, match="C-contiguous"):
        item.show(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="uint32"):
        item.show(np.zeros((8, 8), np.uint32)[:, ::2])


def test_a_picture_names_the_column_runs_it_drew_again() -> None:
    assert runs(np.array([2, 3, 4, 9, 11, 12])) == [(2, 5), (9, 10), (11, 13)]
    assert runs(np.array([], np.int64)) == []
    envelope = Envelope(2, 1000.0, 1.0, 100)  # 10 frames per column
    picture = Picture()
    envelope.add(np.zeros((1000, 2), np.float32))
    picture.draw(envelope, 0, 2, 40, 40.0, 1.0)
    assert picture.changed == [(0, 100)], "a first drawing is whole"
    envelope.add(np.ones((25, 2), np.float32))  # columns 0-2, the cursor onto column 2
    picture.draw(envelope, 0, 2, 40, 40.0, 1.0)
    assert picture.changed == [(0, 3)]
    envelope.mark_spike(500, 1)  # column 52
    picture.draw(envelope, 0, 2, 40, 40.0, 1.0)
    assert picture.changed == [(52, 53)]
