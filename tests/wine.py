"""What a real Windows CPython under Wine 8 cannot show, named once.

CI's Windows leg runs the suite on python.org's Windows CPython under Wine
(tests/windows/). Wine is not Windows: a few things a real Windows has are
missing from it (shared/ENVIRONMENT.md measured each). A test that fails
there only because of one of them is skipped through this module, by one
condition that names the gap, and only under Wine: the skip reason says
which gap, and on Linux, macOS or a real Windows the test runs. Nothing
else in the suite is skipped for Windows but POSIX-only tests (the
``posix`` marker).
"""

from __future__ import annotations

import ctypes
import importlib
import sys
from types import ModuleType

import pytest

#: Each gap of Wine 8 that the suite meets, and what it costs there.
GAPS = {
    "icuuc.dll": "Wine 8 has no icuuc.dll, which Qt 6 loads: no Qt window or widget",
    "bcryptprimitives.dll": (
        "Wine 8 has no bcryptprimitives.dll, which Rust programs load (ruff.exe, rpds-py, "
        "which jsonschema and so pynwb's validation import)"
    ),
    "console events": (
        "GenerateConsoleCtrlEvent fails under Wine 8: no Ctrl-C, Ctrl-Break or close "
        "events can be sent to a console process group"
    ),
    "wine mono": (
        "Wine Mono is not packaged for Debian 12: pythonnet finds no .NET Framework, so "
        "McsUsbNet.dll cannot execute"
    ),
}


def wine_version() -> str:
    """Wine's version where this interpreter runs under Wine, else ""."""
    if sys.platform != "win32":
        return ""
    try:
        get_version = ctypes.WinDLL("ntdll").wine_get_version  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return ""  # a real Windows
    get_version.restype = ctypes.c_char_p
    return get_version().decode()


UNDER_WINE = bool(wine_version())


def _reason(gap: str) -> str:
    return f"Wine gap ({gap}): {GAPS[gap]}; a real Windows runs this test"


def gap(name: str) -> pytest.MarkDecorator:
    """Mark a test that Wine's gap ``name`` keeps from running (skipped under Wine only)."""
    return pytest.mark.skipif(UNDER_WINE, reason=_reason(name))


def skip_module(name: str) -> None:
    """Skip the calling test module under Wine for gap ``name`` (call it before imports)."""
    if UNDER_WINE:
        pytest.skip(_reason(name), allow_module_level=True)


def import_module(module: str, name: str) -> ModuleType:
    """Import ``module``; under Wine, an ImportError from gap ``name`` skips the caller.

    Anywhere else, and under Wine for any other failure, the ImportError is raised.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if UNDER_WINE and "DLL load failed" in str(exc):
            pytest.skip(f"{_reason(name)} ({exc})", allow_module_level=True)
        raise
