"""Acquisition worker: puts a source's data into rings, paced by the source.

``[workers.parameters] source = ...`` chooses the source; each has its own options
(configs/README.md lists them):

- ``synthetic`` (the default, no hardware): :mod:`workers.acquisition.synthetic_source`;
  streams ``<worker>/continuous`` and ``<worker>/spikes``.
- ``blackrock``: a Cerebus NSP, Gemini Hub or nPlayServer through pycbsdk
  (extra ``blackrock``): :mod:`workers.acquisition.blackrock`; one stream per
  sample group (``<worker>/30kHz``...), ``<worker>/spikes`` and ``<worker>/clock``.
- ``replay``: a rigpipe recording played back in real time or faster:
  :mod:`workers.acquisition.replay`; the recording's own stream names.
"""

from __future__ import annotations

import importlib
from typing import Any

import msgspec

from pipeline.worker import Worker
from workers.acquisition.source import Source, SourceError

#: source name -> (module, settings class, source class); modules import lazily,
#: so pycbsdk is imported only when a config asks for the blackrock source.
SOURCES = {
    "synthetic": ("workers.acquisition.synthetic_source", "SyntheticSettings", "SyntheticSource"),
    "blackrock": ("workers.acquisition.blackrock", "BlackrockSettings", "BlackrockSource"),
    "replay": ("workers.acquisition.replay", "ReplaySettings", "ReplaySource"),
}


def _source(name: str) -> tuple[type[msgspec.Struct], type[Source]]:
    module_name, settings_name, source_name = SOURCES[name]
    module = importlib.import_module(module_name)
    return getattr(module, settings_name), getattr(module, source_name)


def _source_class(settings: Any) -> type[Source]:
    return _source(type(settings).__struct_config__.tag)[1]


class AcquisitionWorker(Worker):
    needs_fine_timer = True  # a source paced every millisecond

    @classmethod
    def settings_type(cls, parameters: dict[str, Any]) -> type[msgspec.Struct]:
        name = parameters.get("source", "synthetic")
        if not isinstance(name, str) or name not in SOURCES:
            raise ValueError(
                f"unknown source {name!r}; allowed: {', '.join(repr(s) for s in SOURCES)}"
            )
        return _source(name)[0]

    @classmethod
    def parse_settings(cls, parameters: dict[str, Any]) -> Any:
        tagged = {"source": "synthetic", **parameters}
        return msgspec.convert(tagged, cls.settings_type(parameters), strict=True)

    @classmethod
    def outputs(cls, settings: Any) -> list[str]:
        return _source_class(settings).outputs(settings)

    @classmethod
    def check(cls, settings: Any) -> None:
        _source_class(settings).check(settings)

    def setup(self) -> None:
        self.source = _source_class(self.settings)(self, self.settings)
        self.settable = self.source.settable
        self.source.open()

    def step(self) -> None:
        self.source.step()

    def on_parameter(self, name: str, value: Any) -> None:
        self.source.settings = self.settings
        self.source.on_parameter(name, value)

    def teardown(self) -> None:
        source = getattr(self, "source", None)
        if source is not None:
            source.close()


WORKER = AcquisitionWorker

__all__ = ["SOURCES", "WORKER", "AcquisitionWorker", "Source", "SourceError"]
