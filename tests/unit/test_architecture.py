"""The layers of shared/ARCHITECTURE.md, enforced over the import graph of pipeline/ and workers/.

Every ``import`` counts, at module level or inside a function (a function-level
import hides a dependency, it does not remove it); only ``if TYPE_CHECKING:``
blocks are left out, since they never run.
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
    """Every node, except what sits under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


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


def test_the_ring_imports_nothing_above_errors_identity_and_clock() -> None:
    graph = _graph()
    allowed = {"pipeline.errors", "pipeline.identity", "pipeline.clock", "pipeline.ring"}
    broken = {
        name: sorted(d for d in graph[name] if d.startswith("pipeline") and d not in allowed)
        for name in graph
        if name.startswith("pipeline.ring")
    }
    assert {
        name: [d for d in deps if not d.startswith("pipeline.ring.")]
        for name, deps in broken.items()
        if any(not d.startswith("pipeline.ring.") for d in deps)
    } == {}


def test_attaching_to_a_ring_does_not_load_zeromq() -> None:
    code = "import sys, pipeline.ring; print('zmq' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_recording_never_imports_the_control_plane_or_the_supervisor() -> None:
    graph = _graph()
    broken = {
        name: sorted(d for d in deps if d.startswith(("pipeline.control", "pipeline.supervisor")))
        for name, deps in graph.items()
        if name.startswith("pipeline.recording")
    }
    assert {name: deps for name, deps in broken.items() if deps} == {}


def test_pipeline_imports_workers_only_in_the_config_plugin_lookup() -> None:
    graph = _graph()
    broken = {
        name: sorted(d for d in deps if d == "workers" or d.startswith("workers."))
        for name, deps in graph.items()
        if name.startswith("pipeline") and name != "pipeline.config"
    }
    assert {name: deps for name, deps in broken.items() if deps} == {}


def test_no_module_imports_the_cli() -> None:
    graph = _graph()
    broken = {
        name: sorted(d for d in deps if d == "pipeline.cli" or d.startswith("pipeline.cli."))
        for name, deps in graph.items()
        if not name.startswith("pipeline.cli")
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


def test_the_arrows_point_down_cli_supervisor_control_ring() -> None:
    """cli -> supervisor -> control -> ring: nothing lower imports something higher."""
    order = ["pipeline.ring", "pipeline.control", "pipeline.supervisor", "pipeline.cli"]
    graph = _graph()
    broken = []
    for name, deps in graph.items():
        mine = next((i for i, layer in enumerate(order) if name.startswith(layer)), None)
        if mine is None:
            continue
        for dep in deps:
            theirs = next((i for i, layer in enumerate(order) if dep.startswith(layer)), None)
            if theirs is not None and theirs > mine:
                broken.append(f"{name} -> {dep}")
    assert broken == []
