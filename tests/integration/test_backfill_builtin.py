"""Backfills on the built-in engine while the stream goes on (issue 14, item 1): DBLog's watermark chunks.

The source is pg_server used as an external Postgres (the source stage manages the publication). Each test keeps
a workload writing to every table (inserts, updates, deletes, some multi-row and slow transactions) while
`apply` backfills, then ends with `verify`, an independent comparison of the source with raw's latest state, and
a check that raw holds no (key, _lsn) twice.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import psycopg2
import pytest

from bankflow.cli import main
from bankflow.lake.filesystem import lake_filesystem
from bankflow.pipeline import Pipeline
from bankflow.source.backfill import Coverage, WhereRefused, checked_where
from bankflow.source.embedded import EmbeddedPostgres
from bankflow.spec.loader import ResolvedSpec, load_spec

pytestmark = pytest.mark.integration

PASSWORD_VAR = "BACKFILL_PG_PASSWORD"
ROWS = 1500  # rows of each table before the backfill (chunks of 200: several chunks)

APP_DDL = """
CREATE SCHEMA app;
CREATE TABLE app.orders (id bigint PRIMARY KEY, label text, amount numeric(12,2));
CREATE TABLE app.parts (id bigint PRIMARY KEY, label text, amount numeric(12,2));
ALTER TABLE app.orders REPLICA IDENTITY FULL;
ALTER TABLE app.parts REPLICA IDENTITY FULL;
INSERT INTO app.orders SELECT g, 'o' || g, g / 100.0 FROM generate_series(1, {rows}) g;
INSERT INTO app.parts SELECT g, 'p' || g, g / 10.0 FROM generate_series(1, {rows}) g;
"""

TABLE = """\
  - name: {name}
    primary_key: [id]
    columns:
      - {{name: id, type: bigint, nullable: false}}
      - {{name: label, type: text}}
      - {{name: amount, type: "numeric(12,2)"}}
"""

SPEC = """\
version: 1
name: backfills
state_dir: {state_dir}
source:
  type: postgres
  embedded: false
  host: {host}
  port: {port}
  user: {user}
  password: ${{{variable}}}
  database: {database}
  schema: app
  sslmode: disable
  manage: [publication, replica_identity, heartbeat, slot]
tables:
{tables}cdc:
  engine: builtin
  topic_prefix: bf_{tag}
  slot: bf_{tag}
  publication: bf_{tag}
  snapshot_mode: {mode}
  backfill_chunk_rows: 200
lake:
  url: file://lake
  layout: "{{table}}/date={{date}}"
  flush: {{max_rows: 500, max_seconds: 0.3}}
warehouse:
  type: duckdb
  path: wh.duckdb
"""


@dataclass
class Source:
    pg: EmbeddedPostgres
    database: str
    tag: str
    root: Path

    def spec(self, *tables: str, mode: str = "initial", extra: str = "") -> ResolvedSpec:
        kwargs = self.pg.connect_kwargs(self.database)
        path = self.root / "pipeline.yaml"
        path.write_text(SPEC.format(state_dir=self.root / "state", host=kwargs["host"], port=kwargs["port"],
                                    user=kwargs["user"], variable=PASSWORD_VAR, database=self.database,
                                    tables="".join(TABLE.format(name=t) for t in tables) + extra, tag=self.tag,
                                    mode=mode), encoding="utf-8")
        return load_spec(path)

    def sql(self, text: str) -> list[tuple[Any, ...]]:
        return self.pg.execute(text, dbname=self.database)

    def raw(self, sql: str) -> list[tuple[Any, ...]]:
        con = duckdb.connect(str(self.root / "wh.duckdb"), read_only=True)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()


@pytest.fixture
def source(pg_server: EmbeddedPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Source]:
    tag = uuid.uuid4().hex[:8]
    database = f"bf_{tag}"
    pg_server.create_database(database)
    pg_server.execute(APP_DDL.format(rows=ROWS), dbname=database)
    monkeypatch.setenv(PASSWORD_VAR, pg_server.password)
    monkeypatch.chdir(tmp_path)
    try:
        yield Source(pg_server, database, tag, tmp_path)
    finally:
        slot = f"bf_{tag}"
        if pg_server.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)):
            pg_server.execute("SELECT pg_drop_replication_slot(%s)", (slot,), dbname=database)
        pg_server.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


class Workload:
    """Inserts, updates and deletes on every table until stopped: single statements, multi-row transactions and
    now and then a transaction that stays open a while (what a low watermark must wait for)."""

    def __init__(self, source: Source, tables: list[str], seed: int = 7) -> None:
        self.kwargs = source.pg.connect_kwargs(source.database)
        self.tables = tables
        self.random = random.Random(seed)
        self.stop = threading.Event()
        self.next_id = {t: int(source.sql(f"SELECT coalesce(max(id), 0) FROM app.{t}")[0][0]) + 1 for t in tables}
        self.count = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Workload:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(30)
        assert self.error is None, self.error

    def _statement(self, cur: Any) -> None:
        rnd = self.random
        table = rnd.choice(self.tables)
        kind = rnd.random()
        top = self.next_id[table]
        if kind < 0.35:
            cur.execute(f"INSERT INTO app.{table} VALUES (%s, %s, %s)", (top, f"new{top}", rnd.randint(0, 9999) / 100))
            self.next_id[table] = top + 1
        elif kind < 0.85:
            cur.execute(f"UPDATE app.{table} SET label = label || '+', amount = amount + 1 WHERE id = %s",
                        (rnd.randint(1, top - 1),))
        else:
            cur.execute(f"DELETE FROM app.{table} WHERE id = %s", (rnd.randint(1, top - 1),))
        self.count += 1

    def _run(self) -> None:
        try:
            conn = psycopg2.connect(**self.kwargs)
            try:
                while not self.stop.is_set():
                    with conn.cursor() as cur:
                        for _ in range(self.random.choice([1, 1, 1, 3, 10])):
                            self._statement(cur)
                        if self.random.random() < 0.03:
                            time.sleep(0.2)  # a transaction open across watermarks
                    conn.commit()
                    time.sleep(0.002)
            finally:
                conn.close()
        except BaseException as exc:
            self.error = exc


def apply_ok(resolved: ResolvedSpec) -> Any:
    report = Pipeline(resolved).apply(stages=["source", "cdc", "load"], progress=False)
    assert report.ok, report.to_dict()
    return report


def cdc_details(report: Any) -> dict[str, Any]:
    return next(s for s in report.stages if s.name == "cdc").details


def exact(source: Source, resolved: ResolvedSpec, tables: list[str]) -> None:
    """verify passes; raw's latest live version of each key equals the source row; no (key, _lsn) twice."""
    report = Pipeline(resolved).verify()
    assert report.ok, report.format()
    for table in tables:
        expected = {(i, label, str(amount)) for i, label, amount in
                    source.sql(f"SELECT id, label, amount FROM app.{table}")}
        latest = source.raw(f"SELECT id, label, amount::varchar, _op FROM (SELECT *, row_number() OVER "
                            f"(PARTITION BY id ORDER BY _lsn DESC) AS r FROM raw.{table}) WHERE r = 1")
        assert {(i, label, amount) for i, label, amount, op in latest if op != "d"} == expected, table
        assert source.raw(f"SELECT count(*) FROM (SELECT id, _lsn FROM raw.{table} GROUP BY ALL "
                          "HAVING count(*) > 1)")[0][0] == 0, f"duplicate (id, _lsn) in raw.{table}"


def coverage(resolved: ResolvedSpec, table: str) -> dict[str, Any] | None:
    fs, root = lake_filesystem(resolved)
    return Coverage(fs, root, resolved.spec.cdc.slot).read(table)


def backfilled_rows(source: Source, table: str) -> int:
    """Rows of raw.table that came from a backfill (its own lake stream)."""
    return source.raw(f"SELECT count(*) FROM raw.{table} WHERE _op = 'r' AND _file LIKE '%{table}-backfill-%'")[0][0]


def test_a_table_added_to_the_spec_is_backfilled_while_the_stream_goes_on(source: Source) -> None:
    first = source.spec("orders")
    apply_ok(first)
    assert coverage(first, "orders")["how"] == "initial snapshot"
    assert coverage(first, "parts") is None

    both = source.spec("orders", "parts")
    with Workload(source, ["orders", "parts"]) as work:
        time.sleep(0.3)
        report = apply_ok(both)
        during = work.count
    details = cdc_details(report)
    assert details["backfills"] == ["parts"]
    assert details["backfill_rows"] > 0
    assert during > 50, "the workload wrote during the backfill"
    marker = coverage(both, "parts")
    assert marker["state"] == "covered" and marker["how"] == "backfill"
    assert marker["backfill"]["chunks"] >= ROWS // 200
    apply_ok(both)  # the changes after the first catch-up
    exact(source, both, ["orders", "parts"])
    assert backfilled_rows(source, "parts") == details["backfill_rows"]
    # a later run backfills nothing
    assert cdc_details(apply_ok(both))["backfill_rows"] == 0


def test_a_table_removed_and_added_back_is_backfilled_again(source: Source) -> None:
    both = source.spec("orders", "parts")
    apply_ok(both)
    only = source.spec("orders")
    apply_ok(only)
    assert coverage(only, "parts") is None  # its marker went with it
    # changes to parts while it is out of the spec (and of the publication): the stream never sees them
    source.sql("UPDATE app.parts SET label = 'while away' WHERE id <= 100")
    source.sql("DELETE FROM app.parts WHERE id BETWEEN 101 AND 150")
    source.sql(f"INSERT INTO app.parts SELECT g, 'away', 1 FROM generate_series({ROWS + 1000}, {ROWS + 1100}) g")
    both = source.spec("orders", "parts")
    with Workload(source, ["orders", "parts"], seed=11):
        time.sleep(0.3)
        report = apply_ok(both)
    assert cdc_details(report)["backfills"] == ["parts"]
    apply_ok(both)
    exact(source, both, ["orders", "parts"])


def test_backfill_command_rereads_a_table_while_the_stream_goes_on(source: Source) -> None:
    # no_data: no snapshot and no automatic backfill, so raw starts without the existing rows
    resolved = source.spec("orders", "parts", mode="no_data")
    apply_ok(resolved)
    assert source.raw("SELECT count(*) FROM raw.parts")[0][0] == 0
    assert not Pipeline(resolved).verify().ok
    with Workload(source, ["orders", "parts"], seed=3):
        time.sleep(0.3)
        assert main(["backfill", str(source.root / "pipeline.yaml"), "--table", "parts", "-q"]) == 0
        result = Pipeline(resolved).backfill("orders", "id > 700", progress=False)
    assert result["ok"] and result["rows"] > 0
    assert result["where"] == "id > 700"
    # orders: only ids above 700 were re-read
    assert source.raw("SELECT count(*) FROM raw.orders WHERE id <= 700 AND _op = 'r'")[0][0] == 0
    assert source.raw("SELECT count(*) FROM raw.orders WHERE id > 700 AND id <= 1500 AND _op = 'r'")[0][0] > 0
    assert coverage(resolved, "orders")["backfill"]["where"] == "id > 700"
    assert not Pipeline(resolved).verify().ok
    # then all of it, by the library method, with the workload still writing
    with Workload(source, ["orders", "parts"], seed=5):
        time.sleep(0.2)
        assert Pipeline(resolved).backfill("orders", progress=False)["ok"]
    apply_ok(resolved)
    exact(source, resolved, ["orders", "parts"])


def test_backfill_refuses_what_is_not_a_condition(source: Source) -> None:
    assert checked_where("id > 5 AND label LIKE 'a%'") == "id > 5 AND label LIKE 'a%'"
    for bad in ["1; DROP TABLE app.parts", "id", "(SELECT 1)", "pg_logical_emit_message(true, 'x', 'y') IS NULL",
                "id IN (SELECT id FROM app.parts FOR UPDATE)", "", "DELETE FROM app.parts"]:
        with pytest.raises(WhereRefused):
            checked_where(bad)
    resolved = source.spec("orders", mode="no_data")
    assert main(["backfill", str(source.root / "pipeline.yaml"), "--table", "nope"]) == 1
    assert main(["backfill", str(source.root / "pipeline.yaml"), "--table", "orders", "--where", "1; SELECT 1"]) == 1
    assert coverage(resolved, "orders") is None  # nothing was recorded


@pytest.mark.parametrize("where", ["before the file", "after the file"])
def test_an_interrupted_backfill_resumes_after_its_last_durable_chunk(source: Source, where: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from bankflow.engines.builtin import stream as stream_mod

    apply_ok(source.spec("orders"))
    both = source.spec("orders", "parts")
    original = stream_mod.StreamReader._write_chunk
    calls = {"n": 0}

    def crash_on_third(self: Any, record: dict[str, Any], batch: Any, chunk: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            if where == "after the file":
                self.writer.write_batch(batch)  # durable, but the marker still says pending
            chunk.processed.set()
            raise RuntimeError("simulated crash")
        return original(self, record, batch, chunk)

    monkeypatch.setattr(stream_mod.StreamReader, "_write_chunk", crash_on_third)
    with Workload(source, ["orders", "parts"], seed=17):
        time.sleep(0.2)
        report = Pipeline(both).apply(stages=["source", "cdc", "load"], progress=False)
        assert not report.ok
        marker = coverage(both, "parts")
        assert marker["state"] == "backfilling" and marker["pending"] is not None and marker["chunks"] == 2
        monkeypatch.setattr(stream_mod.StreamReader, "_write_chunk", original)
        apply_ok(both)
    assert coverage(both, "parts")["state"] == "covered"
    apply_ok(both)
    exact(source, both, ["orders", "parts"])
    # the crashed chunk's rows came once: from its file (after the file) or from the redone chunk (before it)
    assert source.raw("SELECT count(*) FROM (SELECT id FROM raw.parts WHERE _op = 'r' GROUP BY id "
                      "HAVING count(*) > 1)")[0][0] == 0


def test_a_running_follow_carries_out_a_backfill_request(source: Source) -> None:
    from bankflow.engines.builtin.reader import stream_to_lake

    resolved = source.spec("orders", "parts", mode="no_data")
    apply_ok(resolved)
    stop = threading.Event()
    outcome: dict[str, Any] = {}

    def follow() -> None:
        outcome["result"] = stream_to_lake(resolved, source.pg.connect_kwargs(source.database), follow=True,
                                           stop=stop)

    thread = threading.Thread(target=follow, daemon=True)
    with Workload(source, ["orders", "parts"], seed=23):
        thread.start()
        deadline = time.monotonic() + 20
        while not source.sql(f"SELECT 1 FROM pg_replication_slots WHERE slot_name = 'bf_{source.tag}' "
                             "AND active_pid IS NOT NULL"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        result = Pipeline(resolved).backfill("parts", progress=False)
        assert result["queued"] and result["ok"]
        while (coverage(resolved, "parts") or {}).get("state") != "covered":
            assert time.monotonic() < deadline + 20, coverage(resolved, "parts")
            time.sleep(0.1)
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert outcome["result"].backfills == ["parts"]
    apply_ok(resolved)
    report = Pipeline(resolved).verify()
    assert "parts: raw latest state equals source rows" in [c.name for c in report.checks if c.ok], report.format()


LEGS = """\
  - name: legs
    primary_key: [book, seq]
    columns:
      - {name: book, type: text, nullable: false}
      - {name: seq, type: integer, nullable: false}
      - {name: note, type: "varchar(20)"}
"""


def test_a_composite_text_key_is_chunked_in_the_sources_order(source: Source) -> None:
    """Chunks continue after the last key by the source's own row comparison and collation (mixed case,
    spaces, quotes, non-ASCII), so no row is skipped or read twice."""
    source.sql("CREATE TABLE app.legs (book text, seq integer, note varchar(20), PRIMARY KEY (book, seq))")
    source.sql("ALTER TABLE app.legs REPLICA IDENTITY FULL")
    books = ["a", "B", "b", "Zed", "z z", "o'neil", "émile", "", "1", "Ä"]
    source.sql("INSERT INTO app.legs SELECT b, g, b || g FROM unnest(ARRAY[" +
               ", ".join("'" + b.replace("'", "''") + "'" for b in books) + "]) AS b, generate_series(1, 97) AS g")
    apply_ok(source.spec("orders"))
    resolved = source.spec("orders", extra=LEGS)
    report = apply_ok(resolved)
    assert cdc_details(report)["backfill_rows"] == len(books) * 97
    assert coverage(resolved, "legs")["backfill"]["chunks"] >= 5
    assert Pipeline(resolved).verify().ok
    assert source.raw("SELECT count(*) FROM (SELECT book, seq FROM raw.legs GROUP BY ALL HAVING count(*) > 1)"
                      )[0][0] == 0


def test_snapshot_mode_always_backfills_every_table_at_each_run_while_streaming(source: Source) -> None:
    resolved = source.spec("orders", "parts", mode="always")
    first = apply_ok(resolved)  # the initial snapshot; no backfill right after it
    assert cdc_details(first)["backfills"] == [] and cdc_details(first)["snapshot_rows"] == 2 * ROWS
    with Workload(source, ["orders", "parts"], seed=29):
        time.sleep(0.2)
        second = apply_ok(resolved)
    assert sorted(cdc_details(second)["backfills"]) == ["orders", "parts"]
    apply_ok(resolved)
    exact(source, resolved, ["orders", "parts"])
    assert coverage(resolved, "orders")["how"] == "initial snapshot"  # what first covered it stays


def test_a_column_dropped_before_any_event_of_the_new_shape_is_read_as_null(source: Source) -> None:
    """The stream learns of a drop from the next event's relation; until then its shape has the column, and a
    chunk SELECT of it would fail: the backfill reads NULL for it, as the stream's events would carry it."""
    apply_ok(source.spec("orders"))
    source.sql("ALTER TABLE app.parts DROP COLUMN label")
    resolved = source.spec("orders", "parts")
    report = Pipeline(resolved).apply(stages=["cdc", "load"], progress=False)  # the contract check would stop it
    assert report.ok, report.to_dict()
    assert cdc_details(report)["backfill_rows"] == ROWS
    assert source.raw("SELECT count(*), count(label), count(amount) FROM raw.parts")[0] == (ROWS, 0, ROWS)


@pytest.mark.parametrize("trial", range(10))
def test_kill_9_during_a_follow_backfill_then_apply_is_exact(source: Source, trial: int) -> None:
    """A real crash (10 randomized trials): `apply --follow` killed with SIGKILL at a random chunk of a backfill,
    then a plain apply resumes the backfill: raw exact, no (key, _lsn) twice, no key backfilled twice."""
    import os
    import signal
    import subprocess
    import sys

    source.sql(f"INSERT INTO app.parts SELECT g, 'p' || g, 1 FROM generate_series({ROWS + 1}, 30000) g")
    apply_ok(source.spec("orders"))
    resolved = source.spec("orders", "parts")
    rnd = random.Random(trial)
    kill_at = rnd.randint(2, 60)
    with Workload(source, ["orders", "parts"], seed=100 + trial):
        process = subprocess.Popen([sys.executable, "-m", "bankflow", "apply", str(source.root / "pipeline.yaml"),
                                    "--follow", "--stages", "source,cdc", "-q"], cwd=source.root,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while int((coverage(resolved, "parts") or {}).get("chunks", 0)) < kill_at:
                assert process.poll() is None and time.monotonic() < deadline
                if (coverage(resolved, "parts") or {}).get("state") == "covered":
                    break
                time.sleep(0.01)
        finally:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)
        time.sleep(0.2)
        apply_ok(resolved)
    assert coverage(resolved, "parts")["state"] == "covered"
    apply_ok(resolved)
    exact(source, resolved, ["orders", "parts"])
    assert source.raw("SELECT count(*) FROM (SELECT id FROM raw.parts WHERE _op = 'r' GROUP BY id "
                      "HAVING count(*) > 1)")[0][0] == 0, "a key was backfilled twice"


def test_the_first_change_after_the_initial_snapshot_wins_over_the_snapshot_row(source: Source) -> None:
    """Found by the kill -9 trials: the consistent point is where decoding starts, so the first change after the
    initial snapshot may have exactly its LSN; snapshot rows carry the LSN just below it, so a delete there is
    not outranked by the row it deletes."""
    resolved = source.spec("orders")
    apply_ok(resolved)  # creates the slot; nothing written since
    source.sql("DELETE FROM app.orders WHERE id = 7")
    apply_ok(resolved)
    (consistent,) = source.raw("SELECT min(_lsn) FROM raw.orders WHERE _op = 'd'")[0]
    (snapshot_lsn,) = source.raw("SELECT max(_lsn) FROM raw.orders WHERE _op = 'r'")[0]
    assert snapshot_lsn < consistent
    exact(source, resolved, ["orders"])
