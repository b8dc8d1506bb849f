"""A source named as real schemas are: a mixed-case table, reserved-word and mixed-case columns, enum columns (one
enum type itself mixed-case) and an unconstrained numeric, on a real PostgreSQL used as an external source.

`bankflow init --from-postgres` writes the spec (nothing left out), an environment points it at that database
with the built-in engine and DuckDB, `apply` snapshots it, rows changed afterwards arrive on the next `apply`,
`verify` passes, and an independent count and read of source and raw agree: enum labels and the numeric's exact
text arrive as the source has them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

psycopg2 = pytest.importorskip("psycopg2")
duckdb = pytest.importorskip("duckdb")

from bankflow.cli import main  # noqa: E402
from bankflow.source.embedded import EmbeddedPostgres  # noqa: E402
from bankflow.spec.loader import load_spec  # noqa: E402
from tests.fixtures.services import scratch_database  # noqa: E402

pytestmark = pytest.mark.integration

PASSWORD_VAR = "REAL_NAMES_PGPASSWORD"
HUGE = "12345678901234567890123456789012345678901234567890.000000000000000000000000000000123"

SCHEMA_SQL = """
CREATE SCHEMA bank;
CREATE TYPE bank.txn_type AS ENUM ('purchase', 'refund', 'charge back');
CREATE TYPE bank."TxnStatus" AS ENUM ('Pending', 'Booked', 'it''s odd');
CREATE TABLE bank."LoanSchedule" (
  "LoanId" bigint NOT NULL,
  "order" integer NOT NULL,
  "KycStatus" text,
  "user" varchar(40),
  kind bank.txn_type NOT NULL,
  status bank."TxnStatus",
  amount numeric,
  due_at timestamp(3) with time zone,
  PRIMARY KEY ("LoanId", "order")
);
CREATE TABLE bank.customers (id bigint PRIMARY KEY, "Name" text NOT NULL, "select" boolean);
"""
ROWS_SQL = f"""
INSERT INTO bank."LoanSchedule" VALUES
  (1, 1, 'Verified', 'ada', 'purchase', 'Booked', 10.50, '2024-01-01 10:00:00.123+00'),
  (1, 2, NULL, NULL, 'refund', NULL, '{HUGE}', NULL),
  (2, 1, 'Pending', 'bob', 'charge back', 'it''s odd', 'NaN', '2024-02-01 00:00:00+00'),
  (2, 2, 'x', 'y', 'purchase', 'Pending', -0.000000000000000000000000000000000000000001, NULL);
INSERT INTO bank.customers VALUES (1, 'Ada', true), (2, 'Bob', NULL);
"""
# After the first apply: inserts, an update of a reserved-word column's row, a delete.
CHANGES_SQL = """
INSERT INTO bank."LoanSchedule" VALUES
  (3, 1, 'New', 'cy', 'refund', 'Pending', 1.000000000000000000000000000000000000000000000001, now()),
  (3, 2, NULL, NULL, 'charge back', 'it''s odd', 0, NULL);
UPDATE bank."LoanSchedule" SET "KycStatus" = 'Rejected', amount = 99.990 WHERE "LoanId" = 1 AND "order" = 1;
DELETE FROM bank."LoanSchedule" WHERE "LoanId" = 2 AND "order" = 2;
INSERT INTO bank.customers VALUES (3, 'Cy', false);
"""

ENVIRONMENT = """\
  external:
    source:
      embedded: false
      host: {host}
      port: {port}
      user: {user}
      password: ${{{variable}}}
      database: {database}
      sslmode: disable
      manage: [publication, replica_identity, heartbeat, slot]
    cdc:
      engine: builtin
      slot: bankflow_{tag}
      publication: bankflow_{tag}
"""


@pytest.fixture
def source(pg_server: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[dict[str, Any], Any]]:
    monkeypatch.setenv(PASSWORD_VAR, pg_server.password)
    with scratch_database(pg_server, "real_names") as (kwargs, conn):
        with conn.cursor() as cur:
            cur.execute(SCHEMA_SQL)
            cur.execute(ROWS_SQL)
        yield kwargs, conn


def source_rows(conn: Any, sql: str) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql)
        return sorted(cur.fetchall(), key=repr)


def test_real_names_init_apply_stream_verify(source: tuple[dict[str, Any], Any], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    kwargs, conn = source
    state = tmp_path / "state"
    monkeypatch.setenv("BANKFLOW_STATE_DIR", str(state))
    url = (f"postgresql://{kwargs['user']}:{quote(kwargs['password'], safe='')}@{kwargs['host']}:{kwargs['port']}/"
           "real_names")
    project = tmp_path / "proj"
    code = main(["init", str(project), "--name", "realnames", "--from-postgres", url, "--schema", "bank"])
    assert code == 0, capsys.readouterr().err  # nothing left out: no --allow-partial needed
    spec_path = project / "pipelines" / "realnames.yaml"
    text = spec_path.read_text()
    assert 'name: "LoanSchedule"' in text and 'primary_key: ["LoanId", order]' in text
    assert 'enum_type: "TxnStatus", values: ["Pending", "Booked", "it\'s odd"]' in text
    assert '{name: amount, type: "numeric", carry_as: text}' in text and "numeric(38," in text
    tag = uuid.uuid4().hex[:8]
    spec_path.write_text(text + ENVIRONMENT.format(host=kwargs["host"], port=kwargs["port"], user=kwargs["user"],
                                                   variable=PASSWORD_VAR, database="real_names", tag=tag))
    spec = str(spec_path)
    resolved = load_spec(spec_path, env="external")
    table = resolved.spec.table("LoanSchedule")
    assert [c.name for c in table.columns] == ["LoanId", "order", "KycStatus", "user", "kind", "status", "amount",
                                               "due_at"]
    assert table.column("status").enum_type == "TxnStatus" and table.column("amount").carry_as == "text"
    try:
        assert main(["plan", spec, "--env", "external", "-q"]) == 0, capsys.readouterr().err
        assert main(["apply", spec, "--env", "external", "-q"]) == 0, capsys.readouterr().err
        with conn.cursor() as cur:
            cur.execute(CHANGES_SQL)
        assert main(["apply", spec, "--env", "external", "-q"]) == 0, capsys.readouterr().err
        capsys.readouterr()
        code = main(["verify", spec, "--env", "external", "--json"])
        out = capsys.readouterr()
        assert code == 0, out.out + out.err
        checks = {c["name"].split(":")[0]: c for c in json.loads(out.out)["checks"]}
        assert checks["LoanSchedule"]["ok"] and checks["LoanSchedule"]["source_rows"] == 5
        assert checks["customers"]["ok"] and checks["customers"]["source_rows"] == 3

        expected = source_rows(conn, 'SELECT "LoanId", "order", "KycStatus", "user", kind::text, status::text, '
                                     'amount::text FROM bank."LoanSchedule"')
        customers = source_rows(conn, 'SELECT id, "Name", "select" FROM bank.customers')
        # the same configuration as dbt-duckdb's connection, still open in this process
        with duckdb.connect(str(state / "warehouse.duckdb")) as wh:
            latest = ('SELECT "LoanId", "order", "KycStatus", "user", kind, status, amount FROM (SELECT *, '
                      'row_number() OVER (PARTITION BY "LoanId", "order" ORDER BY _lsn DESC) AS n FROM '
                      'raw."LoanSchedule") WHERE n = 1 AND _op <> \'d\'')
            raw_rows = sorted(wh.execute(latest).fetchall(), key=repr)
            events = wh.execute('SELECT _op, count(*) FROM raw."LoanSchedule" GROUP BY 1 ORDER BY 1').fetchall()
            raw_customers = sorted(wh.execute(
                'SELECT id, "Name", "select" FROM raw.customers WHERE _op <> \'d\'').fetchall(), key=repr)
            types = dict(wh.execute("SELECT column_name, data_type FROM information_schema.columns WHERE "
                                    "table_schema = 'raw' AND table_name = 'LoanSchedule'").fetchall())
            staging = wh.execute('SELECT "KycStatus", "order", amount FROM analytics.stg_loanschedule '
                                 'WHERE "LoanId" = 1 ORDER BY "order"').fetchall()
        assert len(raw_rows) == len(expected) == 5
        assert raw_rows == expected  # enum labels and the numeric's text exactly as the source has them
        assert events == [("c", 2), ("d", 1), ("r", 4), ("u", 1)]
        assert raw_customers == customers
        assert {name: types[name] for name in ("LoanId", "order", "KycStatus", "kind", "status", "amount")} == {
            "LoanId": "BIGINT", "order": "INTEGER", "KycStatus": "VARCHAR", "kind": "VARCHAR",
            "status": "VARCHAR", "amount": "VARCHAR"}
        assert (1, 2, None, None, "refund", None, HUGE) in raw_rows
        assert (2, 1, "Pending", "bob", "charge back", "it's odd", "NaN") in raw_rows
        assert staging == [("Rejected", 1, "99.990"), (None, 2, HUGE)]
    finally:
        main(["down", spec, "--env", "external", "--drop-slot", "-q"])
        with conn.cursor() as cur:  # nothing may keep the scratch database alive
            cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                        "WHERE slot_name = %s AND NOT active", (f"bankflow_{tag}",))
