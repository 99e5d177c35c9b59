"""The layers of shared/ARCHITECTURE.md, enforced over the import graph of pipeline/ and workers/.

Every ``import`` counts, at module level or inside a function (a function-level
import hides a dependency, it does not remove it), and so do those under ``if
TYPE_CHECKING:``: a module that needs only the shape of another says so with a
``typing.Protocol`` of its own, so no cycle hides behind a type-only import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in ("pipeline", "workers")
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def _runtime_nodes(tree: ast.AST):
    """Every node, type-only imports included."""
    yield from ast.walk(tree)


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules ``name`` imports, resolved to modules where a name is one."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in modules else base)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _ours(graph: dict[str, set[str]], name: str) -> set[str]:
    return {d for d in graph[name] if d in graph and d != name}


#: The layers of pipeline/, lowest first: a module may import its own layer and those below.
LAYERS = [
    ("pipeline.errors",),
    ("pipeline.host", "pipeline.settings", "pipeline.extras"),
    ("pipeline.ring",),
    ("pipeline.recording", "pipeline.control"),
    ("pipeline.worker",),
    ("pipeline.config",),
    ("pipeline.supervisor",),
    ("pipeline.cli",),
]
#: A module over this many lines must say in its docstring why it is one module.
LONGEST = 500
LONG_REASON = "although over 500 lines"


def _layer(name: str) -> int | None:
    for level, prefixes in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return level
    return None


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1 on the path, 2 done
    cycles = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(_ours(graph, name)):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*path[path.index(dep) :], dep]))
            elif dep not in state:
                visit(dep, [*path, dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_every_module_of_pipeline_has_a_layer() -> None:
    graph = _graph()
    assert [n for n in graph if n.startswith("pipeline.") and _layer(n) is None] == []


def test_the_arrows_point_down_the_layers() -> None:
    """cli -> supervisor -> config -> worker -> control -> ring -> host -> errors, and
    recording beside control: nothing lower imports something higher, and recording and
    control never import each other."""
    graph = _graph()
    broken = []
    for name, deps in graph.items():
        mine = _layer(name)
        if mine is None:
            continue
        for dep in deps:
            theirs = _layer(dep)
            if theirs is None:
                continue
            sideways = {name.split(".")[1], dep.split(".")[1]} == {"recording", "control"}
            if theirs > mine or sideways:
                broken.append(f"{name} -> {dep}")
    assert sorted(broken) == []


def test_host_imports_nothing_of_pipeline_but_errors_and_itself() -> None:
    graph = _graph()
    broken = {
        name: sorted(
            d
            for d in deps
            if d.startswith("pipeline") and not d.startswith(("pipeline.host", "pipeline.errors"))
        )
        for name, deps in graph.items()
        if name.startswith("pipeline.host")
    }
    assert {name: deps for name, deps in broken.items() if deps} == {}


def test_the_ring_imports_nothing_of_pipeline_but_errors_host_and_itself() -> None:
    graph = _graph()
    allowed = ("pipeline.errors", "pipeline.host", "pipeline.ring")
    broken = {
        name: sorted(d for d in deps if d.startswith("pipeline") and not d.startswith(allowed))
        for name, deps in graph.items()
        if name.startswith("pipeline.ring")
    }
    assert {name: deps for name, deps in broken.items() if deps} == {}


def test_attaching_to_a_ring_does_not_load_zeromq() -> None:
    code = "import sys, pipeline.ring; print('zmq' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_pipeline_imports_workers_only_in_the_config_plugin_lookup() -> None:
    graph = _graph()
    broken = {
        name: sorted(d for d in deps if d == "workers" or d.startswith("workers."))
        for name, deps in graph.items()
        if name.startswith("pipeline") and name != "pipeline.config"
    }
    assert {name: deps for name, deps in broken.items() if deps} == {}


def test_a_worker_never_imports_another_worker() -> None:
    graph = _graph()
    broken = {}
    for name, deps in graph.items():
        if name.count(".") < 1 or not name.startswith("workers."):
            continue
        kind = name.split(".")[1]
        others = sorted(d for d in deps if d.startswith("workers.") and d.split(".")[1] != kind)
        if others:
            broken[name] = others
    assert broken == {}


def test_a_worker_package_only_names_its_workers() -> None:
    """``workers/<kind>/__init__.py``: a docstring, ``from ... import WORKER`` lines and
    ``__all__``."""
    broken = []
    for init in sorted((ROOT / "workers").glob("*/__init__.py")):
        for node in ast.parse(init.read_text()).body:
            docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            docstring |= isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "__all__"
            names = [a.asname or a.name for a in getattr(node, "names", [])]
            naming = isinstance(node, ast.ImportFrom) and all(n.endswith("WORKER") for n in names)
            if not (docstring or naming):
                broken.append(f"{init.relative_to(ROOT)}:{node.lineno}")
    assert broken == []


#: Optional packages: imported only through pipeline.extras.require, by their backend.
OPTIONAL = {"pycbsdk", "pythonnet", "clr", "pylsl", "pynwb", "hdmf", "PySide6", "pyqtgraph"}
#: Modules that are made of an optional package (a Qt class): each is imported only
#: inside a function, by code that ran ``extras.require`` first.
MADE_OF_AN_EXTRA = {"workers.visualization.pixels": "viz", "workers.visualization.mouse": "viz"}


def test_optional_packages_are_imported_only_through_extras_require() -> None:
    """A hardware or export package is never imported at module level: a rig without it
    must start. ``extras.require`` names the install line; a plain import inside a
    function is allowed only after ``require`` checked the package (PySide6's modules,
    hdmf with pynwb, clr once pythonnet loaded its runtime)."""
    broken = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only
            if isinstance(node, ast.Import):
                tops = {a.name.partition(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                tops = {node.module.partition(".")[0]}
            else:
                continue
            if tops & OPTIONAL and name not in MADE_OF_AN_EXTRA:
                broken.append(f"{name}:{node.lineno}")
            if isinstance(node, ast.ImportFrom) and node.module in MADE_OF_AN_EXTRA:
                broken.append(f"{name}:{node.lineno} imports {node.module} at module level")
    assert broken == []


def test_no_module_is_over_500_lines_without_saying_why() -> None:
    long = {}
    for name, path in _modules().items():
        lines = len(path.read_text().splitlines())
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > LONGEST and LONG_REASON not in docstring:
            long[name] = lines
    assert long == {}
