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
