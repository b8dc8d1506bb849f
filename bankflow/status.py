"""`status`: is everything up, how far behind is the slot, what is in the lake and in raw, how did the last run go."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec

_RUN_STAGE_FIELDS = ("ok", "seconds", "events", "rows", "files")


def _error(resolved: ResolvedSpec, exc: BaseException) -> str:
    """An exception as one redacted line: `status` prints one line per part (libpq's messages span two)."""
    return " ".join(resolved.redact(str(exc)).split()) or type(exc).__name__


def _source_status(resolved: ResolvedSpec) -> dict[str, Any]:
    from bankflow.source import source_server

    spec = resolved.spec
    server = source_server(resolved)
    info: dict[str, Any] = {"server": server.label, "connection": server.connection_info()}
    if server.is_running() is False:
        info["up"] = False
        return info
    try:
        import psycopg2

        conn = psycopg2.connect(**server.connect_kwargs(start=False))
    except Exception as exc:
        info.update(up=False, error=_error(resolved, exc))
        return info
    info["up"] = True
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT active, confirmed_flush_lsn::text, "
                "pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, pg_current_wal_lsn()::text "
                "FROM pg_replication_slots WHERE slot_name = %s", (spec.cdc.slot,))
            row = cur.fetchone()
            info["slot"] = None if row is None else {
                "name": spec.cdc.slot, "active": row[0], "confirmed_flush_lsn": row[1], "lag_bytes": row[2],
                "current_wal_lsn": row[3]}
        info["contract"] = _contract(resolved, conn)
    finally:
        conn.close()
    return info


def _contract(resolved: ResolvedSpec, conn: Any) -> dict[str, Any]:
    """The source contract: every difference between the live catalog and the spec, with the spec's file:line."""
    from bankflow.source.contract import live_findings, read_catalog

    try:
        with conn.cursor() as cur:
            catalog = read_catalog(cur, resolved.spec.source.schema_name, [t.name for t in resolved.spec.tables])
            findings = live_findings(resolved, cur, catalog)
    except Exception as exc:
        return {"error": _error(resolved, exc)}
    return {"ok": not any(f.severity == "error" for f in findings),
            "differences": [{"severity": f.severity, "table": f.table, "column": f.column, "message": f.message,
                             "where": f.where} for f in findings]}


def _lake_status(resolved: ResolvedSpec) -> dict[str, Any]:
    from bankflow.stages.load import lake_files

    info: dict[str, Any] = {"url": resolved.spec.lake.url, "tables": {}}
    try:
        import pyarrow.parquet as pq

        from bankflow.lake.filesystem import lake_filesystem

        fs, root = lake_filesystem(resolved)
        for table in resolved.spec.tables:
            keys = lake_files(resolved, table)
            rows = 0
            for key in keys:
                with fs.open(f"{root.rstrip('/')}/{key}", "rb") as handle:
                    rows += pq.ParquetFile(handle).metadata.num_rows
            info["tables"][table.name] = {"files": len(keys), "rows": rows}
        from bankflow.deadletters import DeadLetters

        info["dead_letters"] = {t: p.to_dict() for t, p in sorted(DeadLetters(resolved).pending().items())}
    except Exception as exc:
        info["error"] = _error(resolved, exc)
    return info


def _warehouse_status(resolved: ResolvedSpec) -> dict[str, Any]:
    from bankflow.render.warehouse import qualified_raw_table
    from bankflow.warehouses import connect_warehouse

    info: dict[str, Any] = {"type": resolved.spec.warehouse.type, "tables": {}}
    try:
        adapter = connect_warehouse(resolved)
    except Exception as exc:
        info["error"] = _error(resolved, exc)
        return info
    try:
        for table in resolved.spec.tables:
            try:
                rows = adapter.query(f"SELECT count(*) FROM {qualified_raw_table(resolved, table)}")[0][0]
                files = len(adapter.ledger_keys(table))
            except Exception:
                rows, files = None, 0
            info["tables"][table.raw_name] = {"rows": rows, "files_loaded": files}
    finally:
        adapter.close()
    return info


def _stage_summary(stage: dict[str, Any]) -> dict[str, Any]:
    summary = {k: stage.get(k) for k in _RUN_STAGE_FIELDS}
    if isinstance(summary["seconds"], (int, float)):
        summary["seconds"] = round(summary["seconds"], 2)
    return summary


def _last_run(resolved: ResolvedSpec) -> dict[str, Any] | None:
    """The last run's summary from `<state_dir>/last_run.json`; None before the first run."""
    path = resolved.state_dir / "last_run.json"
    try:
        if not path.is_file():
            return None
        run = json.loads(path.read_text(encoding="utf-8"))
        stages = run.get("stages") or []
        return {k: run.get(k) for k in ("run_id", "started_at", "ok", "seconds")} | {"stages": {
            str(s.get("name")): _stage_summary(s) for s in stages if isinstance(s, dict)}}
    except (OSError, ValueError, AttributeError, TypeError) as exc:  # unreadable, not JSON, not the shape we write
        return {"error": f"cannot read {path}: {_error(resolved, exc)}"}


def collect_status(resolved: ResolvedSpec) -> dict[str, Any]:
    """The status document (`status --json` prints it): every part says what it could not reach, nothing raises.
    `attention` lists what needs a person; `status` exits non-zero when it is not empty."""
    engine = resolved.spec.cdc.engine_for(resolved)
    status = {
        "pipeline": resolved.spec.name,
        "env": resolved.env,
        "engine": resolved.spec.cdc.engine,
        "source": _source_status(resolved),
        **engine.status(),
        "lake": _lake_status(resolved),
        "warehouse": _warehouse_status(resolved),
        "last_run": _last_run(resolved),
    }
    status["attention"] = _attention(resolved, status) + engine.needs_attention(status)
    return status


def _attention(resolved: ResolvedSpec, status: dict[str, Any]) -> list[str]:
    """What needs a person: the source down, contract drift, slot lag over the spec's threshold, dead letters
    pending, an unreadable lake or warehouse, a failed last run."""
    found = []
    source = status["source"]
    if not source.get("up"):
        found.append(f"the source is not reachable{': ' + source['error'] if source.get('error') else ''}")
    contract = source.get("contract") or {}
    errors = [d for d in contract.get("differences", []) if d["severity"] == "error"]
    if errors:
        found.append(f"source contract: {len(errors)} difference(s) stop apply (first: {errors[0]['where']}: "
                     f"{errors[0]['table']}: {errors[0]['message']})")
    slot = source.get("slot") or {}
    threshold = resolved.spec.cdc.max_lag_bytes
    if threshold is not None and (slot.get("lag_bytes") or 0) > threshold:
        found.append(f"slot {slot['name']} retains {slot['lag_bytes']:,} bytes of WAL, over cdc.max_lag_bytes "
                     f"{threshold:,}")
    for table, entry in (status["lake"].get("dead_letters") or {}).items():
        found.append(f"{entry['events']:,} dead letter(s) of {table} pending (bankflow deadletters … list)")
    for part in ("lake", "warehouse"):
        if status[part].get("error"):
            found.append(f"{part}: {status[part]['error']}")
    run = status.get("last_run") or {}
    if run and run.get("ok") is False:
        failed = [name for name, stage in (run.get("stages") or {}).items() if not stage.get("ok")]
        found.append(f"the last run failed ({', '.join(failed) or run.get('error')})")
    return found


def _connect_hint(connection: dict[str, Any]) -> str:
    """A psql command line for the source, with where its password is (never the password)."""
    from shlex import quote

    port = connection.get("port")
    command = (f"psql -h {quote(str(connection.get('host')))} -p {port if port is not None else '?'} "
               f"-U {quote(str(connection.get('user')))} -d {quote(str(connection.get('database')))}")
    if connection.get("password_file"):
        return f"PGPASSFILE={quote(str(connection['password_file']))} {command}"
    if connection.get("password_env"):
        return f"{command}  (password in ${connection['password_env']})"
    return command


def _source_lines(source: dict[str, Any]) -> list[str]:
    lines = [f"  source     {'up' if source.get('up') else 'down'}"
             + (f" ({source['server']})" if source.get("server") else "")
             + (f"  error: {source['error']}" if source.get("error") else "")]
    connection = source.get("connection")
    if connection:
        lines.append(f"  connect    {_connect_hint(connection)}")
    slot = source.get("slot")
    if slot:
        lines.append(f"  slot       {slot['name']}: confirmed {slot['confirmed_flush_lsn']}, lag "
                     f"{slot['lag_bytes']:,} bytes, {'active' if slot['active'] else 'idle'}")
    elif source.get("up"):
        lines.append("  slot       not created yet")
    return lines + _contract_lines(source.get("contract"))


def _contract_lines(contract: dict[str, Any] | None) -> list[str]:
    if not contract:
        return []
    if contract.get("error"):
        return [f"  contract   not checked: {contract['error']}"]
    differences = contract.get("differences") or []
    if not differences:
        return ["  contract   the source matches the spec"]
    return [f"  contract   {d['severity']}: {d['where']}: "
            f"{d['table']}{'.' + d['column'] if d.get('column') else ''}: {d['message']}" for d in differences]


def _engine_lines(status: dict[str, Any]) -> list[str]:
    """The engine's own part (connector, consumer, ...), formatted by the engine the document names."""
    from bankflow.engines import ENGINES

    model = ENGINES.get(str(status.get("engine")))
    return model.engine_class().format_status(status) if model is not None else []


def _lake_lines(lake: dict[str, Any]) -> list[str]:
    lines = [f"  lake       {name}: {info['files']} file(s), {info['rows']:,} row(s)"
             for name, info in lake.get("tables", {}).items()]
    if lake.get("error"):
        lines.append(f"  lake       {lake['url']}: {lake['error']}")
    for table, entry in (lake.get("dead_letters") or {}).items():
        lines.append(f"  dead letters {table}: {entry['events']:,} event(s) in {entry['files']} file(s)")
    return lines


def _warehouse_lines(warehouse: dict[str, Any]) -> list[str]:
    lines = []
    for name, info in warehouse.get("tables", {}).items():
        rows = "-" if info["rows"] is None else f"{info['rows']:,}"
        lines.append(f"  raw        {name}: {rows} row(s), {info['files_loaded']} file(s) loaded")
    if warehouse.get("error"):
        lines.append(f"  warehouse  error: {warehouse['error']}")
    return lines


def _run_lines(run: dict[str, Any] | None) -> list[str]:
    if not run:
        return ["  last run   none"]
    if run.get("error"):
        return [f"  last run   {run['error']}"]
    stages = ", ".join(f"{n} {s['seconds']}s" for n, s in run["stages"].items())
    return [f"  last run   {run['started_at']} {'ok' if run['ok'] else 'FAILED'} ({stages})"]


def format_status(status: dict[str, Any]) -> str:
    """The document as `bankflow status` prints it: one line per part, each saying what it could not reach."""
    lines = [f"pipeline {status['pipeline']} (environment: {status['env'] or 'default'})",
             *_source_lines(status["source"]),
             *_engine_lines(status),
             *_lake_lines(status["lake"]),
             *_warehouse_lines(status["warehouse"]),
             *_run_lines(status.get("last_run"))]
    attention = status.get("attention") or []
    lines += [f"needs attention: {item}" for item in attention] or ["needs attention: nothing"]
    return "\n".join(lines)
