"""Optional parts of rigpipe: import one, or say in one line how to install it.

Hardware and export backends import their package only when first used, through
:func:`require`, so that a rig without the Blackrock SDK, the STG's pythonnet, pylsl,
pynwb or Qt starts and runs everything else. A missing one raises
:class:`~pipeline.errors.MissingExtra` with the install line::

    pylsl = extras.require("lsl", "pylsl", "the LSL bridge")
"""

from __future__ import annotations

import importlib
from types import ModuleType

from pipeline.errors import MissingExtra

#: extra -> what pip installs for it (as pyproject.toml says)
EXTRAS = {
    "blackrock": "'pycbsdk>=10'",
    "stg": "'pythonnet>=3.0'",
    "nwb": "'pynwb>=4.2,<5'",
    "viz": "pyqtgraph 'PySide6-Essentials>=6.6,<6.12'",
    "lsl": "pylsl",
    "bench": "the packages of the bench extra",
}


def install_hint(extra: str) -> str:
    """``pip install -e ".[extra]"`` in rigpipe's checkout, or the packages alone (a wheel)."""
    return (
        f"""pip install -e ".[{extra}]" in rigpipe's checkout (or: pip install {EXTRAS[extra]})"""
    )


def require(extra: str, module: str, needed_by: str) -> ModuleType:
    """The module ``module`` of extra ``extra``, or :class:`MissingExtra` naming
    ``needed_by`` (what needs it) and the install line."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.partition(".")[0]
        missing = exc.name or top
        if missing != top and not missing.startswith(f"{top}."):
            # the package is there but one of its own dependencies is not
            detail = f"{top} is installed but cannot import {missing}"
        else:
            detail = f"{top} is not installed"
        raise MissingExtra(f"{needed_by} needs {top}: {detail}; {install_hint(extra)}") from None
