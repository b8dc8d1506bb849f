"""`status`: is everything up, how far behind is the slot, what is in the lake and in raw, how did the last run go."""

from __future__ import annotations

import datetime as dt
import json
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec

_RUN_STAGE_FIELDS = ("ok", "seconds", "events", "rows", "files")
RUN_STATE = "run_state.json"  # written by `bankflow run` every cycle (bankflow.runner)

SLOT_QUERY = (
    "SELECT active, confirmed_flush_lsn::text, restart_lsn::text, pg_current_wal_lsn()::text, "
    "pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, "
    "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, wal_status, safe_wal_size "
    "FROM pg_replication_slots WHERE slot_name = %s")


def read_slot(cursor: Any, name: str) -> dict[str, Any] | None:
    """The slot as `pg_replication_slots` has it (PostgreSQL >= 13), None when it does not exist; `status` and
    `run`'s metrics (bankflow.metrics.probe_slot) both read it here.

    lag_bytes: WAL past the confirmed position (changes not yet durable in the lake); retained_bytes: WAL the
    server keeps for the slot (past restart_lsn; None once the slot is lost); wal_status: reserved, extended,
    unreserved (past max_slot_wal_keep_size: safe_wal_size says how much more may be written before it is lost)
    or lost (invalidated: the WAL it needed is gone).
    """
    cursor.execute(SLOT_QUERY, (name,))
    row = cursor.fetchone()
    if row is None:
        return None
    active, confirmed, restart, current, lag, retained, wal_status, safe = row
    return {"name": name, "active": active, "confirmed_flush_lsn": confirmed, "restart_lsn": restart,
            "current_wal_lsn": current, "lag_bytes": lag, "retained_bytes": retained, "wal_status": wal_status,
            "safe_wal_size": safe}


def lost_slot_message(slot: str) -> str:
    """What to do about a slot PostgreSQL invalidated (status's attention and cdc's error say the same)."""
    return (f"slot {slot} was invalidated: WAL it needed was removed (max_slot_wal_keep_size); run "
            f"`bankflow down --drop-slot` and apply again: the tables are snapshotted again")


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
            info["slot"] = read_slot(cur, spec.cdc.slot)
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


class _Scan:
    """What status reads on the way that the document does not show: each lake file's oldest commit time and
    the ledger's keys, to tell which changes raw lacks and since when. None where it could not be read."""

    def __init__(self) -> None:
        self.lake: dict[str, dict[str, dt.datetime | None]] | None = {}
        self.ledger: dict[str, set[str]] | None = {}


def _lake_status(resolved: ResolvedSpec, scan: _Scan | None = None) -> dict[str, Any]:
    from bankflow.stages.load import lake_files

    scan = scan or _Scan()

    info: dict[str, Any] = {"url": resolved.spec.lake.url, "tables": {}}
    try:
        import pyarrow.parquet as pq

        from bankflow.lake.filesystem import lake_filesystem

        fs, root = lake_filesystem(resolved)
        lake_newest: dt.datetime | None = None
        for table in resolved.spec.tables:
            keys = lake_files(resolved, table)
            rows = 0
            newest: dt.datetime | None = None
            oldest: dict[str, dt.datetime | None] = {}
            for key in keys:
                with fs.open(f"{root.rstrip('/')}/{key}", "rb") as handle:
                    metadata = pq.ParquetFile(handle).metadata
                rows += metadata.num_rows
                oldest[key], file_newest = commit_range(metadata)
                newest = _later(newest, file_newest)
            if scan.lake is not None:
                scan.lake[table.name] = oldest
            info["tables"][table.name] = {"files": len(keys), "rows": rows, "newest_commit": _iso(newest)}
            lake_newest = _later(lake_newest, newest)
        info["newest_commit"] = _iso(lake_newest)
        from bankflow.deadletters import DeadLetters

        info["dead_letters"] = {t: p.to_dict() for t, p in sorted(DeadLetters(resolved).pending().items())}
    except Exception as exc:
        info["error"] = _error(resolved, exc)
        scan.lake = None
    return info


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _later(a: dt.datetime | None, b: dt.datetime | None) -> dt.datetime | None:
    return b if a is None else a if b is None else max(a, b)


def parse_time(value: Any) -> dt.datetime | None:
    """An ISO-8601 string (or datetime) as an aware UTC datetime; None for null or anything unreadable."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, dt.datetime):
        return None
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


def commit_range(metadata: Any) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The oldest and newest `_source_ts` (source commit time) in a Parquet footer's row-group statistics: no
    data is read."""
    names = metadata.schema.names
    if "_source_ts" not in names:
        return None, None
    index = names.index("_source_ts")
    oldest = newest = None
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(index).statistics
        if stats is not None and stats.has_min_max:
            low, high = parse_time(stats.min), parse_time(stats.max)
            oldest = low if oldest is None or (low is not None and low < oldest) else oldest
            newest = _later(newest, high)
    return oldest, newest


def _warehouse_status(resolved: ResolvedSpec, scan: _Scan | None = None) -> dict[str, Any]:
    from bankflow.render.warehouse import qualified_raw_table
    from bankflow.warehouses import connect_warehouse

    scan = scan or _Scan()
    info: dict[str, Any] = {"type": resolved.spec.warehouse.type, "tables": {}}
    try:
        adapter = connect_warehouse(resolved)
    except Exception as exc:
        info["error"] = _error(resolved, exc)
        scan.ledger = None
        return info
    try:
        for table in resolved.spec.tables:
            try:
                rows = adapter.query(f"SELECT count(*) FROM {qualified_raw_table(resolved, table)}")[0][0]
                keys = adapter.ledger_keys(table)
            except Exception:
                rows, keys = None, set()
                scan.ledger = None
            if scan.ledger is not None:
                scan.ledger[table.name] = keys
            info["tables"][table.raw_name] = {"rows": rows, "files_loaded": len(keys)}
        try:  # the ledger's newest entry: when a load last brought files in (apply users have no run_state.json)
            info["last_loaded_at"] = _iso(parse_time(
                adapter.query(f"SELECT max(loaded_at) FROM {adapter.dialect.ledger_table()}")[0][0]))
        except Exception:
            info["last_loaded_at"] = None
    finally:
        adapter.close()
    return info


def _stage_summary(stage: dict[str, Any]) -> dict[str, Any]:
    summary = {k: stage.get(k) for k in _RUN_STAGE_FIELDS}
    if isinstance(summary["seconds"], (int, float)):
        summary["seconds"] = round(summary["seconds"], 2)
    return summary


def _last_run(resolved: ResolvedSpec) -> dict[str, Any] | None:
    """The last run's summary from `<state_dir>/last_run.json`; None before the first run. Each stage says when
    it started (the run's start plus the stages before it), for raw and mart age."""
    path = resolved.state_dir / "last_run.json"
    try:
        if not path.is_file():
            return None
        run = json.loads(path.read_text(encoding="utf-8"))
        stages = [s for s in run.get("stages") or [] if isinstance(s, dict)]
        summary = {k: run.get(k) for k in ("run_id", "started_at", "ok", "seconds")} | {"stages": {
            str(s.get("name")): _stage_summary(s) for s in stages}}
        at = parse_time(run.get("started_at"))
        started: dict[str, str] = {}
        for stage in stages:
            if at is not None:
                started[str(stage.get("name"))] = at.isoformat()
                seconds = stage.get("seconds")
                at += dt.timedelta(seconds=seconds if isinstance(seconds, (int, float)) else 0)
        return summary | {"stage_started_at": started}
    except (OSError, ValueError, AttributeError, TypeError) as exc:  # unreadable, not JSON, not the shape we write
        return {"error": f"cannot read {path}: {_error(resolved, exc)}"}


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except OSError:
        return False
    return True


def _run_state(resolved: ResolvedSpec) -> dict[str, Any] | None:
    """`<state_dir>/run_state.json` of `bankflow run`, with whether that process is still running; None when no
    run ever wrote one."""
    path = resolved.state_dir / RUN_STATE
    try:
        if not path.is_file():
            return None
        state = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(state, dict):
            raise TypeError("not a JSON object")
    except (OSError, ValueError, TypeError) as exc:
        return {"error": f"cannot read {path}: {_error(resolved, exc)}"}
    state["running"] = not state.get("stopped_at") and _pid_alive(state.get("pid"))
    return state


def _stage_ok_at(run: dict[str, Any] | None, stage: str) -> dt.datetime | None:
    """When `stage` of the last apply started, if it succeeded."""
    info = ((run or {}).get("stages") or {}).get(stage) or {}
    return parse_time(((run or {}).get("stage_started_at") or {}).get(stage)) if info.get("ok") else None


def _freshness(status: dict[str, Any], scan: _Scan, now: dt.datetime) -> dict[str, Any]:
    """Lag, raw age and mart age in seconds.

    lag: now - the newest commit in the lake while the slot has WAL the lake has not read (0 when it has none).
    raw age: how long raw has lacked a change. 0 when it lacks none (every lake file loaded, no lag), so an idle
    source is not stale; else since the last successful load or, when later, since the oldest change raw lacks
    was committed (the oldest commit in a lake file not loaded yet; the lake's newest when only the slot has it).
    The last successful load is the newest that `run`'s state file, the last apply and the ledger know of.
    mart age: since the last successful transform (state file or last apply).
    """
    state = status.get("run") or {}
    if state.get("error"):
        state = {}
    run = status.get("last_run")
    loaded = max(filter(None, (parse_time(state.get("last_successful_load_at")), _stage_ok_at(run, "load"),
                                parse_time(status["warehouse"].get("last_loaded_at")))), default=None)
    transformed = max(filter(None, (parse_time(state.get("last_successful_transform_at")),
                                    _stage_ok_at(run, "transform"))), default=None)
    lake_newest = _later(parse_time(status["lake"].get("newest_commit")), parse_time(state.get("lake_newest_commit")))
    lag_bytes = (status["source"].get("slot") or {}).get("lag_bytes")
    if lag_bytes is not None and lag_bytes <= 0:  # nothing the lake lacks: not behind, however old its data
        lag: float | None = 0.0
    elif lag_bytes is None or lake_newest is None:
        lag = None
    else:  # an upper bound: the oldest change not yet read committed after the lake's newest one
        lag = max((now - lake_newest).total_seconds(), 0.0)

    pending: int | None = None
    lacking_since: dt.datetime | None = None  # the oldest commit raw lacks, when known
    if scan.lake is not None and scan.ledger is not None:
        waiting = [oldest for table, files in scan.lake.items() for key, oldest in files.items()
                   if key not in scan.ledger.get(table, set())]
        pending = len(waiting)
        commits = [c for c in waiting if c is not None]
        if commits:
            lacking_since = min(commits)
        elif not waiting and lag and lake_newest is not None:
            lacking_since = lake_newest
    behind_since = loaded if lacking_since is None else _later(loaded, lacking_since)
    if pending == 0 and lag == 0:
        raw_age: float | None = 0.0  # raw has every change there is
    else:
        raw_age = None if behind_since is None else max((now - behind_since).total_seconds(), 0.0)

    def age(ts: dt.datetime | None) -> float | None:
        return None if ts is None else round(max((now - ts).total_seconds(), 0.0), 3)

    return {"last_successful_load_at": _iso(loaded), "raw_age_seconds": None if raw_age is None else round(raw_age, 3),
            "lake_files_not_loaded": pending, "last_successful_transform_at": _iso(transformed),
            "mart_age_seconds": age(transformed), "lake_newest_commit": _iso(lake_newest),
            "lag_seconds": None if lag is None else round(lag, 3),
            "raw_newest_commit": state.get("raw_newest_commit") or {}, "marts_as_of": state.get("marts_as_of")}


def collect_status(resolved: ResolvedSpec) -> dict[str, Any]:
    """The status document (`status --json` prints it): every part says what it could not reach, nothing raises.
    `attention` lists what needs a person; `status` exits non-zero when it is not empty."""
    engine = resolved.spec.cdc.engine_for(resolved)
    scan = _Scan()
    status = {
        "pipeline": resolved.spec.name,
        "env": resolved.env,
        "engine": resolved.spec.cdc.engine,
        "source": _source_status(resolved),
        **engine.status(),
        "lake": _lake_status(resolved, scan),
        "warehouse": _warehouse_status(resolved, scan),
        "last_run": _last_run(resolved),
        "run": _run_state(resolved),
    }
    status["freshness"] = _freshness(status, scan, dt.datetime.now(dt.timezone.utc))
    status["attention"] = _attention(resolved, status) + engine.needs_attention(status)
    status["warnings"] = _warnings(status)
    return status


def _seconds(value: float) -> str:
    return f"{value:,.1f} s" if value < 600 else f"{value:,.0f} s ({value / 3600:.1f} h)"


def _thresholds(resolved: ResolvedSpec, status: dict[str, Any]) -> list[str]:
    """The spec's `monitor:` thresholds that are breached, each with what was measured and the field to change."""
    monitor = resolved.spec.monitor
    fresh = status["freshness"]
    found = []
    lag = fresh.get("lag_seconds")
    if monitor.max_lag_seconds is not None and lag is not None and lag > monitor.max_lag_seconds:
        found.append(f"the lake is {_seconds(lag)} behind the source (its newest commit {fresh['lake_newest_commit']}"
                     f" while the slot has unread WAL), over monitor.max_lag_seconds {monitor.max_lag_seconds:g}")
    raw_age = fresh.get("raw_age_seconds")
    if monitor.max_raw_age_seconds is not None:
        waiting = fresh.get("lake_files_not_loaded")
        if raw_age is None:
            found.append(f"raw was never loaded successfully (monitor.max_raw_age_seconds "
                         f"{monitor.max_raw_age_seconds:g})")
        elif raw_age > monitor.max_raw_age_seconds:
            found.append(f"raw is {_seconds(raw_age)} behind (last successful load "
                         f"{fresh['last_successful_load_at'] or 'never'}"
                         + (f"; {waiting:,} lake file(s) not loaded yet" if waiting else "")
                         + f"), over monitor.max_raw_age_seconds {monitor.max_raw_age_seconds:g}")
    mart_age = fresh.get("mart_age_seconds")
    if monitor.max_mart_age_seconds is not None and resolved.spec.transform is not None:
        if mart_age is None:
            found.append(f"the marts were never built successfully (monitor.max_mart_age_seconds "
                         f"{monitor.max_mart_age_seconds:g})")
        elif mart_age > monitor.max_mart_age_seconds:
            found.append(f"the marts were last built {_seconds(mart_age)} ago "
                         f"({fresh['last_successful_transform_at']}), over monitor.max_mart_age_seconds "
                         f"{monitor.max_mart_age_seconds:g}")
    return found


def _warnings(status: dict[str, Any]) -> list[str]:
    """What a person should know but that does not fail `status`: a slot close to its WAL cap, a run that ended
    without stopping cleanly."""
    found = []
    slot = status["source"].get("slot") or {}
    if slot.get("wal_status") == "unreserved":
        safe = slot.get("safe_wal_size")
        found.append(f"slot {slot['name']} retains more WAL than max_slot_wal_keep_size allows: "
                     + (f"{safe:,} more bytes of WAL and it is invalidated" if isinstance(safe, int) and safe >= 0
                        else "the next checkpoint may invalidate it")
                     + " (start the stream: bankflow run or apply)")
    elif (isinstance(slot.get("safe_wal_size"), int) and isinstance(slot.get("retained_bytes"), int)
          and slot["retained_bytes"] > slot["safe_wal_size"] >= 0):  # over half way to the cap
        found.append(f"slot {slot['name']} retains {slot['retained_bytes']:,} bytes of WAL: "
                     f"{slot['safe_wal_size']:,} more and max_slot_wal_keep_size invalidates it "
                     "(start the stream: bankflow run or apply)")
    run = status.get("run") or {}
    if run and not run.get("error") and not run.get("running") and not run.get("stopped_at"):
        found.append(f"bankflow run (pid {run.get('pid')}) is gone without stopping cleanly (last update "
                     f"{run.get('updated_at')})")
    return found


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
    if slot.get("wal_status") == "lost":
        found.append(lost_slot_message(slot["name"]))
    threshold = resolved.spec.cdc.max_lag_bytes
    if threshold is not None and (slot.get("lag_bytes") or 0) > threshold:
        found.append(f"slot {slot['name']} retains {slot['lag_bytes']:,} bytes of WAL, over cdc.max_lag_bytes "
                     f"{threshold:,}")
    letters = status["lake"].get("dead_letters") or {}
    allowed = resolved.spec.monitor.max_dead_letters
    if allowed is None:  # any pending dead letter needs a person
        for table, entry in letters.items():
            found.append(f"{entry['events']:,} dead letter(s) of {table} pending (bankflow deadletters … list)")
    elif (total := sum(entry["events"] for entry in letters.values())) > allowed:
        tables = ", ".join(f"{table} {entry['events']:,}" for table, entry in letters.items())
        found.append(f"{total:,} dead letter(s) pending ({tables}), over monitor.max_dead_letters {allowed:,} "
                     f"(bankflow deadletters … list)")
    found += _thresholds(resolved, status)
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
        retained = slot.get("retained_bytes")
        lag = slot.get("lag_bytes")
        lines.append(f"  slot       {slot['name']}: confirmed {slot['confirmed_flush_lsn']}, lag "
                     f"{'-' if lag is None else f'{lag:,}'} bytes, "
                     + (f"retains {retained:,} bytes of WAL, " if retained is not None else "")
                     + f"{'active' if slot['active'] else 'idle'}"
                     + (f", wal_status {slot['wal_status']}" if slot.get("wal_status") else ""))
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


def _ago(value: Any, now: dt.datetime) -> str:
    ts = parse_time(value)
    return "never" if ts is None else f"{_seconds(max((now - ts).total_seconds(), 0.0))} ago"


def _live_run_lines(state: dict[str, Any] | None) -> list[str]:
    """`bankflow run`'s own line, from its state file: running or not, its last load and transform."""
    if not state:
        return []
    if state.get("error"):
        return [f"  run        {state['error']}"]
    now = dt.datetime.now(dt.timezone.utc)
    if state.get("running"):
        head = f"running (pid {state.get('pid')}) since {state.get('started_at')}"
    elif state.get("stopped_at"):
        head = f"stopped at {state.get('stopped_at')}"
    else:
        head = f"not running (pid {state.get('pid')} is gone; last update {state.get('updated_at')})"
    parts = [head]
    load = state.get("last_load") or {}
    if load:
        parts.append(f"last load {'ok' if load.get('ok') else 'FAILED'} {_ago(load.get('at'), now)}"
                     + (f" ({load['rows']:,} rows)" if isinstance(load.get("rows"), int) else ""))
    transform = state.get("last_transform") or {}
    if transform:
        parts.append(f"last transform {'ok' if transform.get('ok') else 'FAILED'} {_ago(transform.get('at'), now)}")
    return ["  run        " + "; ".join(parts)]


def _freshness_lines(fresh: dict[str, Any] | None) -> list[str]:
    if not fresh:
        return []
    raw = fresh.get("raw_age_seconds")
    parts = ["raw " + ("unknown" if raw is None else "current" if raw == 0 else f"{_seconds(raw)} behind")
             + (f" ({fresh['lake_files_not_loaded']:,} lake file(s) not loaded)"
                if fresh.get("lake_files_not_loaded") else "")]
    marts = fresh.get("mart_age_seconds")
    parts.append(f"marts built {'never' if marts is None else _seconds(marts) + ' ago'}")
    lag = fresh.get("lag_seconds")
    parts.append(f"lag {'unknown' if lag is None else _seconds(lag)}"
                 + (f" (lake's newest commit {fresh['lake_newest_commit']})" if fresh.get("lake_newest_commit")
                    else ""))
    return ["  freshness  " + ", ".join(parts)]


def format_status(status: dict[str, Any]) -> str:
    """The document as `bankflow status` prints it: one line per part, each saying what it could not reach."""
    lines = [f"pipeline {status['pipeline']} (environment: {status['env'] or 'default'})",
             *_source_lines(status["source"]),
             *_engine_lines(status),
             *_lake_lines(status["lake"]),
             *_warehouse_lines(status["warehouse"]),
             *_run_lines(status.get("last_run")),
             *_live_run_lines(status.get("run")),
             *_freshness_lines(status.get("freshness"))]
    lines += [f"warning: {item}" for item in status.get("warnings") or []]
    attention = status.get("attention") or []
    lines += [f"needs attention: {item}" for item in attention] or ["needs attention: nothing"]
    return "\n".join(lines)
