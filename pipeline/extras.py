"""How to install an optional part of rigpipe, said the same way everywhere.

rigpipe is installed from its checkout (``pip install -e .``), not from PyPI,
so ``pip install 'rigpipe[nwb]'`` would fail; the hint names both the
checkout's extra and the packages themselves.
"""

from __future__ import annotations

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
    """``pip install -e ".[extra]"`` in rigpipe's checkout, or the packages alone."""
    return (
        f"""pip install -e ".[{extra}]" in rigpipe's checkout (or: pip install {EXTRAS[extra]})"""
    )
