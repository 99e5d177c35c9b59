"""What the mouse does on a scope's traces: the wheel zooms in time, a double-click
expands the channel under it to the whole height (and a second one goes back).

Both go through the scope's settings (``window_s``, ``focus``) as a key or
``rigpipe set`` would, so what the mouse did shows in the status line and in
``rigpipe status``; pyqtgraph's own mouse zoom stays off (a view that zooms by
itself would no longer match the axes the scope draws). Imported by the scope
after pyqtgraph is known to load.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyqtgraph.Qt import QtCore

#: One notch of a mouse wheel (Qt's angle delta, eighths of a degree): one zoom step.
#: A touchpad sends smaller deltas; they add up to a step.
NOTCH = 120


class TraceMouse(QtCore.QObject):
    """Watches the mouse on ``widget`` (a pyqtgraph GraphicsLayoutWidget) over ``plot``.

    ``zoom(steps)``: the wheel turned ``steps`` notches (positive: away from the user,
    zoom in). ``expand(row)``: a double-click with the left button at ``row`` of the
    plot's y axis (the traces' pixel row), inside the plot.
    """

    def __init__(
        self,
        widget: Any,
        plot: Any,
        zoom: Callable[[int], None],
        expand: Callable[[float], None],
    ) -> None:
        super().__init__(widget)
        self._widget, self._plot = widget, plot
        self._zoom, self._expand = zoom, expand
        self._turned = 0  # wheel delta not yet a whole notch
        widget.viewport().installEventFilter(self)

    def eventFilter(self, watched: Any, event: Any) -> bool:
        kind = event.type()
        if kind == QtCore.QEvent.Type.Wheel:
            self._turned += event.angleDelta().y()
            steps = int(self._turned / NOTCH)  # toward zero: a part notch waits for more
            self._turned -= steps * NOTCH
            if steps:
                self._zoom(steps)
            return True  # taken: the view never zooms by itself
        if (
            kind == QtCore.QEvent.Type.MouseButtonDblClick
            and event.button() == QtCore.Qt.MouseButton.LeftButton
        ):
            scene = self._widget.mapToScene(event.position().toPoint())
            view = self._plot.getViewBox()
            if not view.sceneBoundingRect().contains(scene):
                return False  # on an axis, the status line, another plot
            self._expand(view.mapSceneToView(scene).y())
            return True
        return False
