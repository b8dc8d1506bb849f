"""Bad specs: each is tests/specs/minimal.yaml with one text edit, and must fail with exit 1, no traceback, and
an issue naming file:line (the exact line), the field path and a hint.

The line numbers below are those of the edited file; tests/specs/minimal.yaml is:

     1 # comment                        16   topic_prefix: mini
     2 version: 1                       17   heartbeat_interval_ms: 5000
     3 name: mini                       18 lake:
     4 source:                          19   url: file://lake
     5   type: postgres                 20   layout: "{table}/date={date}"
     6   database: shop                 21 warehouse:
     7   schema: shop                   22   type: duckdb
     8 tables:                          23   path: wh.duckdb
     9   - name: items                  24 transform:
    10     primary_key: [id]            25   project_dir: minimal_dbt
    11     columns:                     26   steps:
    12       - {name: id, …}            27     - {command: run, select: [staging]}
    13       - {name: label, …}         28 environments:
    14       - {name: price, …}         29   stack: …
    15 cdc:
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bankflow.cli import main
from tests.specs.support import MINIMAL, REPO, SPECS

INJECTION = "'x\"; drop table y; --'"
OTHER_TABLE = ("  - name: other\n{extra}    primary_key: [id]\n    columns:\n"
               "      - {{name: id, type: bigint, nullable: false}}\n")
SNOWFLAKE = ("warehouse:\n  type: snowflake\n  account: acc\n  user: usr\n  warehouse: wh\n  database: db\n"
             "  stage_credentials: keys\n")
DUCKDB = "warehouse:\n  type: duckdb\n  path: wh.duckdb\n"
VERIFY = ("verify:\n  checks:\n    - name: sneaky\n      source_sql: select 1\n      warehouse_sql: select 1\n")


@dataclass(frozen=True)
class Bad:
    id: str
    old: str  # text in minimal.yaml ...
    new: str  # ... replaced by this
    line: int | None  # expected line of the issue
    field: str  # expected field path ("" when there is none, e.g. YAML syntax)
    message: str  # a substring of the message
    hint: str  # a substring of the hint
    args: tuple[str, ...] = ()


BAD = [
    Bad("yaml-syntax", "  database: shop\n", "  database: [shop\n", 7, "", "YAML syntax error",
        "check indentation"),
    Bad("unknown-top-level-key", "\ncdc:\n", "\ntabels: []\ncdc:\n", 15, "tabels", "unknown key 'tabels'",
        "did you mean 'tables'?"),
    Bad("unknown-nested-key", '  layout: "{table}/date={date}"\n',
        '  layout: "{table}/date={date}"\n  flsh: {max_rows: 10}\n', 21, "lake.flsh", "unknown key 'flsh'",
        "did you mean 'flush'?"),
    Bad("wrong-type-port", "  database: shop\n", "  database: shop\n  port: abc\n", 7, "source.port",
        "valid integer", "got 'abc'"),
    Bad("bad-enum-engine", "  heartbeat_interval_ms: 5000\n", "  heartbeat_interval_ms: 5000\n  engine: kafka\n",
        18, "cdc.engine", "'builtin' or 'debezium'", "listed values"),
    Bad("missing-required-lake-url", "  url: file://lake\n", "", 18, "lake.url", "required field is missing",
        "add 'url:'"),
    # validate defers an unset variable (a note) unless the value must be typed, as a port must.
    Bad("missing-env-variable", "  database: shop\n", "  database: shop\n  port: ${BANKFLOW_TEST_UNSET_VAR}\n",
        7, "source.port", "environment variable BANKFLOW_TEST_UNSET_VAR is not set",
        "export BANKFLOW_TEST_UNSET_VAR="),
    Bad("table-name-with-a-slash", "  - name: items\n", "  - name: my/items\n", 9, "tables[0].name",
        "'my/items' holds one of / \\ * ? [ ]", "rename the table in the source"),
    Bad("sql-injection-table", "  - name: items\n", f"  - name: {INJECTION}\n", 9, "tables[0].name",
        "holds a double quote", "without SQL quotes"),
    Bad("sql-injection-column", "{name: label,", f"{{name: {INJECTION},", 13, "tables[0].columns[1].name",
        "holds a double quote", "without SQL quotes"),
    Bad("schema-with-dash", "  schema: shop\n", "  schema: my-shop\n", 7, "source.schema",
        "'my-shop' is not a valid identifier", "lower-case letters, digits and underscores"),
    Bad("sql-injection-schema", "  schema: shop\n", f"  schema: {INJECTION}\n", 7, "source.schema",
        "is not a valid identifier", "lower-case letters"),
    Bad("reserved-cdc-column", "{name: label,", "{name: _op,", 13, "tables[0].columns[1].name",
        "'_op' is reserved for CDC metadata", "rename the column"),
    Bad("primary-key-not-a-column", "primary_key: [id]", "primary_key: [idx]", 10, "tables[0].primary_key[0]",
        "'idx' is not a column of table 'items'", "id, label, price"),
    Bad("nullable-primary-key", "{name: id, type: bigint, nullable: false}", "{name: id, type: bigint}", 10,
        "tables[0].primary_key", "primary key column 'id' is nullable", "nullable: false"),
    Bad("duplicate-column", "      - {name: label, type: text}\n",
        "      - {name: label, type: text}\n      - {name: label, type: text}\n", 14,
        "tables[0].columns[2].name", "declares column 'label' more than once", "remove or rename"),
    Bad("duplicate-table", "\ncdc:\n", "\n" + OTHER_TABLE.format(extra="").replace("other", "items") + "cdc:\n", 15,
        "tables[1].name", "table 'items' is declared twice", "remove or rename"),
    Bad("duplicate-topic", "\ncdc:\n", "\n" + OTHER_TABLE.format(extra="    topic: mini.shop.items\n") + "cdc:\n", 16,
        "tables[1].topic", "topic 'mini.shop.items' is used by tables 'items' and 'other'",
        "its own topic"),
    Bad("topic-not-matching-prefix", "    primary_key: [id]\n", "    primary_key: [id]\n    topic: wrong.shop.items\n",
        11, "tables[0].topic", "does not match the connector's naming 'mini.shop.items'", "{topic_prefix}"),
    Bad("raw-table-collision", "\ncdc:\n", "\n" + OTHER_TABLE.format(extra="    raw_table: items\n") + "cdc:\n", 16,
        "tables[1].raw_table", "raw table 'items' is the target of tables 'items' and 'other'",
        "its own raw_table"),
    Bad("numeric-without-precision", '"numeric(12,2)"', "numeric", 14, "tables[0].columns[2].type",
        "no decimal128 holds every value of it exactly", "carry_as: text"),
    Bad("unknown-column-type", "{name: label, type: text}", "{name: label, type: money}", 13,
        "tables[0].columns[1].type", "unknown column type 'money'", "use one of:"),
    Bad("numeric-precision-over-38", '"numeric(12,2)"', '"numeric(39,2)"', 14, "tables[0].columns[2].type",
        "no decimal128 holds every value of it exactly", "carry_as: numeric(38,10)"),
    Bad("dbt-selector-matches-nothing", "select: [staging]", "select: [no_such_model]", 27,
        "transform.steps[0].select", "selector 'no_such_model' matches no model", "folders: staging"),
    Bad("dbt-project-dir-missing", "project_dir: minimal_dbt", "project_dir: no_such_dbt", 25,
        "transform.project_dir", "no dbt_project.yml", "point project_dir at a dbt project"),
    Bad("unknown-layout-placeholder", 'layout: "{table}/date={date}"', 'layout: "{table}/{month}"', 20,
        "lake.layout", "unknown placeholder {month}", "{table}, {schema}, {topic}, {date}, {partition}"),
    Bad("layout-with-dotdot", 'layout: "{table}/date={date}"', 'layout: "../{table}"', 20, "lake.layout",
        "without '..'", "under lake.url"),
    Bad("lake-url-ftp", "url: file://lake", "url: ftp://lake", 19, "lake.url",
        "'ftp://lake' must start with file:// or s3://", "s3://bucket/prefix"),
    Bad("snowflake-with-file-lake", DUCKDB, SNOWFLAKE, 19, "lake.url", "the lake must be on s3://",
        "set lake.url to s3://"),
    Bad("key-pair-without-private-key-path", DUCKDB, SNOWFLAKE + "  authenticator: key_pair\n", 28,
        "warehouse.authenticator", "key_pair needs private_key_path", "set private_key_path"),
    Bad("unknown-environment", "version: 1\n", "version: 1\n", 28, "environments", "no environment named 'nope'",
        "choose one of: stack", ("--env", "nope")),
    Bad("verify-check-two-statements", "environments:\n",
        "verify:\n  checks:\n    - name: two\n      source_sql: select 1; drop table items\n"
        "      warehouse_sql: select 1\nenvironments:\n", 31, "verify.checks[0].source_sql",
        "must be a single SELECT", "one SELECT"),
    Bad("reference-to-missing-column", "{name: label, type: text}",
        "{name: label, type: text, references: items.nope}", 13, "tables[0].columns[1].references",
        "'items.nope' is not a column of a declared table", "declared tables: items"),
    Bad("duplicate-yaml-key", "  topic_prefix: mini\n", "  topic_prefix: mini\n  topic_prefix: again\n", 17,
        "cdc.topic_prefix", "duplicate key 'topic_prefix'", "remove one"),
    Bad("typo-in-environment-overlay", "      engine: debezium\n", "      engine: debezium\n      enigne: x\n", 32,
        "cdc.enigne", "unknown key 'enigne'", "did you mean 'engine'?", ("--env", "stack")),
    Bad("unknown-key-in-a-column", "{name: label, type: text}", "{name: label, type: text, nullabel: true}", 13,
        "tables[0].columns[1].nullabel", "unknown key 'nullabel'", "did you mean 'nullable'?"),
    Bad("snapshot-mode-builtin-cannot-do", "  heartbeat_interval_ms: 5000\n",
        "  heartbeat_interval_ms: 5000\n  snapshot_mode: initial_only\n", 18, "cdc.snapshot_mode",
        "not supported by the built-in engine", "or set engine: debezium"),
    Bad("negative-heartbeat", "heartbeat_interval_ms: 5000", "heartbeat_interval_ms: -1", 17,
        "cdc.heartbeat_interval_ms", "greater than or equal to 0", "got -1"),
    Bad("scalar-where-a-mapping-belongs", "\nlake:\n", "\nlake: nope\nold_lake:\n", 18, "lake",
        "valid dictionary", "got 'nope'"),
    Bad("unsupported-version", "version: 1\n", "version: 2\n", 2, "version", "Input should be 1", "listed values"),
    Bad("snowflake-integration-without-name", DUCKDB,
        SNOWFLAKE.replace("  stage_credentials: keys\n", "  stage_credentials: integration\n"), 27,
        "warehouse.stage_credentials", "needs storage_integration", "set storage_integration"),
    Bad("typo-in-the-snowflake-variant", DUCKDB, SNOWFLAKE + "  stge: lake_stage\n", 28, "warehouse.stge",
        "unknown key 'stge'", "did you mean 'stage'?"),
    Bad("typo-in-the-duckdb-variant", "  path: wh.duckdb\n", "  pth: wh.duckdb\n", 23, "warehouse.pth",
        "unknown key 'pth'", "did you mean 'path'?"),
    Bad("bad-warehouse-type", "  type: duckdb\n", "  type: bigquery\n", 22, "warehouse",
        "does not match any of the expected tags: 'duckdb', 'snowflake'", "one of the listed values"),
    # Specs that used to validate and then fail or misbehave later (issue 13).
    Bad("table-named-like-bankflows-own", "  - name: items\n", "  - name: _bankflow_heartbeat\n", 9,
        "tables[0].name", "starts with '_bankflow'", "rename the table"),
    Bad("raw-table-named-like-the-ledger", "    primary_key: [id]\n",
        "    primary_key: [id]\n    raw_table: _bankflow_loaded_files\n", 11, "tables[0].raw_table",
        "starts with '_bankflow'", "rename the table"),
    Bad("column-named-like-verifys-helper", "{name: label, type: text}", "{name: _bankflow_rank, type: text}", 13,
        "tables[0].columns[1].name", "starts with '_bankflow'", "rename the column"),
    Bad("varchar-of-length-zero", "{name: label, type: text}", "{name: label, type: varchar(0)}", 13,
        "tables[0].columns[1].type", "a length must be 1..10485760", "e.g. varchar(255)"),
    Bad("varchar-longer-than-postgres-allows", "{name: label, type: text}", "{name: label, type: varchar(99999999)}",
        13, "tables[0].columns[1].type", "a length must be 1..10485760", "text for unbounded strings"),
    Bad("identity-on-a-text-column", "{name: label, type: text}", "{name: label, type: text, identity: true}", 13,
        "tables[0].columns[1].identity", "an identity column must be an integer", "use bigint"),
    Bad("primary-key-on-json",
        "    primary_key: [id]\n    columns:\n      - {name: id, type: bigint, nullable: false}\n"
        "      - {name: label, type: text}\n",
        "    primary_key: [label]\n    columns:\n      - {name: id, type: bigint, nullable: false}\n"
        "      - {name: label, type: json, nullable: false}\n", 10, "tables[0].primary_key[0]", "has no equality",
        "key on another column"),
    Bad("primary-key-column-twice", "    primary_key: [id]\n", "    primary_key: [id, id]\n", 10,
        "tables[0].primary_key[1]", "lists column 'id' twice", "list each key column once"),
    Bad("foreign-key-to-a-non-key-column", "\ncdc:\n", "\n" + OTHER_TABLE.format(extra="")
        + "      - {name: item_label, type: text, references: items.label}\ncdc:\n", 19,
        "tables[1].columns[1].references", "is not the primary key of 'items'", "reference items.id"),
    Bad("foreign-key-between-different-types", "\ncdc:\n", "\n" + OTHER_TABLE.format(extra="")
        + "      - {name: item_id, type: text, references: items.id}\ncdc:\n", 19,
        "tables[1].columns[1].references", "is text but 'items.id' is bigint", "give both columns the same type"),
    Bad("foreign-key-cycle", "      - {name: price, type: \"numeric(12,2)\"}\ncdc:\n",
        "      - {name: price, type: \"numeric(12,2)\"}\n      - {name: other_id, type: bigint, references: other.id}\n"
        + OTHER_TABLE.format(extra="") + "      - {name: item_id, type: bigint, references: items.id}\ncdc:\n", 9,
        "tables[0].name", "foreign keys form a cycle: items → other → items", "drop one of the references"),
    Bad("unterminated-variable", "  database: shop\n", "  database: ${DB_NAME\n", 6, "source.database",
        "unterminated or malformed variable reference", "write ${NAME} or ${NAME:-default}"),
    Bad("nested-variable-default", "  database: shop\n", "  database: ${DB:-${OTHER}}\n", 6, "source.database",
        "nested variable reference", "give a literal default"),
    Bad("s3-lake-without-a-bucket", "  url: file://lake\n", "  url: s3://\n", 19, "lake.url", "names no bucket",
        "s3://bucket/prefix"),
    Bad("file-lake-without-a-path", "  url: file://lake\n", "  url: file://\n", 19, "lake.url",
        "names no directory", "file://path"),
    Bad("s3-lake-with-an-empty-bucket", "  url: file://lake\n", "  url: s3:///x\n", 19, "lake.url",
        "does not start with a valid bucket name", "write s3://bucket/prefix"),
    Bad("layout-with-unbalanced-braces", '  layout: "{table}/date={date}"\n', '  layout: "{table}/date={date"\n', 20,
        "lake.layout", "unbalanced braces", "each placeholder is {name}"),
    Bad("dead-letters-outside-the-lake", '  layout: "{table}/date={date}"\n',
        '  layout: "{table}/date={date}"\n  dead_letter: ../../x\n', 21, "lake.dead_letter",
        "must be a relative path under the lake", "dead_letter: _dead_letter"),
    Bad("quote-in-an-s3-lake-url", "  url: file://lake\n", "  url: \"s3://bank-lake/x\\\\' FILE_FORMAT\"\n", 19,
        "lake.url", "holds a quote, backslash, space or control character", "use letters, digits"),
    Bad("s3-endpoint-that-is-not-a-url", '  layout: "{table}/date={date}"\n',
        '  layout: "{table}/date={date}"\n  s3_endpoint: "minio:9000\'"\n', 21, "lake.s3_endpoint",
        "is not an http(s)://host[:port] URL", "e.g. s3_endpoint: http://127.0.0.1:9000"),
    Bad("state-dir-with-a-line-break", "name: mini\n", 'name: mini\nstate_dir: "st\\nwork_mem = 1"\n', 4,
        "state_dir", "holds a line break or control character", "use a plain directory path"),
    Bad("array-column", "{name: label, type: text}", '{name: label, type: "integer[]"}', 13,
        "tables[0].columns[1].type", "is an array", "keep it as jsonb"),
    Bad("dbt-builds-into-the-raw-schema", "  project_dir: minimal_dbt\n",
        "  project_dir: minimal_dbt\n  target_schema: raw\n", 26, "transform.target_schema",
        "models would be built among the raw tables", "give transform.target_schema its own name"),
    Bad("verify-deletes-in-a-cte", "environments:\n", VERIFY.replace(
        "warehouse_sql: select 1", "warehouse_sql: with x as (delete from raw.items returning *) select * from x")
        + "environments:\n", 32, "verify.checks[0].warehouse_sql", "it contains DELETE",
        "one SELECT that only reads tables"),
    Bad("verify-reads-a-server-file", "environments:\n", VERIFY.replace(
        "source_sql: select 1", "source_sql: select pg_read_file('/etc/passwd')") + "environments:\n", 31,
        "verify.checks[0].source_sql", "it calls pg_read_file()", "one SELECT that only reads tables"),
    Bad("verify-drops-a-slot", "environments:\n", VERIFY.replace(
        "source_sql: select 1", "source_sql: select pg_drop_replication_slot('bankflow')") + "environments:\n", 31,
        "verify.checks[0].source_sql", "pg_drop_replication_slot", "one SELECT that only reads tables"),
    Bad("dbt-option-as-a-selector", "    - {command: run, select: [staging]}\n",
        '    - {command: run, select: ["--target-path=/elsewhere:models/marts"]}\n', 27,
        "transform.steps[0].select[0]", "is not a dbt selector", "write node names"),
    Bad("dead-letters-at-an-absolute-path", '  layout: "{table}/date={date}"\n',
        '  layout: "{table}/date={date}"\n  dead_letter: /etc/x\n', 21, "lake.dead_letter",
        "must be a relative path under the lake", "dead_letter: _dead_letter"),
]
assert len(BAD) >= 25


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory with the minimal spec's dbt project; the test runs there so paths are relative."""
    shutil.copytree(SPECS / "minimal_dbt", tmp_path / "minimal_dbt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BANKFLOW_TEST_UNSET_VAR", raising=False)
    return tmp_path


def write_bad(directory: Path, bad: Bad) -> Path:
    text = MINIMAL.read_text(encoding="utf-8")
    assert text.count(bad.old) == 1, f"{bad.id}: edit target must occur once in minimal.yaml"
    path = directory / "spec.yaml"
    path.write_text(text.replace(bad.old, bad.new), encoding="utf-8")
    return path


def issue_pattern(bad: Bad, file: str = "spec.yaml") -> re.Pattern[str]:
    """One line: `file:LINE:COL: error: FIELD: …message… (hint: …)`."""
    field = re.escape(bad.field) + ": " if bad.field else ""
    return re.compile(
        rf"^{re.escape(file)}:{bad.line}:\d+: error: {field}[^\n]*{re.escape(bad.message)}[^\n]*"
        rf" \(hint: [^\n]*{re.escape(bad.hint)}[^\n]*\)$",
        re.MULTILINE,
    )


def test_minimal_spec_is_valid(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(MINIMAL, workdir / "spec.yaml")
    assert main(["validate", "spec.yaml"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "spec.yaml: valid"
    assert err == ""


@pytest.mark.parametrize("bad", BAD, ids=[b.id for b in BAD])
def test_bad_spec(bad: Bad, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_bad(workdir, bad)
    assert main(["validate", "spec.yaml", *bad.args]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert "valid" not in out
    assert issue_pattern(bad).search(err), f"expected spec.yaml:{bad.line}: {bad.field}: … in:\n{err}"
    # Every issue printed is one line naming a location, and every error carries a hint.
    for line in err.splitlines():
        assert re.match(r"^spec\.yaml:\d+:\d+: (error|warning|note): ", line), line
    assert err.count(": error: ") == err.count(" (hint: "), err


@pytest.mark.parametrize("bad", [b for b in BAD if b.id in (
    "yaml-syntax", "sql-injection-table", "missing-env-variable", "dbt-selector-matches-nothing")],
    ids=lambda b: b.id)
def test_bad_spec_in_a_subprocess(bad: Bad, workdir: Path) -> None:
    """The real command: exit status 1, the issue on stderr, no traceback."""
    write_bad(workdir, bad)
    result = subprocess.run([sys.executable, "-m", "bankflow", "validate", "spec.yaml", *bad.args],
                            capture_output=True, text=True, cwd=workdir, timeout=60,
                            env={k: v for k, v in __import__("os").environ.items()
                                 if k != "BANKFLOW_TEST_UNSET_VAR"} | {"PYTHONPATH": str(REPO)})
    assert result.returncode == 1, result
    assert "Traceback" not in result.stdout + result.stderr
    assert issue_pattern(bad).search(result.stderr), result.stderr


def test_several_issues_are_reported_together(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Validation does not stop at the first problem: a typo and a bad type in one run."""
    text = MINIMAL.read_text(encoding="utf-8").replace("  url: file://lake", "  ulr: file://lake").replace(
        "type: text}", "type: money}")
    (workdir / "spec.yaml").write_text(text, encoding="utf-8")
    assert main(["validate", "spec.yaml"]) == 1
    err = capsys.readouterr().err
    assert "spec.yaml:13:" in err and "unknown column type 'money'" in err
    assert "spec.yaml:19:3: error: lake.ulr: unknown key 'ulr'" in err
    assert "did you mean 'url'?" in err
    assert "spec.yaml:18:1: error: lake.url: required field is missing" in err


@pytest.mark.parametrize(("old", "new", "line", "field", "message"), [
    ("    primary_key: [id]\n", "    primary_key: [id]\n    replica_identity: default\n", 11,
     "tables[0].replica_identity", "without REPLICA IDENTITY FULL"),
    ("heartbeat_interval_ms: 5000", "heartbeat_interval_ms: 0", 17, "cdc.heartbeat_interval_ms",
     "without heartbeats holds WAL"),
], ids=["replica-identity-default", "heartbeat-zero"])
def test_warnings_do_not_fail(old: str, new: str, line: int, field: str, message: str, workdir: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "spec.yaml").write_text(MINIMAL.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
    assert main(["validate", "spec.yaml"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "spec.yaml: valid (1 warning(s))"
    assert re.search(rf"^spec\.yaml:{line}:\d+: warning: {re.escape(field)}: .*{re.escape(message)}", err,
                     re.MULTILINE), err
    assert " (hint: " in err
    assert ": error: " not in err


def test_missing_spec_file(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "nope.yaml"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nope.yaml: error: spec file not found")
    assert "hint: pass the path of a pipeline YAML" in err


@pytest.mark.parametrize(("text", "message", "hint"), [
    ("", "spec is empty", "start from"),
    ("# only a comment\n", "spec is empty", "start from"),
    ("- a\n- b\n", "a spec must be a mapping of keys", "top-level keys"),
    ("just a string\n", "a spec must be a mapping of keys", "top-level keys"),
], ids=["empty", "comment-only", "list", "scalar"])
def test_not_a_spec_at_all(text: str, message: str, hint: str, workdir: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "spec.yaml").write_text(text, encoding="utf-8")
    assert main(["validate", "spec.yaml"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"spec.yaml:1:1: error: {message}")
    assert re.search(rf" \(hint: .*{re.escape(hint)}", err), err
    assert len(err.splitlines()) == 1, err


def test_a_bad_interpolated_value_is_named_not_echoed(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A value from the environment may be a secret: the issue names the variable instead of printing it."""
    monkeypatch.setenv("BANKFLOW_TEST_PORT", "pw-S3CRET-not-a-port")
    text = MINIMAL.read_text(encoding="utf-8").replace("  database: shop\n",
                                                       "  database: shop\n  port: ${BANKFLOW_TEST_PORT}\n")
    (workdir / "spec.yaml").write_text(text, encoding="utf-8")
    assert main(["validate", "spec.yaml"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("spec.yaml:7:9: error: source.port: Input should be a valid integer")
    assert " (hint: got the value of ${BANKFLOW_TEST_PORT})" in err
    assert "S3CRET" not in err
