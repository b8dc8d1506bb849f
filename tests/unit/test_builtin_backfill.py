"""The built-in engine's backfill bookkeeping, no server: which tables need one (coverage markers per
snapshot_mode), requests, and the `--where` guard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fsspec
import pytest

from bankflow.engines.builtin.backfill import parse_watermark, watermark
from bankflow.source.backfill import Coverage, WhereRefused, checked_where, covered, plan, request
from bankflow.spec.loader import ResolvedSpec, load_spec

SPEC = """\
version: 1
name: bf
state_dir: state
source: {{database: db, schema: s}}
tables:
{tables}cdc: {{slot: sl, publication: pub, snapshot_mode: {mode}}}
lake: {{url: file://lake}}
warehouse: {{type: duckdb, path: wh.duckdb}}
"""

TABLE = "  - {{name: {name}, primary_key: [id], columns: [{{name: id, type: bigint, nullable: false}}]}}\n"


def spec(tmp_path: Path, *tables: str, mode: str = "initial") -> ResolvedSpec:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.format(tables="".join(TABLE.format(name=t) for t in tables), mode=mode))
    return load_spec(path, environ={})


@pytest.fixture
def coverage(tmp_path: Path) -> Coverage:
    return Coverage(fsspec.filesystem("file"), str(tmp_path / "lake"), "sl")


def states(coverage: Coverage) -> dict[str, Any]:
    return {t: (coverage.read(t) or {}).get("state") for t in coverage.tables()}


def test_a_table_without_a_marker_is_backfilled_and_a_removed_one_forgotten(tmp_path: Path,
                                                                            coverage: Coverage) -> None:
    coverage.write("a", covered("a", 100, "initial snapshot"))
    coverage.write("gone", covered("gone", 100, "initial snapshot"))
    todo = plan(spec(tmp_path, "a", "b"), coverage, fresh_slot=False, position=200, has_files=lambda t: True)
    assert [r["table"] for r in todo] == ["b"]
    assert todo[0]["reason"] == "new to the spec"
    assert states(coverage) == {"a": "covered", "b": "backfilling"}  # gone's marker is removed
    again = plan(spec(tmp_path, "a", "b"), coverage, fresh_slot=False, position=300, has_files=lambda t: True)
    assert [r["id"] for r in again] == [todo[0]["id"]]  # an unfinished backfill resumes, same id


@pytest.mark.parametrize("mode", ["no_data", "never"])
def test_without_a_snapshot_mode_new_tables_only_stream(tmp_path: Path, coverage: Coverage, mode: str) -> None:
    coverage.write("a", covered("a", 100, "stream only"))
    assert plan(spec(tmp_path, "a", "b", mode=mode), coverage, fresh_slot=False, position=200,
                has_files=lambda t: False) == []
    marker = coverage.read("b")
    assert marker is not None and marker["state"] == "covered" and marker["since_lsn"] == 200


def test_always_backfills_every_table_at_every_start_but_not_after_the_initial_snapshot(
        tmp_path: Path, coverage: Coverage) -> None:
    resolved = spec(tmp_path, "a", "b", mode="always")
    coverage.cover_all(list(resolved.spec.tables), 100, "initial snapshot")
    assert plan(resolved, coverage, fresh_slot=True, position=100, has_files=lambda t: True) == []
    todo = plan(resolved, coverage, fresh_slot=False, position=200, has_files=lambda t: True)
    assert sorted(r["table"] for r in todo) == ["a", "b"]
    assert todo[0]["previous"]["how"] == "initial snapshot"


def test_slots_older_than_the_markers_keep_tables_with_data(tmp_path: Path, coverage: Coverage) -> None:
    todo = plan(spec(tmp_path, "old", "new"), coverage, fresh_slot=False, position=5,
                has_files=lambda t: t.name == "old")
    assert [r["table"] for r in todo] == ["new"]
    assert (coverage.read("old") or {})["how"].startswith("assumed")


def test_a_request_replaces_an_unfinished_backfill_and_keeps_what_covered_the_table(
        tmp_path: Path, coverage: Coverage) -> None:
    resolved = spec(tmp_path, "a")
    coverage.write("a", covered("a", 100, "initial snapshot"))
    first = request(coverage, resolved.spec.tables[0], "id > 5")
    second = request(coverage, resolved.spec.tables[0], None)
    assert first["where"] == "id > 5" and second["where"] is None
    assert second["previous"]["since_lsn"] == 100
    assert (coverage.read("a") or {})["id"] == second["id"]


def test_watermarks_round_trip_and_foreign_messages_are_ignored() -> None:
    text = watermark("run", "bf", 3, "low")
    assert parse_watermark(text.encode()) == {"run": "run", "backfill": "bf", "chunk": 3, "mark": "low"}
    assert parse_watermark(b"not json") is None
    assert parse_watermark(b"[1]") is None


@pytest.mark.parametrize("where", ["id > 5", "id BETWEEN 1 AND 9 OR label IS NULL", "NOT (id = 3)",
                                   "created_at >= '2024-01-01'", "id IN (SELECT id FROM s.other)",
                                   "EXISTS (SELECT 1 FROM s.other o WHERE o.id = id)", "true"])
def test_where_accepts_conditions(where: str) -> None:
    assert checked_where(where)


@pytest.mark.parametrize("where", ["", "  ", "id", "1", "(SELECT 1)", "1; DROP TABLE s.t", "id > 1; SELECT 1",
                                   "DELETE FROM s.t", "pg_logical_emit_message(true, 'p', 'c') IS NULL",
                                   "id IN (SELECT id FROM s.t FOR UPDATE)", "pg_read_file('/etc/passwd') = 'x'",
                                   "id > (SELECT nextval('seq'))", "id = ) 1 ("])
def test_where_refuses_what_is_not_a_read_only_condition(where: str) -> None:
    with pytest.raises(WhereRefused):
        checked_where(where)


def test_what_runs_is_the_parsed_condition_so_a_comment_cannot_swallow_the_rest() -> None:
    assert checked_where("id = 1 -- ) OR (true") == "id = 1"
    assert checked_where("id = 1 /* x */ AND note = 'a'") == "id = 1 AND note = 'a'"


def test_backfill_help_names_the_where_option(capsys: pytest.CaptureFixture[str]) -> None:
    from bankflow.cli import main

    with pytest.raises(SystemExit) as done:
        main(["backfill", "--help"])
    assert done.value.code == 0
    assert "--where" in capsys.readouterr().out


def test_debezium_signal_names_escaped_tables_and_checked_conditions(tmp_path: Path) -> None:
    """The execute-snapshot signal: tables as Debezium's regexes (escaped), each --where as an additional
    condition after the same check as the built-in engine's (a statement is refused before anything is sent)."""
    from bankflow.engines.debezium.backfill import signal_data
    from bankflow.source.backfill import WhereRefused

    resolved = _debezium_spec(tmp_path)
    data = signal_data(resolved, [{"table": "items", "where": "id > 5"}, {"table": "items", "where": None}])
    assert data == {"data-collections": ["shop\\.items", "shop\\.items"], "type": "incremental",
                    "additional-conditions": [{"data-collection": "shop.items", "filter": "id > 5"}]}
    with pytest.raises(WhereRefused):
        signal_data(resolved, [{"table": "items", "where": "1; DROP TABLE app.items"}])


def test_debezium_notifications_tell_a_backfill_running_done_or_aborted() -> None:
    from bankflow.engines.debezium.backfill import backfill_state

    def note(kind: str, signal: str = "s1", **extra: str) -> dict[str, object]:
        return {"id": signal, "aggregate_type": "Incremental Snapshot", "type": kind, "additional_data": extra}

    notes = [{"id": "x", "aggregate_type": "Initial Snapshot", "type": "COMPLETED"}, note("STARTED"),
             note("IN_PROGRESS", current_collection_in_progress="app.items", last_processed_key="200",
                  maximum_key="1500")]
    assert backfill_state(notes, "s1")["state"] == "running"
    assert backfill_state(notes, "s1")["progress"] == "app.items: key 200 of 1500"
    assert backfill_state(notes, "other")["state"] == "waiting"
    done = [*notes, note("TABLE_SCAN_COMPLETED", scanned_collection="app.items", total_rows_scanned="1500",
                         status="SUCCEEDED"), note("COMPLETED")]
    assert backfill_state(done, "s1") == {"state": "completed", "progress": "app.items: key 200 of 1500",
                                          "tables": {"items": {"rows": 1500, "status": "SUCCEEDED"}}}
    assert backfill_state([*notes, note("ABORTED")], "s1")["state"] == "aborted"


def _debezium_spec(tmp_path: Path) -> Any:
    from bankflow.spec.loader import load_spec

    text = (Path(__file__).parents[1] / "specs" / "minimal.yaml").read_text()
    spec_path = tmp_path / "minimal.yaml"  # without its transform (no dbt project here)
    spec_path.write_text(text[:text.index("transform:")] + text[text.index("environments:"):])
    return load_spec(spec_path, env="stack", check_dbt=False)


def test_coverage_status_says_per_table_what_the_markers_say(tmp_path: Path) -> None:
    from bankflow.lake.filesystem import lake_filesystem
    from bankflow.source.backfill import backfilling, coverage_status

    resolved = spec(tmp_path, "a", "b", "c")
    fs, root = lake_filesystem(resolved)
    store = Coverage(fs, root, "sl")
    store.write("a", covered("a", 0x16B3A28, "initial snapshot"))
    store.write("b", backfilling("b", "requested", "id > 5"))
    assert coverage_status(resolved) == {
        "a": {"state": "covered", "how": "initial snapshot", "since_lsn": "0/16B3A28"},
        "b": {"state": "backfilling", "reason": "requested", "where": "id > 5", "chunks": 0, "rows": 0},
        "c": {"state": "unknown"},
    }
