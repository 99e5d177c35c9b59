"""A value a settings table refuses is explained in rigpipe's words, not msgspec's."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
import pytest

from pipeline.settings import NonNegative, Positive, Settings, explain


class Knobs(Settings, frozen=True, kw_only=True):
    gain: Positive = 1.0
    level: NonNegative = 0.0
    page: Annotated[int, msgspec.Meta(ge=0, le=10)] = 0
    on: bool = False
    mode: Literal["a", "b"] = "a"


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("gain", -3, "must be a number above 0.0"),
        ("level", -1.0, "must be a number at least 0.0"),
        ("gain", "x", "must be a number, not text"),
        ("page", 11, "must be a whole number at most 10"),
        ("page", 1.5, "must be a whole number, not a fraction"),
        ("on", 1, "must be true or false, not a whole number"),
        ("mode", "c", "Invalid enum value 'c'"),
    ],
)
def test_refusals_read_as_a_sentence_without_msgspecs_path(field, value, words) -> None:
    with pytest.raises(msgspec.ValidationError) as refused:
        msgspec.convert({field: value}, Knobs, strict=True)
    assert explain(refused.value) == words
