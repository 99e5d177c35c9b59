"""What a lab installs: a wheel with every module and the example configs, and
``rigpipe init`` / ``rigpipe run --example`` that work from it.

The wheel is built here from this tree (no network: ``--no-build-isolation``) and its
file list checked; CI (``.ci/run``) also installs it into a fresh venv outside the
checkout and runs the demo from there.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from pipeline import config
from pipeline.cli.init import EXAMPLES, example_text
from tests import wine

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_FILES = sorted(f"{name}.toml" for name in EXAMPLES)
_CACHES = shutil.ignore_patterns("__pycache__", "*.pyc")


def _rigpipe(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_listed_packages_are_the_packages_on_disk() -> None:
    """pyproject.toml lists packages (so configs/ can ship as pipeline/configs): a new
    sub-package must be listed, or the wheel would lack it."""
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("pipeline", "workers")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert listed == on_disk | {"pipeline.configs"}


def test_every_example_is_in_configs_and_is_a_valid_config() -> None:
    assert sorted(p.name for p in (ROOT / "configs").glob("*.toml")) == EXAMPLE_FILES
    for name in EXAMPLES:
        rig = config.loads(example_text(name), name)
        assert rig.workers, name


@pytest.mark.skipif(
    wine.UNDER_WINE, reason="one pure-Python wheel for every OS: built and run on the Linux leg"
)
def test_the_wheel_holds_every_module_and_the_example_configs(tmp_path: Path) -> None:
    """Built from a copy of the tree: setuptools keeps a build/ directory beside the
    sources, whose leftovers must neither reach the wheel nor be left in the checkout."""
    source = tmp_path / "source"
    source.mkdir()
    for part in ("pyproject.toml", "README.md", "pipeline", "workers", "configs"):
        copy = shutil.copytree if (ROOT / part).is_dir() else shutil.copy
        copy(ROOT / part, source / part, **({} if copy is shutil.copy else {"ignore": _CACHES}))
    build = ["wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    result = subprocess.run(
        [sys.executable, "-m", "pip", *build, str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = tmp_path.glob("rigpipe-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {
        path.relative_to(ROOT).as_posix()
        for top in ("pipeline", "workers")
        for path in (ROOT / top).rglob("*.py")
    }
    assert modules - names == set()
    assert {n for n in names if n.endswith(".py")} - modules == set()  # nothing stale
    shipped = {f"pipeline/configs/{name}" for name in [*EXAMPLE_FILES, "README.md"]}
    assert shipped - names == set()


def test_init_writes_an_example_and_never_overwrites_without_force(tmp_path: Path) -> None:
    result = _rigpipe("init", "rig.toml", "--example", "lsl", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = (tmp_path / "rig.toml").read_text()
    assert written == (ROOT / "configs" / "lsl.toml").read_text()
    assert "README.md" in result.stdout  # where every option is described

    (tmp_path / "rig.toml").write_text("# my edits\n")
    again = _rigpipe("init", "rig.toml", cwd=tmp_path)
    assert again.returncode == 1
    assert again.stderr.strip() == (
        "rigpipe: rig.toml exists; choose another name, or add --force to replace it"
    )
    assert (tmp_path / "rig.toml").read_text() == "# my edits\n"

    forced = _rigpipe("init", "rig.toml", "--force", cwd=tmp_path)
    assert forced.returncode == 0
    assert (tmp_path / "rig.toml").read_text() == (ROOT / "configs" / "demo.toml").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["init", "rig.toml", "--example", "nosuch"], "invalid choice: 'nosuch'"),
        (["init", "nodir/rig.toml"], "nodir is not a directory; create it first"),
        (["run"], "no config: name a config file"),
        (["run", "rig.toml", "--example", "demo"], "both a config file and --example"),
    ],
)
def test_init_and_run_refuse_what_they_cannot_do_in_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = _rigpipe(*args, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_run_checks_a_shipped_example_without_a_file(tmp_path: Path) -> None:
    result = _rigpipe("run", "--example", "demo", "--check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("example demo: valid; session 'demo'")
