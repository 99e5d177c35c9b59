"""A Qt graphics item that shows a numpy array of ``Format_RGB32`` pixels as it is.

pyqtgraph's ``ImageItem`` turns an array into a fresh ``QImage`` on every
``setImage`` (an RGBA array is copied and, on the window, converted pixel by
pixel) and repaints it whole. The scope changes a few columns per refresh (a
envelope at 30 Hz over 5 s moves 8 of 1200), so :class:`PixelImage` wraps the
array in a ``QImage`` once, without a copy, and asks Qt to repaint only the
columns that changed. At 1200 x 800 pixels offscreen that took a refresh's
painting from 2.4-4.6 ms to 0.3-0.5 ms of CPU (``bench/scope.py`` has the
whole scope's figures). A plain ``QGraphicsObject``: it goes in a pyqtgraph plot or any Qt scene.
Imported by the scope after pyqtgraph is known to load.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pyqtgraph.Qt import QtCore, QtGui, QtWidgets


class PixelImage(QtWidgets.QGraphicsObject):
    """The pixels of :meth:`show`, one scene unit per pixel, row 0 at y = 0."""

    def __init__(self) -> None:
        super().__init__()
        self._pixels: np.ndarray | None = None
        self._image = QtGui.QImage()

    def show(self, pixels: np.ndarray, changed: Sequence[tuple[int, int]] | None = None) -> None:
        """Show ``pixels`` (height x width uint32, ``0xffRRGGBB``; C-contiguous).

        The array is shown in place, not copied: the caller changes it and says
        which runs of columns it changed (``(first, stop)`` pairs). ``None``
        repaints all; a different array than the last one always does.
        """
        if pixels.dtype != np.uint32 or pixels.ndim != 2 or not pixels.flags.c_contiguous:
            raise ValueError(
                f"PixelImage shows a C-contiguous (height, width) uint32 array; "
                f"given {pixels.dtype} {pixels.shape}"
            )
        if pixels is not self._pixels:
            if self._pixels is None or pixels.shape != self._pixels.shape:
                self.prepareGeometryChange()
            height, width = pixels.shape
            self._image = QtGui.QImage(
                pixels.data, width, height, pixels.strides[0], QtGui.QImage.Format.Format_RGB32
            )
            self._pixels = pixels  # the QImage reads this array's memory: keep it alive
            changed = None
        if changed is None:
            self.update()
            return
        height = pixels.shape[0]
        for first, stop in changed:
            self.update(QtCore.QRectF(first, 0, stop - first, height))

    def boundingRect(self) -> QtCore.QRectF:
        if self._pixels is None:
            return QtCore.QRectF()
        height, width = self._pixels.shape
        return QtCore.QRectF(0, 0, width, height)

    def paint(self, painter: QtGui.QPainter, *args: Any) -> None:
        if self._pixels is not None:
            painter.drawImage(self.boundingRect(), self._image)
