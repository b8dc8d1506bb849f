"""The long-running process's Transformer, on the banking dbt project over a real DuckDB raw change log.

- one Transformer reused for several cycles, each told which raw tables changed, builds exactly what a fresh,
  full transform (`bankflow apply`'s stage) builds after every cycle, with fewer dbt nodes run;
- a cycle with nothing new in raw runs no dbt at all and says it was skipped;
- a project file added or edited between cycles is parsed again and built.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from bankflow.errors import StageError
from bankflow.spec.loader import ResolvedSpec, load_spec
from bankflow.stages import transform as transform_stage
from bankflow.stages.base import Progress, RunContext
from bankflow.stages.transform import Transformer
from tests.fixtures import raw_banking
from tests.fixtures.banking_spec import banking_spec_text

pytestmark = pytest.mark.integration

duckdb = pytest.importorskip("duckdb")
pytest.importorskip("dbt.adapters.duckdb")

REPO = Path(__file__).resolve().parents[2]
# Snapshot bookkeeping stamped with the wall clock (a hard delete's record: valid from the snapshot run that saw
# it) or derived from it, also as the dimensions name it: left out; a validity end is compared as "is it open".
CLOCK_COLUMNS = {"dbt_scd_id", "dbt_updated_at", "dbt_valid_from", "customer_version_key", "account_version_key",
                 "valid_from"}
OPEN_ENDED = {"dbt_valid_to", "valid_to"}


PROJECT = REPO / "banking_dbt"


def banking(state: Path, project: Path = PROJECT) -> ResolvedSpec:
    """pipelines/banking.yaml (local) with its state in `state` and its dbt project at `project`."""
    state.mkdir(parents=True, exist_ok=True)
    spec = state / "banking.yaml"
    spec.write_text(banking_spec_text(project=project), encoding="utf-8")
    return load_spec(spec, env="local", environ={"BANKFLOW_STATE_DIR": str(state)})


def database(resolved: ResolvedSpec) -> Path:
    return resolved.resolve_path(resolved.spec.warehouse.path)


def flush(log: raw_banking.RawBankingLog, resolved: ResolvedSpec) -> set[str]:
    """Write the pending raw events; the raw tables that got rows (what `bankflow run` passes on)."""
    database(resolved).parent.mkdir(parents=True, exist_ok=True)
    return {table for table, count in log.flush(database(resolved)).items() if count}


def marts(resolved: ResolvedSpec) -> dict[str, list[tuple[Any, ...]]]:
    """Every table and view dbt built (any schema but raw), rows sorted, clock columns left out."""
    con = duckdb.connect(str(database(resolved)), read_only=True)
    try:
        names = con.execute("select table_schema, table_name from information_schema.tables "
                            "where table_schema not in ('raw', 'information_schema', 'pg_catalog') "
                            "order by 1, 2").fetchall()
        out = {}
        for schema, name in names:
            columns = [r[0] for r in con.execute(
                "select column_name from information_schema.columns where table_schema = ? "
                "and table_name = ? order by ordinal_position", [schema, name]).fetchall()]
            exprs = [f'"{c}" is null' if c in OPEN_ENDED else f'"{c}"' for c in columns
                     if c not in CLOCK_COLUMNS]
            rows = con.execute(f'select {", ".join(exprs)} from "{schema}"."{name}"').fetchall()
            out[f"{schema}.{name}"] = sorted(rows, key=repr)
        assert len(out) >= 10, out.keys()  # staging, history, snapshots, marts
        return out
    finally:
        con.close()


def customer_update(log: raw_banking.RawBankingLog) -> None:
    with log.transaction():
        log.update_customer(sorted(log.rows["customers"])[0], last_name="Cycle-Two")


def one_deposit(log: raw_banking.RawBankingLog) -> None:
    with log.transaction():
        log.deposit(log.open_accounts()[0], 4_321)


def delete_and_more(log: raw_banking.RawBankingLog) -> None:
    raw_banking.build_more(log)  # an update, a delete, a new account, transfers, random activity


def test_a_reused_transformer_builds_what_fresh_full_runs_build(tmp_path: Path) -> None:
    reused, fresh = banking(tmp_path / "reused"), banking(tmp_path / "fresh")
    logs = [raw_banking.RawBankingLog(seed=7), raw_banking.RawBankingLog(seed=7)]
    for log in logs:
        raw_banking.build_initial(log)
    changed_first = flush(logs[0], reused)
    flush(logs[1], fresh)
    transformer = Transformer(reused)
    ctx, fresh_ctx = RunContext(reused, Progress(False)), RunContext(fresh, Progress(False))
    try:
        first = transformer.run(ctx, changed_first)
        assert "skipped" not in first.details and first.details["parse_seconds"] > 0
        full_nodes = first.rows  # a Transformer's first cycle selects everything
        transform_stage.run(fresh_ctx)
        assert marts(reused) == marts(fresh)

        for change in (customer_update, one_deposit, delete_and_more):
            change(logs[0])
            change(logs[1])
            changed = flush(logs[0], reused)
            flush(logs[1], fresh)
            cycle = transformer.run(ctx, changed)
            assert "parse_seconds" not in cycle.details  # the manifest was reused
            assert cycle.details["changed_tables"] == sorted(changed)
            transform_stage.run(fresh_ctx)
            assert marts(reused) == marts(fresh), f"after {change.__name__}"
            if changed == {"customers"}:
                assert 0 < cycle.rows < full_nodes  # only what is downstream of raw.customers
                assert all("source:raw.customers+" in " ".join(s["select"]) for s in cycle.details["steps"])
        # the reused warehouse really moved: build_more's customer update is current
        con = duckdb.connect(str(database(reused)), read_only=True)
        try:
            names = {r[0] for r in con.execute(
                "select last_name from analytics.dim_customers where is_current and not is_deleted").fetchall()}
        finally:
            con.close()
        assert "Changed-Name" in names
    finally:
        transformer.close()


def test_partial_parsing_is_kept_for_the_next_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new Transformer (as a new process would make) parses from the state dir's partial-parse file, even
    when the environment says DBT_PARTIAL_PARSE=false."""
    resolved = banking(tmp_path / "state")
    log = raw_banking.RawBankingLog(seed=19)
    raw_banking.build_initial(log)
    flush(log, resolved)
    first = Transformer(resolved)
    try:
        first.run(RunContext(resolved, Progress(False)))
    finally:
        first.close()
    assert (resolved.state_dir / "dbt" / "target" / "partial_parse.msgpack").is_file()
    dbt_log = resolved.state_dir / "dbt" / "logs" / "dbt.log"
    before = dbt_log.read_text(encoding="utf-8", errors="replace")
    monkeypatch.setenv("DBT_PARTIAL_PARSE", "false")
    second = Transformer(resolved)
    try:
        assert second.run(RunContext(resolved, Progress(False)), set()).ok  # a first cycle: everything
    finally:
        second.close()
    new_lines = dbt_log.read_text(encoding="utf-8", errors="replace")[len(before):]
    assert "Partial parsing enabled, no changes found, skipping parsing" in new_lines
    assert "Unable to do partial parsing" not in new_lines


def test_a_cycle_with_nothing_new_runs_no_dbt(tmp_path: Path) -> None:
    resolved = banking(tmp_path / "state")
    log = raw_banking.RawBankingLog(seed=11)
    raw_banking.build_initial(log)
    flush(log, resolved)
    transformer = Transformer(resolved)
    ctx = RunContext(resolved, Progress(False))
    try:
        assert "skipped" not in transformer.run(ctx).details
        results = resolved.state_dir / "dbt" / "target" / "run_results.json"
        before = results.stat().st_mtime_ns
        started = time.monotonic()
        idle = transformer.run(ctx, set())
        assert time.monotonic() - started < 0.5
        assert idle.ok and idle.rows == 0 and "steps" not in idle.details
        assert idle.details["skipped"] == "no new rows in raw since the last transform"
        assert results.stat().st_mtime_ns == before  # dbt did not run
        # a raw table no dbt source reads: nothing to do either
        assert "no dbt source reads" in transformer.run(ctx, {"not_a_source"}).details["skipped"]
        # and after a real change, dbt runs again
        one_deposit(log)
        again = transformer.run(ctx, flush(log, resolved))
        assert "skipped" not in again.details and again.rows > 0
    finally:
        transformer.close()


def test_a_failed_cycle_keeps_its_tables_pending(tmp_path: Path) -> None:
    """A cycle whose test fails raises; the next cycle, told of nothing new, still runs what failed."""
    resolved = banking(tmp_path / "state")
    log = raw_banking.RawBankingLog(seed=13)
    raw_banking.build_initial(log)
    flush(log, resolved)
    transformer = Transformer(resolved)
    ctx = RunContext(resolved, Progress(False))
    try:
        transformer.run(ctx)
        orphan = {c: None for c, _ in raw_banking.COLUMNS["transactions"]}
        orphan.update(id=999_999, account_id=987_654, txn_type="DEPOSIT", amount=raw_banking.money(100),
                      status="COMPLETED", created_at=log.clock)
        log.inject("transactions", "c", orphan)
        with pytest.raises(StageError, match=r"dbt tests failed: .*orphan"):
            transformer.run(ctx, flush(log, resolved))
        with pytest.raises(StageError, match="dbt tests failed"):
            transformer.run(ctx, set())  # not skipped: transactions are still pending
    finally:
        transformer.close()


PROBE = "{{{{ config(materialized='table') }}}}\nselect {n} as n from {{{{ ref('stg_customers') }}}}\n"


def test_a_project_file_edited_between_cycles_is_seen(tmp_path: Path) -> None:
    project = tmp_path / "banking_dbt"
    shutil.copytree(PROJECT, project, ignore=shutil.ignore_patterns("target", "logs", ".*"))
    resolved = banking(tmp_path / "state", project)
    log = raw_banking.RawBankingLog(seed=17)
    raw_banking.build_initial(log)
    flush(log, resolved)
    transformer = Transformer(resolved)
    ctx = RunContext(resolved, Progress(False))
    probe = project / "models" / "marts" / "cycle_probe.sql"

    def probe_value() -> int:
        con = duckdb.connect(str(database(resolved)), read_only=True)
        try:
            return int(con.execute("select n from analytics.cycle_probe").fetchone()[0])
        finally:
            con.close()

    try:
        transformer.run(ctx)
        assert transformer.run(ctx, set()).details.get("skipped")
        probe.write_text(PROBE.format(n="count(*)"), encoding="utf-8")
        added = transformer.run(ctx, set())  # nothing new in raw, but the project changed: parse, run all
        assert "skipped" not in added.details and added.details["parse_seconds"] > 0
        assert probe_value() == len(log.versions["customers"])  # every customer, deleted ones flagged
        probe.write_text(PROBE.format(n="1000 + count(*)"), encoding="utf-8")
        edited = transformer.run(ctx, set())
        assert edited.details["parse_seconds"] > 0
        assert probe_value() == 1000 + len(log.versions["customers"])
        assert transformer.run(ctx, set()).details.get("skipped")  # parsed, built: idle again
    finally:
        transformer.close()


def test_a_narrowed_cycle_checks_uniqueness_on_the_keys_it_wrote(tmp_path: Path) -> None:
    """`bankflow_unique` in a cycle narrowed to what changed compares the keys the model's latest build wrote
    with all its rows (a semi-join, not a hash aggregation of 10M keys); a full run compares every row."""
    from dbt.cli.main import dbtRunner

    resolved = banking(tmp_path / "state")
    log = raw_banking.RawBankingLog(seed=11)
    raw_banking.build_initial(log)
    flush(log, resolved)
    transformer = Transformer(resolved)
    ctx = RunContext(resolved, Progress(False))
    try:
        transformer.run(ctx, None)
        one_deposit(log)
        transformer.run(ctx, flush(log, resolved))
        transformer.resolved.spec.warehouse.release_dbt()

        def copy_a_row(newest: bool) -> int:
            con = duckdb.connect(str(database(resolved)))
            try:
                order = "desc" if newest else "asc"
                row = con.execute("select id from analytics.fact_transactions "
                                  f"order by _bankflow_load_seq {order}, id limit 1").fetchone()
                con.execute("insert into analytics.fact_transactions select * from analytics.fact_transactions "
                            "where id = ?", [row[0]])
                return int(row[0])
            finally:
                con.close()

        def unique_test_passes(changed_only: bool) -> bool:
            runner = dbtRunner(manifest=transformer.manifest)
            args = transformer._dbt_args("test", ["fact_transactions,test_name:bankflow_unique"],
                                         changed_only=changed_only)
            outcome = runner.invoke(args)
            transformer.resolved.spec.warehouse.release_dbt()
            statuses = {str(r.status) for r in outcome.result.results}
            assert statuses, "the selection ran no test"
            return bool(outcome.success)

        assert unique_test_passes(changed_only=True) and unique_test_passes(changed_only=False)
        copy_a_row(newest=False)  # a duplicate of a leg the latest build did not write
        assert unique_test_passes(changed_only=True)  # not the narrowed test's business
        assert not unique_test_passes(changed_only=False)  # the full one sees it
        copy_a_row(newest=True)  # a duplicate of a leg the latest build wrote
        assert not unique_test_passes(changed_only=True)
    finally:
        transformer.close()
