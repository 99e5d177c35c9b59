"""The config file: schema, loading, and validation of the whole rig before anything starts.

A config is TOML that mirrors the Structs below (see ``configs/README.md`` for
every option)::

    [session]
    name = "demo"

    [[workers]]
    name = "acq"
    kind = "acquisition"
    [workers.parameters]
    channels = 64

:func:`load` reads and checks everything: the TOML syntax, every field's type
and range, unknown keys, each worker's own parameters (against its kind's
``Settings``), duplicate names, and that every stream a worker reads is
written by another one. Any mistake is one :class:`ConfigError` naming the
file, the field path and what is allowed there.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import math
import os
import pkgutil
import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import msgspec

from pipeline.control.bus import check_key_file
from pipeline.errors import ConfigError
from pipeline.ring.naming import _PART, EVENTS_STREAM, SUPERVISOR
from pipeline.settings import Port, Positive, Settings
from pipeline.worker import Worker, use_worker_path, worker_path


class SessionConfig(Settings, frozen=True, kw_only=True):
    """``[session]``: the rig as a whole."""

    name: str = "default"
    runtime_dir: str = ""  # sockets and worker logs; default $XDG_RUNTIME_DIR/rigpipe/<name>
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    recordings_dir: str = "recordings"
    #: who may read recordings: "group" (files 0640, directories 0750) or "user" (0600, 0700)
    recordings_access: Literal["group", "user"] = "group"
    stop_timeout_s: Positive = 5.0
    #: events the session's event log keeps for a recorder that restarts (2 KiB each)
    events_buffer: Annotated[int, msgspec.Meta(ge=16, le=1_000_000)] = 4096


class ControlConfig(Settings, frozen=True, kw_only=True):
    """``[control]``: the ZeroMQ control plane."""

    transport: Literal["auto", "ipc", "tcp"] = "auto"
    host: str = "127.0.0.1"
    control_port: Port = 0  # 0 = any free port
    events_port: Port = 0
    heartbeat_interval_s: Positive = 0.25
    heartbeat_timeout_s: Positive = 2.0
    # TCP's CURVE keys kept in this file across starts ("" = new keys at each start)
    keys_file: str = ""


class WorkerConfig(Settings, frozen=True, kw_only=True):
    """``[[workers]]``: one worker process."""

    name: str
    kind: str
    restart: Literal["always", "on-failure", "never"] = "on-failure"
    max_restarts: Annotated[int, msgspec.Meta(ge=0)] = 5
    backoff_s: Positive = 0.5
    backoff_max_s: Positive = 10.0
    stable_s: Positive = 10.0  # running this long resets the count of consecutive failures
    start_timeout_s: Positive = 15.0
    blas_threads: Annotated[int, msgspec.Meta(ge=1)] = 1  # numpy's BLAS threads in this worker
    # SCHED_FIFO priority once set up (pipeline.host.scheduling); 0: normal scheduling
    realtime_priority: Annotated[int, msgspec.Meta(ge=0, le=49)] = 0
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)


class Config(Settings, frozen=True, kw_only=True):
    session: SessionConfig = SessionConfig()
    control: ControlConfig = ControlConfig()
    workers: Annotated[list[WorkerConfig], msgspec.Meta(min_length=1)]


@dataclass
class WorkerPlan:
    """A worker as the supervisor will run it: its config, class, settings and streams."""

    config: WorkerConfig
    worker_class: type[Worker]
    settings: msgspec.Struct
    outputs: list[str]  # session-relative stream names it writes ("acq/continuous")
    inputs: list[str]  # session-relative stream names it reads
    level: int = 0  # start order: 0 = no inputs; readers start after their writers

    @property
    def name(self) -> str:
        return self.config.name


@dataclass
class RigConfig:
    """A loaded, fully validated config file."""

    path: Path
    text: str
    config: Config
    workers: list[WorkerPlan] = field(default_factory=list)

    @property
    def session(self) -> SessionConfig:
        return self.config.session

    @property
    def control(self) -> ControlConfig:
        return self.config.control

    def worker(self, name: str) -> WorkerPlan:
        for plan in self.workers:
            if plan.name == name:
                return plan
        raise KeyError(name)


def load(path: str | Path) -> RigConfig:
    """Read and validate the config at ``path``; :class:`ConfigError` on any mistake."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read the config file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            str(path), "", f"not a text file (not UTF-8 at byte {exc.start}); a config is TOML"
        ) from None
    return loads(text, str(path))


def loads(text: str, where: str = "<config>") -> RigConfig:
    """Validate config ``text``; ``where`` names it in errors."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(where, "", f"not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(where, "", "arrays or tables nested too deeply to be a config") from None
    _check_finite(raw, where, "")
    config = _convert(raw, Config, where, "")
    rig = RigConfig(Path(where), text, config)
    _check_name(config.session.name, where, "session.name")
    _check_control(config.control, where)
    _check_keys_file(config.control, where)
    seen: dict[str, int] = {}
    for index, worker in enumerate(config.workers):
        at = f"workers[{index}]"
        _check_worker_name(worker.name, where, f"{at}.name")
        if worker.name in seen:
            raise ConfigError(
                where,
                f"{at}.name",
                f"worker name {worker.name!r} is already used by workers[{seen[worker.name]}]; "
                "each worker needs its own name",
            )
        seen[worker.name] = index
        if worker.backoff_max_s < worker.backoff_s:
            raise ConfigError(where, f"{at}.backoff_max_s", "must be at least backoff_s")
        rig.workers.append(_plan(worker, where, at))
    _check_streams(rig, where)
    _order(rig, where)
    if any(plan.config.kind in ("recording", "workers.recording") for plan in rig.workers):
        _check_writable(config.session.recordings_dir, where, "session.recordings_dir")
    return rig


def _check_finite(value: Any, where: str, at: str) -> None:
    """No inf or nan anywhere: JSON (how settings travel) has neither, and no limit means one."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(where, at, f"{value} is not a finite number")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, where, f"{at}.{key}" if at else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_finite(item, where, f"{at}[{index}]")


def _check_control(control: ControlConfig, where: str) -> None:
    if control.heartbeat_timeout_s < 2 * control.heartbeat_interval_s:
        raise ConfigError(
            where,
            "control.heartbeat_timeout_s",
            f"{control.heartbeat_timeout_s:g} s must be at least twice heartbeat_interval_s "
            f"({control.heartbeat_interval_s:g} s), or one late heartbeat kills a worker",
        )
    try:  # the host TCP would listen on (transport "tcp", or RIGPIPE_TRANSPORT=tcp)
        family, kind, proto, _, address = socket.getaddrinfo(
            control.host, 0, type=socket.SOCK_STREAM
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.bind(address[:2])
    except (OSError, UnicodeError) as exc:
        raise ConfigError(
            where,
            "control.host",
            f"cannot listen on {control.host!r} ({exc}); use 127.0.0.1 or an address of "
            "this machine",
        ) from None


def _check_keys_file(control: ControlConfig, where: str) -> None:
    if not control.keys_file:
        return
    if control.transport == "ipc":
        raise ConfigError(
            where,
            "control.keys_file",
            'secures TCP control; with transport = "ipc" the runtime directory does: remove '
            'keys_file or set transport = "tcp"',
        )
    path = Path(control.keys_file).expanduser()
    if not path.exists():
        _check_writable(str(path.parent), where, "control.keys_file")
        return
    try:
        check_key_file(path)
    except OSError as exc:
        raise ConfigError(where, "control.keys_file", str(exc)) from None


def _check_writable(directory: str, where: str, at: str) -> None:
    """``directory``, or the nearest parent that exists, must let this user create files."""
    path = Path(directory).expanduser().resolve()
    existing = next((p for p in (path, *path.parents) if p.exists()), path)
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            where, at, f"{str(path)!r} cannot be written by this user (checked {existing})"
        )


def _plan(worker: WorkerConfig, where: str, at: str) -> WorkerPlan:
    cls = resolve_kind(worker.kind, where, f"{at}.kind")
    try:
        schema = cls.settings_type(worker.parameters)
    except ValueError as exc:
        raise ConfigError(where, f"{at}.parameters", str(exc)) from None
    tag = schema.__struct_config__.tag_field
    raw = {tag: schema.__struct_config__.tag, **worker.parameters} if tag else worker.parameters
    settings = _convert(raw, schema, where, f"{at}.parameters")
    try:
        cls.check(settings)
    except ValueError as exc:
        raise ConfigError(where, f"{at}.parameters", str(exc)) from None
    outputs = [f"{worker.name}/{port}" for port in cls.outputs(settings)]
    return WorkerPlan(worker, cls, settings, outputs, list(cls.inputs(settings)))


def known_kinds() -> list[str]:
    """The worker kinds shipped in the ``workers`` package: a package that names its
    ``WORKER`` is kind ``<package>``; one that names several (``INLET_WORKER``) has kinds
    ``<package>_<name>`` (``lsl_inlet``)."""
    import workers

    kinds = []
    for module in pkgutil.iter_modules(workers.__path__):
        if not module.ispkg:
            continue
        try:
            package = importlib.import_module(f"workers.{module.name}")
        except ImportError:
            continue  # a kind whose optional dependency is missing is still not offered
        for attribute in dir(package):
            if attribute == "WORKER":
                kinds.append(module.name)
            elif attribute.endswith("_WORKER"):
                kinds.append(f"{module.name}_{attribute.removesuffix('_WORKER').lower()}")
    return sorted(kinds)


def _shipped(kind: str) -> tuple[str, str]:
    """The module and attribute of a shipped kind: ``acquisition`` -> (workers.acquisition,
    WORKER); ``lsl_inlet`` -> (workers.lsl, INLET_WORKER) when there is no
    ``workers.lsl_inlet``."""
    package, _, name = kind.partition("_")
    if (
        name
        and importlib.util.find_spec(f"workers.{kind}") is None
        and importlib.util.find_spec(f"workers.{package}") is not None
    ):
        return f"workers.{package}", f"{name.upper()}_WORKER"
    return f"workers.{kind}", "WORKER"


def resolve_kind(kind: str, where: str = "<config>", at: str = "kind") -> type[Worker]:
    """The Worker class of ``kind``: a name from ``workers/`` or a dotted module path."""
    kinds = known_kinds()
    allowed = ", ".join(kinds) + ", or a dotted module path that defines WORKER"
    if close := difflib.get_close_matches(kind, kinds, n=1):
        allowed = f"did you mean {close[0]!r}? allowed: {allowed}"
    else:
        allowed = f"allowed: {allowed}"
    if not re.fullmatch(r"[A-Za-z_][\w.]*", kind):
        raise ConfigError(where, at, f"unknown worker kind {kind!r}; {allowed}")
    if "." in kind:  # a lab's own module: found where its workers will find it
        use_worker_path(worker_path())
        module_name, attribute = kind, "WORKER"
    else:
        module_name, attribute = _shipped(kind)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigError(where, at, f"unknown worker kind {kind!r}; {allowed}") from None
        raise ConfigError(
            where, at, f"worker kind {kind!r} needs a missing package: {exc}"
        ) from None
    cls = getattr(module, attribute, None)
    if not (isinstance(cls, type) and issubclass(cls, Worker)):
        if attribute != "WORKER":
            raise ConfigError(where, at, f"unknown worker kind {kind!r}; {allowed}")
        raise ConfigError(where, at, f"module {module_name} has no WORKER (a Worker subclass)")
    return cls


MAX_NAME = 64  # session and worker names become file and socket names


def _check_name(name: str, where: str, at: str) -> None:
    if not _PART.fullmatch(name):
        raise ConfigError(
            where, at, f"{name!r} is not a valid name; use letters, digits, '_', '.' or '-'"
        )
    if len(name) > MAX_NAME:
        raise ConfigError(where, at, f"{len(name)} characters; at most {MAX_NAME}")


def _check_worker_name(name: str, where: str, at: str) -> None:
    _check_name(name, where, at)
    if name == SUPERVISOR:
        raise ConfigError(
            where,
            at,
            f"{name!r} is the supervisor's own name (it writes the session's event log, "
            f"{EVENTS_STREAM}); name the worker differently",
        )


def _check_streams(rig: RigConfig, where: str) -> None:
    written = {stream: plan.name for plan in rig.workers for stream in plan.outputs}
    for index, plan in enumerate(rig.workers):
        for stream in plan.inputs:
            if stream not in written:
                known = ", ".join(sorted(written)) or "none"
                raise ConfigError(
                    where,
                    f"workers[{index}].parameters",
                    f"worker {plan.name!r} reads stream {stream!r}, which no worker writes; "
                    f"streams this config writes: {known}",
                )


def _order(rig: RigConfig, where: str) -> None:
    """Give each worker its start level: one more than the writers of what it reads."""
    writer = {stream: plan for plan in rig.workers for stream in plan.outputs}
    resolved: dict[str, int] = {}

    def level(plan: WorkerPlan, path: tuple[str, ...]) -> int:
        if plan.name in path:
            cycle = " -> ".join((*path, plan.name))
            raise ConfigError(where, "workers", f"workers read each other in a cycle: {cycle}")
        if plan.name not in resolved:
            sources = [writer[s] for s in plan.inputs]
            resolved[plan.name] = max(
                (level(w, (*path, plan.name)) + 1 for w in sources), default=0
            )
        return resolved[plan.name]

    for plan in rig.workers:
        plan.level = level(plan, ())


_ERROR_AT = re.compile(r"^(?P<problem>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def _convert(raw: Any, schema: type, where: str, prefix: str) -> Any:
    """msgspec.convert, with validation errors turned into ConfigError with a field path."""
    try:
        return msgspec.convert(raw, schema, strict=True)
    except msgspec.ValidationError as exc:
        match = _ERROR_AT.match(str(exc))
        assert match is not None  # the pattern matches any string
        sub_path = (match["path"] or "").lstrip(".")
        full = ".".join(p for p in (prefix, sub_path) if p).replace(".[", "[")
        problem = match["problem"]
        hint = _allowed(schema, sub_path, problem)
        raise ConfigError(where, full, problem + (f"; allowed: {hint}" if hint else "")) from None


def _allowed(schema: Any, path: str, problem: str) -> str:
    """What would be accepted at ``path`` of ``schema`` (field names or literal values)."""
    target = schema
    for part in [p for p in re.split(r"\.|\[\d+\]", path) if p]:
        target = _field_type(target, part)
        if target is None:
            return ""
    if "unknown field" in problem or "missing required field" in problem:
        target = _unwrap(target)
        if isinstance(target, type) and issubclass(target, msgspec.Struct):
            tag = target.__struct_config__.tag_field
            names = [f.encode_name for f in msgspec.structs.fields(target)]
            return ", ".join([tag, *names] if tag else names)
        return ""
    values = _literal_values(target)
    return ", ".join(repr(v) for v in values) if values else ""


def _unwrap(schema: Any) -> Any:
    while get_origin(schema) in (list, Annotated):
        schema = get_args(schema)[0]
    return schema


def _field_type(schema: Any, name: str) -> Any:
    schema = _unwrap(schema)
    if isinstance(schema, type) and issubclass(schema, msgspec.Struct):
        for f in msgspec.structs.fields(schema):
            if f.encode_name == name:
                return f.type
    return None


def _literal_values(schema: Any) -> tuple[Any, ...]:
    while get_origin(schema) is Annotated:
        schema = get_args(schema)[0]
    return get_args(schema) if get_origin(schema) is Literal else ()
