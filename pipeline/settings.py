"""The base of every settings table, and the number types the tables share.

A worker kind's parameters, the config's own tables and the NWB metadata are all
:class:`Settings`: unknown keys are refused (a misspelt option is an error, never
ignored), and a value once parsed does not change under the worker's feet::

    class CounterSettings(Settings, frozen=True, kw_only=True):
        rate_hz: Positive = 10.0
        skip: NonNegative = 0.0

``frozen`` and ``kw_only`` are said again on each subclass: msgspec inherits ``frozen``,
but a type checker (PEP 681) reads it per class, and ``kw_only`` is per class in both.
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

#: A float above zero (a rate, a duration, an amplitude limit).
Positive = Annotated[float, msgspec.Meta(gt=0)]
#: A float of zero or more (a level, a margin; 0 switches the thing off).
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
#: A TCP port (0: any free port).
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class Settings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A table of a config: unknown keys refused, frozen once parsed."""


class NoSettings(Settings, frozen=True):
    """Parameters of a worker kind that takes none."""


_TYPES = {"float": "a number", "int": "a whole number", "str": "text", "bool": "true or false"}
_GOT = {"float": "a fraction", "int": "a whole number", "str": "text", "bool": "true or false"}
_BOUNDS = {">": "above", ">=": "at least", "<": "below", "<=": "at most"}
_EXPECTED = re.compile(r"Expected `(\w+)`(?:, got `(\w+)`| ([<>]=?) (\S+))?")


def explain(error: msgspec.ValidationError) -> str:
    """What msgspec says of a value, in a person's words and without its ``$.path``:
    ``Expected `float` > 0.0 - at `$.gain``` becomes ``must be a number above 0.0``."""
    text = str(error).split(" - at `$")[0]
    match = _EXPECTED.fullmatch(text)
    if match is None:
        return text  # "Invalid enum value 'c'", "Object contains unknown field ..."
    kind, got, bound, limit = match.groups()
    wanted = _TYPES.get(kind, kind)
    if bound:
        return f"must be {wanted} {_BOUNDS[bound]} {limit}"
    if got:
        return f"must be {wanted}, not {_GOT.get(got, got)}"
    return f"must be {wanted}"
