import getpass
import os

import numpy as np
import pytest

import pipeline
from pipeline.ring import segments, shm
from pipeline.ring.naming import SHM_PREFIX, data_key, shm_name, shm_prefix, validate_stream


def test_shm_name_is_deterministic_short_and_distinct():
    names = {shm_name(f"default/acq/ch{i}") for i in range(1000)}
    assert len(names) == 1000
    assert shm_name("default/acq/continuous") == shm_name("default/acq/continuous")
    for name in names:
        assert name.startswith(shm_prefix())
        assert len("/" + name) <= 31  # macOS limit, leading slash included
        assert name.isascii() and "/" not in name


def test_two_users_streams_of_the_same_name_have_different_segments(monkeypatch):
    from pipeline.ring import naming

    mine = shm_name("demo/acq/continuous")
    monkeypatch.setattr(naming, "owner", lambda: "65534")
    theirs = shm_name("demo/acq/continuous")
    assert theirs != mine and theirs == shm_name("demo/acq/continuous")
    monkeypatch.undo()
    getuid = getattr(os, "getuid", None)  # POSIX: the uid; Windows: the user name
    assert naming.owner() == (str(getuid()) if getuid else getpass.getuser())
    if getuid is not None:
        monkeypatch.delattr(naming.os, "getuid")  # as on Windows
    monkeypatch.setenv("USERNAME", "lab-user")  # getpass asks LOGNAME, USER... USERNAME
    for name in ("LOGNAME", "USER", "LNAME"):
        monkeypatch.delenv(name, raising=False)
    assert naming.owner() == "lab-user"


def test_data_segments_differ_per_generation():
    stream = "default/acq/continuous"
    assert shm_name(data_key(stream, 1)) != shm_name(data_key(stream, 2)) != shm_name(stream)


@pytest.mark.parametrize("bad", ["", "a//b", "acq/cont inuous", "acq/ü", "/acq", "acq/"])
def test_bad_stream_names_are_refused_with_the_offending_part(bad):
    with pytest.raises(ValueError, match="invalid stream name"):
        validate_stream(bad)


def test_overlong_stream_name_is_refused():
    with pytest.raises(ValueError, match="limit is 200"):
        validate_stream("a" * 201)


def test_the_suite_runs_in_a_shared_memory_namespace_of_its_own():
    """tests/conftest.py sets RIGPIPE_SHM_PREFIX, so a rig on this machine is never touched."""
    assert shm_prefix() != SHM_PREFIX and shm_name("x/y/z").startswith(shm_prefix())


def test_a_bad_prefix_is_refused_with_the_rule(monkeypatch):
    monkeypatch.setenv("RIGPIPE_SHM_PREFIX", "rigpipe_tests_")
    with pytest.raises(ValueError, match=r"RIGPIPE_SHM_PREFIX='rigpipe_tests_'.*'rp'"):
        shm_name("x/y/z")


@pytest.mark.posix
def test_listing_and_sweeping_see_only_their_own_namespace(monkeypatch, stream):
    """A dead writer's segments in another namespace are neither listed nor swept."""
    ours = shm_prefix()
    monkeypatch.setenv("RIGPIPE_SHM_PREFIX", "rpz9_")
    other = pipeline.RingWriter(stream, np.int16, (2,), 8, 100.0)
    names = shm.list_names()
    try:
        assert names and all(n.startswith("rpz9_") for n in names)
        monkeypatch.setenv("RIGPIPE_SHM_PREFIX", ours)
        assert stream not in (segments.list_streams() or [])
        assert not set(names) & set(shm.list_names() or [])
        # Even a sweep that would remove a dead writer's segments cannot reach these.
        assert not set(names) & set(segments.sweep())
    finally:
        monkeypatch.setenv("RIGPIPE_SHM_PREFIX", "rpz9_")
        other.close()
    assert not set(names) & set(shm.list_names() or []), "the writer removed its own segments"
