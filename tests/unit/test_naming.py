import pytest

from pipeline.naming import SHM_PREFIX, data_key, shm_name, validate_stream


def test_shm_name_is_deterministic_short_and_distinct():
    names = {shm_name(f"default/acq/ch{i}") for i in range(1000)}
    assert len(names) == 1000
    assert shm_name("default/acq/continuous") == shm_name("default/acq/continuous")
    for name in names:
        assert name.startswith(SHM_PREFIX)
        assert len("/" + name) <= 31  # macOS limit, leading slash included
        assert name.isascii() and "/" not in name


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
