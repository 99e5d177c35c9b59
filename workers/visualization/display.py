"""Can the scope open a window here: a display to show it on, and the X11 libraries Qt
loads for it (whose absence makes Qt abort the process with a misleading hint)."""

from __future__ import annotations

import ctypes
import os
import sys


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
