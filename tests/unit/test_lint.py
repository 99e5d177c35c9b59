"""The code base is ruff-clean (lint and format) and type-checks under mypy, as CI requires."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import wine

ROOT = Path(__file__).resolve().parents[2]


@wine.gap("bcryptprimitives.dll")  # ruff.exe; the Linux leg checks the same files
@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff_is_clean(command):
    ruff = shutil.which("ruff")
    args = [ruff] if ruff else [sys.executable, "-m", "ruff"]
    _passes([*args, *command, "pipeline", "workers", "tests", "bench"])


@pytest.mark.skipif(
    wine.UNDER_WINE, reason="types are checked on the Linux leg: the same files, one checker"
)
def test_mypy_finds_no_type_errors():
    """``[tool.mypy]`` in pyproject.toml: pipeline/ and workers/ at the strictness it states."""
    _passes([sys.executable, "-m", "mypy"])


def _passes(argv: list[str]) -> None:
    """``argv`` run in the checkout exits 0 (else its output is the failure)."""
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
