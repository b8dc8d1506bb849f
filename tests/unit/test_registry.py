"""Each warehouse and each CDC engine lives in one place: the registries and the variants' own folders.

Outside those, no module may branch on which variant a spec uses (by name or by class); such code asks the
variant's capabilities, dialect or engine instead. The scan below is the guard, and is itself tested on snippets.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from bankflow.engines import ENGINES
from bankflow.engines.base import CdcEngine, EngineCapabilities, SnapshotMode
from bankflow.spec.types import KINDS, PgType
from bankflow.warehouses import WAREHOUSES
from bankflow.warehouses.base import Dialect, WarehouseCapabilities

PACKAGE = Path(__file__).resolve().parents[2] / "bankflow"

VARIANT_NAMES = {*WAREHOUSES, *ENGINES, "postgres-embedded"}
VARIANT_CLASSES = {
    "DuckDBWarehouse", "SnowflakeWarehouse", "DuckDBAdapter", "SnowflakeAdapter", "DuckDBDialect",
    "SnowflakeDialect", "BuiltinCdc", "DebeziumCdc", "BuiltinEngine", "DebeziumEngine", "EmbeddedSource",
    "ExternalPostgres",
}
# Where naming a variant is the point: the registries and each variant's own folder.
ALLOWED = (
    "warehouses/__init__.py", "warehouses/duckdb/", "warehouses/snowflake/",
    "engines/__init__.py", "engines/builtin/", "engines/debezium/",
    "source/__init__.py", "source/embedded.py", "source/external.py",
    "spec/models.py",  # declares the `source.embedded` field and re-exports the variants' models
)


def _names_variant(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and node.value in VARIANT_NAMES:
        return True
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_names_variant(element) for element in node.elts)
    return False


def _class_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def variant_branches(source: str) -> list[tuple[int, str]]:
    """(line, what) for every comparison with a variant's name, isinstance test against a variant's class,
    dict keyed by variant names, or read of `source.embedded`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(_names_variant(n) for n in [node.left, *node.comparators]):
            found.append((node.lineno, "compares with a variant's name"))
        elif isinstance(node, ast.Call) and _class_name(node.func) in ("isinstance", "issubclass") and node.args:
            classes = node.args[1].elts if len(node.args) > 1 and isinstance(node.args[1], ast.Tuple) else (
                node.args[1:2])
            if any(_class_name(c) in VARIANT_CLASSES for c in classes):
                found.append((node.lineno, "isinstance against a variant's class"))
        elif isinstance(node, ast.Dict) and any(k is not None and _names_variant(k) for k in node.keys):
            found.append((node.lineno, "a mapping keyed by variant names"))
        elif isinstance(node, ast.Attribute) and node.attr == "embedded":
            found.append((node.lineno, "reads source.embedded"))
        elif isinstance(node, ast.match_case) and _names_variant(getattr(node.pattern, "value", None) or node):
            found.append((node.pattern.lineno, "matches a variant's name"))
    return found


@pytest.mark.parametrize("snippet", [
    'if spec.warehouse.type == "snowflake":\n    pass\n',
    'quote = a if dialect != "duckdb" else b\n',
    'if spec.cdc.engine in ("builtin", "x"):\n    pass\n',
    'ok = isinstance(warehouse, SnowflakeWarehouse)\n',
    'ok = isinstance(w, (int, models.DuckDBWarehouse))\n',
    'SCHEMES = {"builtin": 1, "debezium": 2}\n',
    'if resolved.spec.source.embedded:\n    pass\n',
])
def test_the_scan_finds_variant_branches(snippet: str) -> None:
    assert variant_branches(snippet), snippet


def test_the_scan_passes_code_that_asks_capabilities() -> None:
    clean = ('if spec.cdc.capabilities.uses_kafka:\n    pass\n'
             'sql = spec.warehouse.dialect().quote("x")\n'
             'label = f"warehouse/{spec.warehouse.type}/setup.sql"\n')
    assert variant_branches(clean) == []


def test_nothing_outside_the_registries_branches_on_a_variant() -> None:
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith(ALLOWED):
            continue
        for line, what in variant_branches(path.read_text(encoding="utf-8")):
            offences.append(f"bankflow/{relative}:{line}: {what}")
    assert offences == [], "ask the variant's capabilities/dialect/engine instead:\n" + "\n".join(offences)


# ---------------------------------------------------------------- what each registered variant must provide

@pytest.mark.parametrize("name", sorted(WAREHOUSES))
def test_every_warehouse_declares_capabilities_and_maps_every_type(name: str) -> None:
    model = WAREHOUSES[name]
    assert model.model_fields["type"].default == name
    assert isinstance(model.capabilities, WarehouseCapabilities)
    assert model.capabilities.lake_schemes <= {"file", "s3"} and model.capabilities.lake_schemes
    assert model.capabilities.files_per_statement >= 1
    dialect_class = type(model.model_construct().dialect())  # no fields needed to know the dialect
    assert issubclass(dialect_class, Dialect) and dialect_class.name == name
    missing = set(KINDS) - set(dialect_class.type_map)
    assert not missing, f"{name} has no type for {sorted(missing)}"
    sample = PgType("numeric", precision=20, scale=4)
    assert dialect_class.type_map["numeric"].format(p=20, s=4) == sample.fill(dialect_class.type_map["numeric"])


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_every_engine_declares_capabilities_and_an_implementation(name: str) -> None:
    model = ENGINES[name]
    assert model.model_fields["engine"].default == name
    capabilities = model.capabilities
    assert isinstance(capabilities, EngineCapabilities)
    assert capabilities.snapshot_modes <= set(typing.get_args(SnapshotMode))
    assert "initial" in capabilities.snapshot_modes
    assert capabilities.label and capabilities.file_key_scheme.startswith("{layout}/")
    assert issubclass(model.engine_class(), CdcEngine)


def test_an_unregistered_warehouse_type_is_refused_by_the_spec() -> None:
    from pydantic import ValidationError

    from bankflow.spec.models import PipelineSpec

    spec = {"name": "x", "source": {}, "lake": {"url": "file://lake"},
            "tables": [{"name": "t", "primary_key": ["id"], "columns": [{"name": "id", "type": "bigint"}]}]}
    with pytest.raises(ValidationError, match="oracle"):
        PipelineSpec.model_validate({**spec, "warehouse": {"type": "oracle"}})
    with pytest.raises(ValidationError, match="kafka"):
        PipelineSpec.model_validate({**spec, "warehouse": {"type": "duckdb"}, "cdc": {"engine": "kafka"}})
    assert PipelineSpec.model_validate({**spec, "warehouse": {"type": "duckdb"}}).cdc.engine == "builtin"


def test_validate_imports_no_engine_or_warehouse_client() -> None:
    """`bankflow validate` loads the registries but none of the heavy client libraries behind them."""
    heavy = ["duckdb", "pyarrow", "snowflake.connector", "confluent_kafka", "dbt", "psycopg2", "s3fs"]
    code = ("import sys; from bankflow.cli import main; import bankflow.engines, bankflow.warehouses; "
            "main(['validate', 'pipelines/banking.yaml']); "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout


def test_duckdb_reads_back_every_type_it_writes_as_compatible() -> None:
    """What information_schema reports for each type the dialect writes must not look like a type change
    (a REAL column is reported as FLOAT), or the load refuses every table with such a column."""
    duckdb = pytest.importorskip("duckdb")
    from bankflow.spec.types import parse_pg_type

    dialect = WAREHOUSES["duckdb"].model_construct().dialect()
    samples = ["smallint", "integer", "bigint", "numeric(18,2)", "real", "double precision", "boolean", "text",
               "varchar(12)", "char(3)", "uuid", "json", "jsonb", "bytea", "date", "time", "timestamp",
               "timestamptz"]
    con = duckdb.connect()
    columns = [(f"c{i}", dialect.column_type(parse_pg_type(s))) for i, s in enumerate(samples)]
    con.execute("CREATE TABLE t (" + ", ".join(f"{n} {t}" for n, t in columns) + ")")
    reported = dict(con.execute("SELECT column_name, data_type FROM information_schema.columns").fetchall())
    for name, written in columns:
        assert dialect.type_compatible(reported[name], written), (name, reported[name], written)
