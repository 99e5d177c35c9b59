"""``rigpipe init FILE``: a commented starting config, from the examples rigpipe ships.

The examples are the TOML files of the checkout's ``configs/`` directory; a wheel
carries them as ``pipeline/configs/`` (pyproject.toml maps the one to the other), so
``rigpipe init`` and ``rigpipe run --example NAME`` work wherever rigpipe is installed.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

import pipeline
from pipeline.errors import RigpipeError

#: The examples, and what each runs (shown by ``rigpipe init --help``).
EXAMPLES = {
    "demo": "a synthetic rig, no hardware: acquisition, a recorder, a simulated stimulator",
    "blackrock": "a Blackrock Cerebus (pycbsdk) recorded to HDF5",
    "stg": "a closed loop on a Multi Channel Systems STG4000 (the vendor's DLL, pythonnet)",
    "lsl": "a rig's streams out to Lab Streaming Layer, an eye tracker's in, all recorded",
}


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    init = command("init", write_example, "write a commented starting config", session_option=False)
    init.add_argument("file", help="the config to write, e.g. rig.toml")
    init.add_argument(
        "--example",
        default="demo",
        choices=sorted(EXAMPLES),
        help="which example: " + "; ".join(f"{k}: {v}" for k, v in EXAMPLES.items()),
    )
    init.add_argument("--force", action="store_true", help="overwrite FILE if it exists")


def examples() -> Traversable:
    """Where the example configs are: inside the installed package (a wheel), or the
    checkout's ``configs/`` (an editable install, which maps no data)."""
    shipped = resources.files(pipeline) / "configs"
    if shipped.is_dir():
        return shipped
    return Path(pipeline.__file__).resolve().parents[1] / "configs"


def example_text(name: str) -> str:
    """The text of example ``name`` (one of :data:`EXAMPLES`)."""
    if name not in EXAMPLES:
        raise RigpipeError(f"no example {name!r}; the examples: {', '.join(sorted(EXAMPLES))}")
    source = examples() / f"{name}.toml"
    if not source.is_file():
        raise RigpipeError(
            f"this installation of rigpipe has no example configs ({source} is missing); "
            "reinstall it, or copy one from rigpipe's configs/ directory"
        )
    return source.read_text(encoding="utf-8")


def write_example(args: argparse.Namespace) -> int:
    target = Path(args.file)
    if target.exists() and not args.force:
        raise RigpipeError(f"{target} exists; choose another name, or add --force to replace it")
    if not target.parent.is_dir():
        raise RigpipeError(f"{target.parent} is not a directory; create it first")
    target.write_text(example_text(args.example), encoding="utf-8")
    print(f"wrote {target} ({args.example}: {EXAMPLES[args.example]})")
    print(f"every option is described in {examples() / 'README.md'}")
    print(f"check it with `rigpipe run {target} --check`, run it with `rigpipe run {target}`")
    return 0
