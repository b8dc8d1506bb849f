"""A SourceModel → the files of a pipeline project (`bankflow init`). Pure: text in, {path: text} out.

Templates are package data under bankflow/scaffold/templates/. A source name reaches YAML as a JSON-quoted
string unless it is plain, and SQL as the warehouses spell it (`sql_name`: plain names bare, any other
double-quoted exactly as the source has it: the same text reads right in DuckDB and Snowflake, see
bankflow/warehouses/base.py `Dialect.spell`); names the introspection left out, defaults and the like only reach
YAML comments, flattened to one line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from bankflow.render.templating import render_package_template
from bankflow.scaffold.introspect import ColumnModel, Omission, SourceModel, TableModel, connection_defaults
from bankflow.spec.base import is_plain_name

PACKAGE = "bankflow.scaffold"
DBT_DIR = "dbt"
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class Project:
    """What `init` writes: the pipeline's name, its tables (with what was left out) and where it came from."""

    name: str
    source: SourceModel
    from_postgres: bool = False
    example: bool = False
    notes: list[str] = field(default_factory=list)


def example_source(name: str) -> SourceModel:
    """The one-table example `init` writes without --from-postgres."""
    columns = [
        ColumnModel("id", "bigint", nullable=False, identity=True),
        ColumnModel("reference", "varchar(40)", nullable=False),
        ColumnModel("amount", "numeric(18,2)", nullable=False),
        ColumnModel("created_at", "timestamptz", nullable=False),
    ]
    return SourceModel(schema="app", database=name, tables=[TableModel("orders", columns, ["id"])])


def comment(text: str) -> str:
    """One line, safe after `# ` in YAML or `-- ` in SQL."""
    return " ".join(str(text).split())


# YAML 1.1 reads these bare words as booleans or null
_YAML_WORDS = frozenset(["y", "n", "yes", "no", "on", "off", "true", "false", "null"])


def yaml_str(value: str) -> str:
    """A string as a YAML scalar: bare when it is a plain name YAML reads as that string, else JSON-quoted
    (a JSON string is a YAML double-quoted string)."""
    if re.fullmatch(r"[a-z_][a-z0-9_]*", value) and value not in _YAML_WORDS:
        return value
    return json.dumps(value, ensure_ascii=False)


def sql_name(name: str) -> str:
    """A source name in the dbt SQL `init` writes: plain names bare (each warehouse folds them as it stored
    them), any other double-quoted exactly (stored exactly). Names never hold a double quote (the spec refuses)."""
    return name if is_plain_name(name) else f'"{name}"'


def jinja_str(value: str) -> str:
    """A string literal inside `{{ … }}` of a dbt model (Jinja decodes backslash escapes in a literal)."""
    if value.isascii() and "'" not in value and "\\" not in value:
        return f"'{value}'"
    return json.dumps(value, ensure_ascii=True)


def yaml_list(values: list[str]) -> str:
    return "[" + ", ".join(map(yaml_str, values)) + "]"


def column_yaml(column: ColumnModel) -> str:
    parts = [f"name: {yaml_str(column.name)}", f'type: "{column.type}"']
    if column.enum_type is not None:
        parts.append(f"enum_type: {yaml_str(column.enum_type)}")
    if column.enum_values is not None:
        parts.append(f"values: {yaml_list(column.enum_values)}")
    if column.carry_as is not None:
        parts.append(f"carry_as: {column.carry_as}")
    if not column.nullable:
        parts.append("nullable: false")
    if column.identity:
        parts.append("identity: true")
    if column.references:
        parts.append(f"references: {yaml_str(column.references)}")
    return "{" + ", ".join(parts) + "}"


def model_names(tables: list[TableModel]) -> dict[str, str]:
    """Each table's staging model: `stg_` + its name in lower-case letters, digits and underscores (a model
    name is a file name and an unquoted relation), with a number added where two would be the same."""
    names: dict[str, str] = {}
    for table in tables:
        base = "stg_" + (re.sub(r"[^a-z0-9_]+", "_", table.name.lower()).strip("_") or "table")
        name, n = base, 2
        while name in names.values():
            name, n = f"{base}_{n}", n + 1
        names[table.name] = name
    return names


FILTERS = {"yaml": yaml_str, "yaml_list": yaml_list, "sql": sql_name, "jinja_str": jinja_str,
           "plain": is_plain_name}


def variables(text: str) -> list[tuple[str, str | None]]:
    """Every `${VAR}` / `${VAR:-default}` the text reads, in order of first use."""
    seen: dict[str, str | None] = {}
    for match in _VAR_RE.finditer(text):
        seen.setdefault(match.group(1), match.group(2))
    return list(seen.items())


def _omissions_by_table(omissions: list[Omission]) -> tuple[list[str], dict[str, list[str]]]:
    tables = [comment(o.line()) for o in omissions if o.column is None]
    columns: dict[str, list[str]] = {}
    for o in omissions:
        if o.column is not None:
            columns.setdefault(o.table, []).append(comment(o.line()))
    return tables, columns


def render_spec(project: Project) -> str:
    source = project.source
    table_omissions, column_omissions = _omissions_by_table(source.omissions)
    defaults = connection_defaults({"host": source.host, "port": source.port, "user": source.user,
                                    "database": source.database})
    return render_package_template(
        PACKAGE, "spec.yaml.j2", project=project, source=source, database=_local_database(project),
        tables=source.tables, column_yaml=column_yaml, comment=comment, table_omissions=table_omissions,
        column_omissions=column_omissions, defaults=defaults, dbt_dir=DBT_DIR, **FILTERS,
    )


def _local_database(project: Project) -> str:
    database = project.source.database
    return database if re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", database) else project.name


def staging_sql(table: TableModel) -> str:
    return render_package_template(PACKAGE, "staging.sql.j2", table=table, **FILTERS)


MACROS_PACKAGE = "bankflow"
MACROS_DIR = "templates/dbt/macros"


def shipped_macros() -> dict[str, str]:
    """bankflow's generic dbt macros over its raw change log (latest version, exact SCD2 history, the incremental
    delta and high-water-mark helpers, money), by file name: package data under bankflow/templates/dbt/macros/.
    `init` writes them to the project's macros/bankflow/; banking_dbt carries the same files."""
    from importlib.resources import files

    folder = files(MACROS_PACKAGE).joinpath(MACROS_DIR)
    return {entry.name: entry.read_text(encoding="utf-8") for entry in sorted(folder.iterdir(), key=lambda e: e.name)
            if entry.name.endswith(".sql")}


def render_project(project: Project) -> dict[str, str]:
    """Every file of the project, by path relative to the project directory."""
    spec = render_spec(project)
    spec_path = f"pipelines/{project.name}.yaml"
    tables = project.source.tables
    models = model_names(tables)
    files = {
        spec_path: spec,
        f"{DBT_DIR}/dbt_project.yml": render_package_template(PACKAGE, "dbt_project.yml.j2", project=project),
        f"{DBT_DIR}/models/sources.yml": render_package_template(PACKAGE, "sources.yml.j2", tables=tables, **FILTERS),
        f"{DBT_DIR}/models/staging/staging.yml": render_package_template(PACKAGE, "staging.yml.j2", tables=tables,
                                                                         models=models, **FILTERS),
        f"{DBT_DIR}/models/marts/README.md": "Marts: models over `staging` (and `snapshots`) for the business.\n",
        f"{DBT_DIR}/snapshots/README.md": "Snapshots: dbt snapshots (SCD2) of the staging models go here.\n",
        ".env.example": render_package_template(PACKAGE, "env.example.j2", variables=variables(spec),
                                                spec_path=spec_path),
        ".gitignore": ".env\npipelines/.env\n.bankflow/\ndbt/target/\ndbt/logs/\n",
        "README.md": render_package_template(PACKAGE, "README.md.j2", project=project, spec_path=spec_path,
                                             comment=comment, dbt_dir=DBT_DIR),
    }
    for table in tables:
        files[f"{DBT_DIR}/models/staging/{models[table.name]}.sql"] = staging_sql(table)
    for name, text in shipped_macros().items():
        files[f"{DBT_DIR}/macros/bankflow/{name}"] = text
    return files
