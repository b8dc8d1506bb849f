"""Load a workload module by file path and run it against a PostgreSQL schema.

Workloads live with the pipelines (``pipelines/workloads/*.py``), not in the library, because they know
their tables; the runner knows only connections, schemas and counts. psycopg2 is imported lazily so that
importing bankflow (e.g. for ``bankflow validate``) stays cheap.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from bankflow.generate.contract import ProgressCallback, WorkloadError, WorkloadOptions, WorkloadResult


def load_workload(path: Path) -> ModuleType:
    """Import the workload module at ``path``; it must define ``run(conn, options, progress)``.

    Optionally ``COUNTED_TABLE``: the table whose inserted rows ``WorkloadOptions.transactions`` counts, so a
    progress display can show a percentage and the time left.
    """
    path = Path(path)
    if not path.is_file():
        raise WorkloadError(f"workload file not found: {path}")
    # A stable, unique module name per file: two workloads called banking.py in different folders don't clash.
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    name = f"bankflow_workload_{path.stem}_{digest}"
    if name in sys.modules:
        module = sys.modules[name]
    else:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise WorkloadError(f"cannot import workload {path}: not a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look the module up by name while it executes
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise WorkloadError(f"cannot import workload {path}: {type(exc).__name__}: {exc}") from exc
    if not callable(getattr(module, "run", None)):
        raise WorkloadError(f"workload {path} has no run(conn, options, progress) function")
    return module


def with_totals(options: WorkloadOptions, progress: ProgressCallback | None,
                counted_table: str | None = None) -> ProgressCallback | None:
    """Wrap a progress callback so each report also says how far along the run is when that is known.

    Adds ``done``, ``total`` and ``unit`` to the running totals: the rows inserted into ``counted_table`` (the
    table whose rows ``options.transactions`` counts; a workload names it as ``COUNTED_TABLE``) when there is a
    row target, seconds in paced mode with a duration. A display turns them into a percentage and time left.
    """
    if progress is None:
        return None
    callback = progress

    def report(info: dict[str, Any]) -> None:
        info = dict(info)
        inserted = info.get("inserted") or {}
        if options.mode != "once" and options.transactions is not None and counted_table:
            info.update(done=int(inserted.get(counted_table, 0)), total=options.transactions,
                        unit=f"rows in {counted_table}")
        elif options.mode == "paced" and options.duration is not None:
            info.update(done=int(float(info.get("seconds", 0.0))), total=int(options.duration), unit="s")
        callback(info)

    return report


def describe(info: Mapping[str, Any]) -> str:
    """One line for a progress display: `12,000 rows inserted, 300 updated, 4 deleted in 41 db transactions`."""
    def rows(key: str) -> int:
        value = info.get(key) or {}
        return sum(int(n) for n in value.values()) if isinstance(value, Mapping) else 0

    parts = [f"{rows('inserted'):,} rows inserted"]
    parts += [f"{rows(key):,} {key}" for key in ("updated", "deleted") if rows(key)]
    text = ", ".join(parts)
    if info.get("db_transactions"):
        text += f" in {int(info['db_transactions']):,} db transactions"
    return text


def run_workload(
    path: Path,
    connect_kwargs: Mapping[str, Any],
    schema: str,
    options: WorkloadOptions,
    progress: ProgressCallback | None = None,
) -> WorkloadResult:
    """Connect, point ``search_path`` at ``schema``, run the workload and return what it committed."""
    module = load_workload(path)
    import psycopg2
    from psycopg2 import sql

    kwargs = {"application_name": "bankflow-generate", **dict(connect_kwargs)}
    set_search_path = sql.SQL("set search_path to {}").format(sql.Identifier(schema))

    def open_connection() -> Any:
        try:
            return psycopg2.connect(**kwargs)
        except psycopg2.OperationalError as exc:  # the message names host and port, never the password
            raise WorkloadError(f"cannot connect to the source database: {str(exc).strip()}") from exc

    def connect() -> Any:
        """Another connection like the first; the workload that asks for it closes it."""
        extra = open_connection()
        with extra.cursor() as cur:
            cur.execute(set_search_path)
        extra.commit()
        return extra

    conn = open_connection()
    try:
        with conn.cursor() as cur:
            cur.execute("select 1 from pg_namespace where nspname = %s", [schema])
            if cur.fetchone() is None:
                raise WorkloadError(
                    f"schema {schema!r} does not exist in the source database; create the source tables first"
                )
            cur.execute(set_search_path)
        conn.commit()
        started = time.perf_counter()
        options = dataclasses.replace(options, connect=connect)
        counted = getattr(module, "COUNTED_TABLE", None)  # what --transactions N counts, for a percentage
        try:
            result = WorkloadResult.coerce(module.run(conn, options, with_totals(options, progress, counted)))
        except psycopg2.Error as exc:
            # e.g. source tables whose columns differ from what the workload writes: say so without a traceback
            raise WorkloadError(f"workload {Path(path).name} failed in the database: {str(exc).strip()}") from exc
        result.seconds = time.perf_counter() - started
        return result
    except BaseException:
        if not conn.closed:
            conn.rollback()
        raise
    finally:
        conn.close()
