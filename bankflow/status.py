"""`status`: is everything up, how far behind is the slot, what is in the lake and in raw, how did the last run go."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec


def _source_status(resolved: ResolvedSpec) -> dict[str, Any]:
    from bankflow.source import source_server

    spec = resolved.spec
    server = source_server(resolved)
    info: dict[str, Any] = {"server": server.label}
    if server.is_running() is False:
        info["up"] = False
        return info
    try:
        import psycopg2

        conn = psycopg2.connect(**server.connect_kwargs(start=False))
    except Exception as exc:
        info.update(up=False, error=resolved.redact(str(exc).strip()))
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
    finally:
        conn.close()
    return info


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
        dead = f"{root.rstrip('/')}/{resolved.spec.lake.dead_letter}"
        info["dead_letter_files"] = len(fs.find(dead)) if fs.exists(dead) else 0
    except Exception as exc:
        info["error"] = resolved.redact(str(exc).strip())
    return info


def _warehouse_status(resolved: ResolvedSpec) -> dict[str, Any]:
    from bankflow.render.warehouse import qualified_raw_table
    from bankflow.warehouses import connect_warehouse

    info: dict[str, Any] = {"type": resolved.spec.warehouse.type, "tables": {}}
    try:
        adapter = connect_warehouse(resolved)
    except Exception as exc:
        info["error"] = resolved.redact(str(exc).strip())
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


def collect_status(resolved: ResolvedSpec) -> dict[str, Any]:
    last_run_path = resolved.state_dir / "last_run.json"
    last_run = json.loads(last_run_path.read_text(encoding="utf-8")) if last_run_path.is_file() else None
    return {
        "pipeline": resolved.spec.name,
        "env": resolved.env,
        "engine": resolved.spec.cdc.engine,
        "source": _source_status(resolved),
        **resolved.spec.cdc.engine_for(resolved).status(),
        "lake": _lake_status(resolved),
        "warehouse": _warehouse_status(resolved),
        "last_run": None if last_run is None else {
            k: last_run.get(k) for k in ("run_id", "started_at", "ok", "seconds")
        } | {"stages": {s["name"]: {"ok": s["ok"], "seconds": round(s["seconds"], 2), "events": s["events"],
                                    "rows": s["rows"], "files": s["files"]} for s in last_run.get("stages", [])}},
    }


def format_status(status: dict[str, Any]) -> str:
    from bankflow.engines import ENGINES

    lines = [f"pipeline {status['pipeline']} (environment: {status['env'] or 'default'})"]
    source = status["source"]
    lines.append(f"  source     {'up' if source.get('up') else 'down'}"
                 + (f" ({source['server']})" if source.get("server") else "")
                 + (f"  error: {source['error']}" if source.get("error") else ""))
    slot = source.get("slot")
    if slot:
        lines.append(f"  slot       {slot['name']}: confirmed {slot['confirmed_flush_lsn']}, lag "
                     f"{slot['lag_bytes']:,} bytes, {'active' if slot['active'] else 'idle'}")
    elif source.get("up"):
        lines.append("  slot       not created yet")
    if status.get("engine") in ENGINES:
        lines.extend(ENGINES[status["engine"]].engine_class().format_status(status))
    lake = status["lake"]
    for name, info in lake.get("tables", {}).items():
        lines.append(f"  lake       {name}: {info['files']} file(s), {info['rows']:,} row(s)")
    if lake.get("error"):
        lines.append(f"  lake       {lake['url']}: {lake['error']}")
    if lake.get("dead_letter_files"):
        lines.append(f"  dead letters: {lake['dead_letter_files']} file(s)")
    for name, info in status["warehouse"].get("tables", {}).items():
        rows = "-" if info["rows"] is None else f"{info['rows']:,}"
        lines.append(f"  raw        {name}: {rows} row(s), {info['files_loaded']} file(s) loaded")
    if status["warehouse"].get("error"):
        lines.append(f"  warehouse  error: {status['warehouse']['error']}")
    run = status.get("last_run")
    if run:
        stages = ", ".join(f"{n} {s['seconds']}s" for n, s in run["stages"].items())
        lines.append(f"  last run   {run['started_at']} {'ok' if run['ok'] else 'FAILED'} ({stages})")
    else:
        lines.append("  last run   none")
    return "\n".join(lines)
