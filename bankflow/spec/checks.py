"""Semantic checks that need the whole spec (and the dbt project's files), beyond what field types can say."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bankflow.errors import Issue
from bankflow.spec.types import INTEGER_KINDS, PgType

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec
    from bankflow.spec.models import Table

Positions = dict[tuple[Any, ...], tuple[int, int]]


def check_spec(resolved: ResolvedSpec, positions: Positions, *, check_dbt: bool = True,
               file: str | None = None) -> list[Issue]:
    """`file`: the spec's path as the user gave it (issues name it the same way the loader's do)."""
    checker = _Checker(resolved, positions, file or str(resolved.path))
    spec = resolved.spec
    checker.tables()
    checker.topics()
    checker.raw_targets()
    checker.reference_cycles()
    checker.variants()
    checker.verify_queries()
    if spec.transform is not None and check_dbt:
        checker.issues.extend(_check_dbt(resolved, checker.add))
    if spec.generate is not None:
        workload = resolved.resolve_path(spec.generate.workload)
        if not workload.is_file():
            checker.add(("generate", "workload"), "generate.workload", f"workload file {workload} not found",
                        "give a path relative to the spec's directory")
    return checker.issues


def _comparable(left: PgType, right: PgType) -> bool:
    """Postgres can enforce a foreign key between these types (same kind, or two integer kinds)."""
    return left.kind == right.kind or (left.kind in INTEGER_KINDS and right.kind in INTEGER_KINDS)


def _cycle_from(start: str, parents: dict[str, set[str]]) -> list[str] | None:
    """The first cycle of foreign keys through `start` (as table names, start … start), or None."""
    stack = [(start, [start])]
    seen: set[str] = set()
    while stack:
        name, path = stack.pop()
        for parent in sorted(parents.get(name, ())):
            if parent == start:
                return [*path, start]
            if parent not in seen:
                seen.add(parent)
                stack.append((parent, [*path, parent]))
    return None


class _Checker:
    """Collects issues, each located at the closest line the spec has for its path."""

    def __init__(self, resolved: ResolvedSpec, positions: Positions, file: str):
        self.resolved = resolved
        self.spec = resolved.spec
        self.positions = positions
        self.file = file
        self.issues: list[Issue] = []
        names = [t.name for t in self.spec.tables]
        self.names = names
        self.duplicated = {n for n in names if names.count(n) > 1}

    def add(self, path: tuple[Any, ...], field: str, message: str, hint: str = "", severity: str = "error") -> None:
        probe: tuple[Any, ...] | None = path
        position = None
        while position is None and probe is not None:
            position = self.positions.get(probe)
            probe = probe[:-1] if probe else None
        line, column = position or (None, None)
        self.issues.append(Issue(self.file, line, column, field, message, hint, severity))

    def tables(self) -> None:
        for index, table in enumerate(self.spec.tables):
            where = ("tables", index)
            if table.name in self.names[:index]:
                self.add((*where, "name"), f"tables[{index}].name", f"table {table.name!r} is declared twice",
                         "each source table appears once: remove or rename this entry")
            self._references(index, table)
            for key in table.primary_key:
                if table.column(key).nullable:
                    self.add((*where, "primary_key"), f"tables[{index}].primary_key",
                             f"primary key column {key!r} is nullable", f"set nullable: false on column {key!r}")
            if table.replica_identity != "full":
                self.add((*where, "replica_identity"), f"tables[{index}].replica_identity",
                         f"table {table.name!r} without REPLICA IDENTITY FULL: updates carry no before-image and "
                         "deletes carry only the key",
                         "set replica_identity: full where updates/deletes must be complete", "warning")

    def _references(self, index: int, table: Table) -> None:
        for col_index, column in enumerate(table.columns):
            if not column.references:
                continue
            where = ("tables", index, "columns", col_index, "references")
            field = f"tables[{index}].columns[{col_index}].references"
            ref_table, ref_column = column.references.split(".")
            target = next((t for t in self.spec.tables if t.name == ref_table), None)
            if target is None or ref_column not in [c.name for c in target.columns]:
                self.add(where, field, f"{column.references!r} is not a column of a declared table",
                         f"declared tables: {', '.join(self.names)}")
                continue
            if target.primary_key != [ref_column]:
                self.add(where, field, f"{column.references!r} is not the primary key of {ref_table!r}: a foreign "
                         "key must point at a unique key", f"reference {ref_table}.{', '.join(target.primary_key)}")
            elif not _comparable(column.pg_type, target.column(ref_column).pg_type):
                self.add(where, field, f"column {column.name!r} is {column.type} but {column.references!r} is "
                         f"{target.column(ref_column).type}", "give both columns the same type")

    def reference_cycles(self) -> None:
        """Tables are created parents first: a cycle of foreign keys between tables cannot be created."""
        parents = {t.name: {c.references.split(".")[0] for c in t.columns if c.references} - {t.name}
                   for t in self.spec.tables}
        for index, table in enumerate(self.spec.tables):
            path = _cycle_from(table.name, parents)
            if path:
                self.add(("tables", index, "name"), f"tables[{index}].name",
                         f"foreign keys form a cycle: {' → '.join(path)}",
                         "drop one of the references (a cycle needs deferred constraints bankflow does not create)")
                return  # one report per cycle is enough

    def topics(self) -> None:
        """Unique, and derived from the connector's prefix (Debezium names them so; a mismatch means a consumer
        subscribed to a topic nobody writes)."""
        spec = self.spec
        topics: dict[str, str] = {}
        for index, table in enumerate(spec.tables):
            if table.name in self.duplicated:
                continue  # reported already; its topic and raw table collide for the same reason
            topic = spec.topic_for(table)
            if topic in topics:
                self.add(("tables", index, "topic"), f"tables[{index}].topic",
                         f"topic {topic!r} is used by tables {topics[topic]!r} and {table.name!r}",
                         "every table needs its own topic")
            topics[topic] = table.name
            expected = spec.topic_for(table.model_copy(update={"topic": None}))  # the connector's naming
            if table.topic is not None and table.topic != expected:
                self.add(("tables", index, "topic"), f"tables[{index}].topic",
                         f"topic {table.topic!r} does not match the connector's naming {expected!r}",
                         "Debezium writes {topic_prefix}.{schema}.{table}: remove 'topic:' or change "
                         "cdc.topic_prefix")

    def raw_targets(self) -> None:
        targets: dict[str, str] = {}
        for index, table in enumerate(self.spec.tables):
            if table.name in self.duplicated:
                continue
            if table.raw_name in targets:
                self.add(("tables", index, "raw_table"), f"tables[{index}].raw_table",
                         f"raw table {table.raw_name!r} is the target of tables {targets[table.raw_name]!r} and "
                         f"{table.name!r}", "give each table its own raw_table")
            targets.setdefault(table.raw_name, table.name)

    def variants(self) -> None:
        """What the engine and the warehouse say about the rest of the spec (read off their capabilities)."""
        spec = self.spec
        if spec.cdc.heartbeat_interval_ms == 0:
            self.add(("cdc", "heartbeat_interval_ms"), "cdc.heartbeat_interval_ms",
                     "a replication slot without heartbeats holds WAL while the captured tables are idle",
                     "set heartbeat_interval_ms, e.g. 10000", "warning")
        for found in spec.cdc.check(spec, self.resolved.env_refs):
            self.add(found.at, ".".join(str(p) for p in found.at), found.message, found.hint, found.severity)
        if spec.transform is not None and spec.transform.target_schema == spec.warehouse.raw_schema:
            self.add(("transform", "target_schema"), "transform.target_schema",
                     f"dbt's target schema is the raw schema {spec.warehouse.raw_schema!r}: models would be built "
                     "among the raw tables bankflow loads", "give transform.target_schema its own name, e.g. analytics")
        schemes = spec.warehouse.capabilities.lake_schemes
        if spec.lake.scheme not in schemes:
            self.add(("lake", "url"), "lake.url",
                     f"the {spec.warehouse.type} warehouse cannot load from a {spec.lake.scheme}:// lake: the lake "
                     "must be on " + " or ".join(f"{s}://" for s in sorted(schemes)),
                     f"set lake.url to {' or '.join(s + '://…' for s in sorted(schemes))} in this environment")

    def verify_queries(self) -> None:
        """Each verify query: one SELECT that only reads (bankflow.sqlguard), parsed in its server's dialect."""
        checks = self.spec.verify.checks
        if not checks:
            return  # sqlglot is imported only for a spec that has queries to judge
        try:
            import sqlglot  # noqa: F401
        except ImportError:
            self.add(("verify", "checks"), "verify.checks", "verify queries not checked: sqlglot is not installed",
                     "install bankflow with the 'local' or 'stack' extra (verify refuses to run without it)",
                     "warning")
            return
        from bankflow.sqlguard import SOURCE_DIALECT, refusal
        from bankflow.verify import fill

        dialects = {"source_sql": SOURCE_DIALECT, "warehouse_sql": self.spec.warehouse.dialect().sqlglot_dialect}
        for index, check in enumerate(checks):
            for key, dialect in dialects.items():
                refused = refusal(fill(self.resolved, getattr(check, key)), dialect)
                if refused is not None:
                    self.add(("verify", "checks", index, key), f"verify.checks[{index}].{key}",
                             f"a verify query must be a single SELECT that only reads: it {refused.reason}",
                             refused.hint)


# ---------------------------------------------------------------- dbt selectors

class DbtProjectError(ValueError):
    """The dbt project's files cannot be read as dbt would read them; the message names the file."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


PATH_KEYS = {"model": "model-paths", "snapshot": "snapshot-paths", "seed": "seed-paths", "test": "test-paths"}
PATH_DEFAULTS = {"model": "models", "snapshot": "snapshots", "seed": "seeds", "test": "tests"}


def _dbt_text(path: Path, project_dir: Path) -> str:
    """A dbt project file as dbt reads it (UTF-8), or a DbtProjectError naming the file."""
    shown = _shown(path, project_dir)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DbtProjectError(f"cannot read {shown}: {exc.strerror or exc}",
                              "make the dbt project's files readable") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DbtProjectError(f"{shown} is not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line})",
                              "save it as UTF-8: dbt reads project files as UTF-8") from None


def _shown(path: Path, project_dir: Path) -> str:
    try:
        return f"{project_dir.name}/{path.relative_to(project_dir).as_posix()}"
    except ValueError:
        return str(path)


def _dbt_yaml(path: Path, project_dir: Path) -> Any:
    import yaml

    text = _dbt_text(path, project_dir)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise DbtProjectError(f"{_shown(path, project_dir)}{where}: YAML error: {' '.join(str(problem).split())}",
                              "fix the YAML in the dbt project") from None


def dbt_project(project_dir: Path) -> dict[str, Any]:
    """dbt_project.yml as a mapping, its *-paths checked (lists of relative directory names)."""
    config_path = project_dir / "dbt_project.yml"
    config = _dbt_yaml(config_path, project_dir)
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise DbtProjectError(f"{_shown(config_path, project_dir)} must be a mapping of keys (name, profile, …), "
                              f"not a {type(config).__name__}", "start from banking_dbt/dbt_project.yml")
    for kind, key in PATH_KEYS.items():
        value = config.get(key, [PATH_DEFAULTS[kind]])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise DbtProjectError(
                f"{_shown(config_path, project_dir)}: {key} must be a list of directory names, got {value!r}",
                f'write e.g. {key}: ["{PATH_DEFAULTS[kind]}"]')
    return config


def dbt_nodes(project_dir: Path) -> dict[str, set[str]]:
    """Models, snapshots, seeds and tests of a dbt project, read from its files (dbt itself is never run).

    Raises DbtProjectError when a file cannot be read the way dbt reads it (not UTF-8, bad YAML, *-paths that
    are not lists of names).
    """
    config = dbt_project(project_dir)
    nodes: dict[str, set[str]] = {"model": set(), "snapshot": set(), "seed": set(), "test": set()}
    for kind, key in PATH_KEYS.items():
        for directory in config.get(key, [PATH_DEFAULTS[kind]]):
            root = project_dir / directory
            if root.is_dir():
                for path in sorted(p for p in root.rglob("*") if p.is_file()):
                    _add_dbt_file(nodes, kind, path, project_dir)
    return nodes


def _add_dbt_file(nodes: dict[str, set[str]], kind: str, path: Path, project_dir: Path) -> None:
    """The nodes one file of a `kind` directory (model, snapshot, seed, test) declares."""
    relative = path.relative_to(project_dir).with_suffix("").as_posix()
    if path.suffix == ".sql":
        text = _dbt_text(path, project_dir)
        if kind == "snapshot" or "{% snapshot" in text:
            for name in re.findall(r"{%-?\s*snapshot\s+(\w+)", text):
                nodes["snapshot"].add(f"{name}|{relative}")
            if kind == "snapshot":
                return
        nodes[kind].add(f"{path.stem}|{relative}")
    elif path.suffix in (".yml", ".yaml") and kind in ("snapshot", "model"):
        doc = _dbt_yaml(path, project_dir)
        snapshots = doc.get("snapshots") if isinstance(doc, dict) else None
        for snap in snapshots if isinstance(snapshots, list) else []:
            if isinstance(snap, dict) and isinstance(snap.get("name"), str):
                nodes["snapshot"].add(f"{snap['name']}|{relative}")
    elif path.suffix == ".csv" and kind == "seed":
        nodes["seed"].add(f"{path.stem}|{relative}")


def selector_matches(selector: str, nodes: dict[str, set[str]], project_name: str) -> bool:
    """Whether a dbt selector (name, path, folder, resource_type:, +graph ops, tag: is trusted) matches a node."""
    selector = selector.strip("+").split("@")[-1]
    if re.match(r"^\d*\+?", selector) and selector[:1].isdigit():
        selector = re.sub(r"^\d+\+?", "", selector)
    if "," in selector:
        return all(selector_matches(part, nodes, project_name) for part in selector.split(","))
    method, _, value = selector.partition(":") if ":" in selector else ("", "", selector)
    entries = [entry for group in nodes.values() for entry in group]
    if method in ("tag", "config", "source", "exposure", "metric", "state", "result", "source_status", "fqn"):
        return True  # not resolvable from files alone without dbt's parser; dbt itself reports these
    if method == "resource_type":
        kind = value.rstrip("s")
        return bool(nodes.get(kind))
    if method == "path" or "/" in value or value.endswith(".sql"):
        value = value.removesuffix(".sql").strip("/")
        return any(e.split("|", 1)[1] == value or e.split("|", 1)[1].startswith(value + "/") for e in entries)
    if value == project_name:
        return bool(entries)
    pattern = re.compile("^" + re.escape(value).replace(r"\*", ".*") + "$")
    for entry in entries:
        name, relative = entry.split("|", 1)
        folders = relative.split("/")[1:-1]
        if pattern.match(name) or value in folders or ".".join(folders) == value:
            return True
    return False


def _check_dbt(resolved: ResolvedSpec, add: Any) -> list[Issue]:
    transform = resolved.spec.transform
    assert transform is not None
    project_dir = resolved.resolve_path(transform.project_dir)
    if not (project_dir / "dbt_project.yml").is_file():
        add(("transform", "project_dir"), "transform.project_dir",
            f"no dbt_project.yml in {project_dir}", "point project_dir at a dbt project, relative to the spec")
        return []
    try:
        nodes = dbt_nodes(project_dir)
        project_name = str(dbt_project(project_dir).get("name") or "")
    except DbtProjectError as exc:
        add(("transform", "project_dir"), "transform.project_dir", f"cannot read the dbt project: {exc}", exc.hint)
        return []
    for index, step in enumerate(transform.steps):
        for selector in step.select:
            if not selector_matches(selector, nodes, project_name):
                known = sorted({e.split("|")[0] for g in nodes.values() for e in g})
                folders = sorted({p for g in nodes.values() for e in g for p in e.split("|", 1)[1].split("/")[1:-1]})
                add(("transform", "steps", index, "select"), f"transform.steps[{index}].select",
                    f"selector {selector!r} matches no model, snapshot or test in {project_dir.name}",
                    f"folders: {', '.join(folders) or '-'}; nodes: {', '.join(known[:12])}"
                    + (" …" if len(known) > 12 else ""))
        if step.command == "snapshot" and not step.select and not nodes["snapshot"]:
            add(("transform", "steps", index), f"transform.steps[{index}]",
                "a snapshot step but the dbt project has no snapshots", "remove the step or add snapshots")
    return []
