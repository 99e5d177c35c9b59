"""Tests that need POSIX carry ``@pytest.mark.posix``, so the suite runs on Windows without them.

A test needs POSIX when it, or a helper of its own module it calls, names a
POSIX-only signal or call, ``/proc``, ``/dev/shm`` (or the segment listing
built on it), ``AF_UNIX`` or an ``ipc://`` endpoint. ``conftest.py`` skips
those tests where ``os.name`` is not ``posix``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
POSIX_ONLY = re.compile(
    r"\bSIG(?:KILL|STOP|CONT|USR1|USR2|HUP|QUIT)\b|\bkillpg\b|\bos\.(?:getuid|geteuid|chown|"
    r"setsid|fork)\b|/proc/|/dev/shm|\bmemory_maps\b|\bAF_UNIX\b|\bfcntl\b|\bimport pwd\b|"
    r"\blist_names\b|ipc://"
)


def _marked_posix(decorators: list[ast.expr]) -> bool:
    return any("mark.posix" in ast.unparse(d) for d in decorators)


def unmarked_posix_tests(path: Path) -> list[str]:
    """The tests in ``path`` that need POSIX and are not marked so (module mark counts)."""
    source = path.read_text()
    tree = ast.parse(source)
    module_marked = any(
        isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets)
        and "mark.posix" in ast.unparse(node.value)
        for node in tree.body
    )
    helpers = {
        node.name: ast.get_source_segment(source, node) or ""
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("test_")
    }
    found = []
    for node in tree.body:
        if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test_")):
            continue
        text = ast.get_source_segment(source, node) or ""
        called = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and n.id in helpers}
        text += "".join(helpers[name] for name in called)
        if POSIX_ONLY.search(text) and not (module_marked or _marked_posix(node.decorator_list)):
            found.append(f"{path.relative_to(ROOT)}::{node.name}")
    return found


def test_every_test_that_needs_posix_is_marked() -> None:
    paths = sorted(p for p in (ROOT / "tests").rglob("test_*.py") if p.name != Path(__file__).name)
    unmarked = [test for path in paths for test in unmarked_posix_tests(path)]
    assert not unmarked, "mark these @pytest.mark.posix:\n" + "\n".join(unmarked)


def test_the_check_sees_a_direct_use_a_helpers_use_and_a_mark(tmp_path: Path) -> None:
    sample = tmp_path / "test_sample.py"
    sample.write_text(
        "import os, signal, pytest\n"
        "def _kill(pid):\n    os.kill(pid, signal.SIGKILL)\n"
        "def test_direct():\n    os.kill(1, signal.SIGSTOP)\n"
        "def test_through_a_helper():\n    _kill(1)\n"
        "@pytest.mark.posix\ndef test_marked():\n    _kill(1)\n"
        "def test_portable():\n    os.kill(1, signal.SIGTERM)\n"
    )
    root = ROOT
    try:
        globals()["ROOT"] = tmp_path
        found = unmarked_posix_tests(sample)
    finally:
        globals()["ROOT"] = root
    assert found == ["test_sample.py::test_direct", "test_sample.py::test_through_a_helper"]


@pytest.mark.posix
def test_a_posix_test_runs_here_because_this_is_posix() -> None:
    import os

    assert os.name == "posix"  # conftest skips this elsewhere
