"""``rigpipe run``'s live table in a real terminal: tmux, 80 x 24, is the referee."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from tests.rig import wait_for

READERS = "".join(
    f'[[workers]]\nname = "reader{i}"\nkind = "tests.workers.lag_reader"\n'
    "[workers.parameters]\nframes_per_s = 20000.0\n"
    for i in range(6)
)
SOURCE = """
[[workers]]
name = "acq"
kind = "acquisition"
[workers.parameters]
channels = 8
sample_rate_hz = 10000.0
"""


@pytest.fixture
def tmux():
    if shutil.which("tmux") is None:
        if os.environ.get("CI"):
            pytest.fail("tmux is missing: tests/setup.sh installs it")
        pytest.skip("needs tmux (apt-get install tmux)")
    socket = f"rp{uuid.uuid4().hex[:8]}"

    def run(*args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", socket, *args], capture_output=True, text=True, check=True
        ).stdout

    yield run
    subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)


@pytest.mark.posix  # tmux is a POSIX terminal
def test_the_live_table_fits_an_80x24_terminal_and_redraws_in_place(rigs, tmux) -> None:
    rig = rigs.new()
    rig.write(SOURCE + READERS)
    command = f"{sys.executable} -m pipeline.cli run {rig.config}"
    tmux("new-session", "-d", "-x", "80", "-y", "24", "-s", "rig", command)
    try:
        wait_for(lambda: rig.discovery() is not None, 30, "the rig to start")
        wait_for(lambda: all(w.state == "running" for w in rig.status().workers), 30, "workers")
        time.sleep(4.0)  # about 16 redraws
        everything = tmux("capture-pane", "-p", "-t", "rig", "-S", "-1000").splitlines()
        screen = tmux("capture-pane", "-p", "-t", "rig").splitlines()
    finally:
        tmux("send-keys", "-t", "rig", "C-c")
        wait_for(lambda: rig.discovery() is None, 30, "the rig to stop")
    header = f"session {rig.name}"
    copies = sum(line.startswith(header) for line in everything)
    assert copies == 1, f"the table was drawn {copies} times into the scrollback"
    assert all(len(line) <= 80 for line in everything)
    shown = "\n".join(screen)
    for name in ["acq", *(f"reader{i}" for i in range(6))]:
        assert f"\n{name} " in f"\n{shown}", f"worker row {name} is not on the screen:\n{shown}"
    assert "more lines: enlarge the terminal" in shown
