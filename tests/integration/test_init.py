"""`bankflow init --from-postgres` on a real catalog: the spec validates, applies as is on `local`, and verifies.

The source schema has nine tables of varied types: uuid, jsonb, json, bytea, an enum, numeric(38,10), numeric
without precision (carried as text), timestamp with and without zone, time, char/varchar, double precision, a
composite primary key, foreign keys (one composite), REPLICA IDENTITY DEFAULT, identity and serial columns, a
quoted mixed-case column and a mixed-case table (declared with their exact names), and what bankflow cannot carry
exactly (an array, money, interval). Those are named on stderr; without --allow-partial nothing is written
(exit 1). The local environment runs its own embedded PostgreSQL and creates the tables (and the enum type) from
the spec: rows inserted there, applied and verified, show the spec is complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

psycopg2 = pytest.importorskip("psycopg2")
pytest.importorskip("duckdb")

from bankflow.cli import main  # noqa: E402
from bankflow.source.embedded import EmbeddedPostgres  # noqa: E402
from bankflow.spec.loader import load_spec  # noqa: E402
from tests.fixtures.services import scratch_database  # noqa: E402

pytestmark = pytest.mark.integration

DATABASE = "init_source"

SCHEMA_SQL = """
CREATE SCHEMA shop;
CREATE TYPE shop.kyc_level AS ENUM ('pending', 'verified', 'rejected');
CREATE TABLE shop.customers (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  ext_id uuid NOT NULL,
  email varchar(200) NOT NULL,
  kyc shop.kyc_level NOT NULL,
  "KycStatus" text,
  profile jsonb,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE shop.accounts (
  id bigserial PRIMARY KEY,
  customer_id bigint NOT NULL REFERENCES shop.customers (id),
  currency char(3) NOT NULL,
  balance numeric(38,10) NOT NULL,
  opened_on date,
  active boolean NOT NULL DEFAULT true
);
CREATE TABLE shop.ledger_lines (
  account_id bigint NOT NULL REFERENCES shop.accounts (id),
  seq integer NOT NULL,
  amount numeric(18,2) NOT NULL,
  booked_at timestamp NOT NULL,
  PRIMARY KEY (account_id, seq)
);
CREATE TABLE shop.line_notes (
  id serial PRIMARY KEY,
  account_id bigint,
  seq integer,
  note text,
  FOREIGN KEY (account_id, seq) REFERENCES shop.ledger_lines (account_id, seq)
);
CREATE TABLE shop.events (
  id uuid PRIMARY KEY,
  payload json,
  body bytea,
  at_time time,
  happened_at timestamp(3) without time zone
);
CREATE TABLE shop.rates (
  code char(3) PRIMARY KEY,
  rate double precision,
  small smallint,
  note text
);
ALTER TABLE shop.rates REPLICA IDENTITY DEFAULT;
ALTER TABLE shop.customers REPLICA IDENTITY FULL;
CREATE TABLE shop.tags (id integer PRIMARY KEY, name text NOT NULL, labels text[], weight numeric);
CREATE TABLE shop.branches (id integer PRIMARY KEY, fee money, open_for interval, city text);
CREATE TABLE shop."AuditLog" (id integer PRIMARY KEY, "Actor" text, "order" integer);
"""

# The same rows for the source and (without what the spec leaves out) for the embedded copy.
ROWS_SQL = """
INSERT INTO shop.customers (ext_id, email, kyc, profile, created_at) VALUES
  ('5f0c6a4e-4b8a-4c49-9d1e-0a1b2c3d4e5f', 'ada@example.com', 'verified', '{"tier": "gold"}', '2024-01-01 12:00+02'),
  ('6a1d7b5f-5c9b-4d5a-8e2f-1b2c3d4e5f60', 'bob@example.com', 'pending', NULL, '2024-01-02 00:00:00.000001+00');
INSERT INTO shop.accounts (id, customer_id, currency, balance, opened_on, active) VALUES
  (1, 1, 'EUR', 1234567890123.0123456789, '2024-01-31', true), (2, 2, 'USD', -0.0000000001, NULL, false);
INSERT INTO shop.ledger_lines VALUES (1, 1, 10.50, '2024-02-01 10:00:00.123456'), (1, 2, -3.25, '2024-02-02 00:00');
INSERT INTO shop.line_notes (id, account_id, seq, note) VALUES (1, 1, 2, 'fee');
INSERT INTO shop.events VALUES
  ('7b2e8c60-6d0c-4e6b-9f30-2c3d4e5f6071', '{"a": [1, 2]}', '\\x00ff', '12:34:56.789', '2024-03-01 08:00');
INSERT INTO shop.rates VALUES ('EUR', 1.0842, 7, 'ecb');
INSERT INTO shop.tags (id, name) VALUES (1, 'vip');
INSERT INTO shop.branches (id, city) VALUES (1, 'Lisbon');
INSERT INTO shop."AuditLog" VALUES (1, 'Ada', 7);
UPDATE shop.customers SET "KycStatus" = 'Verified' WHERE id = 1;
UPDATE shop.tags SET weight = 1.50000000000000000000000000000000000000000001;
"""
SOURCE_ROWS_SQL = ROWS_SQL + """
UPDATE shop.tags SET labels = '{a,b}';
"""

LEFT_OUT = ['"tags"."labels"', '"branches"."fee"', '"branches"."open_for"']


@pytest.fixture(scope="module")
def source_url(pg_server: EmbeddedPostgres) -> Iterator[str]:
    with scratch_database(pg_server, DATABASE) as (kwargs, conn), conn.cursor() as cur:
        cur.execute(SCHEMA_SQL)
        cur.execute(SOURCE_ROWS_SQL)
        yield (f"postgresql://{kwargs['user']}:{quote(kwargs['password'], safe='')}@{kwargs['host']}:"
               f"{kwargs['port']}/{DATABASE}")


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "state"
    previous = os.environ.get("BANKFLOW_STATE_DIR")
    os.environ["BANKFLOW_STATE_DIR"] = str(directory)
    try:
        yield directory
    finally:
        if previous is None:
            os.environ.pop("BANKFLOW_STATE_DIR", None)
        else:
            os.environ["BANKFLOW_STATE_DIR"] = previous


def test_init_refuses_to_guess_then_writes_partial(source_url: str, pg_server: EmbeddedPostgres, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    password = pg_server.connect_kwargs()["password"]
    strict = tmp_path / "strict"
    assert main(["init", str(strict), "--from-postgres", source_url, "--schema", "shop"]) == 1
    err = capsys.readouterr().err
    assert not strict.exists() or not any(strict.iterdir()), "nothing is written without --allow-partial"
    for name in LEFT_OUT:
        assert name in err, err
    assert "--allow-partial" in err and password not in err

    project = tmp_path / "proj"
    code = main(["init", str(project), "--name", "shop", "--from-postgres", source_url, "--schema", "shop",
                 "--allow-partial"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert all(name in err for name in LEFT_OUT) and password not in err
    spec_path = project / "pipelines" / "shop.yaml"
    text = spec_path.read_text()
    for path in project.rglob("*"):
        assert not path.is_file() or password not in path.read_text(errors="replace"), path
    assert "KycStatus" in text and "enum" in text and "password: ${PGPASSWORD}" in text
    assert "composite foreign key (account_id, seq)" in text
    spec = load_spec(spec_path, env="local").spec
    tables = {t.name: t for t in spec.tables}
    assert set(tables) == {"customers", "accounts", "ledger_lines", "line_notes", "events", "rates", "tags",
                           "branches", "AuditLog"}
    assert [c.name for c in tables["AuditLog"].columns] == ["id", "Actor", "order"]
    assert [t.name for t in spec.tables].index("customers") < [t.name for t in spec.tables].index("accounts")
    assert tables["ledger_lines"].primary_key == ["account_id", "seq"]
    assert tables["rates"].replica_identity == "default" and tables["customers"].replica_identity == "full"
    columns = {(t.name, c.name): c for t in spec.tables for c in t.columns}
    assert columns["customers", "id"].identity and not columns["accounts", "id"].identity
    kyc = columns["customers", "kyc"]
    assert (kyc.type, kyc.enum_type, kyc.enum_values) == ("enum", "kyc_level", ["pending", "verified", "rejected"])
    assert kyc.pg_type.kind == "text" and columns["customers", "ext_id"].type == "uuid"
    assert columns["customers", "KycStatus"].type == "text"
    assert (columns["tags", "weight"].type, columns["tags", "weight"].carry_as) == ("numeric", "text")
    assert "carry_as: numeric(38,s)" in text
    assert columns["accounts", "balance"].type == "numeric(38,10)"
    assert columns["accounts", "customer_id"].references == "customers.id"
    assert columns["ledger_lines", "booked_at"].type == "timestamp"
    assert columns["customers", "created_at"].type == "timestamptz"
    assert columns["events", "payload"].type == "json" and columns["customers", "profile"].type == "jsonb"
    assert columns["accounts", "currency"].type == "char(3)" and columns["customers", "email"].type == "varchar(200)"
    assert not columns["customers", "email"].nullable and columns["accounts", "opened_on"].nullable
    assert ("tags", "labels") not in columns and ("branches", "city") in columns
    assert (project / "dbt/models/staging/stg_auditlog.sql").is_file()
    assert '"KycStatus"' in (project / "dbt/models/staging/stg_customers.sql").read_text()
    for name in ("dbt/dbt_project.yml", "dbt/models/sources.yml", "dbt/models/staging/stg_ledger_lines.sql",
                 ".env.example", "README.md"):
        assert (project / name).is_file(), name
    assert "PGPASSWORD" in (project / ".env.example").read_text()


def test_init_spec_applies_and_verifies_on_local(source_url: str, state_dir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "proj"
    assert main(["init", str(project), "--name", "shop", "--from-postgres", source_url, "--schema", "shop",
                 "--allow-partial", "-q"]) == 0
    spec = str(project / "pipelines" / "shop.yaml")
    assert main(["validate", spec]) == 0
    try:
        assert main(["apply", spec, "-q"]) == 0, capsys.readouterr().err
        embedded = EmbeddedPostgres(state_dir / "postgres")
        conn = psycopg2.connect(**embedded.connect_kwargs(DATABASE))
        conn.autocommit = True
        with conn.cursor() as cur:  # the tables apply created from the spec take the source's rows as they are
            cur.execute(ROWS_SQL)
            cur.execute("UPDATE shop.accounts SET balance = balance + 0.0000000001 WHERE id = 1")
            cur.execute("DELETE FROM shop.tags")
        conn.close()
        assert main(["apply", spec, "-q"]) == 0, capsys.readouterr().err
        capsys.readouterr()
        code = main(["verify", spec, "--json"])
        out = capsys.readouterr()
        assert code == 0, out.out + out.err
        checks = {c["name"].split(":")[0]: c for c in json.loads(out.out)["checks"]}
        assert checks["ledger_lines"]["source_rows"] == 2 and checks["customers"]["warehouse_rows"] == 2
        assert checks["tags"]["source_rows"] == 0 and len(checks) == 9
        assert checks["AuditLog"]["source_rows"] == 1 and checks["AuditLog"]["ok"]
        import duckdb

        # dbt's staging models (incremental; a deleted key stays, flagged); the same configuration as
        # dbt-duckdb's connection, still open in this process
        with duckdb.connect(str(state_dir / "warehouse.duckdb")) as wh:
            rows = [wh.execute(q).fetchone()[0] for q in (
                "select count(*) from analytics.stg_ledger_lines",
                "select count(*) filter (where not is_deleted) || '/' || count(*) from analytics.stg_tags",
                "select balance::varchar from analytics.stg_accounts where id = 1",
                'select "KycStatus" || \':\' || kyc from analytics.stg_customers where id = 1',
                'select "Actor" || "order" from analytics.stg_auditlog')]
        assert rows == [2, "0/1", "1234567890123.0123456790", "Verified:verified", "Ada7"], rows
    finally:
        main(["down", spec, "--drop-slot", "-q"])
        EmbeddedPostgres(state_dir / "postgres").destroy()


def test_init_tables_subset(source_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "subset"
    assert main(["init", str(project), "--from-postgres", source_url, "--schema", "shop",
                 "--tables", "ledger_lines,accounts", "-q"]) == 0, capsys.readouterr().err
    spec = load_spec(project / "pipelines" / "subset.yaml", env="local").spec
    assert [t.name for t in spec.tables] == ["accounts", "ledger_lines"]  # parents first
    columns = {(t.name, c.name): c for t in spec.tables for c in t.columns}
    assert columns["ledger_lines", "account_id"].references == "accounts.id"
    assert columns["accounts", "customer_id"].references is None  # its parent is not in the spec: a comment
    assert "foreign key → shop.customers(id): not declared (not in the spec)" in \
        (project / "pipelines" / "subset.yaml").read_text()
    capsys.readouterr()
    assert main(["init", str(tmp_path / "missing"), "--from-postgres", source_url, "--schema", "shop",
                 "--tables", "accounts,nope"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and '"nope"' in err
    assert main(["init", str(tmp_path / "noschema"), "--from-postgres", source_url, "--schema", "nothing_here"]) == 1
    assert "has no tables" in capsys.readouterr().err
