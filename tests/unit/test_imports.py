"""Every bankflow module imports on its own, in a fresh interpreter, and no two modules import each other at
module level: an import cycle shows up here, whichever module a user (or a spawned worker) imports first."""

from __future__ import annotations

import ast
import importlib.machinery
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "bankflow"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).parts)
    parts[-1] = parts[-1].split(".", 1)[0]  # foo.py, _ext.cpython-311-x86_64-linux-gnu.so → foo, _ext
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    """Every module file under bankflow/: Python sources and built extensions, skipping none."""
    suffixes = (".py", *importlib.machinery.EXTENSION_SUFFIXES)
    found = {}
    for path in sorted(PACKAGE.rglob("*")):
        if path.is_file() and path.name.endswith(suffixes) and "__pycache__" not in path.parts:
            found[_module_name(path)] = path
    return found


MODULES = _modules()


@cache
def _import_alone() -> dict[str, subprocess.CompletedProcess[str]]:
    """`python -c "import <module>"` for each module, a fresh interpreter each, as many at a time as cores."""
    def run(name: str) -> subprocess.CompletedProcess[str]:
        code = f"import {name}"
        if name.endswith(".__main__"):  # `python -m`'s entry point runs the CLI when imported: ask for its help
            code = f"import sys; sys.argv[1:] = ['--help']; {code}"
        return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                              timeout=120, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return dict(zip(MODULES, pool.map(run, MODULES), strict=True))


def test_the_package_and_its_c_decoder_are_found() -> None:
    assert "bankflow" in MODULES and "bankflow.lake.writer" in MODULES
    assert len(MODULES) > 50
    assert any(path.suffix != ".py" for path in MODULES.values()), "the built C decoder is a module too"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_imports_alone_in_a_fresh_interpreter(module: str) -> None:
    done = _import_alone()[module]
    assert done.returncode == 0, f"python -c 'import {module}' failed:\n{done.stderr[-3000:]}"


def _top_level_imports(name: str, path: Path) -> set[str]:
    """The bankflow modules `name` imports when it is imported (not in functions, not under TYPE_CHECKING)."""
    is_package = path.name == "__init__.py"
    named: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                named.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, one level up per extra dot
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
                named.add(base)
                named.update(f"{base}.{alias.name}" for alias in node.names)  # a name may be a submodule
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    found = set()
    for dotted in named:  # the most specific bankflow module each import names
        parts = dotted.split(".")
        for end in range(len(parts), 0, -1):
            candidate = ".".join(parts[:end])
            if candidate in MODULES:
                if candidate != name:
                    found.add(candidate)
                break
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_no_module_level_import_cycle() -> None:
    graph = {name: _top_level_imports(name, path) for name, path in MODULES.items() if path.suffix == ".py"}
    graph = {name: {d for d in deps if d in graph} for name, deps in graph.items()}
    assert _cycles(graph) == []


def test_the_cycle_check_sees_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
