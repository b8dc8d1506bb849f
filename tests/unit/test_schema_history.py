"""The schema history and the shape decision, without services: what each policy decides, what raw must hold,
which widenings each warehouse does in place, and the new raw column where it cannot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fsspec
import pytest

from bankflow.lake.batch import TableBatch
from bankflow.lake.positions import LsnPosition
from bankflow.lake.schema_history import SchemaHistory
from bankflow.source.schema_changes import Observed, ShapeFollower, SourceType, shape_changes
from bankflow.spec.models import Column, Table
from bankflow.spec.types import parse_pg_type
from bankflow.warehouses.duckdb.config import DuckDBWarehouse
from bankflow.warehouses.snowflake.config import SnowflakeWarehouse


def items(policy: str = "evolve") -> Table:
    return Table(name="items", primary_key=["id"], schema_changes=policy, columns=[
        Column(name="id", type="bigint", nullable=False), Column(name="price", type="numeric(12,2)"),
        Column(name="note", type="varchar(10)")])


class Catalog:
    def __init__(self, live: dict[str, str]) -> None:
        self.live = live

    def live_columns(self, schema: str, table: str) -> dict[str, SourceType]:
        return {name: SourceType(text) for name, text in self.live.items()}

    def close(self) -> None:
        pass


def follower(tmp_path: Path, live: dict[str, str], widens: Any = None) -> ShapeFollower:
    history = SchemaHistory(fsspec.filesystem("file"), str(tmp_path))
    return ShapeFollower(history, Catalog(live), "shop", widens)  # type: ignore[arg-type]


def observed(*columns: tuple[str, str]) -> list[Observed]:
    return [Observed(name, SourceType(text, typcategory="A" if text.endswith("]") else "")) for name, text in columns]


BASE = (("id", "bigint"), ("price", "numeric(12,2)"), ("note", "character varying(10)"))


def test_catalog_types_are_carried_the_way_init_declares_them() -> None:
    assert SourceType("character varying(40)").carried("n").type == "varchar(40)"  # type: ignore[union-attr]
    assert SourceType("timestamp(6) with time zone").carried("n").type == "timestamptz"  # type: ignore[union-attr]
    unconstrained = SourceType("numeric").carried("n")
    assert unconstrained is not None and unconstrained.carry_as == "text"  # exact, never a guessed scale
    enum = SourceType("txn_status", typtype="e", name="txn_status", labels=("new", "done")).carried("n")
    assert enum is not None and (enum.type, enum.enum_type, enum.enum_values) == ("enum", "txn_status", ["new", "done"])
    assert SourceType("integer[]", typcategory="A").carried("n") is None  # an array: not carried, the caller says so
    assert SourceType("timestamp(3) with time zone").same_as(Column(name="n", type="timestamptz"))


def test_a_missing_column_is_a_drop_only_when_the_live_table_lacks_it_too() -> None:
    relation = observed(("id", "bigint"), ("price", "numeric(12,2)"))
    assert [c.kind for c in shape_changes(items(), relation, {"id", "price"})[0]] == ["dropped"]
    assert shape_changes(items(), relation, {"id", "price", "note"})[0] == []  # an event older than `note`


def test_freeze_stops_with_what_changed_and_how_to_go_on(tmp_path: Path) -> None:
    shapes = follower(tmp_path, {"id": "bigint", "price": "numeric(12,2)", "note": "text", "colour": "text"})
    decision = shapes.observe(items("freeze"), items("freeze"), observed(*BASE, ("colour", "text")), None,
                              LsnPosition(9, 9), None, "table items")
    assert decision.stop is not None and decision.shape is None
    assert "column 'colour' added (text)" in decision.stop and "set schema_changes: evolve" in decision.stop
    assert not shapes.history.records("items")  # nothing recorded: the stream did not go on


def test_a_new_column_of_a_type_bankflow_cannot_carry_stops_even_under_evolve(tmp_path: Path) -> None:
    shapes = follower(tmp_path, {"id": "bigint", "tags": "text[]"})
    decision = shapes.observe(items(), items(), observed(*BASE, ("tags", "text[]")), None, LsnPosition(9, 9),
                              None, "table items")
    assert decision.stop is not None and "cannot carry exactly (text[])" in decision.stop, decision.stop


def test_evolve_records_the_shape_and_raw_keeps_every_column_any_shape_had(tmp_path: Path) -> None:
    shapes = follower(tmp_path, {"id": "bigint", "price": "numeric(12,2)", "colour": "text"})
    decision = shapes.observe(items(), items(), observed(("id", "bigint"), ("price", "numeric(12,2)"),
                                                         ("colour", "text")), None, LsnPosition(7, 3), 1, "t")
    assert decision.shape is not None
    assert [c.name for c in decision.shape.columns] == ["id", "price", "colour"]
    assert [(c.kind, c.column) for c in decision.changes] == [("added", "colour"), ("dropped", "note")]
    history = shapes.history
    assert history.shape_at(items(), 6).columns == items().columns  # before the change: the spec's shape
    assert [c.name for c in history.shape_at(items(), 7).columns] == ["id", "price", "colour"]
    assert [c.name for c in history.raw_shape(items()).columns] == ["id", "price", "note", "colour"]


@pytest.mark.parametrize(("old", "new", "duckdb", "snowflake"), [
    ("numeric(12,2)", "numeric(20,4)", True, False),  # Snowflake cannot change a NUMBER's scale
    ("numeric(12,2)", "numeric(20,2)", True, True),
    ("numeric(12,2)", "numeric(10,2)", False, False),  # narrowing: never in place
    ("integer", "bigint", True, True),
    ("varchar(10)", "varchar(40)", True, True),
    ("varchar(10)", "text", True, True),
    ("bigint", "text", False, False),
])
def test_which_widenings_each_warehouse_does_in_place(old: str, new: str, duckdb: bool, snowflake: bool) -> None:
    for config, expected in ((DuckDBWarehouse(type="duckdb", path="w.duckdb"), duckdb),
                             (SnowflakeWarehouse(type="snowflake", account="a", user="u", password="p",
                                                 database="d", warehouse="w", storage_integration="s"), snowflake)):
        dialect = config.dialect()
        assert dialect.widens_in_place(dialect.column_type(parse_pg_type(old)), parse_pg_type(new)) is expected, (
            config.type, old, new)


def test_a_retype_raw_cannot_widen_goes_to_a_new_raw_column_and_says_so(tmp_path: Path) -> None:
    shapes = follower(tmp_path, {"id": "bigint", "price": "numeric(20,4)", "note": "text"},
                      widens=lambda old, new: False)
    retyped = observed(("id", "bigint"), ("price", "numeric(20,4)"), ("note", "character varying(10)"))
    decision = shapes.observe(items(), items(), retyped, None, LsnPosition(7, 3), None, "table items")
    assert decision.shape is not None
    assert "new raw column 'price__numeric_20_4'" in shapes.accepted[0]
    assert shapes.lake_names["items"] == {"price": "price__numeric_20_4"}
    raw = {c.name: c.type for c in shapes.history.raw_shape(items()).columns}
    assert raw["price"] == "numeric(12,2)" and raw["price__numeric_20_4"] == "numeric(20,4)"
    # a new run resumes with the same lake names
    again = follower(tmp_path, {})
    assert again.start_at(items()).column("price").type == "numeric(20,4)"
    assert again.lake_names["items"] == {"price": "price__numeric_20_4"}
    batch = TableBatch(decision.shape, lake_names=again.lake_names["items"])
    batch.append_debezium({"op": "c", "after": {"id": 1, "price": "1.2345", "note": "n"},
                           "source": {"lsn": 5, "txId": 1, "ts_us": 1}}, LsnPosition(8, 5))
    table = batch.to_arrow("k")
    assert "price" not in table.column_names
    assert str(table.column("price__numeric_20_4")[0]) == "1.2345"


def test_raw_keeps_the_old_type_of_a_column_given_a_new_raw_column_even_after_the_spec_follows(
        tmp_path: Path) -> None:
    shapes = follower(tmp_path, {}, widens=lambda old, new: False)
    retyped = observed(("id", "bigint"), ("price", "numeric(20,4)"), ("note", "character varying(10)"))
    shapes.observe(items(), items(), retyped, {"id", "price", "note"}, LsnPosition(7, 3), None, "t")
    updated = items().model_copy(update={"columns": [
        Column(name="id", type="bigint", nullable=False), Column(name="price", type="numeric(20,4)"),
        Column(name="note", type="varchar(10)")]})
    raw = {c.name: c.type for c in shapes.history.raw_shape(updated).columns}
    assert raw["price"] == "numeric(12,2)" and raw["price__numeric_20_4"] == "numeric(20,4)"


def test_evolve_declares_an_added_enum_or_unconstrained_numeric_as_init_would(tmp_path: Path) -> None:
    shapes = follower(tmp_path, {})
    event = [*observed(*BASE), Observed("state", SourceType("txn_state", typtype="e", name="txn_state",
                                                              labels=("open", "closed"))),
             Observed("rate", SourceType("numeric"))]
    decision = shapes.observe(items(), items(), event, {"id", "price", "note", "state", "rate"}, LsnPosition(3, 3),
                              None, "t")
    assert decision.shape is not None
    state, rate = decision.shape.column("state"), decision.shape.column("rate")
    assert (state.type, state.enum_type, state.enum_values) == ("enum", "txn_state", ["open", "closed"])
    assert (rate.type, rate.carry_as) == ("numeric", "text")
    again = SchemaHistory(shapes.history.fs, str(tmp_path)).current_shape(items())
    assert again.column("state").enum_values == ["open", "closed"] and again.column("rate").carry_as == "text"
