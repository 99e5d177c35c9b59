"""The README and docs/ say only what exists: every relative link resolves, every
``rigpipe`` command and option they name is one the CLI has, every module path is a file.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from pipeline.cli import _parser

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", ROOT / "configs" / "README.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\]\(([^)\s]+)\)")
#: ``rigpipe WORDS`` in a code span or a code block line (not "rigpipe's", not a path).
COMMAND = re.compile(r"(?<![\w/.-])rigpipe((?: +[^\s`#|;&)]+)*)")
#: A path of this repository named in backquotes (pipeline/..., workers/..., tests/..., bench/...).
REPO_PATH = re.compile(r"`((?:pipeline|workers|tests|bench|configs|docs)/[\w./-]+)`")


def _code(text: str) -> list[str]:
    """Code spans and the lines of code blocks (where commands are written)."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    rest = re.sub(r"```[a-z]*\n.*?```", "", text, flags=re.S)
    return [line for block in blocks for line in block.splitlines()] + re.findall(
        r"`([^`\n]+)`", rest
    )


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def _check_command(words: list[str]) -> str | None:
    """Why ``rigpipe WORDS`` is not a command of the CLI (None if it is)."""
    parser = _parser()
    known = _options(parser)
    path = []
    for word in words:
        if word.startswith("-"):
            option = word.split("=")[0]
            if option not in known:
                return f"rigpipe {' '.join(path)} has no option {option}"
            continue
        subs = _subparsers(parser)
        if not subs:
            continue  # a positional argument (a file, a stream, a value)
        if word not in subs:
            if word.isupper() or word in {"...", "COMMAND", "ACTION"}:
                return None  # a placeholder: `rigpipe COMMAND --help`
            return f"rigpipe {' '.join(path)} has no sub-command {word!r}"
        parser = subs[word]
        known |= _options(parser)
        path.append(word)
    return None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    prose = re.sub(r"`[^`\n]+`", "", re.sub(r"```.*?```", "", page.read_text(), flags=re.S))
    for target in LINK.findall(prose):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        if not (page.parent / target.split("#")[0]).exists():
            broken.append(target)
    assert broken == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_rigpipe_command_named_exists(page: Path) -> None:
    wrong = []
    for code in _code(page.read_text()):
        for match in COMMAND.finditer(code):
            words = match.group(1).split()
            if not words or words[0].startswith(("<", "[")):
                continue
            why = _check_command(words)
            if why:
                wrong.append(f"`{code.strip()}`: {why}")
    assert wrong == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_repository_path_named_exists(page: Path) -> None:
    missing = []
    for path in REPO_PATH.findall(page.read_text()):
        path = path.rstrip(".,:")
        if "<" in path or "*" in path:
            continue
        if not (ROOT / path).exists():
            missing.append(path)
    assert missing == []


def test_the_checker_finds_what_does_not_exist() -> None:
    assert _check_command(["stim", "arm", "--session", "x"]) is None
    assert _check_command(["stim", "zap"]) == "rigpipe stim has no sub-command 'zap'"
    assert _check_command(["run", "x.toml", "--fast"]) == "rigpipe run has no option --fast"
    assert _check_command(["nosuch"]) == "rigpipe  has no sub-command 'nosuch'"
