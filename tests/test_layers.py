"""The layout shows the architecture: each top-level package imports only the ones below it.

handler/ (packed into the .mar) and config/ stand alone; model/ builds on them; training/ and
serving/ on model/ (never on each other); client_ui/ on serving/; benchmarks/ may use anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

from config import PROJECT_ROOT

ALLOWED = {
    "handler": set(),
    "config": set(),
    "model": {"handler", "config"},
    "training": {"handler", "config", "model"},
    "serving": {"handler", "config", "model"},
    "client_ui": {"handler", "config", "model", "serving"},
    "benchmarks": {"handler", "config", "model", "training", "serving"},
}


def project_imports(path: Path) -> set[str]:
    """Dotted names of the project's modules that `path` imports (at any depth of the file)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.split(".")[0] in ALLOWED}


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, set[str]]:
    found = {}
    for package in ALLOWED:
        for path in (PROJECT_ROOT / package).rglob("*.py"):
            if "grpc_stubs" not in path.parts:
                found[module_name(path)] = project_imports(path)
    return found


def test_every_package_imports_only_downward() -> None:
    upward = [
        f"{module} imports {imported}"
        for module, imports in modules().items()
        for imported in imports
        if (package := module.split(".")[0]) != imported.split(".")[0]
        and imported.split(".")[0] not in ALLOWED[package]
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle_between_modules() -> None:
    graph = modules()
    edges = {m: {i for i in imports if i in graph and i != m} for m, imports in graph.items()}
    visiting, done, cycles = set(), set(), []

    def visit(module: str, trail: list[str]) -> None:
        if module in done:
            return
        if module in visiting:
            cycles.append(" -> ".join([*trail[trail.index(module) :], module]))
            return
        visiting.add(module)
        for imported in sorted(edges[module]):
            visit(imported, [*trail, module])
        visiting.discard(module)
        done.add(module)

    for module in sorted(edges):
        visit(module, [])
    assert not cycles, "\n".join(cycles)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    source = tmp_path / "example.py"
    source.write_text("import os\nfrom serving.client import TorchServeClient\n")
    assert "serving.client" in project_imports(source)
    assert "serving" not in ALLOWED["training"]
