"""A SourceModel → the files of a pipeline project (`bankflow init`). Pure: text in, {path: text} out.

Templates are package data under bankflow/scaffold/templates/. Every name that reaches a file as YAML or SQL is
a validated identifier (the introspection left out the others); anything else (source names left out, enum
labels, defaults) only reaches YAML comments, flattened to one line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bankflow.render.templating import render_package_template
from bankflow.scaffold.introspect import ColumnModel, Omission, SourceModel, TableModel, connection_defaults

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


def column_yaml(column: ColumnModel) -> str:
    parts = [f"name: {column.name}", f'type: "{column.type}"']
    if not column.nullable:
        parts.append("nullable: false")
    if column.identity:
        parts.append("identity: true")
    if column.references:
        parts.append(f"references: {column.references}")
    return "{" + ", ".join(parts) + "}"


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
        column_omissions=column_omissions, defaults=defaults, dbt_dir=DBT_DIR,
    )


def _local_database(project: Project) -> str:
    database = project.source.database
    return database if re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", database) else project.name


def staging_sql(table: TableModel) -> str:
    return render_package_template(PACKAGE, "staging.sql.j2", table=table)


def render_project(project: Project) -> dict[str, str]:
    """Every file of the project, by path relative to the project directory."""
    spec = render_spec(project)
    spec_path = f"pipelines/{project.name}.yaml"
    tables = project.source.tables
    files = {
        spec_path: spec,
        f"{DBT_DIR}/dbt_project.yml": render_package_template(PACKAGE, "dbt_project.yml.j2", project=project),
        f"{DBT_DIR}/models/sources.yml": render_package_template(PACKAGE, "sources.yml.j2", tables=tables),
        f"{DBT_DIR}/models/staging/staging.yml": render_package_template(PACKAGE, "staging.yml.j2", tables=tables),
        f"{DBT_DIR}/models/marts/README.md": "Marts: models over `staging` (and `snapshots`) for the business.\n",
        f"{DBT_DIR}/snapshots/README.md": "Snapshots: dbt snapshots (SCD2) of the staging models go here.\n",
        ".env.example": render_package_template(PACKAGE, "env.example.j2", variables=variables(spec),
                                                spec_path=spec_path),
        ".gitignore": ".env\npipelines/.env\n.bankflow/\ndbt/target/\ndbt/logs/\n",
        "README.md": render_package_template(PACKAGE, "README.md.j2", project=project, spec_path=spec_path,
                                             comment=comment, dbt_dir=DBT_DIR),
    }
    for table in tables:
        files[f"{DBT_DIR}/models/staging/stg_{table.name}.sql"] = staging_sql(table)
    return files
