"""Dead letters are never a silent success, and can be replayed once the spec is fixed (issue 14, items 2-3).

A spec that says a column is NOT NULL while the source has NULLs in it (the contract only warns about
nullability): those rows, from the snapshot and from the stream, become dead letters. `apply` reports them per
table and exits 4; after the spec is fixed, `deadletters replay` turns them into lake files, the next apply
loads them once, `verify` passes, and a second replay writes nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from bankflow.cli import main
from bankflow.pipeline import Pipeline
from bankflow.source.embedded import EmbeddedPostgres
from bankflow.spec.loader import load_spec
from tests.fixtures.external import MANAGE_ALL, app_database

pytestmark = pytest.mark.integration

PASSWORD_VAR = "DEAD_LETTERS_PG_PASSWORD"

SPEC = """\
version: 1
name: deadletters
state_dir: state
{source}tables:
  - name: items
    primary_key: [id]
    columns:
      - {{name: id, type: bigint, nullable: false}}
      - {{name: label, type: text, nullable: {nullable}}}
      - {{name: price, type: "numeric(12,2)"}}
cdc:
  engine: builtin
  topic_prefix: dl_{tag}
  slot: dl_{tag}
  publication: dl_{tag}
lake:
  url: file://lake
  layout: "{{table}}/date={{date}}"
warehouse:
  type: duckdb
  path: wh.duckdb
"""


APP_DDL = """CREATE SCHEMA shop; CREATE TABLE shop.items (id bigint PRIMARY KEY, label text, price numeric(12,2));
INSERT INTO shop.items VALUES (1, 'one', 1.00), (2, NULL, 2.00), (3, 'three', 3.00)"""


@pytest.fixture
def project(pg_server: EmbeddedPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.chdir(tmp_path)
    with app_database(pg_server, "dl", APP_DDL, monkeypatch, PASSWORD_VAR) as app:

        def write(nullable: bool) -> Path:
            path = tmp_path / "pipeline.yaml"
            path.write_text(SPEC.format(source=app.source_yaml("shop", manage=MANAGE_ALL), tag=app.tag,
                                        nullable=str(nullable).lower()), encoding="utf-8")
            return path

        yield tmp_path, write, app.sql


def raw(root: Path, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(root / "wh.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_dead_letters_fail_apply_and_replay_once_the_spec_is_fixed(
        project: Any, capsys: pytest.CaptureFixture[str]) -> None:
    root, write, sql = project
    strict = str(write(nullable=False))
    stages = ["--stages", "source,cdc,load"]
    assert main(["apply", strict, *stages, "-q"]) == 4  # the snapshot's NULL label: a dead letter
    assert "1 event(s) of items went to the dead-letter store" in capsys.readouterr().err
    sql("INSERT INTO shop.items VALUES (4, NULL, 4.00), (5, 'five', 5.00); UPDATE shop.items SET price = 1.50 "
        "WHERE id = 1")
    assert main(["apply", strict, *stages, "-q", "--json"]) == 4
    captured = capsys.readouterr()
    assert json.loads(captured.out)["dead_letters"] == {"items": 1}  # this run's, not the store's total
    assert main(["apply", strict, *stages, "-q", "--accept-dead-letters"]) == 0  # nothing new; accepted anyway

    assert main(["status", strict, "--json"]) == 4  # dead letters pending: something needs a person
    attention = json.loads(capsys.readouterr().out)["attention"]
    assert attention == ["2 dead letter(s) of items pending (bankflow deadletters … list)"], attention

    assert main(["deadletters", strict, "list", "--json"]) == 4
    pending = json.loads(capsys.readouterr().out)
    assert pending["items"]["events"] == 2 and "NOT NULL" in next(iter(pending["items"]["reasons"]))
    assert main(["deadletters", strict, "replay", "-q"]) == 4  # the spec still says NOT NULL: both stay
    assert sorted(raw(root, "SELECT id FROM raw.items")) == [(1,), (1,), (3,), (5,)]

    fixed = str(write(nullable=True))
    assert main(["deadletters", fixed, "replay", "--json"]) == 0
    outcome = json.loads(capsys.readouterr().out)
    assert outcome["replayed"] == 2 and outcome["still_dead"] == 0 and len(outcome["files"]) == 2
    lake_files = sorted((root / "lake").rglob("*.parquet"))
    assert main(["apply", fixed, *stages, "-q"]) == 0
    assert sorted(raw(root, "SELECT id, label FROM raw.items WHERE label IS NULL")) == [(2, None), (4, None)]
    counts = raw(root, "SELECT id, count(*) FROM raw.items GROUP BY id ORDER BY id")
    assert counts == [(1, 2), (2, 1), (3, 1), (4, 1), (5, 1)]  # each change once
    report = Pipeline(load_spec(fixed)).verify()
    assert report.ok, report.format()

    assert main(["deadletters", fixed, "replay", "--json"]) == 0  # nothing left: nothing written
    assert json.loads(capsys.readouterr().out)["files"] == []
    assert sorted((root / "lake").rglob("*.parquet")) == lake_files
    assert main(["deadletters", fixed, "list"]) == 0
    assert "no dead letters" in capsys.readouterr().out
    assert main(["apply", fixed, *stages, "-q"]) == 0
    assert raw(root, "SELECT count(*) FROM raw.items")[0][0] == 6
    assert main(["status", fixed]) == 0
    assert "needs attention: nothing" in capsys.readouterr().out


def test_status_exits_non_zero_on_contract_drift_and_slot_lag(project: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _root, write, sql = project
    spec = write(nullable=True)
    assert main(["apply", str(spec), "--stages", "source,cdc,load", "-q"]) == 0
    assert main(["status", str(spec), "--json"]) == 0
    coverage = json.loads(capsys.readouterr().out)["coverage"]
    assert coverage["items"]["state"] == "covered" and coverage["items"]["how"], coverage
    spec.write_text(spec.read_text().replace("  publication: dl_", "  max_lag_bytes: 0\n  publication: dl_"))
    sql("INSERT INTO shop.items VALUES (9, 'nine', 9.00)")  # the slot now retains WAL nobody acknowledged
    assert main(["status", str(spec), "--json"]) == 4
    attention = json.loads(capsys.readouterr().out)["attention"]
    assert any("over cdc.max_lag_bytes 0" in a for a in attention), attention
    sql("ALTER TABLE shop.items DROP COLUMN price")  # the spec still declares it
    assert main(["status", str(spec), "--json"]) == 4
    attention = json.loads(capsys.readouterr().out)["attention"]
    assert any("source contract: 1 difference(s) stop apply" in a and "items: declared in the spec" in a
               for a in attention), attention


def test_apply_verify_is_exact_and_names_what_it_cannot_compare(project: Any,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    root, write, sql = project
    spec = str(write(nullable=True))
    sql("UPDATE shop.items SET label = 'two ' WHERE id = 2")  # a trailing blank is data
    assert main(["apply", spec, "--stages", "source,cdc,load", "--verify", "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verify"]["ok"] and report["verify"]["notes"] == []
    con = duckdb.connect(str(root / "wh.duckdb"))
    con.execute("UPDATE raw.items SET label = rtrim(label) WHERE id = 2")  # what a lossy pipeline would do
    con.close()
    sql("ALTER TABLE shop.items ADD COLUMN secret text")  # not in the spec: not carried, not compared
    assert main(["apply", spec, "--stages", "source,cdc,load", "--verify", "-q"]) == 1
    out = capsys.readouterr().out
    assert "DIFF items: raw latest state equals source rows" in out, out
    assert "note items.secret: in the source, not in the spec" in out, out


def test_bytes_that_are_not_utf8_are_dead_letters_from_the_snapshot_and_the_stream(
        pg_server: EmbeddedPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A SQL_ASCII database stores any bytes; one that is not UTF-8 cannot be carried as text: a dead letter with
    its position (the snapshot's CSV read used to fail as a whole on it)."""
    from tests.fixtures.external import AppDatabase

    tag = uuid.uuid4().hex[:8]
    database = f"dl_{tag}"
    pg_server.execute(f"CREATE DATABASE {database} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' "
                      "TEMPLATE template0")
    monkeypatch.setenv(PASSWORD_VAR, pg_server.password)
    monkeypatch.chdir(tmp_path)
    app = AppDatabase(pg_server, database, tag, PASSWORD_VAR)
    try:
        app.sql("CREATE SCHEMA shop; CREATE TABLE shop.items (id bigint PRIMARY KEY, label text, "
                "price numeric(12,2)); INSERT INTO shop.items VALUES (1, 'one', 1.00), (2, E'caf\\xe9', 2.00)")
        path = tmp_path / "pipeline.yaml"
        path.write_text(SPEC.format(source=app.source_yaml("shop", manage=MANAGE_ALL), tag=tag, nullable="true"),
                        encoding="utf-8")
        assert main(["apply", str(path), "--stages", "source,cdc,load", "-q"]) == 4
        assert "1 event(s) of items went to the dead-letter store" in capsys.readouterr().err
        app.sql("INSERT INTO shop.items VALUES (3, E'\\xff\\xfe', 3.00), (4, 'four', 4.00)")
        assert main(["apply", str(path), "--stages", "cdc,load", "-q"]) == 4
        assert sorted(raw(tmp_path, "SELECT id, label FROM raw.items")) == [(1, "one"), (4, "four")]
        assert main(["deadletters", str(path), "list", "--json"]) == 4
        assert json.loads(capsys.readouterr().out)["items"]["events"] == 2
    finally:
        slot = f"dl_{tag}"
        if pg_server.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)):
            pg_server.execute("SELECT pg_drop_replication_slot(%s)", (slot,), dbname=database)
        pg_server.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
