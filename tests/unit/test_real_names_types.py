"""Names and types as real schemas have them, without a server: mixed-case and reserved names, enums, numeric
without precision, timestamp precision, arrays; how each warehouse spells a source name; the connector's include
list; the source contract on such columns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlglot

from bankflow.engines.debezium.connector import connector_config, include_regex
from bankflow.render.warehouse import load_statements, setup_statements
from bankflow.source.contract import CatalogColumn, CatalogTable, compare, same_source_type
from bankflow.source.ddl import application_schema_sql, source_statements
from bankflow.spec.base import SpecValueError, check_source_name, is_plain_name
from bankflow.spec.loader import ResolvedSpec, SpecError, load_spec
from bankflow.spec.types import PgTypeError, parse_pg_type, parse_source_type
from bankflow.verify import latest_state_sql

SPEC = """\
version: 1
name: real
source:
  type: postgres
  database: bank
  schema: app
  embedded: {embedded}
tables:
  - name: LoanSchedule
    primary_key: [LoanId, order]
    columns:
      - {{name: LoanId, type: bigint, nullable: false}}
      - {{name: order, type: integer, nullable: false}}
      - {{name: KycStatus, type: text}}
      - {{name: user, type: text}}
      - {{name: select, type: "timestamptz(3)"}}
      - {{name: kind, type: enum, enum_type: TxnType{values}}}
      - {{name: amount, type: numeric, carry_as: {carry}}}
      - {{name: plain_col, type: "numeric(12,2)"}}
{extra}cdc:
  topic_prefix: real
lake:
  url: file://lake
warehouse:
  type: {warehouse}
{warehouse_extra}
"""
VALUES = ", values: [purchase, refund, \"it's\"]"
SNOWFLAKE = """  account: xy12345
  user: loader
  password: pw-long-enough-42
  warehouse: wh
  database: bank
  stage: lake_stage
  file_format: pq
  stage_credentials: keys
"""


def write(tmp_path: Path, *, embedded: bool = True, values: str = VALUES, carry: str = "text", extra: str = "",
          warehouse: str = "duckdb") -> Path:
    text = SPEC.format(embedded=str(embedded).lower(), values=values, carry=carry, extra=extra, warehouse=warehouse,
                       warehouse_extra=SNOWFLAKE if warehouse == "snowflake" else "  path: wh.duckdb")
    if warehouse == "snowflake":
        text = text.replace("url: file://lake", "url: s3://bank-lake/real")
    path = tmp_path / "real.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def spec(tmp_path: Path, **kw: object) -> ResolvedSpec:
    return load_spec(write(tmp_path, **kw), check_dbt=False)  # type: ignore[arg-type]


def errors(tmp_path: Path, **kw: object) -> str:
    with pytest.raises(SpecError) as caught:
        spec(tmp_path, **kw)
    return str(caught.value)


# ---------------------------------------------------------------- the spec

def test_the_spec_keeps_the_sources_exact_names(tmp_path: Path) -> None:
    table = spec(tmp_path).spec.tables[0]
    assert table.name == "LoanSchedule" and table.primary_key == ["LoanId", "order"]
    assert [c.name for c in table.columns][:5] == ["LoanId", "order", "KycStatus", "user", "select"]


@pytest.mark.parametrize(("name", "plain"), [("amount", True), ("order", False), ("user", False),
                                             ("select", False), ("KycStatus", False), ("kyc status", False),
                                             ("_x1", True), ("1st", False), ("naïve", False)])
def test_plain_names(name: str, plain: bool) -> None:
    assert is_plain_name(name) is plain


@pytest.mark.parametrize(("name", "message"), [
    ("", "is empty"), ("a" * 64, "longer than 63 bytes"), ("é" * 32, "longer than 63 bytes"),
    ("bad\nname", "control character"), ('"KycStatus"', "double quote"), ("tab\tname", "control character"),
])
def test_source_names_refused(name: str, message: str) -> None:
    with pytest.raises(SpecValueError) as caught:
        check_source_name(name, "column name")
    assert message in str(caught.value)


def test_a_table_name_is_also_a_lake_path(tmp_path: Path) -> None:
    for name in ("a/b", "..", "x*", "y[1]"):
        with pytest.raises(SpecValueError):
            check_source_name(name, "table name", path_safe=True)
    assert check_source_name("Loan Schedule 2", "table name", path_safe=True) == "Loan Schedule 2"


def test_quoted_name_in_yaml_gets_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path)
    path.write_text(path.read_text().replace("{name: KycStatus,", "{name: '\"KycStatus\"',"))
    with pytest.raises(SpecError) as caught:
        load_spec(path, check_dbt=False)
    assert "double quote" in str(caught.value) and "without SQL quotes" in str(caught.value)


def test_names_differing_only_in_case_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path)
    path.write_text(path.read_text().replace("{name: user, type: text}", "{name: kycstatus, type: text}"))
    with pytest.raises(SpecError) as caught:
        load_spec(path, check_dbt=False)
    assert "differ only in case" in str(caught.value)
    extra = "  - name: loanschedule\n    primary_key: [id]\n    columns:\n      - {name: id, type: bigint, " \
            "nullable: false}\n"
    assert "differ only in case" in errors(tmp_path, extra=extra)


def test_cdc_and_bankflow_names_are_refused_in_any_case(tmp_path: Path) -> None:
    path = write(tmp_path)
    for name in ("_OP", "_Bankflow_x"):
        path.write_text(write(tmp_path).read_text().replace("{name: user,", f"{{name: {name},"))
        with pytest.raises(SpecError):
            load_spec(path, check_dbt=False)


def test_enum_column(tmp_path: Path) -> None:
    column = spec(tmp_path).spec.tables[0].column("kind")
    assert (column.type, column.enum_type, column.enum_values) == ("enum", "TxnType", ["purchase", "refund", "it's"])
    assert column.pg_type.kind == "text" and column.pg_type.arrow == "string"


def test_enum_without_values_is_refused_where_the_embedded_source_needs_them(tmp_path: Path) -> None:
    text = errors(tmp_path, values="")
    assert "without values" in text and "values: [" in text and "tables[0].columns[5]" in text
    external = spec(tmp_path, values="", embedded=False).spec.tables[0].column("kind")
    assert external.enum_values is None  # an external source has the type already


def test_enum_needs_its_type_and_values_need_an_enum(tmp_path: Path) -> None:
    path = write(tmp_path)
    path.write_text(path.read_text().replace(", enum_type: TxnType", ""))
    with pytest.raises(SpecError) as caught:
        load_spec(path, check_dbt=False)
    assert "enum_type" in str(caught.value)
    path.write_text(write(tmp_path).read_text().replace("{name: user, type: text}",
                                                        "{name: user, type: text, values: [a]}"))
    with pytest.raises(SpecError) as caught:
        load_spec(path, check_dbt=False)
    assert "applies only to type: enum" in str(caught.value)


def test_numeric_without_precision_needs_carry_as(tmp_path: Path) -> None:
    path = write(tmp_path)
    path.write_text(path.read_text().replace(", carry_as: text", ""))
    with pytest.raises(SpecError) as caught:
        load_spec(path, check_dbt=False)
    text = str(caught.value)
    assert "numeric" in text and "carry_as: text" in text and "carry_as: numeric(38,10)" in text
    assert "tables[0].columns[6].type" in text


@pytest.mark.parametrize(("carry", "arrow"), [("text", "string"), ('"numeric(38,10)"', "decimal128(38,10)")])
def test_numeric_carry_as(tmp_path: Path, carry: str, arrow: str) -> None:
    column = spec(tmp_path, carry=carry).spec.tables[0].column("amount")
    assert column.type == "numeric" and column.source_type.precision is None and column.pg_type.arrow == arrow


def test_carry_as_must_be_text_or_an_exact_numeric(tmp_path: Path) -> None:
    assert "neither text nor numeric" in errors(tmp_path, carry="bigint")
    assert "1..38" in errors(tmp_path, carry='"numeric(39,2)"')


@pytest.mark.parametrize(("text", "sql"), [
    ("timestamptz(6)", "timestamptz"), ("timestamptz(3)", "timestamptz(3)"), ("timestamp(0)", "timestamp(0)"),
    ("timestamp(6) with time zone", "timestamptz"), ("timestamp(3) without time zone", "timestamp(3)"),
    ("time(3)", "time(3)"),
])
def test_time_precision(text: str, sql: str) -> None:
    parsed = parse_pg_type(text)
    assert parsed.sql == sql and parsed.arrow.startswith(("timestamp[us", "time64[us]"))


@pytest.mark.parametrize("text", ["timestamptz(7)", "text[]", "integer[3]", "_int4", "integer array", "numeric"])
def test_refused_types_say_what_to_write(text: str) -> None:
    with pytest.raises(PgTypeError) as caught:
        parse_pg_type(text)
    assert caught.value.hint
    if "[" in text or "array" in text or text.startswith("_"):
        assert "array" in str(caught.value) and "jsonb" in caught.value.hint
    if text == "numeric":
        assert "carry_as: text" in caught.value.hint


def test_source_types() -> None:
    assert parse_source_type("numeric").sql == "numeric" and parse_source_type("numeric(50,10)").precision == 50
    assert parse_source_type("enum").kind == "enum"


# ---------------------------------------------------------------- Postgres DDL

def test_embedded_ddl_quotes_every_name_and_creates_the_enum_first(tmp_path: Path) -> None:
    statements = source_statements(spec(tmp_path))
    enum = next(i for i, s in enumerate(statements) if "CREATE TYPE" in s)
    table = next(i for i, s in enumerate(statements) if s.startswith("CREATE TABLE IF NOT EXISTS \"app\".\"Loan"))
    assert enum < table
    assert "CREATE TYPE \"app\".\"TxnType\" AS ENUM ('purchase', 'refund', 'it''s')" in statements[enum]
    ddl = statements[table]
    for piece in ('"LoanId" bigint NOT NULL', '"order" integer NOT NULL', '"KycStatus" text', '"user" text',
                  '"select" timestamptz(3)', '"kind" "app"."TxnType"', '"amount" numeric,',
                  '"plain_col" numeric(12,2)', 'PRIMARY KEY ("LoanId", "order")'):
        assert piece in ddl, (piece, ddl)
    assert 'ALTER TABLE "app"."LoanSchedule" REPLICA IDENTITY FULL' in statements
    assert application_schema_sql(spec(tmp_path)).count("CREATE TYPE") == 1


def test_enum_labels_cannot_end_the_dollar_quote(tmp_path: Path) -> None:
    statement = next(s for s in source_statements(spec(tmp_path, values=", values: [a$bankflow$b]"))
                     if "CREATE TYPE" in s)
    tag = statement.split()[1]
    assert tag != "$bankflow$" and statement.count(tag) == 2


# ---------------------------------------------------------------- warehouses

def test_duckdb_spells_source_names_exactly(tmp_path: Path) -> None:
    resolved = spec(tmp_path)
    ddl = setup_statements(resolved, reveal=False)[1]
    assert ddl.startswith('CREATE TABLE IF NOT EXISTS "raw"."LoanSchedule" (')
    for piece in ('"LoanId" BIGINT', '"order" INTEGER', '"KycStatus" VARCHAR', '"user" VARCHAR',
                  '"select" TIMESTAMPTZ', '"kind" VARCHAR', '"amount" VARCHAR', '"plain_col" DECIMAL(12,2)',
                  '"_lsn" BIGINT'):
        assert piece in ddl, (piece, ddl)
    sqlglot.parse_one(ddl, read="duckdb")
    load = load_statements(resolved, resolved.spec.tables[0], ["/lake/a.parquet"])[0]
    assert load.startswith('INSERT INTO "raw"."LoanSchedule" BY NAME')
    latest = latest_state_sql(resolved, resolved.spec.tables[0])
    assert 'SELECT "LoanId", "order", "KycStatus", "user", "select", "kind", "amount", "plain_col" FROM' in latest
    assert 'PARTITION BY "LoanId", "order"' in latest and 'FROM "raw"."LoanSchedule"' in latest
    sqlglot.parse_one(latest, read="duckdb")


def test_snowflake_folds_plain_names_and_keeps_the_others(tmp_path: Path) -> None:
    resolved = spec(tmp_path, warehouse="snowflake")
    dialect = resolved.spec.warehouse.dialect()
    assert [dialect.spell(n) for n in ("amount", "order", "KycStatus", "user", "_lsn")] == [
        "AMOUNT", "order", "KycStatus", "user", "_LSN"]
    ddl = next(s for s in setup_statements(resolved, reveal=False) if s.startswith("CREATE TABLE"))
    assert ddl.startswith('CREATE TABLE IF NOT EXISTS "BANK"."RAW"."LoanSchedule" (')
    for piece in ('"LoanId" NUMBER(19,0)', '"order" NUMBER(10,0)', '"KycStatus" VARCHAR', '"user" VARCHAR',
                  '"select" TIMESTAMP_TZ(6)', '"KIND" VARCHAR', '"AMOUNT" VARCHAR', '"PLAIN_COL" NUMBER(12,2)',
                  '"_LSN" NUMBER(19,0)'):
        assert piece in ddl, (piece, ddl)
    sqlglot.parse_one(ddl, read="snowflake")
    copy = load_statements(resolved, resolved.spec.tables[0], ["a.parquet"])[0]
    assert copy.startswith('COPY INTO "BANK"."RAW"."LoanSchedule"') and "CASE_INSENSITIVE" in copy
    latest = latest_state_sql(resolved, resolved.spec.tables[0])
    assert '"LoanId", "order", "KycStatus", "user", "select", "KIND", "AMOUNT", "PLAIN_COL"' in latest
    assert 'ORDER BY "_LSN" DESC' in latest
    sqlglot.parse_one(latest, read="snowflake")


# ---------------------------------------------------------------- Debezium

def test_include_list_escapes_names_for_debeziums_regexes(tmp_path: Path) -> None:
    path = write(tmp_path, embedded=False)
    path.write_text(path.read_text() + "environments:\n  stack:\n    cdc:\n      engine: debezium\n")
    resolved = load_spec(path, env="stack", check_dbt=False)
    config = connector_config(resolved)
    assert config["table.include.list"] == r"app\.LoanSchedule,app\._bankflow_signal"
    assert config["schema.include.list"] == "app"
    assert include_regex("app", "a,b c.d$") == r"app\.a\x2Cb\x20c\.d\x24"
    import re

    for name in ("LoanSchedule", "a,b c.d$", "x+y(1)", "naïve"):
        pattern = include_regex("app", name)
        assert "," not in pattern and re.fullmatch(pattern.replace(r"\x2C", ","), f"app.{name}")
        assert not re.fullmatch(pattern, f"app.{name}x")
    assert resolved.spec.topic_for(resolved.spec.tables[0]) == "real.app.LoanSchedule"
    other = resolved.spec.tables[0].model_copy(update={"name": "Loan Schedule"})
    assert resolved.spec.topic_for(other) == "real.app.Loan_Schedule"
    emoji = resolved.spec.tables[0].model_copy(update={"name": "naïve\U0001f600"})
    assert resolved.spec.topic_for(emoji) == "real.app.na_ve__"  # as Java counts: a UTF-16 unit each
    assert json.dumps(config)  # strings only


# ---------------------------------------------------------------- the contract

def catalog(kind: CatalogColumn, amount: str = "numeric", select: str = "timestamp(3) with time zone"
            ) -> dict[str, CatalogTable]:
    columns = [CatalogColumn("LoanId", "bigint", True), CatalogColumn("order", "integer", True),
               CatalogColumn("KycStatus", "text", False), CatalogColumn("user", "text", False),
               CatalogColumn("select", select, False), kind, CatalogColumn("amount", amount, False),
               CatalogColumn("plain_col", "numeric(12,2)", False)]
    return {"LoanSchedule": CatalogTable("LoanSchedule", columns, ["LoanId", "order"], "full")}


ENUM_COLUMN = CatalogColumn("kind", '"TxnType"', False, "e", "TxnType", ("purchase", "refund", "it's"))


def test_contract_matches_enum_numeric_and_precision(tmp_path: Path) -> None:
    assert compare(spec(tmp_path), catalog(ENUM_COLUMN)) == []


def test_contract_reports_what_differs(tmp_path: Path) -> None:
    resolved = spec(tmp_path)
    wrong_enum = CatalogColumn("kind", "app.other", False, "e", "other", ("a",))
    found = [f.message for f in compare(resolved, catalog(wrong_enum))]
    assert found == ["enum TxnType in the spec, enum other in the source"]
    found = [f.message for f in compare(resolved, catalog(CatalogColumn("kind", "text", False)))]
    assert found == ["enum TxnType in the spec, text in the source"]
    found = [f.message for f in compare(resolved, catalog(ENUM_COLUMN, amount="numeric(20,4)"))]
    assert found == ["type numeric in the spec, numeric(20,4) in the source"]
    # the spec asks for 3 digits: a source with 6 is a difference
    found = [f.message for f in compare(resolved, catalog(ENUM_COLUMN, select="timestamp with time zone"))]
    assert found == ["type timestamptz(3) in the spec, timestamp with time zone in the source"]
    labels = CatalogColumn("kind", '"TxnType"', False, "e", "TxnType", ("purchase", "refund", "it's", "fee"))
    warnings = compare(resolved, catalog(labels))
    assert [(f.severity, f.column) for f in warnings] == [("warning", "kind")] and "fee" in warnings[0].message


def test_contract_a_spec_time_without_precision_matches_any(tmp_path: Path) -> None:
    path = write(tmp_path)
    path.write_text(path.read_text().replace('"timestamptz(3)"', "timestamptz"))
    resolved = load_spec(path, check_dbt=False)
    for text in ("timestamp(3) with time zone", "timestamp(6) with time zone", "timestamp with time zone"):
        assert compare(resolved, catalog(ENUM_COLUMN, select=text)) == [], text
    column = resolved.spec.tables[0].column("select")
    assert same_source_type(column, "timestamp(0) with time zone")
    assert not same_source_type(column, "timestamp(3) without time zone")
    assert same_source_type(resolved.spec.tables[0].column("kind"), '"TxnType"', "e", "TxnType")


# ---------------------------------------------------------------- Kafka consumer decoding

@pytest.mark.parametrize("path", ["native", "msgspec"])
def test_debezium_field_names_are_matched_exactly(tmp_path: Path, path: str, monkeypatch: pytest.MonkeyPatch
                                                  ) -> None:
    """Debezium writes the source's names as they are: nothing may fold them (a folded name is an unknown column,
    and the event a dead letter, not a row with nulls)."""
    import orjson

    from bankflow.lake import native as native_module
    from bankflow.lake.batch import TableBatch
    from bankflow.lake.positions import KafkaPosition

    if path == "msgspec":
        monkeypatch.setattr(native_module, "extension", None)
    table = spec(tmp_path).spec.tables[0]
    after = {"LoanId": 7, "order": 2, "KycStatus": "Verified", "user": "ada", "select": None, "kind": "it's",
             "amount": "1.000000000000000000000000000000000000000000001", "plain_col": "12.50"}
    good = {"op": "c", "after": after, "source": {"lsn": 10, "txId": 3, "ts_us": 1_700_000_000_000_000}}
    folded = {**good, "after": {("kycstatus" if k == "KycStatus" else k): v for k, v in after.items()}}
    batch = TableBatch(table)
    batch.append_debezium_values([orjson.dumps(good), orjson.dumps(folded)], [KafkaPosition(0, 1),
                                                                             KafkaPosition(0, 2)])
    rows = batch.to_arrow("k.parquet").to_pylist()
    assert [(r["KycStatus"], r["order"], r["kind"], r["amount"]) for r in rows] == [
        ("Verified", 2, "it's", "1.000000000000000000000000000000000000000000001")]
    assert len(batch.dead_letters) == 1 and "kycstatus" in batch.dead_letters[0].reason
