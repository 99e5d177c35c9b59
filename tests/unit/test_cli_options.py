"""Every rigpipe command that talks to a session takes ``--session``, wherever it is written."""

from __future__ import annotations

import argparse

import pytest

from pipeline.cli import _parser


def _session_commands(parser: argparse.ArgumentParser) -> list[list[str]]:
    """The words of each command (and sub-action) whose parser has a --session option."""
    found = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for name, sub in action.choices.items():
            deeper = _session_commands(sub)
            if deeper:
                found += [[name, *words] for words in deeper]
            elif any("--session" in a.option_strings for a in sub._actions):
                found.append([name])
    return found


#: Required positional arguments of a command, to make its words a valid command line.
ARGUMENTS = {
    "annotate": ["text"],
    "set": ["acq", "lfp_hz", "12"],
    "record": ["start"],
    "worker": ["restart", "acq"],
    "tail": ["acq/continuous"],
    "pulse": ["0", "--biphasic", "50:200"],
    "waveform": ["0", "wave.npy"],
}


def test_every_session_command_takes_session_after_its_words() -> None:
    parser = _parser()
    commands = _session_commands(parser)
    assert ["stim", "arm"] in commands and ["status"] in commands
    for words in commands:
        line = [*words, *ARGUMENTS.get(words[-1], []), "--session", "rig2"]
        assert parser.parse_args(line).session == "rig2", line


@pytest.mark.parametrize(
    "line",
    [
        ["stim", "--session", "rig1", "arm"],
        ["stim", "arm", "--session", "rig1"],
        ["stim", "--session", "rig1", "--timeout", "2", "disarm"],
    ],
)
def test_stim_takes_its_options_before_or_after_the_action(line: list[str]) -> None:
    args = _parser().parse_args(line)
    assert args.session == "rig1" and args.worker == "stim"


@pytest.mark.parametrize("action", ["silence", "stop"])
def test_stim_silence_and_its_old_name_stop_build_the_same_request(action: str) -> None:
    """``rigpipe stim silence 1`` (stop ends a process, silence a channel's output); the
    old ``stop`` still works, for scripts written before."""
    from pipeline.cli.stim import request_for
    from pipeline.control import messages

    args = _parser().parse_args(["stim", action, "1", "--worker", "stim2"])
    assert request_for(args) == messages.StopStimulation(worker="stim2", channel=1)
    every = _parser().parse_args(["stim", action])
    assert request_for(every) == messages.StopStimulation(worker="stim", channel=None)
