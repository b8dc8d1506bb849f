"""`bankflow init`: scaffold a pipeline project (spec, dbt project, .env.example, README) in a directory.

`introspect` reads a Postgres catalog into a neutral model (`SourceModel`), `render` turns a model into files
(pure). A column or table bankflow cannot carry exactly is never guessed: it is left out with a comment and an
`Omission`; `init` refuses to write a partial project unless asked (`allow_partial`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from bankflow.errors import BankflowError, UsageError
from bankflow.scaffold.introspect import Omission, SourceModel, introspect, name_problem, quoted
from bankflow.scaffold.render import Project, example_source, render_project

__all__ = ["InitResult", "Omission", "Project", "SourceModel", "default_name", "init_project", "render_project"]


@dataclass
class InitResult:
    directory: Path
    name: str
    files: list[str] = field(default_factory=list)
    omissions: list[Omission] = field(default_factory=list)
    written: bool = False

    @property
    def complete(self) -> bool:
        return not self.omissions


def default_name(directory: Path) -> str:
    """The pipeline's name from its directory: lower case, [a-z0-9_], never starting with a digit."""
    name = re.sub(r"[^a-z0-9_]+", "_", directory.resolve().name.lower()).strip("_")
    if name and name[0].isdigit():
        name = "p_" + name
    return name[:63] if name and not name_problem(name) else "pipeline"


def _check_directory(directory: Path, force: bool) -> None:
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory} is a file; give a directory (created if missing)")
    if directory.is_dir() and any(directory.iterdir()) and not force:
        raise BankflowError(f"{directory} is not empty; give an empty or new directory, or --force to write "
                            "the project's files into it (files of the same name are replaced)")


def init_project(directory: Path, name: str | None = None, *, from_postgres: str | None = None,
                 schema: str | None = None, tables: list[str] | None = None, force: bool = False,
                 allow_partial: bool = False) -> InitResult:
    """Scaffold the project; with `from_postgres`, from the catalog of `schema`.

    Writes nothing when something had to be left out and `allow_partial` is false (the result lists it).
    """
    name = name or default_name(directory)
    if problem := name_problem(name):
        raise UsageError(f"--name {quoted(name)}: the name {problem}")
    if from_postgres is None and (schema or tables):
        raise UsageError("--schema and --tables need --from-postgres URL")
    if from_postgres is not None and not schema:
        raise UsageError("--from-postgres needs --schema (the source schema to read)")
    if schema is not None and (problem := name_problem(schema)):
        raise UsageError(f"--schema {quoted(schema)}: the name {problem}")
    _check_directory(directory, force)
    if from_postgres is not None:
        assert schema is not None
        source = introspect(from_postgres, schema, tables)
        project = Project(name, source, from_postgres=True)
    else:
        project = Project(name, example_source(name), example=True)
    if not project.source.tables:
        raise BankflowError(f"no table of schema {quoted(project.source.schema)} can be declared: "
                            + "; ".join(o.line() for o in project.source.omissions[:5]))
    files = render_project(project)
    result = InitResult(directory, name, sorted(files), list(project.source.omissions))
    if result.omissions and not allow_partial:
        return result
    for relative, text in files.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    result.written = True
    return result
