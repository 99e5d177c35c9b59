"""The code base is ruff-clean (lint and format), as CI requires."""

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
    result = subprocess.run(
        [*args, *command, "pipeline", "workers", "tests", "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
